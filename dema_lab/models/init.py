"""The official DeMa's initial weights (mamba_ssm's `_init_weights`, which the official
`Mamba_mujoco` and its `MixerModel` apply to the whole model):

    every nn.Linear bias      zeros, except dt_proj.bias (its softplus-inverse init is kept)
    every nn.Embedding        N(0, 0.02)
    every mixer's out_proj    kaiming_uniform(a=sqrt(5)), then divided by sqrt(n_layer)
                              (GPT-2's rescaling of the residual branches, one per layer)

dema-lab's own runs keep PyTorch's defaults (TrainConfig.init = "torch").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


@torch.no_grad()
def official_init(model: nn.Module, initializer_range: float = 0.02) -> nn.Module:
    """Re-initialise `model` in place as the official code does; returns it."""
    n_layer = model.cfg.n_layer
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=initializer_range)
        out_proj = getattr(module, "out_proj", None)
        if isinstance(out_proj, nn.Linear) and hasattr(module, "A_log"):  # a Mamba mixer
            nn.init.kaiming_uniform_(out_proj.weight, a=math.sqrt(5))
            out_proj.weight /= math.sqrt(n_layer)
    return model
