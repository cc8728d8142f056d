"""build_model: the one place a ModelConfig becomes a model."""

from __future__ import annotations

from dema_lab.models.base import TrajectoryModel
from dema_lab.models.config import ModelConfig
from dema_lab.models.dema import DecisionMamba
from dema_lab.models.dt import DecisionTransformer
from dema_lab.models.mlp import MemorylessMLP
from dema_lab.models.rnn import RecurrentBaseline

MODELS = {
    "dema": DecisionMamba,
    "dt": DecisionTransformer,
    "lstm": RecurrentBaseline,
    "gru": RecurrentBaseline,
    "mlp": MemorylessMLP,
}


def build_model(cfg: ModelConfig) -> TrajectoryModel:
    """The model a config describes: DecisionMamba for arch "dema", DecisionTransformer for "dt",
    RecurrentBaseline for "lstm" and "gru", MemorylessMLP for "mlp"."""
    return MODELS[cfg.arch](cfg)
