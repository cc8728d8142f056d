"""Training windows of K timesteps, sampled as Decision Transformer does.

A window starts at a step chosen uniformly inside a trajectory, and
trajectories are chosen in proportion to their length. Both at once: draw
one flat index uniformly over all N transitions; its episode is then chosen
with probability T_e / N and the start is uniform within it.

Windows are RIGHT-padded: the real steps come first, from the window's real
start, and zeros with ``mask`` False fill the rest. A causal model cannot let
padding after a token change that token, and inference on the last
min(t, K) steps needs no padding at all. Windows that start near an
episode's end are short, as in DT.

With ``padding="left"`` windows are left-padded as the official DeMa/DT
trainers pad them: the real steps last, pad states are raw zeros normalised
(-mean/std), pad actions -10, returns-to-go and timesteps 0, ``mask`` False.

Everything is precomputed into flat arrays with episode offsets, so a batch
is one fancy-index of a (B, K) index grid; no Python loop over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dema_lab.data.trajectory import DatasetError, TrajectoryDataset

__all__ = ["ReturnScale", "WindowSampler", "check_context_length", "flat_returns_to_go"]

# Training needs whole K-step windows: at least this share of the episodes (and at least one) must be
# K steps or longer. Shorter ones still train, right- or left-padded.
MIN_FULL_EPISODES = 0.05


@dataclass(frozen=True)
class ReturnScale:
    """How returns enter the model: divided by ``rtg_scale`` (DeMa/DT: 1000
    for MuJoCo); rewards likewise by ``reward_scale``."""

    rtg_scale: float = 1000.0
    reward_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.rtg_scale > 0 or not self.reward_scale > 0:
            raise ValueError(f"scales must be positive, got {self}")


def flat_returns_to_go(rewards: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Undiscounted returns-to-go for concatenated episodes.

    rewards: (N,); starts/ends: (E,) episode [start, end) offsets.
    Returns (N,) float64 with rtg[i] = sum of rewards from i to its episode's end,
    by one reversed cumulative sum minus each episode's tail.
    """
    r = rewards.astype(np.float64)
    rev = np.cumsum(r[::-1])[::-1]  # rev[i] = sum r[i:]
    tail = np.append(rev, 0.0)[ends]  # (E,) sum r[end:]
    lengths = ends - starts
    return rev - np.repeat(tail, lengths)


def check_context_length(lengths, K: int, name: str = "", min_share: float = MIN_FULL_EPISODES) -> None:
    """DatasetError, saying which K fits, unless enough episodes (their `lengths`, or a dataset's)
    are at least K steps long: a `min_share` of them, and at least one. With fewer, the model would
    hardly ever train on a whole window, and the decay statistics have no window to measure on."""
    if isinstance(lengths, TrajectoryDataset):
        name = name or lengths.name or ""
        lengths = lengths.lengths
    lengths = np.sort(np.asarray(lengths))[::-1]  # (E,) longest first
    need = max(1, int(np.ceil(min_share * len(lengths))))
    have = int((lengths >= K).sum())
    if have >= need:
        return
    name = name or "the dataset"
    raise DatasetError(
        f"K={K} is too long for dataset {name}: {have} of its {len(lengths)} episodes are at least {K} steps "
        f"long (the longest has {int(lengths[0])}), and training needs {need} (at least {min_share:.0%} of them) "
        f"to see whole windows; use K <= {int(lengths[need - 1])}, or a dataset with longer episodes"
    )


class WindowSampler:
    """Random K-step windows from a :class:`TrajectoryDataset`.

    ``sample(B)`` returns a dict of torch tensors:

        states        (B, K, obs) float32  (s - state_mean) / state_std, 0 in padding
                      image datasets (Atari): (B, K, frame_stack, H, W) uint8, the frames t-3..t
                      (the episode's first frame repeated before its start, as the env's frame
                      stack at reset), 0 in padding
        actions       (B, K, act) float32  (discrete: the action's index; padding 0)
        returns_to_go (B, K, 1)   float32  undiscounted return-to-go / rtg_scale
        rewards       (B, K, 1)   float32  reward / reward_scale
        timesteps     (B, K)      int64    step index within the episode
        mask          (B, K)      bool     True for real steps (a prefix of each row)
        prev_action   (B, act)    float32  the action before the window (0 at an episode's start)
    """

    def __init__(
        self,
        dataset: TrajectoryDataset,
        K: int,
        rtg_scale: float = 1000.0,
        seed: int = 0,
        reward_scale: float = 1.0,
        state_mean: np.ndarray | None = None,
        state_std: np.ndarray | None = None,
        padding: str = "right",
    ):
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if padding not in ("right", "left"):
            raise ValueError(f"padding must be 'right' or 'left' (the official trainers'), got {padding!r}")
        self.padding = padding
        self.K = int(K)
        self.scale = ReturnScale(rtg_scale, reward_scale)
        self.dataset = dataset
        self.rng = np.random.default_rng(seed)
        self.state_mean = np.asarray(dataset.state_mean if state_mean is None else state_mean, np.float32)
        self.state_std = np.asarray(dataset.state_std if state_std is None else state_std, np.float32)
        self.image = dataset.is_image
        self.discrete = dataset.n_actions > 0
        if not self.image and (
            self.state_mean.shape != (dataset.obs_dim,) or self.state_std.shape != (dataset.obs_dim,)
        ):
            raise DatasetError(
                f"state_mean/std must have shape ({dataset.obs_dim},), got "
                f"{self.state_mean.shape}/{self.state_std.shape}"
            )
        lengths = dataset.lengths  # (E,)
        self.ends = np.cumsum(lengths)  # (E,) exclusive
        self.starts = self.ends - lengths  # (E,)
        self.N = int(self.ends[-1])
        trajs = dataset.trajectories
        episode_of = np.repeat(np.arange(len(lengths)), lengths)  # (N,)
        if self.image:
            # frames (N + 1, H, W) uint8 with a zero frame at N; a state is frame_stack frame indices
            frames = trajs[0].observations
            self._frames = np.zeros((self.N + 1, *frames.shape[1:]), np.uint8)
            self._frames[: self.N] = np.concatenate([t.observations for t in trajs])
            S = dataset.frame_stack
            back = np.arange(-(S - 1), 1)  # (S,) oldest first
            idx = np.maximum(np.arange(self.N)[:, None] + back, self.starts[episode_of][:, None])
            self._stack = np.full((self.N + 1, S), self.N, np.int64)  # (N + 1, S)
            self._stack[: self.N] = idx
        else:
            obs = np.concatenate([t.observations for t in trajs]).astype(np.float32)  # (N, obs)
            # flat tables with one zero row appended at index N: padding gathers it
            self._states = np.zeros((self.N + 1, dataset.obs_dim), np.float32)
            self._states[: self.N] = (obs - self.state_mean) / self.state_std
        self._actions = np.zeros((self.N + 1, dataset.act_dim), np.float32)
        self._actions[: self.N] = np.concatenate([t.actions for t in trajs])
        rewards = np.concatenate([t.rewards for t in trajs]).astype(np.float64)  # (N,)
        self._rewards = np.zeros(self.N + 1, np.float32)
        self._rewards[: self.N] = rewards / reward_scale
        self._rtg = np.zeros(self.N + 1, np.float32)
        self._rtg[: self.N] = flat_returns_to_go(rewards, self.starts, self.ends) / rtg_scale
        self._ep_end = self.ends[episode_of]  # (N,) end of each step's episode
        self._timestep = np.arange(self.N) - self.starts[episode_of]  # (N,)
        self._ar = np.arange(self.K)

    @property
    def rtg_scale(self) -> float:
        return self.scale.rtg_scale

    def sample_indices(self, batch_size: int) -> np.ndarray:
        """(B,) flat start indices: episode proportional to length, start uniform in it."""
        return self.rng.integers(0, self.N, size=batch_size)

    def windows(self, starts: np.ndarray) -> dict:
        """Windows beginning at the given flat indices (B,)."""
        import torch  # imported here so that `import dema_lab.data` stays light

        starts = np.asarray(starts, dtype=np.int64)
        n_real = np.minimum(self.K, self._ep_end[starts] - starts)  # (B,) real steps per window
        shift = self.K - n_real if self.padding == "left" else np.zeros_like(n_real)  # (B,) pads first
        pos = self._ar[None, :] - shift[:, None]  # (B, K) step within the window's real part
        mask = (pos >= 0) & (pos < n_real[:, None])  # (B, K) real steps
        gather = np.where(mask, starts[:, None] + pos, self.N)  # padding reads the zero row
        ts = np.where(mask, self._timestep[starts][:, None] + pos, 0)
        if self.image:
            states = self._frames[self._stack[gather]]  # (B, K, S, H, W) uint8, zeros in padding
        else:
            states = self._states[gather]
        actions = self._actions[gather]
        if self.padding == "left" and not self.image:  # the official pad values
            states[~mask] = -self.state_mean / self.state_std
        if self.padding == "left" and not self.discrete:
            actions[~mask] = -10.0
        return {
            "states": torch.from_numpy(states),
            "actions": torch.from_numpy(actions),
            "returns_to_go": torch.from_numpy(self._rtg[gather][..., None]),
            "rewards": torch.from_numpy(self._rewards[gather][..., None]),
            "timesteps": torch.from_numpy(ts.astype(np.int64)),
            "mask": torch.from_numpy(mask),
            "prev_action": torch.from_numpy(
                np.where((self._timestep[starts] > 0)[:, None], self._actions[np.maximum(starts - 1, 0)], 0.0).astype(
                    np.float32
                )
            ),
        }

    def sample(self, batch_size: int) -> dict:
        """A batch of ``batch_size`` random windows (see class docstring)."""
        return self.windows(self.sample_indices(batch_size))
