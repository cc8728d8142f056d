"""build_model: the one place a ModelConfig becomes a model."""

from __future__ import annotations

from dema_lab.models.base import TrajectoryModel
from dema_lab.models.config import ModelConfig
from dema_lab.models.dema import DecisionMamba
from dema_lab.models.dt import DecisionTransformer


def build_model(cfg: ModelConfig) -> TrajectoryModel:
    """The model a config describes: DecisionMamba for arch "dema", DecisionTransformer for "dt"."""
    return DecisionMamba(cfg) if cfg.arch == "dema" else DecisionTransformer(cfg)
