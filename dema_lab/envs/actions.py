"""Discrete actions as the models give them: one index, an int or a policy's (1,) float array."""

from __future__ import annotations

import numpy as np


def action_index(env, action) -> int:
    """The index in ``action`` (an int, or an array holding one whole number) for `env`, whose action
    space is Discrete(n); ValueError naming the env and the valid range otherwise."""
    n = env.action_space.n
    a = np.asarray(action).reshape(-1)
    if a.size != 1 or not np.isfinite(a[0]) or a[0] != round(float(a[0])) or not 0 <= a[0] < n:
        name = env.spec.id if env.spec else type(env.unwrapped).__name__
        raise ValueError(f"{name} takes one action index in 0..{n - 1}, got {action!r}")
    return int(round(float(a[0])))
