"""The embedded memory-task datasets: scripted behaviour policies (generate/memory_policies.py) mixed
with epsilon-random actions, rolled out in dema-lab's own envs (vector states, index actions).

    minigrid-memory-s7, -s11, -s13, -s17, -s31   MiniGrid Memory (S17: random corridor length;
                                                 S31: dema-lab's, a corridor beyond 20 steps)
    popgym-repeatprevious-easy, -medium    POPGym RepeatPrevious (lag 3 and 31)

One quality each, "mixed": episode k follows the k-th entry of the env kind's MIXES, in turn:

    minigrid  (epsilon, guess): (0, no), (0.1, no), (0.3, no), (0, yes); guess: the policy looks at
              the cue, then walks to an object drawn at random (it forgets)
    popgym    epsilon 0, 0.1, 0.3, 0.6

epsilon is the probability of a uniformly random action at each step. The file is the D4RL layout
(dema_lab.data.sources.d4rl): observations (N, obs_dim) float32, actions (N, 1) the index, attrs
``n_actions``, ``dataset_name`` and the returns; MiniGrid's also ``infos/cue_visible`` (N,) bool,
whether the cue was in view at each step, and the success rate. The same seed gives the same
arrays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dema_lab.data.generate.episodes import collect_episodes, end_flags, return_attrs, step_budget
from dema_lab.data.generate.memory_policies import MemoryExpert, RepeatPreviousExpert
from dema_lab.data.sources.d4rl import write_d4rl
from dema_lab.data.trajectory import DatasetError
from dema_lab.envs.spec import POPGYM_LAGS, env_spec

__all__ = [
    "SCRIPTED_BUILDER_VERSION",
    "SCRIPTED_QUALITIES",
    "SCRIPTED_DEFAULT_TRANSITIONS",
    "MIXES",
    "scripted_policy",
    "run_episode",
    "build_scripted_dataset",
]

SCRIPTED_BUILDER_VERSION = 1
SCRIPTED_QUALITIES = ("mixed",)
SCRIPTED_DEFAULT_TRANSITIONS = 20_000
# per kind, the (epsilon, guess) of episode k, k % len in turn
MIXES = {
    "minigrid": ((0.0, False), (0.1, False), (0.3, False), (0.0, True)),
    "popgym": ((0.0, False), (0.1, False), (0.3, False), (0.6, False)),
}


def scripted_policy(env: str, guess: bool = False):
    """The scripted behaviour policy of a memory task (a fresh one: it keeps per-episode state)."""
    spec = env_spec(env)
    if spec.kind == "minigrid":
        return MemoryExpert(guess=guess)
    if spec.name in POPGYM_LAGS:
        return RepeatPreviousExpert(POPGYM_LAGS[spec.name])
    raise DatasetError(f"no scripted behaviour policy for {spec.name}")


def run_episode(env, policy, epsilon: float, rng: np.random.Generator, max_steps: int) -> dict:
    """One episode of `policy` with epsilon-random actions in a dema-lab env (vector states, index
    actions). Returns (T, ...) arrays observations, actions, rewards, cue_visible (False where
    the env does not say), and terminated, the env's flag at the last step."""
    obs, info = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
    policy.reset(env, obs, info, rng)
    n = env.action_space.n
    rows: dict[str, list] = {"observations": [], "actions": [], "rewards": [], "cue_visible": []}
    terminated = False
    for _ in range(max_steps):
        greedy = policy.act(env, obs, info)
        a = int(rng.integers(n)) if rng.random() < epsilon else greedy
        rows["observations"].append(obs)
        rows["actions"].append(a)
        rows["cue_visible"].append(bool(info.get("cue_visible", False)))
        obs, r, terminated, truncated, info = env.step(a)
        rows["rewards"].append(float(r))
        if terminated or truncated:
            break
    return {
        "observations": np.asarray(rows["observations"], np.float32),
        "actions": np.asarray(rows["actions"], np.int64),
        "rewards": np.asarray(rows["rewards"], np.float32),
        "cue_visible": np.asarray(rows["cue_visible"], bool),
        "terminated": bool(terminated),
    }


def _cue_lags(parts) -> list[int]:
    """Per episode that saw the cue, the steps from the last step it was in view to the last step."""
    return [len(p["rewards"]) - 1 - int(np.flatnonzero(p["cue_visible"])[-1]) for p in parts if p["cue_visible"].any()]


def build_scripted_dataset(
    env: str,
    quality: str,
    out_path,
    seed: int = 0,
    transitions: int | None = None,
    episodes: int | None = None,
    progress: bool = True,
) -> Path:
    """Collect a memory-task dataset and write it (see the module docstring). transitions: total
    steps (default 20k; the last episode is cut and marked as a timeout); episodes: a number of
    whole episodes instead."""
    spec = env_spec(env)
    if quality not in SCRIPTED_QUALITIES:
        raise DatasetError(
            f"unknown quality {quality!r} for {spec.name}; choose one of {', '.join(SCRIPTED_QUALITIES)}"
        )
    budget = step_budget(transitions, episodes, SCRIPTED_DEFAULT_TRANSITIONS)
    mix = MIXES[spec.kind]
    rng = np.random.default_rng([seed, 13])
    t0 = time.perf_counter()

    def run(e, k, steps):
        eps, guess = mix[k % len(mix)]
        episode = run_episode(e, scripted_policy(spec.name, guess), eps, rng, steps)
        return episode, len(episode["rewards"]), episode["terminated"]

    parts, complete = collect_episodes(
        spec.name, f"{spec.name}-{quality}", budget, episodes, spec.max_episode_steps, run, progress
    )
    keys = ("observations", "actions", "rewards", "cue_visible")
    data = {key: np.concatenate([p[key] for p in parts]) for key in keys}
    terminals, timeouts = end_flags([len(p["rewards"]) for p in parts], [p["terminated"] for p in parts])
    rets = np.asarray([float(p["rewards"].sum()) for p in parts])
    attrs = {
        "env": spec.name,
        "dataset_name": spec.name,
        "gym_id": spec.gym_id,
        "quality": quality,
        "seed": int(seed),
        "builder_version": SCRIPTED_BUILDER_VERSION,
        "policy_digest": "",
        "n_actions": spec.n_actions,
        "mix": json.dumps([list(m) for m in mix]),
        "episode_mix": json.dumps([list(mix[k % len(mix)]) for k in range(len(parts))]),
        "transitions": int(len(data["rewards"])),
        **return_attrs(rets, complete, spec.d4rl_key),
        "build_seconds": float(time.perf_counter() - t0),
        "versions": json.dumps(_versions(spec.kind)),
    }
    infos = {}
    if spec.kind == "minigrid":
        lags = _cue_lags(parts)
        attrs.update(
            success_rate=attrs["episode_return_mean"],  # the return is the success
            cue_seen_rate=float(np.mean([p["cue_visible"].any() for p in parts])),
            cue_lag_mean=float(np.mean(lags)) if lags else -1.0,
            cue_lag_max=int(np.max(lags)) if lags else -1,
        )
        infos["cue_visible"] = data["cue_visible"]
    else:
        attrs["lag"] = POPGYM_LAGS[spec.name]
    write_d4rl(
        out_path,
        observations=data["observations"],
        actions=data["actions"][:, None].astype(np.float32),
        rewards=data["rewards"],
        terminals=terminals,
        timeouts=timeouts,
        infos=infos,
        attrs=attrs,
        compression="gzip",
    )
    return Path(out_path)


def _versions(kind: str) -> dict:
    from importlib.metadata import version

    import gymnasium

    package = "minigrid" if kind == "minigrid" else "popgym"
    return {"gymnasium": gymnasium.__version__, package: version(package), "numpy": np.__version__}
