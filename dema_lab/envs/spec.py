"""The facts of every env dema-lab knows (``env_spec``: Gymnasium id, observation/action sizes, D4RL
score key), so no dimension or id is hard-coded anywhere else.

Kinds: "mujoco" (vector states, continuous actions; a ``-pomdp`` task keeps the positions only),
"atari" (stacked frames, discrete actions), "minigrid" and "popgym" (memory tasks: vector states,
discrete actions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "EnvSpec",
    "ENV_SPECS",
    "env_spec",
    "known_envs",
    "ATARI_FRAME_STACK",
    "ATARI_FRAME_SIZE",
    "MINIGRID_VIEW",
    "POPGYM_LAGS",
]


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
    full_env: for a partially observed task, the fully observed one whose first obs_dim
        observations it keeps (``hopper-pomdp``: ``hopper``'s qpos[1:], velocities dropped); "" else
    """

    name: str
    gym_id: str
    obs_dim: int
    act_dim: int
    d4rl_key: str
    healthy_reward: float = 0.0
    max_episode_steps: int = 1000
    kind: str = "mujoco"  # "mujoco" (continuous actions), "atari" (discrete, images), "minigrid", "popgym"
    obs_shape: tuple[int, ...] = ()  # atari: (4, 84, 84) stacked grey frames; () = (obs_dim,)
    n_actions: int = 0  # discrete actions: how many (atari: the minimal action set); 0 = continuous
    full_env: str = ""

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

# Partially observed MuJoCo ("-P" tasks of Ni, Eysenbach & Salakhutdinov 2022): the observation is
# qpos[1:] then qvel, and these keep the positions only (Hopper 5 of 11, HalfCheetah and Walker2d 8
# of 17); rewards, episodes and reference scores are the full task's.
for _name, _positions in (("hopper", 5), ("halfcheetah", 8), ("walker2d", 8)):
    _full = ENV_SPECS[_name]
    ENV_SPECS[f"{_name}-pomdp"] = EnvSpec(
        f"{_name}-pomdp",
        _full.gym_id,
        _positions,
        _full.act_dim,
        _full.d4rl_key,
        healthy_reward=_full.healthy_reward,
        full_env=_name,
    )

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

# MiniGrid's Memory task (the `memory` extra): a cue object in the start room, a corridor, and two
# objects at its end; reaching the one that matches the cue succeeds. The state is the agent's
# symbolic 7x7x3 egocentric view, flattened (147); the actions are MiniGrid's first three (left,
# right, forward: all the task needs). S17 exists only with a random corridor length; S31, a corridor
# longer than 20 steps, is MiniGrid's MemoryEnv at size 31, registered by dema-lab.
MINIGRID_VIEW = (7, 7, 3)
for _size, _gym_id in (
    (7, "MemoryS7"),
    (11, "MemoryS11"),
    (13, "MemoryS13"),
    (17, "MemoryS17Random"),
    (31, "MemoryS31"),
):
    ENV_SPECS[f"minigrid-memory-s{_size}"] = EnvSpec(
        f"minigrid-memory-s{_size}",
        f"MiniGrid-{_gym_id}-v0",
        int(np.prod(MINIGRID_VIEW)),
        1,
        "minigrid-memory",
        max_episode_steps=5 * _size**2,  # MemoryEnv's own limit
        kind="minigrid",
        n_actions=3,
    )

# POPGym's RepeatPrevious (the `memory` extra; Morad et al. 2023): each step deals a card and the
# agent must name the suit dealt `lag` steps before; the suit comes one-hot (4), the action is a
# suit. Easy: 1 deck, lag 3 (51 steps); Medium: 2 decks, lag 31 (103 steps).
POPGYM_LAGS = {"popgym-repeatprevious-easy": 3, "popgym-repeatprevious-medium": 31}
for _name, _gym_id, _decks in (
    ("popgym-repeatprevious-easy", "popgym-RepeatPreviousEasy-v0", 1),
    ("popgym-repeatprevious-medium", "popgym-RepeatPreviousMedium-v0", 2),
):
    ENV_SPECS[_name] = EnvSpec(
        _name, _gym_id, 4, 1, _name, max_episode_steps=52 * _decks - 1, kind="popgym", n_actions=4
    )

_ALIASES = {
    "half_cheetah": "halfcheetah",
    "half-cheetah": "halfcheetah",
    "cheetah": "halfcheetah",
    "walker": "walker2d",
}


def known_envs(kind: str | None = None) -> list[str]:
    """Short names of the supported envs (of one kind, "mujoco", "atari", "minigrid" or "popgym", if
    given)."""
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
    if key.lower() in ENV_SPECS:
        return ENV_SPECS[key.lower()]
    for spec in ENV_SPECS.values():
        if key == spec.gym_id:
            return spec
    low = key.lower()
    if low.startswith("ale/"):  # "ALE/Breakout-v5" with another version
        low = low[4:]
    # "Hopper-v4", "hopper-v2", "hopper-medium-v2" style prefixes -> family name
    family = low.split("-")[0]
    family = _ALIASES.get(family, family)
    if low.endswith("-pomdp") and f"{family}-pomdp" in ENV_SPECS:  # "hopper-medium-pomdp"
        return ENV_SPECS[f"{family}-pomdp"]
    if family in ENV_SPECS:
        return ENV_SPECS[family]
    raise ValueError(
        f"unknown env {env!r}; known envs: " + ", ".join(f"{s.name} ({s.gym_id})" for s in ENV_SPECS.values())
    )
