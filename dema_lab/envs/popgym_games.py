"""POPGym's memory games as dema-lab acts in them: one-hot vector states, index actions, and a small
picture of the observation as the rendered frame (the games draw nothing themselves)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dema_lab.envs.actions import action_index
from dema_lab.envs.spec import EnvSpec


class OneHotGame(gym.Wrapper):
    """A POPGym game with a Discrete(n) observation and action space.

    observation: the observed index one-hot, (n,) float32 (RepeatPrevious: the dealt card's suit)
    action:      an index (an int or a (1,) array)
    render():    (size, size, 3) uint8, the observation as n columns, the observed one lit
    """

    def __init__(self, env: gym.Env, size: int | None):
        super().__init__(env)
        self.n = int(env.observation_space.n)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.n,), np.float32)
        self.action_space = gym.spaces.Discrete(int(env.action_space.n))
        self.size = size
        self._last = np.zeros(self.n, np.float32)

    def _one_hot(self, obs) -> np.ndarray:
        x = np.zeros(self.n, np.float32)
        x[int(obs)] = 1.0
        self._last = x
        return x

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._one_hot(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action_index(self, action))
        return self._one_hot(obs), float(reward), terminated, truncated, info

    def render(self):
        size = self.size or 64
        frame = np.full((size, size, 3), 40, np.uint8)
        lit = np.repeat(self._last, -(-size // self.n))[:size] > 0  # (size,) the observed column
        frame[size // 4 : 3 * size // 4, lit] = 230
        return frame


def make_popgym(spec: EnvSpec, render_size: int | None) -> gym.Env:
    """A POPGym game for `spec` (see dema_lab.envs.make_env)."""
    try:
        import popgym
    except ImportError as err:
        raise ImportError(
            f"POPGym envs need the memory extra ({err.name} is missing): pip install -c constraints.txt -e '.[memory]'"
        ) from None
    gym.register_envs(popgym)
    e = OneHotGame(gym.make(spec.gym_id, max_episode_steps=spec.max_episode_steps), render_size)
    return e
