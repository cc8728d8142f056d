"""MuJoCo tasks, rendered headless: shadows, reflections and the skybox are switched off, which
makes off-screen frames 3-4x cheaper, and frames under 128 px skip multisample anti-aliasing, which
cuts their cost again (12.3 -> 4.5 ms of CPU a 32 px frame); if EGL cannot create a context, the first ``render()`` falls
back to OSMesa (the package's __init__ sets MUJOCO_GL before MuJoCo is imported). The ``-pomdp``
tasks see the positions only (PositionsOnly)."""

from __future__ import annotations

import logging
import os

import gymnasium as gym
import numpy as np

from dema_lab.envs.spec import EnvSpec

_log = logging.getLogger("dema_lab.mujoco")


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to logging instead of stdout and a MUJOCO_LOG.TXT
    in the working directory (Walker2d-v5's XML triggers a deprecation warning
    on every load). Leaves a handler someone else installed alone."""
    import mujoco

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(lambda msg: _log.debug("MuJoCo warning: %s", str(msg).strip()))


class FastRender(gym.Wrapper):
    """Off-screen rgb rendering with shadows, reflections and skybox off, and no multisampling
    under ANTIALIAS_MIN_SIZE px (software OpenGL pays for every sample; at thumbnail size the
    jagged edges do not show, at 128 px and up they would).

    The MuJoCo viewer is created lazily by Gymnasium on the first ``render()``;
    this wrapper creates it itself (falling back from EGL to OSMesa if EGL
    cannot make a context) and clears the three expensive scene flags.
    """

    ANTIALIAS_MIN_SIZE = 128

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._ready = False

    def _prepare(self) -> None:
        import mujoco

        renderer = self.env.unwrapped.mujoco_renderer
        if max(renderer.width, renderer.height) < self.ANTIALIAS_MIN_SIZE:
            # read when the off-screen context is made, below
            self.env.unwrapped.model.vis.quality.offsamples = 0
        try:
            viewer = renderer._get_viewer("rgb_array")
        except Exception as egl_error:  # no EGL device: try the software renderer
            if os.environ.get("MUJOCO_GL") == "osmesa":
                raise RuntimeError(f"MuJoCo off-screen rendering failed: {egl_error}") from egl_error
            os.environ["MUJOCO_GL"] = "osmesa"
            os.environ["PYOPENGL_PLATFORM"] = "osmesa"
            try:
                viewer = renderer._get_viewer("rgb_array")
            except Exception as err:
                raise RuntimeError(
                    "MuJoCo off-screen rendering failed with both EGL and OSMesa "
                    f"(egl: {egl_error}; osmesa: {err}). Install libegl1 or libosmesa6."
                ) from err
        flags = viewer.scn.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        # Follow the body the env's camera config names (hopper, walker2d, halfcheetah: the torso).
        # Gymnasium renders with camera_id -1, which resets the camera to a free one on every
        # frame: the agent then walks out of the picture within a few hundred steps.
        if viewer.cam.trackbodyid >= 0 and renderer.camera_id in (None, -1):
            viewer.cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
            renderer.camera_id = None
        self._ready = True

    def render(self):
        if not self._ready:
            self._prepare()
        frame = self.env.render()  # (H, W, 3) uint8
        return np.ascontiguousarray(frame, dtype=np.uint8)


class PositionsOnly(gym.ObservationWrapper):
    """Keep the first `keep` observations, the positions (qpos[1:]), and drop the velocities: the
    partially observed "-P" tasks. The env itself, its rewards and its termination are unchanged."""

    def __init__(self, env: gym.Env, keep: int):
        super().__init__(env)
        box = env.observation_space
        self.keep = int(keep)
        self.observation_space = gym.spaces.Box(box.low[: self.keep], box.high[: self.keep], dtype=box.dtype)

    def observation(self, observation):
        return observation[: self.keep]


def make_mujoco(spec: EnvSpec, render_size: int | None) -> gym.Env:
    """A Gymnasium MuJoCo env for `spec` (see dema_lab.envs.make_env)."""
    route_mujoco_warnings()
    kwargs: dict = {}
    if render_size is not None:
        kwargs.update(render_mode="rgb_array", width=int(render_size), height=int(render_size))
    e = gym.make(spec.gym_id, max_episode_steps=spec.max_episode_steps, **kwargs)
    if render_size is not None:
        e = FastRender(e)
    if spec.full_env:
        e = PositionsOnly(e, spec.obs_dim)
    return e
