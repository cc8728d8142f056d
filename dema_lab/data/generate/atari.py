"""The embedded Atari datasets: behaviour policies that read the game's state, mixed with
epsilon-random actions, built locally (the ROMs ship with ale-py; nothing is downloaded).

    breakout  move the paddle (RAM 72) under the ball (RAM 99, 101); FIRE when no ball is in play
    pong      move the paddle (RAM 51) towards where the ball (RAM 49, 54) will cross its column,
              walls bounced, leading by the paddle's velocity (revision 2; revision 1 read the
              screen and averaged -11 at epsilon 0.01)

Qualities (epsilon = the probability of a uniformly random action at each step):

    expert  epsilon 0.01
    medium  epsilon 0.3
    mixed   each episode draws its epsilon from (0.01, 0.1, 0.3, 0.6, 1.0) in turn
    random  epsilon 1

The file is the D4RL layout (:mod:`dema_lab.data.sources.d4rl`) with observations as single 84x84
uint8 grey frames (gzip-compressed, the newest frame of the env's 4-frame stack at each step;
a state is stacked from 4 of them when read), actions (N, 1) holding the action index, and
attrs ``frame_stack`` 4 and ``n_actions``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dema_lab.data.generate.episodes import collect_episodes, end_flags, return_attrs, step_budget
from dema_lab.data.sources.d4rl import write_d4rl
from dema_lab.data.trajectory import DatasetError
from dema_lab.envs.spec import ATARI_FRAME_STACK, env_spec

__all__ = [
    "ATARI_QUALITIES",
    "ATARI_EPSILONS",
    "ATARI_POLICIES",
    "ATARI_BUILDER_VERSION",
    "ATARI_POLICY_REVISIONS",
    "ATARI_DEFAULT_TRANSITIONS",
    "build_atari_dataset",
    "game_policy",
]

ATARI_BUILDER_VERSION = 1
# A game's behaviour-policy revision, stored in the file's attrs (a file without it is revision 1);
# a cached dataset of an older revision is rebuilt.
ATARI_POLICY_REVISIONS = {"breakout": 1, "pong": 2}
ATARI_DEFAULT_TRANSITIONS = 50_000
ATARI_QUALITIES = ("random", "medium", "expert", "mixed")
ATARI_EPSILONS = {"expert": (0.01,), "medium": (0.3,), "mixed": (0.01, 0.1, 0.3, 0.6, 1.0), "random": (1.0,)}


def _breakout(ale, memory: dict) -> int:
    """NOOP 0, FIRE 1, RIGHT 2, LEFT 3. The paddle's x (RAM 72) sits about 10 left of the ball's
    x (RAM 99) when centred under it; ball y (RAM 101) is 0 while no ball is in play."""
    ram = ale.getRAM()
    ball_x, ball_y, paddle_x = int(ram[99]), int(ram[101]), int(ram[72])
    if ball_y == 0:
        return 1
    d = ball_x - (paddle_x + 10)
    return 2 if d > 2 else 3 if d < -2 else 0


# Pong's RAM: ball x 49 (grows towards our paddle), ball y 54, our paddle's y 51; the ball
# bounces between y 46 and 205 and meets our paddle's column at x 188. Both are 0 between points.
_PONG_TOP, _PONG_BOTTOM, _PONG_PADDLE_X = 46.0, 205.0, 188.0


def _pong_reflect(y: float) -> float:
    """Where a ball that would reach height y with no walls is, after bouncing off them."""
    span = _PONG_BOTTOM - _PONG_TOP
    y = (y - _PONG_TOP) % (2 * span)
    return _PONG_TOP + (2 * span - y if y > span else y)


def _pong(ale, memory: dict) -> int:
    """NOOP 0, UP 2, DOWN 3. Positions from the RAM (above). While the ball comes towards us, aim
    at where it will cross our paddle's column (its velocity from the previous step, walls
    bounced), else at the ball; the paddle's own velocity leads the error (it has momentum),
    with a dead zone of 3. Scores about 0 on average at epsilon 0.01 (from -21 to +15 by seed)."""
    ram = ale.getRAM()
    ball_x, ball_y, paddle = int(ram[49]), int(ram[54]), int(ram[51])
    prev_ball, prev_paddle = memory.get("ball"), memory.get("paddle")
    memory["paddle"] = paddle
    if ball_x == 0 and ball_y == 0:  # between points
        memory["ball"] = None
        return 0
    memory["ball"] = (ball_x, ball_y)
    target = float(ball_y)
    if prev_ball is not None:
        dx, dy = ball_x - prev_ball[0], ball_y - prev_ball[1]
        if dx > 0 and ball_x < _PONG_PADDLE_X:
            target = _pong_reflect(ball_y + dy * (_PONG_PADDLE_X - ball_x) / dx)
    speed = 0 if prev_paddle is None else paddle - prev_paddle
    d = target - (paddle + speed)
    return 3 if d > 3 else 2 if d < -3 else 0


ATARI_POLICIES = {"breakout": _breakout, "pong": _pong}


def game_policy(env: str):
    """The behaviour policy ``(ale, memory) -> action`` of a game; a clear error for the others."""
    name = env_spec(env).name
    if name not in ATARI_POLICIES:
        raise DatasetError(
            f"no embedded behaviour policy for {name!r}; embedded Atari datasets exist for "
            f"{', '.join(ATARI_POLICIES)} (for other games, read DQN-Replay files: "
            f"--dataset dqn-replay:/path/<Game>/1/replay_logs)"
        )
    return ATARI_POLICIES[name]


def _episode(env, policy, epsilon: float, rng: np.random.Generator, max_steps: int, n_actions: int):
    """One episode with epsilon-random actions; (frames (T, 84, 84) uint8, actions (T,), rewards
    (T,), terminated)."""
    obs, _ = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
    ale = env.unwrapped.ale
    frames, actions, rewards, memory = [], [], [], {}
    terminated = False
    for _ in range(max_steps):
        greedy = policy(ale, memory)
        a = int(rng.integers(n_actions)) if rng.random() < epsilon else greedy
        frames.append(obs[-1])
        actions.append(a)
        obs, r, terminated, truncated, _ = env.step(a)
        rewards.append(float(r))
        if terminated or truncated:
            break
    return np.stack(frames), np.asarray(actions, np.int64), np.asarray(rewards, np.float32), bool(terminated)


def build_atari_dataset(
    env: str,
    quality: str,
    out_path,
    seed: int = 0,
    transitions: int | None = None,
    episodes: int | None = None,
    progress: bool = True,
) -> Path:
    """Collect an embedded Atari dataset and write it (see the module docstring). transitions:
    total steps (default 50k; the last episode is cut and marked as a timeout); episodes: a number
    of whole episodes instead. The same seed gives the same arrays."""
    spec = env_spec(env)
    policy = game_policy(spec.name) if quality != "random" else (lambda ale, memory: 0)
    if quality not in ATARI_QUALITIES:
        raise DatasetError(f"unknown quality {quality!r} for {spec.name}; choose one of {', '.join(ATARI_QUALITIES)}")
    budget = step_budget(transitions, episodes, ATARI_DEFAULT_TRANSITIONS)
    epsilons = ATARI_EPSILONS[quality]
    rng = np.random.default_rng([seed, ATARI_QUALITIES.index(quality), 11])
    t0 = time.perf_counter()

    def run(e, k, steps):
        frames, actions, rewards, terminated = _episode(
            e, policy, epsilons[k % len(epsilons)], rng, steps, spec.n_actions
        )
        return (frames, actions, rewards, terminated), len(rewards), terminated

    parts, complete = collect_episodes(
        spec.name, f"{spec.name}-{quality}", budget, episodes, spec.max_episode_steps, run, progress
    )
    frames, actions, rewards = (np.concatenate(x) for x in list(zip(*parts))[:3])
    lengths = [len(p[2]) for p in parts]
    term, timeout = end_flags(lengths, [p[3] for p in parts])
    eps_used = [epsilons[k % len(epsilons)] for k in range(len(parts))]
    attrs = {
        "env": spec.name,
        "gym_id": spec.gym_id,
        "quality": quality,
        "seed": int(seed),
        "builder_version": ATARI_BUILDER_VERSION,
        "policy_digest": "",
        "policy_revision": ATARI_POLICY_REVISIONS.get(spec.name, 1),
        "frame_stack": ATARI_FRAME_STACK,
        "n_actions": spec.n_actions,
        "epsilons": json.dumps(list(epsilons)),
        "episode_epsilons": json.dumps(eps_used),
        "transitions": int(len(rewards)),
        **return_attrs([float(p[2].sum()) for p in parts], complete, spec.d4rl_key),
        "build_seconds": float(time.perf_counter() - t0),
        "versions": json.dumps(_versions()),
    }
    write_d4rl(
        out_path,
        observations=frames,
        actions=actions[:, None].astype(np.float32),
        rewards=rewards,
        terminals=term,
        timeouts=timeout,
        attrs=attrs,
        compression="gzip",
    )
    return Path(out_path)


def _versions() -> dict:
    import ale_py
    import gymnasium

    return {"gymnasium": gymnasium.__version__, "ale_py": ale_py.__version__, "numpy": np.__version__}
