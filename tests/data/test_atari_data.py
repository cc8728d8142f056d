"""Atari data: the embedded Breakout/Pong builder, frame stacking at read time, DQN-Replay files."""

import gzip
import subprocess
import sys

import h5py
import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from dema_lab.data import WindowSampler, load_dataset  # noqa: E402
from dema_lab.data.generate.atari import build_atari_dataset  # noqa: E402
from dema_lab.data.registry import embedded_names, embedded_path, parse_embedded  # noqa: E402
from dema_lab.data.sources.d4rl import load_d4rl  # noqa: E402
from dema_lab.data.sources.dqn_replay import load_dqn_replay  # noqa: E402
from dema_lab.data.trajectory import DatasetError, Trajectory, TrajectoryDataset  # noqa: E402
from dema_lab.envs.make import make_env  # noqa: E402


def test_registry_names_atari_datasets_next_to_mujoco():
    names = embedded_names()
    for n in ("breakout-mixed", "breakout-expert", "pong-medium", "pong-random", "hopper-medium"):
        assert n in names
    assert "qbert-mixed" not in names and "breakout-medium-replay" not in names
    assert parse_embedded("breakout-mixed") == ("breakout", "mixed")
    assert embedded_path("breakout-mixed").name == "breakout-mixed.hdf5"


def test_breakout_expert_beats_random_and_is_stored_compactly(tmp_path):
    exp = load_d4rl(build_atari_dataset("breakout", "expert", tmp_path / "e.hdf5", episodes=1, progress=False))
    rnd = load_d4rl(build_atari_dataset("breakout", "random", tmp_path / "r.hdf5", episodes=2, progress=False))
    assert exp.returns.mean() >= 10 > rnd.returns.mean() + 5
    assert exp.is_image and exp.obs_shape == (4, 84, 84) and exp.obs_dim == 4 * 84 * 84 and exp.n_actions == 4
    with h5py.File(tmp_path / "e.hdf5") as f:
        obs = f["observations"]
        assert obs.dtype == np.uint8 and obs.shape[1:] == (84, 84) and obs.compression == "gzip"
        assert f.attrs["frame_stack"] == 4 and f.attrs["env"] == "breakout"
        acts = f["actions"][()]
        assert acts.shape == (len(obs), 1) and set(np.unique(acts)) <= {0, 1, 2, 3}
    assert (tmp_path / "e.hdf5").stat().st_size < 200 * len(exp.trajectories[0])  # << 7056 bytes a frame
    assert exp.attrs["normalized_score_mean"] == pytest.approx(100 * (exp.returns.mean() - 1.7) / 28.8)


def test_pong_expert_returns_balls_and_old_revisions_are_rebuilt(tmp_path, monkeypatch):
    # the RAM policy (revision 2) against random over the same 2500 steps: random loses every
    # point (about 40 steps each), the expert returns the ball and wins points
    exp = load_d4rl(build_atari_dataset("pong", "expert", tmp_path / "e.hdf5", transitions=2500, progress=False))
    rnd = load_d4rl(build_atari_dataset("pong", "random", tmp_path / "r.hdf5", transitions=2500, progress=False))
    won = sum(float((t.rewards > 0).sum()) for t in exp.trajectories)
    assert won >= 3 and exp.returns.sum() > rnd.returns.sum() + 8
    assert exp.attrs["policy_revision"] == 2
    # a cached Pong file of the screen-reading policy (revision 1, no attr) is stale, Breakout's is not
    from dema_lab.data import registry

    with h5py.File(tmp_path / "e.hdf5", "r+") as f:
        del f.attrs["policy_revision"]
    assert not registry.is_current(tmp_path / "e.hdf5", "pong", "expert")
    b = build_atari_dataset("breakout", "random", tmp_path / "b.hdf5", transitions=20, progress=False)
    with h5py.File(b, "r+") as f:
        del f.attrs["policy_revision"]
    assert registry.is_current(b, "breakout", "random")


def test_same_seed_same_data(tmp_path):
    a = build_atari_dataset("pong", "mixed", tmp_path / "a.hdf5", transitions=150, progress=False)
    b = build_atari_dataset("pong", "mixed", tmp_path / "b.hdf5", transitions=150, progress=False)
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for k in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(fa[k][()], fb[k][()])
        assert len(fa["rewards"]) == 150 and fa["timeouts"][-1]


def test_windows_stack_frames_as_the_env_does():
    """The sampler's stacked states equal the env's own (4, 84, 84) observations."""
    env = make_env("breakout", seed=0)
    obs, _ = env.reset(seed=5)
    stacks, frames = [], []
    rng = np.random.default_rng(0)
    for _ in range(12):
        stacks.append(obs)
        frames.append(obs[-1])
        obs, *_ = env.step(int(rng.integers(4)))
    env.close()
    traj = Trajectory(np.stack(frames), np.zeros((12, 1), np.float32), np.ones(12, np.float32))
    ds = TrajectoryDataset([traj, traj], env="breakout", attrs={"frame_stack": 4, "n_actions": 4})
    s = WindowSampler(ds, K=5)
    batch = s.windows(np.array([0, 6, 12 + 9]))
    st = batch["states"].numpy()
    assert st.shape == (3, 5, 4, 84, 84) and st.dtype == np.uint8
    np.testing.assert_array_equal(st[0], np.stack(stacks[0:5]))
    np.testing.assert_array_equal(st[1], np.stack(stacks[6:11]))
    np.testing.assert_array_equal(st[2, :3], np.stack(stacks[9:12]))  # second episode, 3 real steps
    assert not st[2, 3:].any() and batch["mask"][2].tolist() == [True] * 3 + [False] * 2


def test_cli_builds_breakout_mixed(tmp_path):
    out = tmp_path / "bm.hdf5"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dema_lab.cli.main",
            "data",
            "build",
            "breakout",
            "mixed",
            "--transitions",
            "200",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "200 transitions" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "dema_lab.cli.main", "data", "build", "qbert", "mixed", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "dqn-replay" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- DQN-Replay
def _save(path, arr):
    with gzip.open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _write_replay(folder, n, frames, actions, rewards, terminals, add_count=None):
    folder.mkdir(parents=True, exist_ok=True)
    _save(folder / f"$store$_observation_ckpt.{n}.gz", frames)
    _save(folder / f"$store$_action_ckpt.{n}.gz", actions.astype(np.int32))
    _save(folder / f"$store$_reward_ckpt.{n}.gz", rewards.astype(np.float32))
    _save(folder / f"$store$_terminal_ckpt.{n}.gz", terminals.astype(np.uint8))
    _save(folder / f"add_count_ckpt.{n}.gz", np.array(len(frames) if add_count is None else add_count))
    _save(folder / f"invalid_range_ckpt.{n}.gz", np.arange(3))


def _replay(tmp_path, cap=10):
    folder = tmp_path / "Breakout" / "1" / "replay_logs"
    frames = np.arange(cap, dtype=np.uint8)[:, None, None] * np.ones((1, 84, 84), np.uint8)  # frame i is all i
    actions = np.arange(cap) % 4
    rewards = np.arange(cap, dtype=np.float32)
    terminals = np.zeros(cap, np.uint8)
    terminals[3] = 1  # episodes [0..3], [4..9 unfinished]
    return folder, frames, actions, rewards, terminals


def test_dqn_replay_reads_episodes_and_stacks_frames(tmp_path):
    folder, frames, actions, rewards, terminals = _replay(tmp_path)
    _write_replay(folder, 0, frames[::-1].copy(), actions, rewards, terminals)  # an older checkpoint
    _write_replay(folder, 1, frames, actions, rewards, terminals)
    ds = load_dataset(f"dqn-replay:{folder}")
    assert ds.env == "breakout" and ds.n_actions == 4 and ds.obs_shape == (4, 84, 84)
    assert ds.lengths.tolist() == [4, 6] and [t.terminated for t in ds] == [True, False]
    np.testing.assert_array_equal(ds.returns, [0 + 1 + 2 + 3, sum(range(4, 10))])
    np.testing.assert_array_equal(ds[1].actions[:, 0], actions[4:])
    st = WindowSampler(ds, K=3).windows(np.array([5]))["states"].numpy()[0]  # steps 5, 6, 7 (episode 2)
    want = [[4, 4, 4, 5], [4, 4, 5, 6], [4, 5, 6, 7]]  # repeats the first frame
    np.testing.assert_array_equal(st[:, :, 0, 0], want)
    both = load_dqn_replay(f"{folder}@0,1")
    assert len(both) == 4 and both.attrs["checkpoints"] == "0,1"


def test_dqn_replay_circular_buffer_starts_at_the_cursor(tmp_path):
    folder, frames, actions, rewards, terminals = _replay(tmp_path)
    terminals[:] = 0
    terminals[[1, 6]] = 1
    _write_replay(folder, 0, frames, actions, rewards, terminals, add_count=10 + 5)  # cursor at 5
    ds = load_dqn_replay(folder)
    # oldest first: 5..9, 0..4; the episode the cursor cut (5, 6) is dropped
    assert [t.observations[:, 0, 0].tolist() for t in ds] == [[7, 8, 9, 0, 1], [2, 3, 4]]


def test_dqn_replay_malformed_folder_names_the_file(tmp_path):
    folder, frames, actions, rewards, terminals = _replay(tmp_path)
    _write_replay(folder, 0, frames, actions, rewards, terminals)
    (folder / "$store$_reward_ckpt.0.gz").unlink()
    with pytest.raises(DatasetError, match=r"\$store\$_reward_ckpt\.0\.gz: missing"):
        load_dqn_replay(folder)
    (folder / "$store$_reward_ckpt.0.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match=r"\$store\$_reward_ckpt\.0\.gz: not a gzipped numpy array"):
        load_dqn_replay(folder)
    _save(folder / "$store$_reward_ckpt.0.gz", np.zeros(7, np.float32))
    with pytest.raises(DatasetError, match=r"\$store\$_reward_ckpt\.0\.gz: has shape \(7,\)"):
        load_dqn_replay(folder)
    with pytest.raises(DatasetError, match="no \\$store\\$_observation_ckpt"):
        load_dqn_replay(tmp_path)
    with pytest.raises(DatasetError, match="no checkpoint 4"):
        load_dqn_replay(f"{folder}@4")


@pytest.mark.parametrize(
    "action, message",
    [
        (-1, r"action -1 at index 6 \(1 actions are outside 0\.\.3 \(breakout has 4 actions\)\)"),
        (4, r"action 4 at index 6 .*outside 0\.\.3 .*is this another game's folder\? \(pass env\)"),
    ],
)
def test_dqn_replay_actions_outside_the_game_are_refused_at_load_naming_the_index(tmp_path, action, message):
    folder, frames, actions, rewards, terminals = _replay(tmp_path)
    actions[6] = action
    _write_replay(folder, 0, frames, actions, rewards, terminals)
    with pytest.raises(DatasetError, match=r"\$store\$_action_ckpt\.0\.gz: " + message):
        load_dqn_replay(folder)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_dqn_replay_nan_or_infinite_rewards_are_refused_at_load(tmp_path, value):
    folder, frames, actions, rewards, terminals = _replay(tmp_path)
    rewards[[2, 8]] = value
    _write_replay(folder, 0, frames, actions, rewards, terminals)
    with pytest.raises(DatasetError, match=rf"\$store\$_reward_ckpt\.0\.gz: reward {value} at index 2 \(2 rewards"):
        load_dqn_replay(folder)


def test_dqn_replay_checks_only_the_rows_in_use(tmp_path):
    """dopamine's buffer past add_count is uninitialised: garbage there is not the data's."""
    folder, frames, actions, rewards, terminals = _replay(tmp_path)
    rewards[8:], actions[8:] = np.nan, -7
    _write_replay(folder, 0, frames, actions, rewards, terminals, add_count=8)
    ds = load_dqn_replay(folder)
    assert ds.num_transitions == 8 and np.isfinite(ds.returns).all()
