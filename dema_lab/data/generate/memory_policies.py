"""Scripted behaviour policies for the memory tasks, with the interface the scripted builder uses:

    policy.reset(env, obs, info, rng)   at an episode's start (env: dema-lab's wrapped env)
    policy.act(env, obs, info) -> int   the action index at this step

MemoryExpert (MiniGrid Memory): first walk to where the cue is in view and look at it, then walk
    the corridor to the object that matches it. It plans on the true grid (the unwrapped env), by
    breadth-first search over (x, y, direction) poses, and replans at every step, so it recovers
    from the random actions mixed into it. With guess=True it looks at the cue all the same but
    then walks to one of the two objects drawn at random: the behaviour of an agent that forgot.
RepeatPreviousExpert (POPGym RepeatPrevious): name the suit observed `lag` steps ago (any suit
    before that: those steps are not scored). It reads only its observations.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from dema_lab.envs.minigrid_memory import cue_position

__all__ = ["MemoryExpert", "RepeatPreviousExpert", "MINIGRID_LEFT", "MINIGRID_RIGHT", "MINIGRID_FORWARD"]

MINIGRID_LEFT, MINIGRID_RIGHT, MINIGRID_FORWARD = 0, 1, 2
_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # MiniGrid's direction 0..3: east, south, west, north
_WEST = 2


def _free(u, x: int, y: int) -> bool:
    """Whether the agent can stand on cell (x, y) of the unwrapped env `u`."""
    if not (0 <= x < u.width and 0 <= y < u.height):
        return False
    cell = u.grid.get(x, y)
    return cell is None or cell.can_overlap()


def pose_distances(u, goals, blocked=()) -> dict:
    """Fewest actions from every pose (x, y, direction) to any pose in `goals`, by breadth-first search
    backwards from them; cells in `blocked` are never entered. Poses that cannot reach a goal are
    absent."""
    dist = {g: 0 for g in goals}
    queue = deque(goals)
    while queue:
        x, y, d = pose = queue.popleft()
        dx, dy = _DIRECTIONS[d]
        before = [(x, y, (d + 1) % 4), (x, y, (d - 1) % 4)]  # turned left, turned right into this pose
        if _free(u, x - dx, y - dy) and (x - dx, y - dy) not in blocked:
            before.append((x - dx, y - dy, d))  # stepped forward into this pose
        for p in before:
            if p not in dist:
                dist[p] = dist[pose] + 1
                queue.append(p)
    return dist


def next_pose(u, pose, action: int, blocked=()):
    """The pose after `action` from `pose`; None if the action enters a `blocked` cell."""
    x, y, d = pose
    if action == MINIGRID_LEFT:
        return x, y, (d - 1) % 4
    if action == MINIGRID_RIGHT:
        return x, y, (d + 1) % 4
    dx, dy = _DIRECTIONS[d]
    if (x + dx, y + dy) in blocked:
        return None
    return (x + dx, y + dy, d) if _free(u, x + dx, y + dy) else pose


class MemoryExpert:
    """The scripted MiniGrid Memory policy (see the module docstring)."""

    def __init__(self, guess: bool = False):
        self.guess = guess

    def reset(self, env, obs, info, rng: np.random.Generator):
        u = env.unwrapped
        goal, other = tuple(u.success_pos), tuple(u.failure_pos)
        if self.guess and rng.random() < 0.5:
            goal, other = other, goal
        self.seen = bool(info.get("cue_visible"))
        # the lookout: one step east of the cue's column on the middle row, facing west
        cx, _ = cue_position(u)
        self.lookout = pose_distances(u, [(cx + 1, u.height // 2, _WEST)], blocked={goal, other})
        self.blocked, self.ends = {other}, {goal, other}
        self.to_goal = pose_distances(u, [(*goal, d) for d in range(4)], blocked=self.blocked)

    def act(self, env, obs, info) -> int:
        u = env.unwrapped
        pose = (int(u.agent_pos[0]), int(u.agent_pos[1]), int(u.agent_dir))
        self.seen = self.seen or bool(info.get("cue_visible")) or self.lookout.get(pose) == 0
        dist = self.to_goal if self.seen else self.lookout
        blocked = self.blocked if self.seen else self.ends  # no end cell before the cue is seen
        best, best_d = MINIGRID_FORWARD, np.inf
        for a in (MINIGRID_FORWARD, MINIGRID_LEFT, MINIGRID_RIGHT):
            p = next_pose(u, pose, a, blocked)
            if p is not None and dist.get(p, np.inf) < best_d:
                best, best_d = a, dist[p]
        return best


class RepeatPreviousExpert:
    """The optimal RepeatPrevious policy: the suit of the card observed `lag` steps ago."""

    def __init__(self, lag: int):
        self.lag = int(lag)

    def reset(self, env, obs, info, rng: np.random.Generator):
        self.rng = rng
        self.seen: list[int] = []

    def act(self, env, obs, info) -> int:
        self.seen.append(int(np.argmax(obs)))
        if len(self.seen) > self.lag:
            return self.seen[-1 - self.lag]
        return int(self.rng.integers(len(obs)))  # not scored yet
