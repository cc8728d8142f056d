"""Environment creation: one place that knows the MuJoCo tasks dema-lab uses.

Every other module asks this one for an env (``make_env``) or for its facts
(``env_spec``: Gymnasium id, observation/action sizes, D4RL score key), so no
dimension or id is hard-coded anywhere else.

Rendering is headless. ``MUJOCO_GL`` is set to ``egl`` here, before MuJoCo is
imported, unless the user chose a backend already; if EGL cannot create a
context, the first ``render()`` falls back to OSMesa. Shadows, reflections
and the skybox are switched off, which makes off-screen frames 3-4x cheaper.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import logging  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

_log = logging.getLogger("dema_lab.mujoco")


def _route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to logging instead of stdout and a MUJOCO_LOG.TXT
    in the working directory (Walker2d-v5's XML triggers a deprecation warning
    on every load). Leaves a handler someone else installed alone."""
    import mujoco

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(lambda msg: _log.debug("MuJoCo warning: %s", str(msg).strip()))

__all__ = ["EnvSpec", "ENV_SPECS", "env_spec", "make_env", "known_envs"]


@dataclass(frozen=True)
class EnvSpec:
    """Facts about one task.

    name:     short name used throughout dema-lab (``hopper``)
    gym_id:   Gymnasium id (``Hopper-v5``)
    obs_dim:  observation size
    act_dim:  action size
    d4rl_key: key into D4RL's reference-score table (``hopper``)
    healthy_reward: per-step survival bonus in the reward (ARS subtracts it
        while training, as Mania et al. 2018 do for Hopper and Walker2d)
    """

    name: str
    gym_id: str
    obs_dim: int
    act_dim: int
    d4rl_key: str
    healthy_reward: float = 0.0
    max_episode_steps: int = 1000


# Gymnasium v5 tasks. Their observation and action sizes equal D4RL's v2
# datasets (Hopper 11/3, HalfCheetah 17/6, Walker2d 17/6); tests check the
# numbers against the live envs.
ENV_SPECS: dict[str, EnvSpec] = {
    "hopper": EnvSpec("hopper", "Hopper-v5", 11, 3, "hopper", healthy_reward=1.0),
    "halfcheetah": EnvSpec("halfcheetah", "HalfCheetah-v5", 17, 6, "halfcheetah"),
    "walker2d": EnvSpec("walker2d", "Walker2d-v5", 17, 6, "walker2d", healthy_reward=1.0),
}

_ALIASES = {
    "half_cheetah": "halfcheetah",
    "half-cheetah": "halfcheetah",
    "cheetah": "halfcheetah",
    "walker": "walker2d",
}


def known_envs() -> list[str]:
    """Short names of the supported envs."""
    return list(ENV_SPECS)


def env_spec(env: str | EnvSpec) -> EnvSpec:
    """Resolve a short name (``hopper``), an alias or a Gymnasium id
    (``Hopper-v5``; any version suffix) to its :class:`EnvSpec`.

    Raises ValueError naming the env and listing the known ones.
    """
    if isinstance(env, EnvSpec):
        return env
    if not isinstance(env, str) or not env:
        raise ValueError(f"env must be a non-empty string, got {env!r}; known envs: {known_envs()}")
    key = env.strip()
    for spec in ENV_SPECS.values():
        if key == spec.gym_id:
            return spec
    low = key.lower()
    # "Hopper-v4", "hopper-v2", "hopper-medium-v2" style prefixes -> family name
    family = low.split("-")[0]
    family = _ALIASES.get(family, family)
    if family in ENV_SPECS:
        return ENV_SPECS[family]
    raise ValueError(
        f"unknown env {env!r}; known envs: "
        + ", ".join(f"{s.name} ({s.gym_id})" for s in ENV_SPECS.values())
    )


class _FastRender(gym.Wrapper):
    """Off-screen rgb rendering with shadows, reflections and skybox off.

    The MuJoCo viewer is created lazily by Gymnasium on the first ``render()``;
    this wrapper creates it itself (falling back from EGL to OSMesa if EGL
    cannot make a context) and clears the three expensive scene flags.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._ready = False

    def _prepare(self) -> None:
        import mujoco

        renderer = self.env.unwrapped.mujoco_renderer
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
        self._ready = True

    def render(self):
        if not self._ready:
            self._prepare()
        frame = self.env.render()  # (H, W, 3) uint8
        return np.ascontiguousarray(frame, dtype=np.uint8)


def make_env(env: str | EnvSpec, render_size: int | None = None, seed: int | None = None) -> gym.Env:
    """Create a Gymnasium MuJoCo env by short name or id.

    render_size: if given, ``render()`` returns uint8 (render_size, render_size, 3)
        rgb frames, rendered headless with shadows/reflections/skybox off.
    seed: if given, the env is reset once with it (and its action space seeded),
        so the next ``reset()`` without a seed continues that stream.

    The caller owns the env and must ``close()`` it.
    """
    spec = env_spec(env)
    _route_mujoco_warnings()
    kwargs: dict = {}
    if render_size is not None:
        size = int(render_size)
        if size <= 0:
            raise ValueError(f"render_size must be a positive int, got {render_size!r}")
        kwargs.update(render_mode="rgb_array", width=size, height=size)
    e = gym.make(spec.gym_id, max_episode_steps=spec.max_episode_steps, **kwargs)
    if render_size is not None:
        e = _FastRender(e)
    if seed is not None:
        e.reset(seed=int(seed))
        e.action_space.seed(int(seed))
    return e
