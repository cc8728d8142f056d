"""D4RL normalized scores (and Atari's gamer-normalized ones: the same formula, human for expert).

    normalized = 100 * (return - random) / (expert - random)

on D4RL's 0-100 scale (0 = a random policy, 100 = D4RL's expert). The
reference returns are D4RL's published table (``d4rl/infos.py``), keyed here
by task family: every D4RL dataset of a family (``hopper-medium-v2``,
``hopper-expert-v0``...) shares one pair. A dataset may override them with
its own ``ref_min_score``/``ref_max_score`` attrs (see
:meth:`dema_lab.data.TrajectoryDataset.normalized_score`).
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["REF_SCORES", "reference_scores", "normalized_score", "score_key"]

# family -> (random return, expert return), from D4RL's infos.py
REF_SCORES: dict[str, tuple[float, float]] = {
    # Gym-MuJoCo (v0, v1, v2 datasets)
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    # Maze2D (sparse and dense)
    "maze2d-open": (0.01, 20.66),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
    "maze2d-open-dense": (11.17817, 27.166538620695782),
    "maze2d-umaze-dense": (68.537689, 193.66285642381482),
    "maze2d-medium-dense": (44.264742, 297.4552547777125),
    "maze2d-large-dense": (30.569041, 303.4857382709002),
    # AntMaze, Kitchen, MiniGrid
    "antmaze": (0.0, 1.0),
    "kitchen": (0.0, 4.0),
    "minigrid-fourrooms": (0.01442, 2.89685),
    # Adroit
    "pen": (96.262799, 3076.8331017826877),
    "hammer": (-274.856578, 12794.134825156867),
    "relocate": (-6.425911, 4233.877797728884),
    "door": (-56.512833, 2880.5693087298737),
    # Flow, CARLA
    "flow-ring": (-165.22, 24.42),
    "flow-merge": (118.67993, 330.03179),
    "carla-lane": (-0.8503839912088142, 1023.5784385429523),
    "carla-town": (-114.81579500772153, 2440.1772022247314),
    # PyBullet
    "bullet-halfcheetah": (-1275.766996, 2381.6725),
    "bullet-hopper": (20.058972, 1441.8059623430963),
    "bullet-ant": (373.705955, 2650.495),
    "bullet-walker2d": (16.523877, 1623.6476303317536),
    "bullet-maze2d-open": (8.75, 64.15),
    "bullet-maze2d-umaze": (32.46, 153.99),
    "bullet-maze2d-medium": (14.87, 238.05),
    "bullet-maze2d-large": (1.82, 285.92),
    # Memory tasks (dema-lab's envs): MiniGrid Memory's return is its success (0 or 1), so the score
    # is the success rate in %; POPGym RepeatPrevious's (uniformly random suits, the optimum)
    "minigrid-memory": (0.0, 1.0),
    "popgym-repeatprevious-easy": (-0.5, 1.0),
    "popgym-repeatprevious-medium": (-0.5, 1.0),
    # Atari: gamer-normalized, (random, human) scores of the DQN/DT papers; the same formula
    # 100 * (score - random) / (human - random) on the same 0-100 scale
    "breakout": (1.7, 30.5),
    "pong": (-20.7, 14.6),
    "qbert": (163.9, 13455.0),
    "seaquest": (68.4, 42054.7),
}


def score_key(env_or_key: str) -> str:
    """Map a short env name, Gymnasium id or D4RL dataset id to its family key.

    ``Hopper-v5`` -> ``hopper``; ``hopper-medium-replay-v2`` -> ``hopper``;
    ``maze2d-umaze-dense-v1`` -> ``maze2d-umaze-dense``;
    ``antmaze-large-play-v2`` -> ``antmaze``. Raises KeyError if none matches.
    """
    name = str(env_or_key).strip().lower().replace("_", "-")
    name = re.sub(r"-v\d+$", "", name)
    name = name.removeprefix("ale/")  # "ALE/Breakout-v5" -> "breakout"
    name = {"half-cheetah": "halfcheetah", "cheetah": "halfcheetah", "walker": "walker2d"}.get(name, name)
    parts = name.split("-")
    for n in range(len(parts), 0, -1):  # longest known prefix wins
        key = "-".join(parts[:n])
        if key in REF_SCORES:
            return key
    raise KeyError(
        f"no D4RL reference scores for {env_or_key!r}; known families: {', '.join(REF_SCORES)} "
        "(pass ref_min/ref_max to normalized_score to use your own)"
    )


def reference_scores(env_or_key: str) -> tuple[float, float]:
    """(random, expert) reference returns for an env or D4RL dataset id."""
    return REF_SCORES[score_key(env_or_key)]


def normalized_score(env_or_key: str | None, returns, ref_min: float | None = None, ref_max: float | None = None):
    """D4RL normalized score(s), 0-100 scale, of raw episode return(s).

    ``returns`` may be a float or an array; the result has the same shape.
    ``ref_min``/``ref_max`` override the table (e.g. a dataset's own
    references); ``env_or_key`` may then be None.
    """
    if ref_min is None or ref_max is None:
        lo, hi = reference_scores(env_or_key)
        ref_min = lo if ref_min is None else ref_min
        ref_max = hi if ref_max is None else ref_max
    if ref_max == ref_min:
        raise ValueError(f"reference scores must differ, got min = max = {ref_min}")
    r = np.asarray(returns, dtype=np.float64)
    out = 100.0 * (r - ref_min) / (ref_max - ref_min)
    return float(out) if out.ndim == 0 else out
