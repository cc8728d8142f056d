"""Parameters and multiply-accumulates (MACs) of a model config, counted analytically.

Counted: every matrix product (embeddings, projections, attention scores and mixing, the
action head, the LSTM's and GRU's gates), the depthwise conv, and the selective scan (3 MACs per
channel and state per token: decay x state, input x B, C x state). Norms, activations, exp and the
gates' elementwise products are not counted.
"""

from __future__ import annotations

import math
import os

import torch

from dema_lab.models.build import build_model
from dema_lab.models.config import ModelConfig
from dema_lab.models.mlp import return_lag


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


def _rnn_gates(cfg: ModelConfig) -> int:
    """Gate blocks of an LSTM (4: input, forget, cell, output) or a GRU (3: reset, update, new) layer."""
    return 4 if cfg.arch == "lstm" else 3


def _rnn_token_macs(cfg: ModelConfig) -> int:
    """One LSTM or GRU layer on one token: every gate's input and hidden d x d products."""
    return _rnn_gates(cfg) * 2 * cfg.d_model * cfg.d_model


def _mlp_token_macs(cfg: ModelConfig) -> int:
    """The memoryless MLP on one token: its input projection and n_layer d -> 4d -> d MLPs."""
    d = cfg.d_model
    return (2 if return_lag(cfg) else 1) * d * d + cfg.n_layer * 8 * d * d


def forward_macs(cfg: ModelConfig, steps: int | None = None) -> int:
    """MACs of one forward pass over a window of `steps` env steps (default K), batch 1."""
    T = cfg.K if steps is None else steps
    L = T * cfg.tokens_per_step
    macs = T * _embed_macs(cfg) + T * cfg.d_model * _head_size(cfg)  # embeddings + head
    if cfg.arch == "dema":
        macs += cfg.n_layer * L * _mamba_token_macs(cfg)
    elif cfg.arch in ("lstm", "gru"):
        macs += cfg.n_layer * L * _rnn_token_macs(cfg)
    elif cfg.arch == "mlp":
        macs += L * _mlp_token_macs(cfg)
    else:
        macs += cfg.n_layer * _transformer_layer_macs(cfg, L)
    return macs


def step_macs(cfg: ModelConfig, mode: str = "transformer") -> int:
    """MACs to choose one action in steady state (t >= K), batch 1."""
    if mode == "transformer":
        return forward_macs(cfg)
    if mode != "rnn" or not cfg.recurrent:
        raise ValueError(f"no {mode!r} inference for arch {cfg.arch!r}")
    layer = _mamba_token_macs(cfg) if cfg.arch == "dema" else _rnn_token_macs(cfg)
    return _embed_macs(cfg) + cfg.d_model * _head_size(cfg) + cfg.n_layer * cfg.tokens_per_step * layer


def carried_state_bytes(cfg: ModelConfig, mode: str = "rnn", dtype: torch.dtype = torch.float32) -> int:
    """Bytes a policy carries from one env step to the next, per episode, in `dtype`.
    RNN-like: DeMa's conv inputs (d_inner x d_conv) and SSM state (d_inner x d_state, always
    float32) per layer; the LSTM's h and c, the GRU's h (n_layer x d_model each).
    Transformer-like: the last K steps' inputs it re-runs on (R, s, a and the timestep t)."""
    if mode == "transformer":
        return cfg.K * (cfg.state_dim + cfg.act_dim + 2) * dtype.itemsize
    if mode != "rnn" or not cfg.recurrent:
        raise ValueError(f"no {mode!r} inference for arch {cfg.arch!r}")
    if cfg.arch == "dema":
        di = cfg.expand * cfg.d_model
        return cfg.n_layer * di * (cfg.d_conv * dtype.itemsize + cfg.d_state * torch.float32.itemsize)
    return cfg.n_layer * cfg.d_model * (2 if cfg.arch == "lstm" else 1) * dtype.itemsize


def count_parameters(cfg_or_model) -> int:
    """Trainable parameters of a model, or of the model a config builds."""

    model = build_model(cfg_or_model) if isinstance(cfg_or_model, ModelConfig) else cfg_or_model
    return sum(p.numel() for p in model.parameters())


def _norm_params(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model  # LayerNorm: weight and bias


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` builds, counted from the config alone (no model is built, so
    this is instant and safe for any size): what count_parameters(cfg) returns."""
    d, w = cfg.d_model, cfg.token_width
    n = 2 * w  # embed_return: Linear(1, w)
    n += cfg.n_actions * w if cfg.discrete else cfg.act_dim * w + w
    if cfg.obs_shape:  # the Nature CNN
        c, h, wd = cfg.obs_shape
        for c_out, k, s in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            n += c_out * c * k * k + c_out
            h, wd, c = (h - k) // s + 1, (wd - k) // s + 1, c_out
        n += c * h * wd * w + w
    else:
        n += cfg.state_dim * w + w
    if cfg.timestep_embedding:
        n += cfg.max_ep_len * w
    if cfg.embed_dim or cfg.layout == "BL3D":
        n += (3 * w if cfg.layout == "BL3D" else w) * d + d
    if cfg.embed_norm == "layernorm":
        n += _norm_params(cfg)
    n += d * cfg.n_actions if cfg.discrete else d * cfg.act_dim + cfg.act_dim  # the action head
    if cfg.arch == "dema":
        di, r, ds = cfg.expand * d, math.ceil(d / 16), cfg.d_state
        mixer = d * 2 * di + di * cfg.d_conv + di + di * (r + 2 * ds) + r * di + di + di * ds + di + di * d
        n += cfg.n_layer * (d + mixer) + d  # RMSNorm per block, the final RMSNorm
    elif cfg.arch in ("lstm", "gru"):  # torch's weight_ih, weight_hh and both biases per gate
        n += cfg.n_layer * _rnn_gates(cfg) * (2 * d * d + 2 * d) + d  # the final RMSNorm
    elif cfg.arch == "mlp":
        block = _norm_params(cfg) + (4 * d * d + 4 * d) + (4 * d * d + d)
        n += (2 if return_lag(cfg) else 1) * d * d + d + cfg.n_layer * block + _norm_params(cfg)
    else:
        block = 2 * _norm_params(cfg) + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
        n += cfg.n_layer * block + _norm_params(cfg)
    return n


def parameter_bytes(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one copy of the model's weights and buffers (a state dict) in `dtype`, from the config
    alone. A caller multiplies by the copies it holds: loading a checkpoint holds about two (the
    file's tensors and the model), training about four (weights, gradients, AdamW's two moments)
    plus the activations it estimates itself."""
    buffers = cfg.obs_shape[1] * cfg.obs_shape[2] + 1 if cfg.obs_shape and cfg.frame_norm == "center" else 0
    return (parameter_count(cfg) + buffers) * dtype.itemsize


def available_memory() -> int | None:
    """Bytes of memory the machine can give now (Linux MemAvailable; else free physical pages);
    None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB', 4.4e12 -> '4.0 TiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def memory_problem(
    cfg: ModelConfig, copies: int = 2, what: str = "the model", available: int | None = None
) -> str | None:
    """None if `copies` copies of the model's weights (parameter_bytes) fit the memory available
    (default: available_memory()), else one line naming the size, the memory and the config values
    that set it: what a loader, an importer or a trainer raises before it allocates anything."""
    available = available_memory() if available is None else available
    need = copies * parameter_bytes(cfg)
    if available is None or need <= available:
        return None
    sizes = [f"d_model {cfg.d_model}", f"n_layer {cfg.n_layer}"]
    if cfg.embed_dim:
        sizes.append(f"embed_dim {cfg.embed_dim}")
    if cfg.timestep_embedding:
        sizes.append(f"max_ep_len {cfg.max_ep_len}")
    if cfg.arch == "dema":
        sizes += [f"d_state {cfg.d_state}", f"expand {cfg.expand}"]
    return (
        f"{what} needs about {format_bytes(need)} of memory for its {parameter_count(cfg):,} parameters "
        f"({', '.join(sizes)}), more than the {format_bytes(available)} available: choose smaller sizes"
    )


def cost_summary(cfg: ModelConfig) -> dict:
    out = {
        "parameters": count_parameters(cfg),
        "forward_macs": forward_macs(cfg),
        "step_macs_transformer": step_macs(cfg, "transformer"),
    }
    if cfg.recurrent:
        out["step_macs_rnn"] = step_macs(cfg, "rnn")
    return out
