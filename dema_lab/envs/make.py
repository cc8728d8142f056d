"""make_env: an env by short name or id, MuJoCo or Atari (the caller owns it and closes it)."""

from __future__ import annotations

import gymnasium as gym

from dema_lab.envs.atari import make_atari
from dema_lab.envs.mujoco import make_mujoco
from dema_lab.envs.spec import EnvSpec, env_spec


def make_env(env: str | EnvSpec, render_size: int | None = None, seed: int | None = None) -> gym.Env:
    """Create a Gymnasium env (a MuJoCo task or an Atari game) by short name or id.

    render_size: if given, ``render()`` returns uint8 (render_size, render_size, 3)
        rgb frames, rendered headless with shadows/reflections/skybox off.
    seed: if given, the env is reset once with it (and its action space seeded),
        so the next ``reset()`` without a seed continues that stream.

    The caller owns the env and must ``close()`` it.
    """
    spec = env_spec(env)
    if spec.kind == "atari":
        return make_atari(spec, render_size, seed)
    return make_mujoco(spec, render_size, seed)
