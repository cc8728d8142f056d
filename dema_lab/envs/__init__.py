"""Environments: the spec of every env dema-lab knows (MuJoCo, Atari) and how to make one.

May import common only.
"""

from dema_lab.envs.spec import (
    ATARI_FRAME_SIZE,
    ATARI_FRAME_SKIP,
    ATARI_FRAME_STACK,
    ATARI_MAX_FRAMES,
    EnvSpec,
    env_spec,
    known_envs,
    make_env,
)

__all__ = [
    "ATARI_FRAME_SIZE",
    "ATARI_FRAME_SKIP",
    "ATARI_FRAME_STACK",
    "ATARI_MAX_FRAMES",
    "EnvSpec",
    "env_spec",
    "known_envs",
    "make_env",
]
