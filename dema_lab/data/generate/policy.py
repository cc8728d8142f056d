"""Linear behaviour policies and the ``.npz`` files that ship them.

A policy is ``a = clip(W @ ((s - mean) / std), -1, 1)``: a linear map on
normalised observations, as trained by Augmented Random Search
(:mod:`dema_lab.data.generate.ars`). One file per env, ``dema_lab/data/generate/policies/<env>.npz``,
holds the expert policy, the medium policy (about a third of the expert's
return) and the chronological snapshots of training up to the medium policy
(used to rebuild a ``medium-replay`` dataset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dema_lab.envs.spec import env_spec

POLICY_DIR = Path(__file__).resolve().parent / "policies"


@dataclass
class LinearPolicy:
    """Deterministic linear policy on normalised observations.

    W:    (act_dim, obs_dim)
    mean: (obs_dim,) observation mean used for normalisation
    std:  (obs_dim,) observation std (already floored, > 0)
    """

    W: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        self.W = np.asarray(self.W, dtype=np.float64)
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        self._inv_std = 1.0 / self.std

    def act(self, obs: np.ndarray) -> np.ndarray:
        """(obs_dim,) or (B, obs_dim) -> (act_dim,) or (B, act_dim), clipped to [-1, 1]."""
        z = (np.asarray(obs, dtype=np.float64) - self.mean) * self._inv_std
        return np.clip(z @ self.W.T, -1.0, 1.0)

    __call__ = act


@dataclass
class PolicySet:
    """Everything one ``<env>.npz`` holds.

    expert, medium: the two policies; *_return their mean evaluation return
    replay: policies along training up to the medium one, oldest first
    replay_mean_len: (S,) mean episode length of each snapshot's training rollouts
    noise: ARS perturbation scale (nu) used in training, reused for medium-replay
    meta: training facts (seconds, env steps, config, versions, learning curve)
    """

    env: str
    expert: LinearPolicy
    medium: LinearPolicy
    expert_return: float
    medium_return: float
    replay: list[LinearPolicy]
    replay_mean_len: np.ndarray
    noise: float
    meta: dict = field(default_factory=dict)
    path: Path | None = None


def policy_path(env: str) -> Path:
    """Where the shipped weights for ``env`` live."""
    return POLICY_DIR / f"{env_spec(env).name}.npz"


def _pack(p: LinearPolicy, prefix: str, out: dict) -> None:
    out[f"{prefix}_W"] = p.W
    out[f"{prefix}_mean"] = p.mean
    out[f"{prefix}_std"] = p.std


def save_policy_set(ps: PolicySet, path: str | Path) -> Path:
    """Write ``ps`` to a compressed ``.npz`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    _pack(ps.expert, "expert", arrays)
    _pack(ps.medium, "medium", arrays)
    arrays["replay_W"] = np.stack([p.W for p in ps.replay])  # (S, act, obs)
    arrays["replay_mean"] = np.stack([p.mean for p in ps.replay])  # (S, obs)
    arrays["replay_std"] = np.stack([p.std for p in ps.replay])  # (S, obs)
    arrays["replay_mean_len"] = np.asarray(ps.replay_mean_len, dtype=np.float64)
    arrays["expert_return"] = np.float64(ps.expert_return)
    arrays["medium_return"] = np.float64(ps.medium_return)
    arrays["noise"] = np.float64(ps.noise)
    arrays["env"] = np.array(env_spec(ps.env).name)
    curve = {k: v for k, v in ps.meta.items() if isinstance(v, np.ndarray)}
    for k, v in curve.items():
        arrays[f"curve_{k}"] = v
    arrays["meta_json"] = np.array(json.dumps({k: v for k, v in ps.meta.items() if k not in curve}))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_policy_set(env_or_path: str | Path) -> PolicySet:
    """Load the shipped weights for an env name, or a ``.npz`` path."""
    p = Path(env_or_path)
    if p.suffix != ".npz":
        p = policy_path(str(env_or_path))
    if not p.exists():
        raise FileNotFoundError(
            f"no behaviour-policy weights at {p}; train them with `dema-lab data train-policies {p.stem}`"
        )
    with np.load(p, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}

    def unpack(prefix: str) -> LinearPolicy:
        return LinearPolicy(d[f"{prefix}_W"], d[f"{prefix}_mean"], d[f"{prefix}_std"])

    replay = [LinearPolicy(w, m, s) for w, m, s in zip(d["replay_W"], d["replay_mean"], d["replay_std"])]
    meta = json.loads(str(d["meta_json"]))
    for k, v in d.items():
        if k.startswith("curve_"):
            meta[k[len("curve_") :]] = v
    return PolicySet(
        env=str(d["env"]),
        expert=unpack("expert"),
        medium=unpack("medium"),
        expert_return=float(d["expert_return"]),
        medium_return=float(d["medium_return"]),
        replay=replay,
        replay_mean_len=d["replay_mean_len"],
        noise=float(d["noise"]),
        meta=meta,
        path=p,
    )
