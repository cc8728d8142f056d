"""Training: TrainConfig (composed of sections) and its presets, the objective, the trainer's loop
with its hooks, and resuming a run.

config: TrainConfig and its sections; presets/: the named presets as TOML files; objective: losses,
lr schedule, optimiser, one step; trainer: the loop and its hooks; resume: what a resume keeps and
restores; memory: the estimate that refuses what cannot fit. May import every layer up to analysis,
and evaluation (the trainer evaluates its checkpoints).
"""

from dema_lab.evaluation.checkpoint import evaluate_checkpoint
from dema_lab.training.config import RESUME_FIXED, TrainConfig
from dema_lab.training.presets import DT_PAPER, PRESETS, preset_fields
from dema_lab.training.trainer import Hook, Tracker, Trainer, ensure_trained, train

__all__ = [
    "DT_PAPER",
    "PRESETS",
    "RESUME_FIXED",
    "Hook",
    "TrainConfig",
    "Tracker",
    "Trainer",
    "ensure_trained",
    "evaluate_checkpoint",
    "preset_fields",
    "train",
]
