"""Environments: the spec of every env dema-lab knows (spec), MuJoCo tasks rendered headless
(mujoco; the "-pomdp" tasks see positions only), Atari games with the DQN preprocessing (atari), the
memory tasks MiniGrid Memory (minigrid_memory) and POPGym (popgym_games) with vector states and
index actions, and make_env (make).

Rendering is headless: ``MUJOCO_GL`` is set to ``egl`` here, before MuJoCo is imported, unless the
user chose a backend already. May import common only.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from dema_lab.envs.make import make_env  # noqa: E402
from dema_lab.envs.spec import (  # noqa: E402
    ATARI_FRAME_SIZE,
    ATARI_FRAME_SKIP,
    ATARI_FRAME_STACK,
    ATARI_MAX_FRAMES,
    ENV_SPECS,
    EnvSpec,
    env_spec,
    known_envs,
)

__all__ = [
    "ATARI_FRAME_SIZE",
    "ATARI_FRAME_SKIP",
    "ATARI_FRAME_STACK",
    "ATARI_MAX_FRAMES",
    "ENV_SPECS",
    "EnvSpec",
    "env_spec",
    "known_envs",
    "make_env",
]
