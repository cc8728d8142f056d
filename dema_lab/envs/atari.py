"""Atari games with the standard DQN preprocessing (as the DQN-Replay data), with the colour screen
for videos and dashboards."""

from __future__ import annotations

import gymnasium as gym

from dema_lab.envs.actions import action_index
from dema_lab.envs.frames import resize_frame
from dema_lab.envs.spec import ATARI_FRAME_SIZE, ATARI_FRAME_SKIP, ATARI_FRAME_STACK, ATARI_MAX_FRAMES, EnvSpec


class ColourFrames(gym.Wrapper):
    """``render()`` returns the ALE's colour screen (210, 160, 3) uint8, or, with ``size``, that
    screen resized to (size, size, 3) for videos and dashboards."""

    def __init__(self, env: gym.Env, size: int | None):
        super().__init__(env)
        self.size = size

    def step(self, action):
        """Takes the action as an int or as a policy's (1,) array holding the index."""
        return self.env.step(action_index(self, action))

    def render(self):
        return resize_frame(self.env.unwrapped.ale.getScreenRGB(), self.size)  # from (210, 160, 3) uint8


def make_atari(spec: EnvSpec, render_size: int | None) -> gym.Env:
    """An ALE game with the standard DQN preprocessing (Mnih et al. 2015; as the DQN-Replay data):
    frame skip 4 with the max over the last 2 frames, 84x84 grey, a stack of 4, up to 30 no-ops at
    reset, no sticky actions (repeat_action_probability 0), the minimal action set, a cap of 108k
    frames. Observations are (4, 84, 84) uint8; ``render()`` gives the colour screen."""
    try:
        import ale_py
        import cv2  # noqa: F401  (AtariPreprocessing resizes with it)
    except ImportError as err:
        raise ImportError(
            f"Atari envs need the atari extra ({err.name} is missing): pip install -c constraints.txt -e '.[atari]'"
        ) from None
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    e = gym.make(
        spec.gym_id,
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        max_num_frames_per_episode=ATARI_MAX_FRAMES,
    )  # the ALE truncates at 108k frames
    e = AtariPreprocessing(
        e,
        noop_max=30,
        frame_skip=ATARI_FRAME_SKIP,
        screen_size=ATARI_FRAME_SIZE,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    e = FrameStackObservation(e, ATARI_FRAME_STACK)
    e = ColourFrames(e, None if render_size is None else int(render_size))
    return e
