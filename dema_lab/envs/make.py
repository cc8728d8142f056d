"""make_env: an env by short name or id, MuJoCo, Atari, MiniGrid or POPGym (the caller owns it and closes it)."""

from __future__ import annotations

import gymnasium as gym

from dema_lab.envs.atari import make_atari
from dema_lab.envs.minigrid_memory import make_minigrid
from dema_lab.envs.mujoco import make_mujoco
from dema_lab.envs.popgym_games import make_popgym
from dema_lab.envs.spec import EnvSpec, env_spec


def make_env(env: str | EnvSpec, render_size: int | None = None, seed: int | None = None) -> gym.Env:
    """Create a Gymnasium env (a MuJoCo task, an Atari game, a MiniGrid or POPGym memory task) by short
    name or id. A partially observed task (``hopper-pomdp``) masks its observations here.

    render_size: if given, ``render()`` returns uint8 (render_size, render_size, 3)
        rgb frames, rendered headless with shadows/reflections/skybox off.
    seed: if given, the env is reset once with it (and its action space seeded),
        so the next ``reset()`` without a seed continues that stream.

    The caller owns the env and must ``close()`` it.
    """
    spec = env_spec(env)
    if render_size is not None and int(render_size) <= 0:
        raise ValueError(f"render_size must be a positive int, got {render_size!r}")
    make = {"atari": make_atari, "minigrid": make_minigrid, "popgym": make_popgym}.get(spec.kind, make_mujoco)
    e = make(spec, render_size)
    if seed is not None:
        e.reset(seed=int(seed))
        e.action_space.seed(int(seed))
    return e
