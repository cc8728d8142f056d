"""Build the embedded offline datasets, mirroring how D4RL built its MuJoCo ones.

    random         uniform random actions
    medium         the medium policy (about a third of the expert's return)
    expert         the expert policy
    medium-replay  the training rollouts up to the medium policy: each
                   episode runs a training snapshot perturbed as ARS perturbs
                   it (W + nu * delta), snapshots in training order, each
                   given episodes in proportion to its training-episode length
    medium-expert  half the transitions from medium, half from expert

Medium and expert act with Gaussian action noise (D4RL's policies were
stochastic; a deterministic linear policy would repeat one trajectory).
The policies are the shipped ARS weights (:mod:`dema_lab.data.generate.policy`).

A ``-pomdp`` env's dataset is the full env's of the same seed with the velocities taken out of its
observations (:mod:`dema_lab.data.generate.pomdp`); the memory tasks' are built by
:mod:`dema_lab.data.generate.scripted`, Atari's by :mod:`dema_lab.data.generate.atari`.

Output is D4RL's HDF5 layout (:mod:`dema_lab.data.sources.d4rl`) with
``infos/qpos``/``infos/qvel`` (so a stored state can be restored and
rendered) and attrs recording env, quality, policy returns, seed, noise and
the builder version. The same seed gives the same arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from dema_lab.data.generate.policy import LinearPolicy, PolicySet, load_policy_set
from dema_lab.data.generate.pomdp import mask_dataset
from dema_lab.data.scores import reference_scores
from dema_lab.data.sources.d4rl import write_d4rl
from dema_lab.data.trajectory import DatasetError
from dema_lab.envs.make import make_env
from dema_lab.envs.spec import env_spec

__all__ = ["QUALITIES", "BUILDER_VERSION", "DEFAULT_TRANSITIONS", "ACTION_NOISE", "build_dataset", "collect"]

BUILDER_VERSION = 1
QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert")
DEFAULT_TRANSITIONS = 100_000
# std of the Gaussian noise added to medium/expert actions (actions live in [-1, 1]).
# HalfCheetah's linear policies flip onto their back under larger noise (at 0.1
# about 40% of expert episodes did; at 0.03 about 3%), so it gets less.
ACTION_NOISE = {"hopper": 0.1, "halfcheetah": 0.03, "walker2d": 0.1}


class _Buffer:
    """Growable per-key arrays for collected steps."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, **arrays: np.ndarray) -> None:
        for k, v in arrays.items():
            self.parts.setdefault(k, []).append(v)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


def _episode(u, act, seed: int, rng: np.random.Generator, max_steps: int, obs_dim: int, act_dim: int):
    """Run one episode on the unwrapped env with ``act(obs, rng) -> action``.

    Returns dict of (T, ...) arrays and the terminated flag.
    """
    obs_buf = np.empty((max_steps, obs_dim))
    next_buf = np.empty((max_steps, obs_dim))
    act_buf = np.empty((max_steps, act_dim))
    rew_buf = np.empty(max_steps)
    qpos_buf = np.empty((max_steps, u.model.nq))
    qvel_buf = np.empty((max_steps, u.model.nv))
    obs, _ = u.reset(seed=int(seed))
    terminated = False
    t = 0
    while t < max_steps:
        a = np.clip(act(obs, rng), -1.0, 1.0)
        obs_buf[t] = obs
        qpos_buf[t] = u.data.qpos
        qvel_buf[t] = u.data.qvel
        act_buf[t] = a
        obs, r, terminated, _, _ = u.step(a)
        next_buf[t] = obs
        rew_buf[t] = r
        t += 1
        if terminated:
            break
    return (
        dict(
            observations=obs_buf[:t],
            next_observations=next_buf[:t],
            actions=act_buf[:t],
            rewards=rew_buf[:t],
            qpos=qpos_buf[:t],
            qvel=qvel_buf[:t],
        ),
        bool(terminated),
    )


def _linear_actor(p: LinearPolicy, noise: float):
    W, mean, inv_std = p.W, p.mean, 1.0 / p.std

    def act(obs, rng):
        a = W @ ((obs - mean) * inv_std)
        if noise > 0:
            a = a + noise * rng.standard_normal(a.shape)
        return a

    return act


def _random_actor(act_dim: int):
    def act(obs, rng):
        return rng.uniform(-1.0, 1.0, act_dim)

    return act


def collect(
    env: str,
    actors,
    budget: int | None,
    episodes: int | None,
    rng: np.random.Generator,
    bar=None,
) -> tuple[dict[str, np.ndarray], list[float], list[bool]]:
    """Roll out episodes until ``budget`` transitions (the last episode is
    cut and marked as a timeout) or ``episodes`` episodes.

    actors: callable ``k -> act`` giving the actor for episode k.
    Returns (D4RL arrays incl. qpos/qvel, episode returns, whether each
    episode is complete, i.e. not cut short by the budget).
    """
    spec = env_spec(env)
    e = make_env(spec.name)
    u = e.unwrapped
    buf = _Buffer()
    returns: list[float] = []
    complete: list[bool] = []
    n = 0
    k = 0
    try:
        while (budget is None or n < budget) and (episodes is None or k < episodes):
            ep, terminated = _episode(
                u, actors(k), rng.integers(0, 2**31 - 1), rng, spec.max_episode_steps, spec.obs_dim, spec.act_dim
            )
            T = len(ep["rewards"])
            cut = budget is not None and n + T > budget
            if cut:
                T = budget - n
                ep = {key: v[:T] for key, v in ep.items()}
                terminated = False
            term = np.zeros(T, bool)
            term[-1] = terminated
            timeout = np.zeros(T, bool)
            timeout[-1] = not terminated  # time limit or cut by the budget
            buf.add(**ep, terminals=term, timeouts=timeout)
            returns.append(float(ep["rewards"].sum()))
            complete.append(not cut)
            n += T
            k += 1
            if bar is not None:
                bar.update(T)
    finally:
        e.close()
    return buf.arrays(), returns, complete


def _replay_actors(ps: PolicySet, budget: int | None, episodes: int | None, seed: int):
    """Actor factory for medium-replay: training snapshots in order, perturbed by ARS noise.

    Each snapshot gets a share of the episodes equal to its share of the
    training episodes (all equal: 2N per iteration); with a transition budget
    the per-snapshot episode count is estimated from the mean training episode
    length, so the whole training history fits in the budget.
    """
    S = len(ps.replay)
    if episodes is None:
        per = budget / float(np.sum(ps.replay_mean_len))  # episodes per snapshot (may be < 1)
    else:
        per = episodes / S
    shapes = ps.replay[0].W.shape

    def actors(k: int):
        s = min(int(k / per), S - 1)
        p = ps.replay[s]
        r = np.random.default_rng([seed, k, 7])
        W = p.W + ps.noise * r.choice([-1.0, 1.0]) * r.standard_normal(shapes)
        return _linear_actor(LinearPolicy(W, p.mean, p.std), 0.0)

    return actors


def file_digest(path: Path | None) -> str:
    if path is None or not Path(path).exists():
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def build_dataset(
    env: str,
    quality: str,
    out_path: str | Path,
    seed: int = 0,
    transitions: int | None = None,
    episodes: int | None = None,
    action_noise: float | None = None,
    policies: PolicySet | str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Collect an embedded dataset and write it in D4RL's HDF5 layout.

    transitions: total steps (default ``DEFAULT_TRANSITIONS``); the last
        episode is cut to fit and marked as a timeout.
    episodes: alternatively, a number of whole episodes (overrides transitions).
    action_noise: Gaussian std on medium/expert actions (default per env).
    policies: a PolicySet or ``.npz`` path (default: the shipped weights).
    Returns the written path.
    """
    spec = env_spec(env)
    if spec.kind == "atari":  # epsilon-greedy game policies, frames (dema_lab.data.generate.atari)
        from dema_lab.data.generate.atari import build_atari_dataset

        return build_atari_dataset(
            spec.name, quality, out_path, seed=seed, transitions=transitions, episodes=episodes, progress=progress
        )
    if spec.kind in ("minigrid", "popgym"):  # scripted memory-task policies (dema_lab.data.generate.scripted)
        from dema_lab.data.generate.scripted import build_scripted_dataset

        return build_scripted_dataset(
            spec.name, quality, out_path, seed=seed, transitions=transitions, episodes=episodes, progress=progress
        )
    if spec.full_env:  # positions only: the full dataset of this seed, masked (dema_lab.data.generate.pomdp)
        out_path = Path(out_path)
        full = out_path.with_name(f".{out_path.name}.{os.getpid()}.full.hdf5")
        try:
            build_dataset(spec.full_env, quality, full, seed, transitions, episodes, action_noise, policies, progress)
            return mask_dataset(full, out_path, spec.name)
        finally:
            full.unlink(missing_ok=True)
    if quality not in QUALITIES:
        raise DatasetError(f"unknown quality {quality!r}; choose one of {', '.join(QUALITIES)}")
    if episodes is not None and episodes <= 0:
        raise DatasetError(f"episodes must be positive, got {episodes}")
    budget = None if episodes is not None else int(transitions or DEFAULT_TRANSITIONS)
    if budget is not None and budget <= 0:
        raise DatasetError(f"transitions must be positive, got {budget}")
    noise = ACTION_NOISE.get(spec.name, 0.1) if action_noise is None else float(action_noise)
    ps = None
    if quality != "random":
        ps = policies if isinstance(policies, PolicySet) else load_policy_set(policies or spec.name)
    out_path = Path(out_path)
    qcode = QUALITIES.index(quality)
    t0 = time.perf_counter()

    from tqdm.auto import tqdm

    total = budget if budget is not None else None
    bar = tqdm(
        total=total, unit="step", desc=f"{spec.name}-{quality}", disable=not progress, leave=False, mininterval=1.0
    )
    try:
        if quality == "random":
            parts = [(lambda k: _random_actor(spec.act_dim), budget, episodes, qcode)]
        elif quality == "medium":
            parts = [(lambda k: _linear_actor(ps.medium, noise), budget, episodes, qcode)]
        elif quality == "expert":
            parts = [(lambda k: _linear_actor(ps.expert, noise), budget, episodes, qcode)]
        elif quality == "medium-replay":
            parts = [(_replay_actors(ps, budget, episodes, seed), budget, episodes, qcode)]
        else:  # medium-expert: half and half, medium first as in D4RL's concatenation
            hb = None if budget is None else budget // 2
            he = None if episodes is None else max(1, episodes // 2)
            # each half is the start of the same-seed medium / expert dataset
            rest = None if budget is None else budget - hb
            parts = [
                (lambda k: _linear_actor(ps.medium, noise), hb, he, QUALITIES.index("medium")),
                (lambda k: _linear_actor(ps.expert, noise), rest, he, QUALITIES.index("expert")),
            ]
        chunks, returns, complete = [], [], []
        for actors, b, ep, stream in parts:
            rng = np.random.default_rng([seed, stream])
            arrays, rets, done = collect(spec.name, actors, b, ep, rng, bar)
            chunks.append(arrays)
            returns += rets
            complete += done
    finally:
        bar.close()
    data = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    seconds = time.perf_counter() - t0
    rets = np.asarray(returns)
    full = rets[np.asarray(complete)] if any(complete) else rets  # episodes not cut by the budget
    ref_min, ref_max = reference_scores(spec.d4rl_key)
    attrs = {
        "env": spec.name,
        "gym_id": spec.gym_id,
        "quality": quality,
        "seed": int(seed),
        "builder_version": BUILDER_VERSION,
        "action_noise": noise if quality in ("medium", "expert", "medium-expert") else 0.0,
        "transitions": int(len(data["rewards"])),
        "episodes": int(len(rets)),
        "complete_episodes": int(np.sum(complete)),
        "episode_return_mean": float(full.mean()),  # over complete episodes
        "episode_return_std": float(full.std()),
        "normalized_score_mean": float(100 * (full.mean() - ref_min) / (ref_max - ref_min)),
        "policy_returns": json.dumps({} if ps is None else {"expert": ps.expert_return, "medium": ps.medium_return}),
        "policy_file": "" if ps is None or ps.path is None else Path(ps.path).name,
        "policy_digest": "" if ps is None else file_digest(ps.path),
        "d4rl_key": spec.d4rl_key,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "build_seconds": float(seconds),
        "versions": json.dumps(_versions()),
    }
    write_d4rl(
        out_path,
        observations=data["observations"],
        actions=data["actions"],
        rewards=data["rewards"],
        terminals=data["terminals"],
        timeouts=data["timeouts"],
        next_observations=data["next_observations"],
        infos={"qpos": data["qpos"].astype(np.float64), "qvel": data["qvel"].astype(np.float64)},
        attrs=attrs,
    )
    return out_path


def _versions() -> dict:
    import gymnasium
    import mujoco

    return {"gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__, "numpy": np.__version__}
