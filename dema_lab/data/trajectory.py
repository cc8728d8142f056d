"""The trajectory interface every data source goes through.

A :class:`Trajectory` is one episode as numpy arrays; a
:class:`TrajectoryDataset` is the list of them plus what is known about where
they came from. D4RL files, Minari datasets and the embedded suite all load
into this, and the window sampler and trainer read only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DatasetError", "Trajectory", "TrajectoryDataset"]


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the file or
    key, the problem and what to do."""


@dataclass
class Trajectory:
    """One episode.

    observations: (T, obs_dim) float32, the state each action was taken in; or, for Atari,
                  (T, 84, 84) uint8 single grey frames (stacked by the dataset's
                  ``frame_stack`` when read: the state at t is frames t-3..t)
    actions:      (T, act_dim) float32 (discrete actions: (T, 1), the action's index)
    rewards:      (T,) float32
    terminated:   True if the episode ended in a terminal state (the env's
                  ``terminated``); False if it was cut by a time limit or is
                  the unfinished tail of a file
    next_observations: (T, obs_dim) float32 or None when the source lacks them
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool = False
    next_observations: np.ndarray | None = None

    def __post_init__(self) -> None:
        T = len(self.rewards)
        if self.observations.ndim not in (2, 3) or self.actions.ndim != 2 or self.rewards.ndim != 1:
            raise DatasetError(
                "Trajectory needs observations (T, obs) or frames (T, H, W), actions (T, act), rewards (T,); got shapes "
                f"{self.observations.shape}, {self.actions.shape}, {self.rewards.shape}"
            )
        if len(self.observations) != T or len(self.actions) != T:
            raise DatasetError(
                f"Trajectory lengths differ: observations {len(self.observations)}, "
                f"actions {len(self.actions)}, rewards {T}"
            )
        if T == 0:
            raise DatasetError("Trajectory is empty (0 steps)")

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def total_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    def returns_to_go(self, discount: float = 1.0) -> np.ndarray:
        """(T,) float64: rtg[t] = sum_{t' >= t} discount^(t'-t) r[t']."""
        r = self.rewards.astype(np.float64)
        if discount == 1.0:
            return np.cumsum(r[::-1])[::-1].copy()
        out = np.empty_like(r)
        acc = 0.0
        for t in range(len(r) - 1, -1, -1):
            acc = r[t] + discount * acc
            out[t] = acc
        return out


@dataclass
class TrajectoryDataset:
    """A list of trajectories and their provenance.

    env:       short env name (``hopper``) when known, else the source's own
    quality:   ``random``/``medium``/... when known
    source:    file path or ``minari:<id>``
    attrs:     the source's metadata (HDF5 attrs, Minari metadata)
    ref_min_score / ref_max_score: reference returns for normalized scores
               (default: D4RL's table for ``env``)
    """

    trajectories: list[Trajectory]
    env: str | None = None
    quality: str | None = None
    source: str | None = None
    attrs: dict = field(default_factory=dict)
    ref_min_score: float | None = None
    ref_max_score: float | None = None

    def __post_init__(self) -> None:
        if not self.trajectories:
            raise DatasetError(f"dataset {self.source or ''} holds no trajectories".replace("  ", " "))
        obs, act = self.trajectories[0].observations.shape[1], self.trajectories[0].actions.shape[1]
        for i, tr in enumerate(self.trajectories):
            if tr.observations.shape[1] != obs or tr.actions.shape[1] != act:
                raise DatasetError(
                    f"trajectory {i} has obs/act dims {tr.observations.shape[1]}/{tr.actions.shape[1]}, "
                    f"trajectory 0 has {obs}/{act}"
                )
        self._stats: tuple[np.ndarray, np.ndarray] | None = None

    # ---- sizes -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.trajectories)

    def __iter__(self):
        return iter(self.trajectories)

    def __getitem__(self, i: int) -> Trajectory:
        return self.trajectories[i]

    @property
    def is_image(self) -> bool:
        """True for frame datasets (Atari): observations are (T, H, W) uint8 single frames."""
        return self.trajectories[0].observations.ndim == 3

    @property
    def frame_stack(self) -> int:
        """Frames per state for image datasets (attr ``frame_stack``, default 4); 0 otherwise."""
        return int(self.attrs.get("frame_stack", 4)) if self.is_image else 0

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one state: (obs_dim,), or (frame_stack, H, W) for image datasets."""
        o = self.trajectories[0].observations
        return (self.frame_stack, *o.shape[1:]) if self.is_image else (int(o.shape[1]),)

    @property
    def n_actions(self) -> int:
        """Number of discrete actions (attr ``n_actions``); 0 for continuous actions."""
        return int(self.attrs.get("n_actions", 0))

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.obs_shape))

    @property
    def act_dim(self) -> int:
        return int(self.trajectories[0].actions.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """(n_traj,) int64 episode lengths."""
        return np.array([len(t) for t in self.trajectories], dtype=np.int64)

    @property
    def returns(self) -> np.ndarray:
        """(n_traj,) float64 undiscounted episode returns."""
        return np.array([t.total_return for t in self.trajectories], dtype=np.float64)

    @property
    def num_transitions(self) -> int:
        return int(self.lengths.sum())

    @property
    def name(self) -> str:
        """The dataset's name: the file's ``dataset_name`` attr (``hopper-medium-pomdp``,
        ``minigrid-memory-s7``), else ``<env>-<quality>``, else its source."""
        if self.attrs.get("dataset_name"):
            return str(self.attrs["dataset_name"])
        if self.env and self.quality:
            return f"{self.env}-{self.quality}"
        return str(self.source or self.env or "dataset")

    # ---- normalisation -----------------------------------------------------
    def _compute_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stats is None and self.is_image:  # frames are scaled by the model (x / 255), not here
            self._stats = (np.zeros(1, np.float32), np.ones(1, np.float32))
        if self._stats is None:
            n = 0
            s = np.zeros(self.obs_dim)
            ss = np.zeros(self.obs_dim)
            for t in self.trajectories:
                o = t.observations.astype(np.float64)
                n += len(o)
                s += o.sum(0)
                ss += np.square(o).sum(0)
            mean = s / n
            std = np.sqrt(np.maximum(ss / n - mean**2, 0.0)) + 1e-6  # as DT: std + 1e-6
            self._stats = (mean.astype(np.float32), std.astype(np.float32))
        return self._stats

    @property
    def state_mean(self) -> np.ndarray:
        """(obs_dim,) float32 mean over all observations."""
        return self._compute_stats()[0]

    @property
    def state_std(self) -> np.ndarray:
        """(obs_dim,) float32 std over all observations, plus 1e-6."""
        return self._compute_stats()[1]

    def frame_stats(self, max_frames: int = 20_000) -> tuple[np.ndarray, float]:
        """Image datasets: the mean frame (H, W) float32 and the pixel std over all frames, in
        [0, 255] units (every n-th frame, at most max_frames of them); what a CNN with frame_norm
        "center" subtracts and divides by."""
        if not self.is_image:
            raise ValueError("frame statistics are for image (Atari) datasets")
        every = max(1, -(-self.num_transitions // max_frames))
        frames = np.concatenate([t.observations for t in self.trajectories])[::every].astype(np.float32)
        return frames.mean(0), float(frames.std()) + 1e-6

    # ---- scores ------------------------------------------------------------
    def normalized_score(self, returns=None):
        """D4RL normalized score of ``returns`` (default: this dataset's episode returns)."""
        from dema_lab.data.scores import normalized_score

        key = self.attrs.get("d4rl_key") or self.env or self.source
        return normalized_score(
            key, self.returns if returns is None else returns, self.ref_min_score, self.ref_max_score
        )

    def summary(self) -> dict:
        """Counts and return statistics, for printing."""
        r = self.returns
        out = {
            "name": self.name,
            "source": str(self.source) if self.source else None,
            "episodes": len(self),
            "transitions": self.num_transitions,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "return_mean": float(r.mean()),
            "return_std": float(r.std()),
            "return_min": float(r.min()),
            "return_max": float(r.max()),
            "length_mean": float(self.lengths.mean()),
        }
        try:
            out["normalized_mean"] = float(self.normalized_score(r.mean()))
        except KeyError:
            out["normalized_mean"] = None
        return out
