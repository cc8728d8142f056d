"""Hidden-attention analysis: token labels, attention by lag, and its exponential decay.

The paper's central observation is that DeMa's hidden attention decays roughly exponentially
with the distance (lag) between tokens, so a short context K suffices. Here:

    window_attention   per-layer attention over an acting window, right-aligned and labelled
    attention_by_lag   the mass a query token puts on each lag (row-normalised, averaged)
    fit_decay          mass(lag) ~ amplitude * exp(-rate * lag): rate, half-life, R^2
    decay_statistics   all of it for a model on dataset windows, as an xarray Dataset

Token positions in a window are right-aligned: position p of L_max counts back from the
current token, so labels ("s0" = the current state, "a-1" = the previous action) are the same
at every step. Lags are in tokens; `tokens_per_step` converts them to env steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from .ssm import aggregate_channels


def window_tokens(cfg) -> int:
    """Tokens in a full acting window, up to and including the current state token."""
    return cfg.window_tokens()


def token_labels(cfg) -> dict:
    """Labels of the right-aligned window positions: kind (R/s/a or t) and the step each token
    belongs to, relative to now. The a token of RAS step t holds a_{t-1}: it is labelled a-1
    like RSA's a_{t-1} token, so a label always names the action's own step."""
    L = window_tokens(cfg)
    if cfg.layout == "B3LD":
        # RSA: ... R_{-1} s_{-1} a_{-1} R_0 s_0   (position L-1 is s_0)
        # RAS: ... R_{-1} a_{-2} s_{-1} R_0 a_{-1} s_0
        order = "RSA" if cfg.token_order == "RSA" else "RAS"
        kinds, steps = [], []
        for p in range(L):
            back = L - 1 - p                       # tokens back from s_0
            if order == "RSA":
                q = back + 1                       # tokens back from a virtual a_0
                kind, step = ["a", "s", "R"][q % 3], -(q // 3)
            else:
                kind, step = ["s", "a", "R"][back % 3], -(back // 3)
                step -= kind == "a"                # the RAS action token holds the previous step's action
            kinds.append(kind)
            steps.append(step)
    else:
        kinds = ["t"] * L
        steps = [-(L - 1 - p) for p in range(L)]
    labels = [f"{k}{s}" if s else f"{k}0" for k, s in zip(kinds, steps)]
    return {"label": labels, "kind": kinds, "step": steps}


def token_coords(cfg, dim: str) -> dict:
    lab = token_labels(cfg)
    return {dim: np.arange(window_tokens(cfg)), f"{dim}_label": (dim, lab["label"]),
            f"{dim}_kind": (dim, lab["kind"]), f"{dim}_step": (dim, np.asarray(lab["step"]))}


def right_align(att: np.ndarray, L: int) -> np.ndarray:
    """(..., n, n) attention of an n-token window -> (..., L, L), right-aligned, NaN-padded."""
    n = att.shape[-1]
    out = np.full(att.shape[:-2] + (L, L), np.nan, dtype=np.float32)
    out[..., L - n:, L - n:] = att[..., -L:, -L:] if n > L else att
    return out


def lag_profile(att: np.ndarray) -> np.ndarray:
    """Row of the last (current) token by lag: (..., L, L) -> (..., L), entry l = att[L-1, L-1-l]."""
    return att[..., -1, ::-1].copy()


def attention_by_lag(att: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Row-normalised attention mass by lag, averaged over the query tokens selected.

    att (b, L, L) non-negative, causal; query_mask (L,) bool. Returns (L,) mass[lag], averaged
    over the (query, window) pairs where that lag exists; NaN where none does.
    """
    b, L, _ = att.shape
    rows = att / att.sum(-1, keepdim=True).clamp_min(1e-30)              # each row sums to 1
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    lag = (i - j).clamp_min(-1)                                          # -1 above the diagonal
    if query_mask is None:
        query_mask = torch.ones(L, dtype=torch.bool)
    valid = (lag >= 0) & query_mask[:, None]                             # (L, L)
    lag_idx = torch.where(valid, lag, torch.full_like(lag, L))          # invalid -> bin L
    sums = torch.zeros(b, L + 1, dtype=rows.dtype).scatter_add_(1, lag_idx.flatten().repeat(b, 1),
                                                                 rows.reshape(b, -1))
    counts = torch.bincount(lag_idx.flatten(), minlength=L + 1).to(rows.dtype) * b
    mass = sums.sum(0)[:L] / counts[:L]
    return torch.where(counts[:L] > 0, mass, torch.full_like(mass, float("nan")))


def fit_decay(mass: np.ndarray, tokens_per_step: int = 1) -> dict:
    """Least-squares line through log(mass) against lag: mass ~ amplitude * exp(-rate * lag).

    Returns rate (per token), amplitude, half_life (tokens), half_life_steps, r2 (of the
    log-linear fit) and n_lags used. Lags with NaN or non-positive mass are skipped.
    """
    mass = np.asarray(mass, dtype=np.float64)
    lags = np.arange(len(mass), dtype=np.float64)
    ok = np.isfinite(mass) & (mass > 0)
    nan = {"rate": np.nan, "amplitude": np.nan, "half_life": np.nan, "half_life_steps": np.nan,
           "r2": np.nan, "n_lags": int(ok.sum())}
    if ok.sum() < 3:
        return nan
    x, y = lags[ok], np.log(mass[ok])
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    rate = -slope
    half = math.log(2) / rate if rate > 0 else np.inf
    return {"rate": float(rate), "amplitude": float(np.exp(intercept)), "half_life": float(half),
            "half_life_steps": float(half / tokens_per_step), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else np.nan,
            "n_lags": int(ok.sum())}


def query_kinds(cfg) -> list[str]:
    return ["R", "s", "a"] if cfg.layout == "B3LD" else ["t"]


@torch.no_grad()
def decay_statistics(model, batch: dict, checkpoint: int | None = None, max_batch: int = 16) -> xr.Dataset:
    """Attention mass by lag and its exponential fit, per layer and query-token kind, on full
    windows of the training data (a dict from WindowSampler.sample with every mask True).

    Channels are aggregated with "abs" (mean |alpha| over d_inner; DT: mean over heads), then
    each row is normalised, so mass[lag] is the share of a token's attention at that lag.
    """
    cfg = model.cfg
    model.eval()
    inputs = {k: batch[k] for k in ("states", "actions", "returns_to_go", "timesteps")}
    n = inputs["states"].shape[0]
    per_layer = None
    for lo in range(0, n, max_batch):
        part = {k: v[lo:lo + max_batch] for k, v in inputs.items()}
        attn = model.attention(**part, aggregate="abs")                  # n_layer x (b, L, L)
        if per_layer is None:
            per_layer = [[] for _ in attn]
        for layer, a in enumerate(attn):
            per_layer[layer].append(a.abs().float())
    L = per_layer[0][0].shape[-1]
    kinds = query_kinds(cfg)
    kind_of = np.array([kinds[p % 3] for p in range(L)]) if cfg.layout == "B3LD" else np.array(["t"] * L)
    mass = np.full((len(per_layer), len(kinds), L), np.nan)
    for layer, parts in enumerate(per_layer):
        att = torch.cat(parts)
        for k, kind in enumerate(kinds):
            mass[layer, k] = attention_by_lag(att, torch.as_tensor(kind_of == kind)).numpy()
    fits = [[fit_decay(mass[l, k], cfg.tokens_per_step) for k in range(len(kinds))] for l in range(len(per_layer))]
    fit_vars = {name: (("layer", "query_kind"), np.array([[f[name] for f in row] for row in fits], dtype=np.float64))
                for name in ("rate", "amplitude", "half_life", "half_life_steps", "r2")}
    ds = xr.Dataset(
        {"mass": (("layer", "query_kind", "lag"), mass), **fit_vars},
        coords={"layer": np.arange(len(per_layer)), "query_kind": kinds, "lag": np.arange(L),
                "lag_steps": ("lag", np.arange(L) / cfg.tokens_per_step)},
        attrs={"aggregation": "abs", "n_windows": int(n), "tokens_per_step": cfg.tokens_per_step,
               "lag_unit": "tokens", "description": "share of a query token's attention at each lag, "
               "and the least-squares fit of log(mass) = log(amplitude) - rate * lag"},
    )
    ds["mass"].attrs = {"long_name": "attention mass by lag", "units": "fraction of row"}
    ds["half_life"].attrs = {"long_name": "half-life of the fitted exponential", "units": "tokens"}
    ds["half_life_steps"].attrs = {"long_name": "half-life of the fitted exponential", "units": "env steps"}
    ds["rate"].attrs = {"long_name": "fitted exponential decay rate", "units": "1/token"}
    ds["amplitude"].attrs = {"long_name": "fitted exponential's mass at lag 0", "units": "fraction of row"}
    ds["r2"].attrs = {"long_name": "R² of the exponential fit (in log space)"}
    if checkpoint is not None:
        ds = ds.expand_dims(checkpoint=[int(checkpoint)])
    return ds


def aggregate_window_attention(attn: list[torch.Tensor], method: str) -> np.ndarray:
    """Per-layer attention of one window (batch 1) -> (n_layer, n, n) aggregated over channels."""
    return np.stack([aggregate_channels(a, method)[0].float().cpu().numpy() for a in attn])
