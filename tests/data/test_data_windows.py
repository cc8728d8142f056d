"""WindowSampler: returns-to-go, padding/masks, normalisation, DT sampling."""

import time

import numpy as np
import pytest
import torch

from dema_lab.data import Trajectory, TrajectoryDataset, WindowSampler, flat_returns_to_go

OBS, ACT = 4, 2


def _dataset(lengths, seed=0):
    rng = np.random.default_rng(seed)
    trajs = [
        Trajectory(
            observations=rng.standard_normal((T, OBS)).astype(np.float32) * 3 + 1,
            actions=rng.uniform(-1, 1, (T, ACT)).astype(np.float32),
            rewards=rng.uniform(0, 5, T).astype(np.float32),
            terminated=bool(i % 2),
        )
        for i, T in enumerate(lengths)
    ]
    return TrajectoryDataset(trajs, env="test")


def _rtg_loop(rewards):
    out, acc = np.zeros(len(rewards)), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc += float(rewards[t])
        out[t] = acc
    return out


def test_flat_returns_to_go_are_exact():
    ds = _dataset([7, 1, 30, 12])
    lengths = ds.lengths
    ends = np.cumsum(lengths)
    rtg = flat_returns_to_go(np.concatenate([t.rewards for t in ds]), ends - lengths, ends)
    expected = np.concatenate([_rtg_loop(t.rewards) for t in ds])
    np.testing.assert_allclose(rtg, expected, rtol=1e-12)
    for t in ds:
        np.testing.assert_allclose(t.returns_to_go(), _rtg_loop(t.rewards), rtol=1e-12)
        assert t.returns_to_go()[0] == pytest.approx(t.total_return)
    r = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(Trajectory(np.zeros((3, 1)), np.zeros((3, 1)), r).returns_to_go(0.5), [3.0, 4.0, 4.0])


def test_window_at_episode_start_is_full_and_exact():
    ds = _dataset([15, 40, 9])
    K = 10
    s = WindowSampler(ds, K, rtg_scale=100.0, reward_scale=2.0)
    tr = ds[1]
    b = s.windows(np.array([15]))  # first step of episode 1
    assert b["mask"].all()
    np.testing.assert_array_equal(b["timesteps"][0].numpy(), np.arange(K))
    np.testing.assert_allclose(b["returns_to_go"][0, :, 0].numpy(), _rtg_loop(tr.rewards)[:K] / 100.0, rtol=1e-5)
    np.testing.assert_allclose(b["rewards"][0, :, 0].numpy(), tr.rewards[:K] / 2.0, rtol=1e-6)
    np.testing.assert_array_equal(b["actions"][0].numpy(), tr.actions[:K])
    expect_states = (tr.observations[:K] - ds.state_mean) / ds.state_std
    np.testing.assert_allclose(b["states"][0].numpy(), expect_states, rtol=1e-5, atol=1e-6)
    assert b["returns_to_go"][0, 0, 0].item() == pytest.approx(tr.total_return / 100.0, rel=1e-5)


def test_window_near_episode_end_is_right_padded_and_masked():
    ds = _dataset([15, 40, 9])
    K = 10
    s = WindowSampler(ds, K)
    tr = ds[1]
    start = 15 + 40 - 3  # three real steps left in episode 1
    b = s.windows(np.array([start]))
    np.testing.assert_array_equal(b["mask"][0].numpy(), [True] * 3 + [False] * 7)
    np.testing.assert_array_equal(b["timesteps"][0].numpy(), [37, 38, 39] + [0] * 7)
    np.testing.assert_allclose(b["returns_to_go"][0, :3, 0].numpy(), _rtg_loop(tr.rewards)[-3:] / 1000.0, rtol=1e-5)
    # the last real rtg is the last reward; nothing leaks from episode 2
    assert b["returns_to_go"][0, 2, 0].item() == pytest.approx(tr.rewards[-1] / 1000.0, rel=1e-5)
    for key in ("states", "actions", "returns_to_go", "rewards"):
        assert torch.count_nonzero(b[key][0, 3:]) == 0, key
    np.testing.assert_array_equal(b["actions"][0, :3].numpy(), tr.actions[-3:])


def test_episode_shorter_than_K_and_last_episode_of_the_table():
    ds = _dataset([15, 40, 6])
    s = WindowSampler(ds, 20)
    b = s.windows(np.array([55, 60]))  # start of the 6-step episode; its last step
    np.testing.assert_array_equal(b["mask"].sum(1).numpy(), [6, 1])
    np.testing.assert_array_equal(b["timesteps"][0, :6].numpy(), np.arange(6))
    assert b["timesteps"][1, 0].item() == 5
    assert b["rewards"][1, 0, 0].item() == pytest.approx(ds[2].rewards[-1])


def test_sample_shapes_dtypes_and_mask_is_a_prefix():
    ds = _dataset([50, 3, 80, 25])
    s = WindowSampler(ds, 20, seed=1)
    b = s.sample(64)
    assert b["states"].shape == (64, 20, OBS) and b["states"].dtype == torch.float32
    assert b["actions"].shape == (64, 20, ACT) and b["actions"].dtype == torch.float32
    assert b["returns_to_go"].shape == (64, 20, 1) and b["returns_to_go"].dtype == torch.float32
    assert b["rewards"].shape == (64, 20, 1)
    assert b["timesteps"].shape == (64, 20) and b["timesteps"].dtype == torch.int64
    assert b["mask"].shape == (64, 20) and b["mask"].dtype == torch.bool
    m = b["mask"].numpy()
    assert m[:, 0].all()  # every window starts at a real step
    assert (np.diff(m.astype(int), axis=1) <= 0).all()  # True... then False...
    np.testing.assert_array_equal(s.state_mean, ds.state_mean)
    # same seed -> same batch; other seed -> another
    b2 = WindowSampler(ds, 20, seed=1).sample(64)
    for k in b:
        assert torch.equal(b[k], b2[k])
    assert not torch.equal(WindowSampler(ds, 20, seed=2).sample(64)["timesteps"], b["timesteps"])


def test_trajectories_sampled_in_proportion_to_length_with_uniform_starts():
    ds = _dataset([10, 90])
    s = WindowSampler(ds, 5, seed=0)
    starts = s.sample_indices(200_000)
    frac_first = np.mean(starts < 10)
    assert frac_first == pytest.approx(0.1, abs=0.005)
    counts = np.bincount(starts, minlength=100)  # every start equally likely
    assert counts.min() > 0.9 * counts.mean() and counts.max() < 1.1 * counts.mean()


def test_batch_of_64_is_fast():
    ds = _dataset([1000] * 100)  # 100k transitions, D4RL-like episode lengths
    s = WindowSampler(ds, 20)
    s.sample(64)
    t = time.perf_counter()
    for _ in range(200):
        s.sample(64)
    per_batch = (time.perf_counter() - t) / 200
    assert per_batch < 5e-3, f"{per_batch * 1e3:.2f} ms per batch"  # a training step takes ~150 ms


def test_bad_arguments():
    ds = _dataset([5])
    with pytest.raises(ValueError, match="K must be"):
        WindowSampler(ds, 0)
    with pytest.raises(ValueError, match="scales must be positive"):
        WindowSampler(ds, 3, rtg_scale=0.0)
    with pytest.raises(ValueError, match="state_mean/std must have shape"):
        WindowSampler(ds, 3, state_mean=np.zeros(3))
