"""Evaluation: rollouts of a policy in its env, recorded episodes, the ablations, the paper's
attention display on recorded episodes, a run's explanations and their faithfulness on its own
episodes (faithfulness), and the defaults of what a run is evaluated on.

May import common, ssm, models, envs, data, store and analysis (not training: the trainer calls it).
"""

from dema_lab.evaluation.ablation import ablate, complete_ablations, evaluate_ablation, evaluate_ablations
from dema_lab.evaluation.checkpoint import evaluate_checkpoint, full_windows
from dema_lab.evaluation.defaults import DEFAULT_TARGETS, default_modes, default_targets
from dema_lab.evaluation.paper import paper_attention, publish_paper_attention
from dema_lab.evaluation.rollout import evaluate, export_video, record_episode, rollout_steps, save_rollout

__all__ = [
    "DEFAULT_TARGETS",
    "ablate",
    "complete_ablations",
    "default_modes",
    "default_targets",
    "evaluate",
    "evaluate_ablation",
    "evaluate_ablations",
    "evaluate_checkpoint",
    "export_video",
    "full_windows",
    "paper_attention",
    "publish_paper_attention",
    "record_episode",
    "rollout_steps",
    "save_rollout",
]
