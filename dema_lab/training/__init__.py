"""Training: TrainConfig, the presets, the objective and the trainer's loop with its hooks.

May import every layer up to analysis, and evaluation (the trainer evaluates its checkpoints).
"""

from dema_lab.training.trainer import PRESETS, TrainConfig, Trainer, ensure_trained, evaluate_checkpoint, train

__all__ = ["PRESETS", "TrainConfig", "Trainer", "ensure_trained", "evaluate_checkpoint", "train"]
