"""Environment creation: one place that knows the MuJoCo tasks and Atari games dema-lab uses.

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


__all__ = ["EnvSpec", "ENV_SPECS", "env_spec", "make_env", "known_envs", "ATARI_FRAME_STACK", "ATARI_FRAME_SIZE"]


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
    kind: str = "mujoco"  # "mujoco" (continuous actions) or "atari" (discrete, images)
    obs_shape: tuple[int, ...] = ()  # atari: (4, 84, 84) stacked grey frames; () = (obs_dim,)
    n_actions: int = 0  # atari: size of the minimal action set; 0 = continuous

    @property
    def discrete(self) -> bool:
        return self.n_actions > 0


# Gymnasium v5 tasks. Their observation and action sizes equal D4RL's v2
# datasets (Hopper 11/3, HalfCheetah 17/6, Walker2d 17/6); tests check the
# numbers against the live envs.
ENV_SPECS: dict[str, EnvSpec] = {
    "hopper": EnvSpec("hopper", "Hopper-v5", 11, 3, "hopper", healthy_reward=1.0),
    "halfcheetah": EnvSpec("halfcheetah", "HalfCheetah-v5", 17, 6, "halfcheetah"),
    "walker2d": EnvSpec("walker2d", "Walker2d-v5", 17, 6, "walker2d", healthy_reward=1.0),
}

# Atari (ale-py's ROMs, the `atari` extra) with the DQN preprocessing (see make_env). The
# observation is 4 stacked 84x84 grey frames, the action one index into the minimal action set
# (act_dim 1, n_actions choices); an episode is capped at 108k frames = 27k agent steps.
ATARI_FRAME_STACK = 4
ATARI_FRAME_SIZE = 84
ATARI_FRAME_SKIP = 4
ATARI_MAX_FRAMES = 108_000
_ATARI_OBS = (ATARI_FRAME_STACK, ATARI_FRAME_SIZE, ATARI_FRAME_SIZE)
for _name, _game, _n in (
    ("breakout", "Breakout", 4),
    ("pong", "Pong", 6),
    ("qbert", "Qbert", 6),
    ("seaquest", "Seaquest", 18),
):
    ENV_SPECS[_name] = EnvSpec(
        _name,
        f"ALE/{_game}-v5",
        int(np.prod(_ATARI_OBS)),
        1,
        _name,
        max_episode_steps=ATARI_MAX_FRAMES // ATARI_FRAME_SKIP,
        kind="atari",
        obs_shape=_ATARI_OBS,
        n_actions=_n,
    )

_ALIASES = {
    "half_cheetah": "halfcheetah",
    "half-cheetah": "halfcheetah",
    "cheetah": "halfcheetah",
    "walker": "walker2d",
}


def known_envs(kind: str | None = None) -> list[str]:
    """Short names of the supported envs (of one kind, "mujoco" or "atari", if given)."""
    return [n for n, s in ENV_SPECS.items() if kind is None or s.kind == kind]


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
    if low.startswith("ale/"):  # "ALE/Breakout-v5" with another version
        low = low[4:]
    # "Hopper-v4", "hopper-v2", "hopper-medium-v2" style prefixes -> family name
    family = low.split("-")[0]
    family = _ALIASES.get(family, family)
    if family in ENV_SPECS:
        return ENV_SPECS[family]
    raise ValueError(
        f"unknown env {env!r}; known envs: " + ", ".join(f"{s.name} ({s.gym_id})" for s in ENV_SPECS.values())
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


def make_env(env: str | EnvSpec, render_size: int | None = None, seed: int | None = None) -> gym.Env:
    """Create a Gymnasium MuJoCo env by short name or id.

    render_size: if given, ``render()`` returns uint8 (render_size, render_size, 3)
        rgb frames, rendered headless with shadows/reflections/skybox off.
    seed: if given, the env is reset once with it (and its action space seeded),
        so the next ``reset()`` without a seed continues that stream.

    The caller owns the env and must ``close()`` it.
    """
    spec = env_spec(env)
    if spec.kind == "atari":
        return _make_atari(spec, render_size, seed)
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


class _ColourFrames(gym.Wrapper):
    """``render()`` returns the ALE's colour screen (210, 160, 3) uint8, or, with ``size``, that
    screen resized to (size, size, 3) for videos and dashboards."""

    def __init__(self, env: gym.Env, size: int | None):
        super().__init__(env)
        self.size = size

    def step(self, action):
        """Takes the action as an int or as a policy's (1,) array holding the index."""
        a = np.asarray(action).reshape(-1)
        if a.size != 1 or not np.isfinite(a[0]) or a[0] != round(float(a[0])) or not 0 <= a[0] < self.action_space.n:
            raise ValueError(
                f"{self.spec.id if self.spec else 'Atari'} takes one action index in "
                f"0..{self.action_space.n - 1}, got {action!r}"
            )
        return self.env.step(int(round(float(a[0]))))

    def render(self):
        frame = self.env.unwrapped.ale.getScreenRGB()  # (210, 160, 3) uint8
        if self.size:
            import cv2

            frame = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame, dtype=np.uint8)


def _make_atari(spec: EnvSpec, render_size: int | None, seed: int | None) -> gym.Env:
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

    if render_size is not None and int(render_size) <= 0:
        raise ValueError(f"render_size must be a positive int, got {render_size!r}")
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
    e = _ColourFrames(e, None if render_size is None else int(render_size))
    if seed is not None:
        e.reset(seed=int(seed))
        e.action_space.seed(int(seed))
    return e
