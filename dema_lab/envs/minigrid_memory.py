"""MiniGrid's Memory task as dema-lab acts in it: the symbolic egocentric view flattened to a vector,
the three actions the task needs, success as the reward, and the grid as the rendered frame.

MemoryEnv (minigrid.envs.memory): the agent starts on the middle row of a small room facing east;
the cue (a key or a ball) lies at (1, height // 2 - 1); a corridor leads east to a junction with
a key and a ball above and below it. Stepping next to the object that matches the cue succeeds,
next to the other one fails; either ends the episode.
"""

from __future__ import annotations

import os
import re

import gymnasium as gym
import numpy as np

from dema_lab.envs.actions import action_index
from dema_lab.envs.frames import resize_frame
from dema_lab.envs.spec import MINIGRID_VIEW, EnvSpec

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # minigrid imports pygame; no banner on stdout


def cue_position(u) -> tuple[int, int]:
    """Where the cue lies in an unwrapped MemoryEnv `u`: (x, y)."""
    return 1, u.height // 2 - 1


class MemoryView(gym.Wrapper):
    """MemoryEnv with vector states and index actions.

    observation: the 7x7x3 (object, colour, state) view, flattened to (147,) float32
    action:      0 left, 1 right, 2 forward (MiniGrid's own indices; an int or a (1,) array)
    reward:      1 when the episode succeeds (MiniGrid's 1 - 0.9 t / T > 0), else 0, so that an
                 episode's return is its success and the normalized score the success rate in %
    info:        "cue_visible": whether the cue is in the agent's (unoccluded) view now
    render():    the whole grid, the agent's view highlighted, (size, size, 3) uint8
    """

    def __init__(self, env: gym.Env, n_actions: int, size: int | None):
        super().__init__(env)
        n = int(np.prod(MINIGRID_VIEW))
        self.observation_space = gym.spaces.Box(0.0, 255.0, (n,), np.float32)
        self.action_space = gym.spaces.Discrete(n_actions)
        self.size = size

    def _view(self, obs) -> np.ndarray:
        return np.asarray(obs["image"], np.float32).reshape(-1)  # (147,)

    def cue_visible(self) -> bool:
        u = self.env.unwrapped
        return bool(u.agent_sees(*cue_position(u)))

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._view(obs), {**info, "cue_visible": self.cue_visible()}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action_index(self, action))
        success = 1.0 if reward > 0 else 0.0
        return self._view(obs), success, terminated, truncated, {**info, "cue_visible": self.cue_visible()}

    def render(self):
        return resize_frame(self.env.render(), self.size)  # from (32 * width, 32 * height, 3)


def make_minigrid(spec: EnvSpec, render_size: int | None) -> gym.Env:
    """A MiniGrid Memory env for `spec` (see dema_lab.envs.make_env)."""
    try:
        import minigrid
    except ImportError as err:
        raise ImportError(
            f"MiniGrid envs need the memory extra ({err.name} is missing): pip install -c constraints.txt -e '.[memory]'"
        ) from None
    gym.register_envs(minigrid)
    fixed = re.fullmatch(r"MiniGrid-MemoryS(\d+)-v0", spec.gym_id)
    if spec.gym_id not in gym.registry and fixed:  # a size MiniGrid does not register (S31)
        gym.register(spec.gym_id, entry_point="minigrid.envs:MemoryEnv", kwargs={"size": int(fixed.group(1))})
    kwargs = {"render_mode": "rgb_array"} if render_size is not None else {}
    e = gym.make(spec.gym_id, max_episode_steps=spec.max_episode_steps, **kwargs)
    e = MemoryView(e, spec.n_actions, None if render_size is None else int(render_size))
    return e
