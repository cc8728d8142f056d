"""Augmented Random Search (ARS V2-t) for the embedded behaviour policies.

Mania, Guy & Recht (2018), "Simple random search provides a competitive
approach to reinforcement learning". A linear policy ``a = W (s - mu) / sigma``
is improved by finite differences along random directions:

    for each iteration:
        draw N directions delta_k ~ N(0, I)          # (N, act, obs)
        r+_k, r-_k = returns of W + nu delta_k, W - nu delta_k
        keep the b directions with the largest max(r+_k, r-_k)   ("-t")
        W += alpha / (b sigma_R) * sum_k (r+_k - r-_k) delta_k
        update the running mean/std (mu, sigma) with every state seen  ("V2")

As in the paper, the per-step survival bonus of Hopper and Walker2d is
subtracted from the training reward (not from the reported returns).

Training is one-off: it produces ``dema_lab/data/generate/policies/<env>.npz`` (expert,
medium at about a third of the expert's return, and the snapshots along the
way for ``medium-replay``). Users get the shipped weights; this module is the
command that retrains them (``dema-lab data train-policies ENV``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from dema_lab.data.generate.policy import LinearPolicy, PolicySet, policy_path, save_policy_set
from dema_lab.envs.make import make_env
from dema_lab.envs.spec import env_spec

__all__ = ["ARSConfig", "DEFAULT_CONFIGS", "train_ars", "evaluate", "rollout"]


@dataclass(frozen=True)
class ARSConfig:
    """Hyper-parameters (names follow the paper)."""

    n_directions: int = 8  # N
    top_directions: int = 4  # b
    step_size: float = 0.01  # alpha
    noise: float = 0.025  # nu
    horizon: int = 1000
    eval_every: int = 5  # iterations between evaluations of the current policy
    eval_episodes: int = 3
    final_eval_episodes: int = 10  # re-evaluation of the expert/medium candidates
    expert_candidates: int = 8  # best training evaluations re-evaluated to choose the expert
    select_noise: float | None = None  # action noise when choosing the expert; None = the builder's
    shift: float | None = None  # survival bonus to subtract; None = the env's healthy reward
    max_replay_snapshots: int = 200


# Settings from the paper's table of V2-t hyper-parameters for the v1 tasks.
DEFAULT_CONFIGS: dict[str, ARSConfig] = {
    "hopper": ARSConfig(n_directions=8, top_directions=4, step_size=0.01, noise=0.025),
    "halfcheetah": ARSConfig(n_directions=32, top_directions=4, step_size=0.02, noise=0.03, eval_every=2),
    "walker2d": ARSConfig(n_directions=40, top_directions=30, step_size=0.03, noise=0.025, eval_every=2),
}


class RunningStat:
    """Running mean/std of observations from batched sums (exact, float64)."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = np.zeros(dim)
        self.sumsq = np.zeros(dim)

    def push(self, x: np.ndarray) -> None:
        """x: (T, dim) states."""
        self.n += len(x)
        self.sum += x.sum(0)
        self.sumsq += np.square(x).sum(0)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            return np.zeros_like(self.sum), np.ones_like(self.sum)
        mean = self.sum / self.n
        var = np.maximum(self.sumsq / self.n - mean**2, 0.0)
        std = np.sqrt(var)
        std[std < 1e-3] = 1.0  # a constant feature: leave it unscaled
        return mean, std


def rollout(
    env,
    W: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    seed: int,
    horizon: int = 1000,
    shift: float = 0.0,
    keep_states: bool = False,
    action_noise: float = 0.0,
    rng: np.random.Generator | None = None,
):
    """One episode of a linear policy on a raw (unwrapped) MuJoCo env.

    action_noise: std of Gaussian noise added to each action before clipping
    (as the dataset builder does), drawn from ``rng``.
    Returns (return, shifted_return, length, states (T, obs) or None).
    """
    u = env.unwrapped
    inv_std = 1.0 / std
    obs, _ = u.reset(seed=int(seed))
    states = np.empty((horizon, len(obs))) if keep_states else None
    total = 0.0
    t = 0
    while t < horizon:
        if keep_states:
            states[t] = obs
        a = W @ ((obs - mean) * inv_std)
        if action_noise > 0:
            a += action_noise * rng.standard_normal(a.shape)
        np.clip(a, -1.0, 1.0, out=a)
        obs, r, terminated, _, _ = u.step(a)
        total += r
        t += 1
        if terminated:
            break
    return total, total - shift * t, t, (states[:t] if keep_states else None)


def evaluate(env, policy: LinearPolicy, seeds, horizon: int = 1000, action_noise: float = 0.0) -> np.ndarray:
    """Returns (len(seeds),) of episodes; deterministic unless ``action_noise`` > 0
    (then the noise stream is seeded from ``seeds`` too, so every policy meets the same noise)."""
    rng = np.random.default_rng([int(s) for s in seeds])
    return np.array(
        [
            rollout(env, policy.W, policy.mean, policy.std, s, horizon, action_noise=action_noise, rng=rng)[0]
            for s in seeds
        ]
    )


@dataclass
class _Snapshot:
    iteration: int
    env_steps: int
    seconds: float
    policy: LinearPolicy
    eval_return: float
    train_mean_len: float


def train_ars(
    env: str,
    minutes: float = 5.0,
    seed: int = 0,
    config: ARSConfig | None = None,
    out: str | Path | None = None,
    target_return: float | None = None,
    log: Callable[[str], None] | None = print,
    max_iterations: int | None = None,
) -> PolicySet:
    """Train linear policies for ``env`` for ``minutes`` of wall time.

    Keeps an evaluated snapshot every ``eval_every`` iterations; at the end
    the best candidates are re-evaluated on ``final_eval_episodes`` fresh
    episodes to choose the expert, and the snapshot closest to a third of the
    expert's return becomes the medium policy. Stops early if the evaluated
    return reaches ``target_return``, or after ``max_iterations`` (with a
    seed, an iteration budget gives the same run on any machine; a time
    budget depends on the machine's load). Writes the ``.npz`` to ``out``
    (default: the package's shipped file) and returns the :class:`PolicySet`.
    """
    spec = env_spec(env)
    cfg = config or DEFAULT_CONFIGS.get(spec.name, ARSConfig())
    shift = spec.healthy_reward if cfg.shift is None else cfg.shift
    rng = np.random.default_rng(seed)
    seeds = np.random.default_rng([seed, 1])  # env reset seeds, independent of directions
    e = make_env(spec.name)
    N, b, nu, alpha = cfg.n_directions, min(cfg.top_directions, cfg.n_directions), cfg.noise, cfg.step_size
    W = np.zeros((spec.act_dim, spec.obs_dim))
    stat = RunningStat(spec.obs_dim)
    mean, std = stat.mean_std()
    snaps: list[_Snapshot] = []  # evaluated snapshots
    history: list[tuple[int, LinearPolicy, float]] = []  # (iteration, policy, training episode length), every iteration
    t0 = time.perf_counter()
    steps = 0
    it = 0

    def new_seeds(n):
        return seeds.integers(0, 2**31 - 1, size=n)

    def snapshot(train_len: float) -> _Snapshot:
        pol = LinearPolicy(W.copy(), mean.copy(), std.copy())
        ret = float(evaluate(e, pol, new_seeds(cfg.eval_episodes), cfg.horizon).mean())
        s = _Snapshot(it, steps, time.perf_counter() - t0, pol, ret, train_len)
        snaps.append(s)
        return s

    try:
        s = snapshot(0.0)
        while time.perf_counter() - t0 < minutes * 60 and (max_iterations is None or it < max_iterations):
            it += 1
            W_before = W.copy()  # the policy these rollouts perturbed
            deltas = rng.standard_normal((N, spec.act_dim, spec.obs_dim))  # (N, act, obs)
            r_plus = np.empty(N)
            r_minus = np.empty(N)
            ep_seeds = new_seeds(N)
            lens = []
            for k in range(N):
                # antithetic pair shares the start state
                for sign, store in ((1.0, r_plus), (-1.0, r_minus)):
                    _, rs, n, states = rollout(
                        e, W + sign * nu * deltas[k], mean, std, ep_seeds[k], cfg.horizon, shift, True
                    )
                    store[k] = rs
                    stat.push(states)
                    steps += n
                    lens.append(n)
            order = np.argsort(-np.maximum(r_plus, r_minus))[:b]
            sigma_r = np.concatenate([r_plus[order], r_minus[order]]).std()
            if sigma_r > 1e-8:
                W += alpha / (b * sigma_r) * np.einsum("k,kij->ij", r_plus[order] - r_minus[order], deltas[order])
            history.append((it - 1, LinearPolicy(W_before, mean.copy(), std.copy()), float(np.mean(lens))))
            mean, std = stat.mean_std()
            if it % cfg.eval_every == 0:
                s = snapshot(float(np.mean(lens)))
                if log:
                    best = max(x.eval_return for x in snaps)
                    log(
                        f"[ars {spec.name}] it {it:5d}  steps {steps / 1e6:6.2f}M  "
                        f"{s.seconds:6.0f}s  eval {s.eval_return:8.1f}  best {best:8.1f}  "
                        f"train-len {s.train_mean_len:6.1f}"
                    )
                if target_return is not None and s.eval_return >= target_return:
                    break
        ps = _select(e, snaps, history, cfg, spec.name, log)
    finally:
        e.close()
    ps.meta.update(
        train_seconds=time.perf_counter() - t0,
        train_env_steps=steps,
        iterations=it,
        seed=seed,
        config=asdict(replace(cfg, shift=shift)),
        algorithm="ARS V2-t (Mania, Guy & Recht 2018)",
        gym_id=spec.gym_id,
        versions=_versions(),
    )
    path = Path(out) if out is not None else policy_path(spec.name)
    save_policy_set(ps, path)
    ps.path = path
    if log:
        log(
            f"[ars {spec.name}] wrote {path}: expert {ps.expert_return:.1f}, medium {ps.medium_return:.1f}, "
            f"{len(ps.replay)} replay snapshots, {ps.meta['train_seconds']:.0f}s, {steps / 1e6:.2f}M steps"
        )
    return ps


def _select(e, snaps: list[_Snapshot], history, cfg: ARSConfig, name: str, log) -> PolicySet:
    """Choose expert and medium snapshots by re-evaluating the candidates.

    The replay snapshots are the policies each training iteration perturbed,
    from the first up to the medium policy, with their mean rollout length.
    """
    from dema_lab.data.generate.builder import ACTION_NOISE

    noise = ACTION_NOISE.get(name, 0.1) if cfg.select_noise is None else cfg.select_noise
    eval_seeds = np.arange(10_000, 10_000 + cfg.final_eval_episodes)  # same episodes for every candidate
    by_return = sorted(snaps, key=lambda s: -s.eval_return)
    # the expert must stay good under the action noise the datasets are collected with
    # (a HalfCheetah policy can be fast yet flip over when perturbed)
    noisy = [
        (evaluate(e, s.policy, eval_seeds, cfg.horizon, noise).mean(), s) for s in by_return[: cfg.expert_candidates]
    ]
    expert_return_noisy, expert = max(noisy, key=lambda x: x[0])
    expert_return = float(evaluate(e, expert.policy, eval_seeds, cfg.horizon).mean())
    target = expert_return / 3.0
    # medium: among snapshots before the expert, those nearest to a third of its return
    before = [s for s in snaps if s.iteration <= expert.iteration] or snaps
    near = sorted(before, key=lambda s: abs(s.eval_return - target))[:5]
    medium_scores = [(evaluate(e, s.policy, eval_seeds, cfg.horizon).mean(), s) for s in near]
    medium_return, medium = min(medium_scores, key=lambda x: abs(x[0] - target))
    medium_return_noisy = float(evaluate(e, medium.policy, eval_seeds, cfg.horizon, noise).mean())
    replay = [h for h in history if h[0] < medium.iteration] or history[:1]
    if len(replay) > cfg.max_replay_snapshots:
        keep = np.unique(np.linspace(0, len(replay) - 1, cfg.max_replay_snapshots).round().astype(int))
        replay = [replay[i] for i in keep]
    lens = np.maximum(np.array([h[2] for h in replay], dtype=np.float64), 1.0)
    if log:
        log(
            f"[ars {name}] expert it {expert.iteration} -> {expert_return:.1f} ({expert_return_noisy:.1f} with "
            f"action noise {noise}); medium it {medium.iteration} -> {medium_return:.1f} (target {target:.1f}; "
            f"{medium_return_noisy:.1f} with noise)"
        )
    return PolicySet(
        env=name,
        expert=expert.policy,
        medium=medium.policy,
        expert_return=float(expert_return),
        medium_return=float(medium_return),
        replay=[h[1] for h in replay],
        replay_mean_len=lens,
        noise=cfg.noise,
        meta={
            "selection": "expert = best mean return under action noise among the top training evaluations",
            "select_noise": noise,
            "expert_return_noisy": float(expert_return_noisy),
            "medium_return_noisy": medium_return_noisy,
            "expert_iteration": expert.iteration,
            "medium_iteration": medium.iteration,
            "iteration": np.array([s.iteration for s in snaps], dtype=np.int64),
            "env_steps": np.array([s.env_steps for s in snaps], dtype=np.int64),
            "seconds": np.array([s.seconds for s in snaps]),
            "eval_return": np.array([s.eval_return for s in snaps]),
        },
    )


def _versions() -> dict:
    import gymnasium
    import mujoco

    return {"numpy": np.__version__, "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__}
