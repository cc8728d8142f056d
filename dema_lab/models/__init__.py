"""Decision Mamba and the Decision Transformer baseline, with one data interface."""

from .base import TrajectoryModel
from .checkpoint import Checkpoint, CheckpointError, checkpoint_bytes, load_checkpoint, load_weights, save_checkpoint
from .config import ARCHS, LAYOUTS, ModelConfig
from .cost import cost_summary, count_parameters, forward_macs, step_macs
from .dema import DecisionMamba
from .dt import DecisionTransformer
from .init import official_init
from .official import OfficialCheckpointError, UnsafeCheckpointError, import_official
from .policy import MODES, BatchPolicy, Policy


def build_model(cfg: ModelConfig) -> TrajectoryModel:
    """The model a config describes."""
    return DecisionMamba(cfg) if cfg.arch == "dema" else DecisionTransformer(cfg)


__all__ = [
    "ARCHS",
    "LAYOUTS",
    "MODES",
    "BatchPolicy",
    "Checkpoint",
    "CheckpointError",
    "DecisionMamba",
    "DecisionTransformer",
    "ModelConfig",
    "OfficialCheckpointError",
    "UnsafeCheckpointError",
    "checkpoint_bytes",
    "Policy",
    "TrajectoryModel",
    "build_model",
    "import_official",
    "official_init",
    "cost_summary",
    "count_parameters",
    "forward_macs",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "step_macs",
]
