"""Attention by lag and its exponential decay (dema-lab's method, DEMA_LAB_METHOD).

    attention_by_lag   the mass a query token puts on each lag (row-normalised, averaged)
    fit_decay          mass(lag) ~ amplitude * exp(-rate * lag): rate, half-life, R^2
    decay_statistics   all of it for a model on dataset windows, as an xarray Dataset

Lags are in tokens; `tokens_per_step` converts them to env steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from dema_lab.analysis.tokens import query_kinds, token_labels


def lag_profile(att: np.ndarray) -> np.ndarray:
    """Row of the last (current) token by lag: (..., L, L) -> (..., L), entry l = att[L-1, L-1-l]."""
    return att[..., -1, ::-1].copy()


def attention_by_lag(att: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Row-normalised attention mass by lag, averaged over the query tokens selected.

    att (b, L, L) non-negative, causal; query_mask (L,) bool. Returns (L,) mass[lag], averaged
    over the (query, window) pairs where that lag exists; NaN where none does.
    """
    b, L, _ = att.shape
    rows = att / att.sum(-1, keepdim=True).clamp_min(1e-30)  # each row sums to 1
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    lag = (i - j).clamp_min(-1)  # -1 above the diagonal
    if query_mask is None:
        query_mask = torch.ones(L, dtype=torch.bool)
    valid = (lag >= 0) & query_mask[:, None]  # (L, L)
    lag_idx = torch.where(valid, lag, torch.full_like(lag, L))  # invalid -> bin L
    sums = torch.zeros(b, L + 1, dtype=rows.dtype).scatter_add_(1, lag_idx.flatten().repeat(b, 1), rows.reshape(b, -1))
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
    nan = {
        "rate": np.nan,
        "amplitude": np.nan,
        "half_life": np.nan,
        "half_life_steps": np.nan,
        "r2": np.nan,
        "n_lags": int(ok.sum()),
    }
    if ok.sum() < 3:
        return nan
    x, y = lags[ok], np.log(mass[ok])
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    rate = -slope
    half = math.log(2) / rate if rate > 0 else np.inf
    return {
        "rate": float(rate),
        "amplitude": float(np.exp(intercept)),
        "half_life": float(half),
        "half_life_steps": float(half / tokens_per_step),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else np.nan,
        "n_lags": int(ok.sum()),
    }


@torch.no_grad()
def decay_statistics(model, batch: dict, checkpoint: int | None = None, max_batch: int = 16) -> xr.Dataset:
    """Attention mass by lag and its exponential fit, per layer and query-token kind, on full
    windows of the training data (a dict from WindowSampler.sample with every mask True).

    Channels are aggregated with "abs" (mean |alpha| over d_inner; DT: mean over heads), then
    each row is normalised, so mass[lag] is the share of a token's attention at that lag.
    """
    cfg = model.cfg
    model.eval()
    inputs = {k: batch[k] for k in ("states", "actions", "returns_to_go", "timesteps", "prev_action") if k in batch}
    n = inputs["states"].shape[0]
    per_layer = None
    for lo in range(0, n, max_batch):
        part = {k: v[lo : lo + max_batch] for k, v in inputs.items()}
        attn = model.attention(**part, aggregate="abs")  # n_layer x (b, L, L)
        if per_layer is None:
            per_layer = [[] for _ in attn]
        for layer, a in enumerate(attn):
            per_layer[layer].append(a.abs().float())
    L = per_layer[0][0].shape[-1]
    kinds = query_kinds(cfg)
    pattern = token_labels(cfg)["kind"][:3]  # one step's tokens, in the config's order
    kind_of = np.array([pattern[p % 3] for p in range(L)]) if cfg.layout == "B3LD" else np.array(["t"] * L)
    mass = np.full((len(per_layer), len(kinds), L), np.nan)
    for layer, parts in enumerate(per_layer):
        att = torch.cat(parts)
        for k, kind in enumerate(kinds):
            mass[layer, k] = attention_by_lag(att, torch.as_tensor(kind_of == kind)).numpy()
    fits = [[fit_decay(mass[l, k], cfg.tokens_per_step) for k in range(len(kinds))] for l in range(len(per_layer))]
    fit_vars = {
        name: (("layer", "query_kind"), np.array([[f[name] for f in row] for row in fits], dtype=np.float64))
        for name in ("rate", "amplitude", "half_life", "half_life_steps", "r2")
    }
    ds = xr.Dataset(
        {"mass": (("layer", "query_kind", "lag"), mass), **fit_vars},
        coords={
            "layer": np.arange(len(per_layer)),
            "query_kind": kinds,
            "lag": np.arange(L),
            "lag_steps": ("lag", np.arange(L) / cfg.tokens_per_step),
        },
        attrs={
            "aggregation": "abs",
            "n_windows": int(n),
            "tokens_per_step": cfg.tokens_per_step,
            "lag_unit": "tokens",
            "description": "share of a query token's attention at each lag, "
            "and the least-squares fit of log(mass) = log(amplitude) - rate * lag",
        },
    )
    ds["mass"].attrs = {"long_name": "attention mass by lag", "units": "fraction of row"}
    ds["half_life"].attrs = {"long_name": "half-life of the fitted exponential", "units": "tokens"}
    ds["half_life_steps"].attrs = {"long_name": "half-life of the fitted exponential", "units": "env steps"}
    ds["rate"].attrs = {"long_name": "fitted exponential decay rate", "units": "1/token"}
    ds["amplitude"].attrs = {"long_name": "fitted exponential's mass at lag 0", "units": "fraction of row"}
    ds["r2"].attrs = {"long_name": "R² of the exponential fit (in log space)"}
    ds.attrs["method"] = DEMA_LAB_METHOD
    # the acting (current state) token's row by key kind, lags in env steps: no R/s/a sawtooth in the fit
    current = token_labels(cfg)["kind"][-1]
    if current in kinds:
        key_kinds, by_kind = by_key_kind(mass[:, kinds.index(current)], cfg)  # (layer, key_kind, step_lag)
        ds = ds.assign_coords(key_kind=key_kinds, step_lag=np.arange(by_kind.shape[-1])).assign(
            mass_by_kind=(("layer", "key_kind", "step_lag"), by_kind),
            **fit_variables(by_kind, ("layer", "key_kind"), 1, "kind_", "env steps"),
        )
        ds["mass_by_kind"].attrs = {
            "long_name": f"share of the current ({current}) token's attention on keys of one kind by lag in env steps",
            "units": "fraction of row",
            "query_kind": current,
        }
        fit_attributes(ds, "kind_", f"mass_by_kind (the current {current} token, per layer and key kind)", "env steps")
        ds["kind_amplitude"].attrs["units"] = "fraction of row"
        ds["step_lag"].attrs = {"long_name": "key's step before the current one", "units": "env steps"}
    if checkpoint is not None:
        ds = ds.expand_dims(checkpoint=[int(checkpoint)])
    return ds


DEMA_LAB_METHOD = (
    "dema-lab: every query token's row of mean |α| over channels, normalised to sum 1, "
    "averaged over full windows of the training data, per layer and query kind"
)


def by_key_kind(mass: np.ndarray, cfg) -> tuple[list[str], np.ndarray]:
    """Attention by lag in tokens (..., L) -> by key kind and lag in env steps (..., kind, step_lag).

    Entry [..., k, s] is the value at the key of kind k that belongs to the step s steps before
    the current one (token_labels), NaN where the window has no such key (e.g. no a_t at lag 0).
    Fitting each kind on its own keeps the R/s/a sawtooth of the token-lag curve out of the fit.
    Returns (kinds, array)."""
    lab = token_labels(cfg)
    mass = np.asarray(mass, dtype=np.float64)
    m = min(mass.shape[-1], len(lab["kind"]))
    kind_by_lag = np.asarray(lab["kind"])[::-1][:m]  # lag l <-> position L-1-l
    steps_back = -np.asarray(lab["step"])[::-1][:m]
    present = set(kind_by_lag.tolist())
    kinds = [k for k in query_kinds(cfg) if k in present] + sorted(present - set(query_kinds(cfg)))
    out = np.full(mass.shape[:-1] + (len(kinds), int(steps_back.max()) + 1), np.nan)
    for k, kind in enumerate(kinds):
        sel = kind_by_lag == kind
        out[..., k, steps_back[sel]] = mass[..., :m][..., sel]
    return kinds, out


def fit_variables(curves: np.ndarray, dims: tuple, tokens_per_step: int, prefix: str, unit: str) -> dict:
    """fit_decay over the last axis of `curves` -> {prefix+name: (dims, values)} for FIT_NAMES."""
    flat = curves.reshape(-1, curves.shape[-1])
    fits = [fit_decay(c, tokens_per_step) for c in flat]
    shape = curves.shape[:-1]
    names = FIT_NAMES if unit == "tokens" else ("rate", "amplitude", "half_life", "r2")
    return {f"{prefix}{n}": (dims, np.array([f[n] for f in fits], dtype=np.float64).reshape(shape)) for n in names}


def fit_attributes(ds: xr.Dataset, prefix: str, what: str, unit: str) -> None:
    lag_unit = "token" if unit == "tokens" else "env step"
    ds[f"{prefix}rate"].attrs = {"long_name": f"fitted exponential decay rate of {what}", "units": f"1/{lag_unit}"}
    ds[f"{prefix}amplitude"].attrs = {"long_name": f"fitted exponential's value at lag 0, {what}", "units": "mean |α|"}
    ds[f"{prefix}half_life"].attrs = {"long_name": f"half-life of the fitted exponential, {what}", "units": unit}
    if f"{prefix}half_life_steps" in ds:
        ds[f"{prefix}half_life_steps"].attrs = {
            "long_name": f"half-life of the fitted exponential, {what}",
            "units": "env steps",
        }
    ds[f"{prefix}r2"].attrs = {"long_name": f"R² of the exponential fit (in log space), {what}"}


FIT_NAMES = ("rate", "amplitude", "half_life", "half_life_steps", "r2")
