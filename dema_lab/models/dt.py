"""Decision Transformer: the same trajectory tokens through GPT-style causal self-attention
(nanoGPT's blocks; no position embedding beyond DT's timestep embedding). The MLP's activation
is GELU (nanoGPT) or ReLU (`cfg.activation`: the DT and DeMa repositories' GPT-2 uses ReLU)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dema_lab.models.base import TrajectoryModel
from dema_lab.models.config import ModelConfig


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; with return_attention also the softmax weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout

    def forward(self, x, return_attention=False):
        b, L, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(b, L, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))  # (b, h, L, hd)
        if return_attention:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])  # (b, h, L, L)
            mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            y = self.attn_dropout(att) @ v
        else:
            att = None
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).contiguous().view(b, L, d)
        y = self.resid_dropout(self.c_proj(y))
        return (y, att) if return_attention else y


class MLP(nn.Module):
    """d -> 4d -> d with GELU or ReLU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = F.relu if cfg.activation == "relu" else F.gelu
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2 names: ln_1, attn, ln_2, mlp)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x, return_attention=False):
        if return_attention:
            y, att = self.attn(self.ln_1(x), return_attention=True)
            x = x + y
            return x + self.mlp(self.ln_2(x)), att
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class DecisionTransformer(TrajectoryModel):
    """DT (Chen et al. 2021): trajectory tokens through causal self-attention blocks."""

    def __init__(self, cfg: ModelConfig):
        if cfg.arch != "dt":
            raise ValueError(f"DecisionTransformer needs arch='dt', got {cfg.arch!r}")
        super().__init__(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def backbone(self, tokens, return_attention=False):
        x, attn = self.drop(tokens), []
        for i, block in enumerate(self.layers):
            if self.attention_wanted(return_attention, i):
                x, att = block(x, return_attention=True)  # att (b, n_head, L, L)
                attn.append(att)
            else:
                x = block(x)
                attn.append(None)
        x = self.ln_f(x)
        return (x, attn) if return_attention is not False else x
