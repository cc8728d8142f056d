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
    if spec.kind == "atari":
        return make_atari(spec, render_size, seed)
    if spec.kind == "minigrid":
        return make_minigrid(spec, render_size, seed)
    if spec.kind == "popgym":
        return make_popgym(spec, render_size, seed)
    return make_mujoco(spec, render_size, seed)
