"""Decision Mamba and its baselines (the Decision Transformer, LSTM, GRU, a memoryless MLP), with one data interface: configs, the
models, the policies that act with them, their cost, and checkpoint files (official/ reads the
official code's). May import common and ssm only: data and envs come in as arguments."""

from dema_lab.models.base import TrajectoryModel
from dema_lab.models.build import build_model
from dema_lab.models.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_bytes,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from dema_lab.models.config import ARCHS, LAYOUTS, ModelConfig
from dema_lab.models.cost import (
    carried_state_bytes,
    cost_summary,
    count_parameters,
    forward_macs,
    memory_problem,
    parameter_bytes,
    parameter_count,
    step_macs,
)
from dema_lab.models.dema import DecisionMamba
from dema_lab.models.dt import DecisionTransformer
from dema_lab.models.init import official_init
from dema_lab.models.mlp import MemorylessMLP
from dema_lab.models.official.unpickler import OfficialCheckpointError, UnsafeCheckpointError
from dema_lab.models.policy import MODES, BatchPolicy, Policy, inference_modes
from dema_lab.models.rnn import RecurrentBaseline, RecurrentState

__all__ = [
    "ARCHS",
    "LAYOUTS",
    "MODES",
    "BatchPolicy",
    "Checkpoint",
    "CheckpointError",
    "DecisionMamba",
    "DecisionTransformer",
    "MemorylessMLP",
    "RecurrentBaseline",
    "RecurrentState",
    "ModelConfig",
    "OfficialCheckpointError",
    "UnsafeCheckpointError",
    "checkpoint_bytes",
    "Policy",
    "TrajectoryModel",
    "build_model",
    "carried_state_bytes",
    "inference_modes",
    "official_init",
    "cost_summary",
    "count_parameters",
    "forward_macs",
    "load_checkpoint",
    "load_weights",
    "memory_problem",
    "parameter_bytes",
    "parameter_count",
    "save_checkpoint",
    "step_macs",
]
