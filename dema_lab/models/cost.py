"""Parameters and multiply-accumulates (MACs) of a model config, counted analytically.

Counted: every matrix product (embeddings, projections, attention scores and mixing, the
action head), the depthwise conv, and the selective scan (3 MACs per channel and state per
token: decay x state, input x B, C x state). Norms, activations and exp are not counted.
"""

from __future__ import annotations

import math

from dema_lab.models.build import build_model
from dema_lab.models.config import ModelConfig


def _cnn_macs(obs_shape, width: int) -> int:
    """The Nature CNN (models/cnn.py) on one stacked frame: three convs and the Linear to width."""
    c, h, w = obs_shape
    macs = 0
    for c_out, k, s in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
        h, w = (h - k) // s + 1, (w - k) // s + 1
        macs += h * w * c_out * k * k * c
        c = c_out
    return macs + c * h * w * width


def _head_size(cfg: ModelConfig) -> int:
    return cfg.n_actions or cfg.act_dim


def _embed_macs(cfg: ModelConfig) -> int:
    """Per env step: the three embeddings (+ the projection to d_model: BL3D's, or the official
    DeMa's from 128-wide embeddings). Atari: the CNN on the state; the action is a table lookup."""
    w = cfg.token_width
    state = _cnn_macs(cfg.obs_shape, w) if cfg.obs_shape else w * cfg.state_dim
    macs = w * (1 + (0 if cfg.discrete else cfg.act_dim)) + state
    if cfg.layout == "BL3D":
        macs += 3 * w * cfg.d_model
    elif cfg.embed_dim:
        macs += 3 * w * cfg.d_model
    return macs


def _mamba_token_macs(cfg: ModelConfig) -> int:
    d, di, n = cfg.d_model, cfg.expand * cfg.d_model, cfg.d_state
    r = math.ceil(d / 16)
    return (
        d * 2 * di  # in_proj
        + di * cfg.d_conv  # depthwise conv
        + di * (r + 2 * n)  # x_proj
        + r * di  # dt_proj
        + 3 * di * n  # selective scan
        + di * d
    )  # out_proj


def _transformer_layer_macs(cfg: ModelConfig, L: int) -> int:
    """One layer over a causal sequence of L tokens."""
    d = cfg.d_model
    dense = L * (3 * d * d + d * d + 8 * d * d)  # qkv, proj, 4x MLP
    attn = 2 * d * L * (L + 1) // 2  # scores + mixing, causal
    return dense + attn


def forward_macs(cfg: ModelConfig, steps: int | None = None) -> int:
    """MACs of one forward pass over a window of `steps` env steps (default K), batch 1."""
    T = cfg.K if steps is None else steps
    L = T * cfg.tokens_per_step
    macs = T * _embed_macs(cfg) + T * cfg.d_model * _head_size(cfg)  # embeddings + head
    if cfg.arch == "dema":
        macs += cfg.n_layer * L * _mamba_token_macs(cfg)
    else:
        macs += cfg.n_layer * _transformer_layer_macs(cfg, L)
    return macs


def step_macs(cfg: ModelConfig, mode: str = "transformer") -> int:
    """MACs to choose one action in steady state (t >= K), batch 1."""
    if mode == "transformer":
        return forward_macs(cfg)
    if mode != "rnn" or cfg.arch != "dema":
        raise ValueError(f"no {mode!r} inference for arch {cfg.arch!r}")
    return _embed_macs(cfg) + cfg.d_model * _head_size(cfg) + cfg.n_layer * cfg.tokens_per_step * _mamba_token_macs(cfg)


def count_parameters(cfg_or_model) -> int:
    """Trainable parameters of a model, or of the model a config builds."""

    model = build_model(cfg_or_model) if isinstance(cfg_or_model, ModelConfig) else cfg_or_model
    return sum(p.numel() for p in model.parameters())


def cost_summary(cfg: ModelConfig) -> dict:
    out = {
        "parameters": count_parameters(cfg),
        "forward_macs": forward_macs(cfg),
        "step_macs_transformer": step_macs(cfg, "transformer"),
    }
    if cfg.arch == "dema":
        out["step_macs_rnn"] = step_macs(cfg, "rnn")
    return out
