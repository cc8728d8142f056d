"""Rolling a behaviour policy out into a dataset's episodes: the step budget, the progress bar, which
episodes are complete and the end flags (the Atari and the memory-task builders share them)."""

from __future__ import annotations

import numpy as np

from dema_lab.data.trajectory import DatasetError
from dema_lab.envs.make import make_env

__all__ = ["step_budget", "collect_episodes", "end_flags", "return_attrs"]


def step_budget(transitions: int | None, episodes: int | None, default: int) -> int | None:
    """The transitions a build collects: `transitions` (or `default`), or None when it asks for a
    number of whole `episodes`; DatasetError for a count that is not positive."""
    if episodes is not None and episodes <= 0:
        raise DatasetError(f"episodes must be positive, got {episodes}")
    budget = None if episodes is not None else int(transitions or default)
    if budget is not None and budget <= 0:
        raise DatasetError(f"transitions must be positive, got {budget}")
    return budget


def collect_episodes(env: str, desc: str, budget: int | None, episodes: int | None, max_steps: int, run, progress):
    """Episodes from `run(e, k, steps) -> (episode, T, terminated)`, the k-th one in the env `e` (made
    here, closed after) of at most `steps` steps, until `budget` transitions (the last episode is
    cut to fit) or `episodes` episodes. Returns (the episodes, whether each is complete: ended by
    the env, not by the budget)."""
    from tqdm.auto import tqdm

    e = make_env(env)
    bar = tqdm(total=budget, unit="step", desc=desc, disable=not progress, leave=False, mininterval=1.0)
    out, complete, n, k = [], [], 0, 0
    try:
        while (budget is None or n < budget) and (episodes is None or k < episodes):
            steps = max_steps if budget is None else min(max_steps, budget - n)
            episode, T, terminated = run(e, k, steps)
            out.append(episode)
            complete.append(terminated or T < steps or steps >= max_steps)
            n += T
            k += 1
            bar.update(T)
    finally:
        bar.close()
        e.close()
    return out, complete


def end_flags(lengths, terminated) -> tuple[np.ndarray, np.ndarray]:
    """D4RL's (terminals, timeouts), (N,) bool each, for episodes of these lengths: each episode's
    last step is a terminal if the env terminated it, else a timeout (a time limit or the budget)."""
    last = np.zeros(int(np.sum(lengths)), bool)
    last[np.cumsum(lengths) - 1] = True
    ended = np.repeat(np.asarray(terminated, bool), lengths)
    return last & ended, last & ~ended


def return_attrs(returns, complete, d4rl_key: str) -> dict:
    """A built file's return attrs: episode counts, the mean and std return over the complete
    episodes (all, if none is) and its normalized score, and the reference scores used."""
    from dema_lab.data.scores import reference_scores

    rets = np.asarray(returns, np.float64)
    full = rets[np.asarray(complete, bool)] if any(complete) else rets
    ref_min, ref_max = reference_scores(d4rl_key)
    return {
        "episodes": int(len(rets)),
        "complete_episodes": int(np.sum(complete)),
        "episode_return_mean": float(full.mean()),
        "episode_return_std": float(full.std()),
        "normalized_score_mean": float(100 * (full.mean() - ref_min) / (ref_max - ref_min)),
        "d4rl_key": d4rl_key,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
    }
