"""The memoryless baseline: behaviour cloning on the current state and return-to-go.

The same trajectory tokens and action head as DeMa; the backbone sees, at each token, only that
token and the one `lag` tokens before it, so at the state token s_t exactly (R_t, s_t):

    [tokens[i - lag], tokens[i]] -> Linear -> [x + MLP(LayerNorm(x))] x n_layer -> LayerNorm

lag is the distance from R_t's token to s_t's: 1 for RSA and ARS, 2 for RAS; BL3D has one token
per step (R_t, a_{t-1}, s_t side by side), used alone. The MLP is DT's (d -> 4d -> d). Nothing
older reaches the prediction, so the window length K changes nothing: it acts Transformer-like.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dema_lab.models.base import TrajectoryModel
from dema_lab.models.config import ModelConfig
from dema_lab.models.dt import MLP


def return_lag(cfg: ModelConfig) -> int:
    """Tokens from R_t to s_t within a step: RSA 1, RAS 2, ARS 1; BL3D 0 (one token per step)."""
    if cfg.layout == "BL3D":
        return 0
    return cfg.token_order.index("S") - cfg.token_order.index("R")


class Residual(nn.Module):
    """x + MLP(LayerNorm(x)) (DT's block without its attention)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x):
        return x + self.mlp(self.ln(x))


class MemorylessMLP(TrajectoryModel):
    """Behaviour cloning from (R_t, s_t) (arch "mlp"); no memory, no attention maps."""

    def __init__(self, cfg: ModelConfig):
        if cfg.arch != "mlp":
            raise ValueError(f"MemorylessMLP needs arch='mlp', got {cfg.arch!r}")
        super().__init__(cfg)
        self.lag = return_lag(cfg)
        self.proj = nn.Linear(cfg.d_model * (2 if self.lag else 1), cfg.d_model)
        self.layers = nn.ModuleList([Residual(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def backbone(self, tokens, return_attention=False):
        """tokens (b, L, d) -> hidden (b, L, d), each position from itself and the token lag before it."""
        if return_attention is not False:
            raise ValueError("an MLP model has no hidden attention to return")
        x = tokens
        if self.lag:
            before = F.pad(tokens, (0, 0, self.lag, 0))[:, : tokens.shape[1]]  # (b, L, d), zeros first
            x = torch.cat([before, tokens], dim=-1)  # (b, L, 2d)
        x = self.proj(x)
        for block in self.layers:
            x = block(x)
        return self.ln_f(x)
