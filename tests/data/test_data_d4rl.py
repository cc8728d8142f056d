"""D4RL HDF5 layout: round trip, episode splitting, validation, scores."""

import h5py
import numpy as np
import pytest

from dema_lab.data import (
    DatasetError,
    Trajectory,
    TrajectoryDataset,
    load_d4rl,
    load_dataset,
    normalized_score,
    reference_scores,
    split_episodes,
    write_d4rl,
)
from dema_lab.data.scores import score_key

OBS, ACT = 11, 3  # hopper sizes


def _arrays(n=25, seed=0):
    rng = np.random.default_rng(seed)
    a = {
        "observations": rng.standard_normal((n, OBS)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }
    a["next_observations"] = np.roll(a["observations"], -1, axis=0)
    # episodes: [0, 6) terminal, [6, 16) timeout, [16, 25) unterminated tail
    a["terminals"][5] = True
    a["timeouts"][15] = True
    return a


def _write_raw(path, arrays, attrs=None):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def test_round_trip_keeps_every_step_and_splits_like_d4rl(tmp_path):
    a = _arrays()
    path = write_d4rl(tmp_path / "x.hdf5", **a, attrs={"env": "hopper", "quality": "medium", "seed": 3})
    ds = load_d4rl(path)
    assert [len(t) for t in ds] == [6, 10, 9]
    assert [t.terminated for t in ds] == [True, False, False]
    for t, (s, e) in zip(ds, [(0, 6), (6, 16), (16, 25)]):
        np.testing.assert_array_equal(t.observations, a["observations"][s:e])
        np.testing.assert_array_equal(t.actions, a["actions"][s:e])
        np.testing.assert_array_equal(t.rewards, a["rewards"][s:e])
        np.testing.assert_array_equal(t.next_observations, a["next_observations"][s:e])
    assert ds.env == "hopper" and ds.quality == "medium" and ds.attrs["seed"] == 3
    assert ds.num_transitions == 25 and ds.obs_dim == OBS and ds.act_dim == ACT
    np.testing.assert_allclose(ds.returns, [a["rewards"][s:e].sum() for s, e in [(0, 6), (6, 16), (16, 25)]], rtol=1e-5)
    all_obs = a["observations"].astype(np.float64)
    np.testing.assert_allclose(ds.state_mean, all_obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.state_std, all_obs.std(0) + 1e-6, rtol=1e-5)
    # reopening gives the same thing; load_dataset accepts the path too
    again = load_dataset(str(path))
    for t1, t2 in zip(ds, again):
        np.testing.assert_array_equal(t1.observations, t2.observations)


def test_terminal_on_last_step_makes_no_empty_episode(tmp_path):
    a = _arrays()
    a["terminals"][-1] = True
    ds = load_d4rl(write_d4rl(tmp_path / "x.hdf5", **a))
    assert [len(t) for t in ds] == [6, 10, 9] and ds[-1].terminated


def test_files_without_timeouts_are_cut_at_the_time_limit():
    terminals = np.zeros(23, bool)
    terminals[2] = True
    starts, ends, term = split_episodes(terminals, None, max_episode_steps=8)
    assert list(zip(starts, ends)) == [(0, 3), (3, 11), (11, 19), (19, 23)]
    assert list(term) == [True, False, False, False]
    starts, ends, _ = split_episodes(terminals, None, max_episode_steps=None)
    assert list(zip(starts, ends)) == [(0, 3), (3, 23)]


def test_minimal_file_without_optional_keys(tmp_path):
    a = _arrays()
    del a["timeouts"], a["next_observations"]
    ds = load_d4rl(_write_raw(tmp_path / "old.hdf5", a), max_episode_steps=None)
    assert [len(t) for t in ds] == [6, 19]
    assert ds[0].next_observations is None


def test_n_by_1_rewards_are_accepted(tmp_path):
    a = _arrays()
    a["rewards"] = a["rewards"][:, None]
    ds = load_d4rl(_write_raw(tmp_path / "r.hdf5", a))
    assert ds[0].rewards.shape == (6,)


@pytest.mark.parametrize("layout", ["timeouts", "no-timeouts", "n-by-1", "long"])
def test_episode_lengths_read_from_the_flags_alone_match_the_loaded_dataset(tmp_path, layout):
    """episode_lengths reads only terminals/timeouts; the oracle is the dataset load_dataset splits."""
    from dema_lab.data import episode_lengths

    a = _arrays(n=2600 if layout == "long" else 25)
    if layout == "no-timeouts":
        del a["timeouts"]
    if layout == "n-by-1":
        a["terminals"] = a["terminals"][:, None].astype(np.float32)
    if layout == "long":  # no flag after step 15: chopped at the 1000-step time limit, as when loading
        del a["timeouts"]
    path = _write_raw(tmp_path / "x.hdf5", a)
    want = [len(t) for t in load_dataset(str(path))]
    assert list(episode_lengths(str(path))) == want
    assert list(episode_lengths(path)) == want  # a PathLike too
    if layout == "long":
        assert want == [6, 1000, 1000, 594]


def test_episode_lengths_name_a_malformed_file(tmp_path):
    from dema_lab.data import episode_lengths

    a = _arrays()
    del a["terminals"]
    with pytest.raises(DatasetError, match=r"missing key 'terminals'"):
        episode_lengths(str(_write_raw(tmp_path / "a.hdf5", a)))
    a = _arrays()
    a["timeouts"] = a["timeouts"][:-1]
    with pytest.raises(DatasetError, match=r"mismatched lengths: key 'timeouts' has 24 rows but 'terminals' has 25"):
        episode_lengths(str(_write_raw(tmp_path / "b.hdf5", a)))
    (tmp_path / "c.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match=r"not an HDF5 file"):
        episode_lengths(str(tmp_path / "c.hdf5"))


# ---- malformed files: each fails with its own message ------------------------------


def _missing_key(p):
    a = _arrays()
    del a["rewards"]
    _write_raw(p, a)


def _mismatched(p):
    a = _arrays()
    a["actions"] = a["actions"][:-2]
    _write_raw(p, a)


def _nan(p):
    a = _arrays()
    a["observations"][7, 2] = np.nan
    _write_raw(p, a)


def _inf(p):
    a = _arrays()
    a["rewards"][4] = np.inf
    _write_raw(p, a)


def _zero_bytes(p):
    p.write_bytes(b"")


def _no_datasets(p):
    h5py.File(p, "w").close()


def _not_hdf5(p):
    p.write_text("observations,actions\n1,2\n")


def _wrong_ndim(p):
    a = _arrays()
    a["observations"] = a["observations"][:, 0]
    _write_raw(p, a)


def _no_rows(p):
    _write_raw(p, {k: v[:0] for k, v in _arrays().items()})


def _wrong_env_dims(p):
    a = _arrays()
    a["observations"] = np.zeros((25, 17), np.float32)  # walker-sized states
    a["next_observations"] = np.zeros((25, 17), np.float32)
    _write_raw(p, a, {"env": "hopper"})


MALFORMED = [
    (_missing_key, r"missing key 'rewards'"),
    (_mismatched, r"mismatched lengths: key 'actions' has 23 rows but 'observations' has 25"),
    (_nan, r"key 'observations' contains 1 NaN/inf values \(first at row 7\)"),
    (_inf, r"key 'rewards' contains 1 NaN/inf values \(first at row 4\)"),
    (_zero_bytes, r"the file is empty \(0 bytes\)"),
    (_no_datasets, r"the HDF5 file is empty \(no datasets\)"),
    (_not_hdf5, r"not an HDF5 file"),
    (_wrong_ndim, r"key 'observations' has shape \(25,\), expected \(N, obs_dim\)"),
    (_no_rows, r"key 'observations' has 0 rows"),
    (_wrong_env_dims, r"key 'observations' has 17 features but hopper \(Hopper-v5\) has obs_dim 11"),
]


@pytest.mark.parametrize("make, message", MALFORMED, ids=[m[0].__name__.strip("_") for m in MALFORMED])
def test_malformed_file_fails_with_its_own_message(tmp_path, make, message):
    path = tmp_path / "bad.hdf5"
    make(path)
    with pytest.raises(DatasetError, match=message) as err:
        load_d4rl(path)
    assert str(path) in str(err.value)  # names the file
    assert isinstance(err.value, ValueError)
    # no other malformation's message matches this one
    others = [m for f, m in MALFORMED if f is not make]
    import re

    assert not any(re.search(m, str(err.value)) for m in others)


def test_env_argument_checks_action_dims(tmp_path):
    a = _arrays()
    a["actions"] = np.zeros((25, 6), np.float32)  # hopper states, walker-sized actions
    path = write_d4rl(tmp_path / "x.hdf5", **a)
    assert load_d4rl(path).act_dim == 6  # no env known: loads as it is
    with pytest.raises(DatasetError, match=r"key 'actions' has 6 features but hopper \(Hopper-v5\) has act_dim 3"):
        load_d4rl(path, env="Hopper-v5")


@pytest.mark.timeout(60)  # opening the FIFO would block
def test_a_fifo_or_a_device_is_not_a_regular_file_and_is_never_opened(tmp_path):
    import os

    fifo = tmp_path / "data.hdf5"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), ("/dev/zero", "a device")):
        with pytest.raises(DatasetError, match=f"is not a regular file \\({kind}\\); give an HDF5 file"):
            load_dataset(str(path))


def test_missing_file_and_unknown_spec(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_d4rl(tmp_path / "nope.hdf5")
    with pytest.raises(DatasetError, match="unknown dataset 'hopper-superb'"):
        load_dataset("hopper-superb")


def test_trajectory_validates_shapes():
    with pytest.raises(DatasetError, match="lengths differ"):
        Trajectory(np.zeros((3, 2)), np.zeros((2, 1)), np.zeros(3))
    with pytest.raises(DatasetError, match="no trajectories"):
        TrajectoryDataset([])


# ---- normalized scores ----------------------------------------------------------


@pytest.mark.parametrize(
    "key, lo, hi",
    [("hopper", -20.272305, 3234.3), ("halfcheetah", -280.178953, 12135.0), ("walker2d", 1.629008, 4592.3)],
)
def test_normalized_score_uses_d4rl_references(key, lo, hi):
    assert normalized_score(key, lo) == pytest.approx(0.0, abs=1e-12)
    assert normalized_score(key, hi) == pytest.approx(100.0)
    r = np.array([lo, (lo + hi) / 2, hi, 2 * hi - lo])
    np.testing.assert_allclose(normalized_score(key, r), [0, 50, 100, 200])


@pytest.mark.parametrize(
    "name, key",
    [
        ("Hopper-v5", "hopper"),
        ("hopper-medium-replay-v2", "hopper"),
        ("halfcheetah-expert-v0", "halfcheetah"),
        ("walker2d_medium-v2", "walker2d"),
        ("maze2d-umaze-dense-v1", "maze2d-umaze-dense"),
        ("maze2d-umaze-v1", "maze2d-umaze"),
        ("antmaze-large-play-v2", "antmaze"),
        ("pen-human-v1", "pen"),
        ("bullet-hopper-medium-v0", "bullet-hopper"),
    ],
)
def test_score_keys(name, key):
    assert score_key(name) == key


def test_score_overrides_and_unknown():
    assert normalized_score(None, 15.0, ref_min=10.0, ref_max=20.0) == pytest.approx(50.0)
    assert normalized_score("hopper", 3234.3, ref_min=0.0) == pytest.approx(100.0)
    assert reference_scores("ant") == (-325.6, 3879.7)
    with pytest.raises(KeyError, match="no D4RL reference scores for 'pendulum'"):
        normalized_score("pendulum", 1.0)


def test_dataset_score_overridable_per_dataset(tmp_path):
    a = _arrays()
    ds = load_d4rl(
        write_d4rl(tmp_path / "x.hdf5", **a, attrs={"env": "hopper", "ref_min_score": 0.0, "ref_max_score": 10.0})
    )
    assert ds.normalized_score(5.0) == pytest.approx(50.0)
    ds2 = load_d4rl(write_d4rl(tmp_path / "y.hdf5", **a, attrs={"env": "hopper"}))
    assert ds2.normalized_score(3234.3) == pytest.approx(100.0)
