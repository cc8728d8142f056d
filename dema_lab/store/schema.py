"""The store's schema: its version, the kinds of group a run holds, and the grammar of every name.

    <store>/runs/<run_id>/<kind>/<name>     run_id: RUN_ID; kind: one of KINDS
    checkpoint, resume, eval, decay:        checkpoint_name(step)        step_00002000
    rollout:                                rollout_name(step, mode, target, episode[, suffix])
                                            step_00002000-transformer-t0-e0
    ablation:                               ablation names start with checkpoint_name(step) too
    explain, faithfulness:                  checkpoint_name(step): one decision's relevance by
                                            method, and its faithfulness (evaluation.faithfulness)

Each name has its parser here (step_of, parse_rollout_name), so no reader splits names itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


STORE_VERSION = 1


KINDS = (
    "train",
    "eval",
    "rollout",
    "decay",
    "paper_attention",
    "ablation",
    "checkpoint",
    "resume",
    "explain",
    "faithfulness",
)


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # matched with fullmatch: no trailing newline


def checkpoint_name(step: int) -> str:
    """The name of the checkpoint (and resume state) saved at training step `step`."""
    return f"step_{int(step):08d}"


_ROLLOUT = re.compile(r"^step_(?P<step>\d+)(?:-(?P<mode>[a-z]+)-t(?P<target>\d+)-e(?P<episode>\d+))?(?P<rest>.*)$")


@dataclass(frozen=True)
class RolloutName:
    """What a recorded episode's name says: the checkpoint's step, the inference mode, the index
    of the target return among the run's eval_targets, and the episode. A name saved by hand
    with a suffix (the live page's) parses the same; one without mode, target and episode keeps
    its step, the rest falls back to defaults."""

    name: str
    step: int
    mode: str = "transformer"
    target_index: int = 0
    episode: int = 0


def rollout_name(step: int, mode: str, target_index: int, episode: int, suffix: str = "") -> str:
    """The name of an episode recorded with the checkpoint of `step`: step_00002000-transformer-t0-e0."""
    return f"{checkpoint_name(step)}-{mode}-t{int(target_index)}-e{int(episode)}{suffix}"


def step_of(name: str) -> int:
    """The training step a stored name belongs to (checkpoint, resume state, evaluation, recorded
    episode, ablation: they all start with checkpoint_name(step)); -1 for a name without one."""
    return parse_rollout_name(name).step


def parse_rollout_name(name: str) -> RolloutName:
    """The inverse of rollout_name (and of checkpoint_name); step -1 for a name with no step."""
    m = _ROLLOUT.match(name)
    if not m:
        return RolloutName(name, -1)
    if m["mode"] is None:
        return RolloutName(name, int(m["step"]))
    return RolloutName(name, int(m["step"]), m["mode"], int(m["target"]), int(m["episode"]))
