"""The facts of every env dema-lab knows (``env_spec``: Gymnasium id, observation/action sizes, D4RL
score key), so no dimension or id is hard-coded anywhere else."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EnvSpec", "ENV_SPECS", "env_spec", "known_envs", "ATARI_FRAME_STACK", "ATARI_FRAME_SIZE"]


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
