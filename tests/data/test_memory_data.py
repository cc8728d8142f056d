"""The memory datasets: the partially observed MuJoCo sets against their full datasets, the scripted
MiniGrid and POPGym policies against the envs' own success and scoring, and the cache and CLI."""

import json

import h5py
import numpy as np
import pytest

pytest.importorskip("minigrid")
pytest.importorskip("popgym")

from dema_lab.cli.main import main as dema_lab_main  # noqa: E402
from dema_lab.data import build_dataset, load_d4rl, load_dataset  # noqa: E402
from dema_lab.data.generate.memory_policies import RepeatPreviousExpert  # noqa: E402
from dema_lab.data.generate.scripted import run_episode, scripted_policy  # noqa: E402
from dema_lab.data.registry import embedded_names, ensure_embedded, is_current, parse_embedded  # noqa: E402
from dema_lab.envs.make import make_env  # noqa: E402
from dema_lab.envs.spec import ENV_SPECS, known_envs  # noqa: E402

POSITIONS = {"hopper": 5, "halfcheetah": 8, "walker2d": 8}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMA_LAB_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_pomdp_and_memory_name_is_embedded():
    names = set(embedded_names())
    for env in POSITIONS:
        for q in ("random", "medium", "expert", "medium-replay", "medium-expert"):
            assert f"{env}-{q}-pomdp" in names
            assert parse_embedded(f"{env}-{q}-pomdp") == (f"{env}-pomdp", q)
    for name in ("minigrid-memory-s7", "minigrid-memory-s11", "minigrid-memory-s17", "popgym-repeatprevious-easy"):
        assert name in names and parse_embedded(name) == (name, "mixed")
    assert parse_embedded("hopper-medium-pomdp-x") is None and parse_embedded("minigrid-memory-s7-mixed") is None


@pytest.mark.parametrize("env, quality", [("hopper", "medium"), ("walker2d", "medium-replay")])
def test_pomdp_observations_are_the_full_datasets_position_columns(cache, env, quality):
    pomdp = load_dataset(str(ensure_embedded(f"{env}-{quality}-pomdp", transitions=1500, progress=False)))
    full_path = ensure_embedded(f"{env}-{quality}", transitions=1500, progress=False)  # built on the way, reused
    full = load_d4rl(full_path)
    k = POSITIONS[env]
    assert pomdp.name == f"{env}-{quality}-pomdp" and pomdp.env == f"{env}-pomdp" and pomdp.obs_dim == k
    assert len(pomdp) == len(full) and pomdp.num_transitions == full.num_transitions == 1500
    for a, b in zip(pomdp, full):  # the same episodes, the velocities taken out
        np.testing.assert_array_equal(a.observations, b.observations[:, :k])
        np.testing.assert_array_equal(a.next_observations, b.next_observations[:, :k])
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert a.terminated == b.terminated
    with h5py.File(pomdp.source) as f:  # the positions are qpos[1:] of the simulator's stored state
        np.testing.assert_allclose(f["observations"][()], f["infos/qpos"][()][:, 1:], rtol=1e-6, atol=1e-6)
    # the fully observed task's reference scores
    np.testing.assert_allclose(pomdp.normalized_score(), full.normalized_score())
    assert pomdp.ref_min_score == full.ref_min_score and pomdp.ref_max_score == full.ref_max_score
    assert is_current(pomdp.source, f"{env}-pomdp", quality)


def test_building_a_pomdp_set_directly_gives_the_cached_one(cache, tmp_path):
    cached = ensure_embedded("hopper-expert-pomdp", seed=2, transitions=700, progress=False)
    direct = build_dataset("hopper-pomdp", "expert", tmp_path / "d.hdf5", seed=2, transitions=700, progress=False)
    with h5py.File(cached) as a, h5py.File(direct) as b:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
        assert a.attrs["env"] == b.attrs["env"] == "hopper-pomdp"
    assert not list(tmp_path.glob(".*full*"))  # the full dataset built on the way is gone


@pytest.mark.parametrize("env", known_envs("minigrid"))
def test_the_scripted_minigrid_policy_succeeds_at_epsilon_0_and_looks_at_the_cue(env):
    e = make_env(env)
    rng = np.random.default_rng(0)
    try:
        episodes = [run_episode(e, scripted_policy(env), 0.0, rng, ENV_SPECS[env].max_episode_steps) for _ in range(60)]
    finally:
        e.close()
    success = np.mean([ep["rewards"].sum() > 0 for ep in episodes])
    assert success >= 0.95
    assert all(ep["cue_visible"].any() for ep in episodes)  # it saw the cue in every episode
    lags = [len(ep["rewards"]) - 1 - np.flatnonzero(ep["cue_visible"])[-1] for ep in episodes]
    if env == "minigrid-memory-s31":  # dema-lab's long corridor: the cue lies beyond 20 steps back
        assert min(lags) > 20
    else:
        assert max(lags) <= 21


def test_the_success_reward_is_the_minigrid_success_and_guessing_is_a_coin_flip():
    """The return is 1 exactly when the agent ends on MemoryEnv's success cell; a policy that looks at
    the cue but then picks an object at random succeeds about half the time (the choice needs the cue)."""
    e = make_env("minigrid-memory-s7")
    rng = np.random.default_rng(1)
    try:
        for eps in (0.3, 0.6):
            for _ in range(30):
                ep = run_episode(e, scripted_policy("minigrid-memory-s7"), eps, rng, 245)
                at_success = tuple(e.unwrapped.agent_pos) == tuple(e.unwrapped.success_pos)
                assert ep["rewards"].sum() == float(at_success) and ep["rewards"][:-1].sum() == 0
        guesses = [run_episode(e, scripted_policy("minigrid-memory-s7", guess=True), 0.0, rng, 245) for _ in range(200)]
    finally:
        e.close()
    rate = np.mean([ep["rewards"].sum() > 0 for ep in guesses])
    assert 0.38 < rate < 0.62


@pytest.mark.parametrize("env, lag", [("popgym-repeatprevious-easy", 3), ("popgym-repeatprevious-medium", 31)])
def test_the_repeat_previous_optimum_needs_exactly_its_lag(env, lag):
    """The scripted optimum scores POPGym's maximum, 1; the same policy one step off scores as random
    guessing does (-0.5 in expectation), which the reference scores take as 0."""
    e = make_env(env)
    rng = np.random.default_rng(0)
    try:
        best = run_episode(e, RepeatPreviousExpert(lag), 0.0, rng, 500)
        off = [run_episode(e, RepeatPreviousExpert(lag + d), 0.0, rng, 500)["rewards"].sum() for d in (-1, 1) * 10]
        rand = [run_episode(e, RepeatPreviousExpert(lag), 1.0, rng, 500)["rewards"].sum() for _ in range(20)]
    finally:
        e.close()
    assert (
        best["rewards"].sum() == pytest.approx(1.0, abs=1e-5)
        and len(best["rewards"]) == ENV_SPECS[env].max_episode_steps
    )
    assert np.mean(off) == pytest.approx(-0.5, abs=0.15) and np.mean(rand) == pytest.approx(-0.5, abs=0.15)
    from dema_lab.data.scores import normalized_score

    assert normalized_score(env, [1.0, -0.5]) == pytest.approx([100.0, 0.0])


@pytest.mark.parametrize("name", ["minigrid-memory-s7", "popgym-repeatprevious-easy"])
def test_scripted_datasets_build_once_load_and_repeat_by_seed(cache, name, tmp_path):
    path = ensure_embedded(name, transitions=400, progress=False)
    ds = load_dataset(str(path))
    spec = ENV_SPECS[name]
    assert ds.name == name and ds.env == name and ds.num_transitions == 400
    assert ds.obs_dim == spec.obs_dim and ds.act_dim == 1 and ds.n_actions == spec.n_actions
    acts = np.concatenate([t.actions for t in ds])[:, 0]
    assert set(np.unique(acts)) <= set(range(spec.n_actions)) and len(np.unique(acts)) > 1
    mix = json.loads(ds.attrs["episode_mix"])
    assert len(mix) == len(ds) and mix[0] == [0.0, False]
    assert 0 <= ds.normalized_score(ds.returns).mean() <= 100
    assert is_current(path, name, "mixed")
    mtime = path.stat().st_mtime_ns
    assert ensure_embedded(name, transitions=400, progress=False) == path and path.stat().st_mtime_ns == mtime
    again = build_dataset(name, "mixed", tmp_path / "again.hdf5", transitions=400, progress=False)
    with h5py.File(path) as a, h5py.File(again) as b:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
    if spec.kind == "minigrid":
        with h5py.File(path) as f:
            assert f["infos/cue_visible"].shape == (400,) and f["infos/cue_visible"][()].any()
            assert f.attrs["success_rate"] > 0.5


def test_minigrid_features_constant_in_the_data_stay_constant_under_a_random_policy(cache):
    """The state normalisation divides by std + 1e-6: a feature constant in the data that changed at
    evaluation would blow up. A uniformly random policy never changes one (they are the view's unused
    door-state channel and cells the walls always fill)."""
    ds = load_dataset(str(ensure_embedded("minigrid-memory-s7", transitions=2000, progress=False)))
    const = ds.state_std < 1e-3
    assert 0 < const.sum() < ds.obs_dim
    e = make_env("minigrid-memory-s7")
    rng = np.random.default_rng(3)
    try:
        for _ in range(20):
            obs = run_episode(e, scripted_policy("minigrid-memory-s7"), 1.0, rng, 120)["observations"]
            np.testing.assert_array_equal(obs[:, const], np.broadcast_to(ds.state_mean[const], obs[:, const].shape))
    finally:
        e.close()


def test_cli_lists_and_builds_the_memory_sets(cache, tmp_path, capsys):
    assert dema_lab_main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    for name in (
        "hopper-medium-pomdp",
        "walker2d-medium-expert-pomdp",
        "minigrid-memory-s17",
        "popgym-repeatprevious-easy",
    ):
        assert name in listing
    out = tmp_path / "p.hdf5"
    argv = ["data", "build", "popgym-repeatprevious-medium", "mixed", "--transitions", "300", "--out", str(out)]
    assert dema_lab_main([*argv, "--quiet"]) == 0
    assert load_d4rl(out).name == "popgym-repeatprevious-medium"
    assert dema_lab_main(["data", "build", "minigrid-memory-s7", "medium"]) == 2
    assert "unknown quality 'medium'" in capsys.readouterr().err
