"""The paper's attention display (PAPER_METHOD): the current token's mean |alpha| row by decision
step and lag, not normalised, its means over steps and layers and their exponential fits, per key
kind (R, s, a) too; and how a view selects from it (paper_selection).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import xarray as xr

from dema_lab.analysis.decay import DEMA_LAB_METHOD, FIT_NAMES, by_key_kind, fit_attributes, fit_variables
from dema_lab.analysis.tokens import current_token, token_labels
from dema_lab.ssm import aggregate_channels

PAPER_START = 20


PAPER_METHOD = (
    "paper: the current (last) token's row of |α|, mean over channels, at every Transformer-like "
    "decision step from 20 to the end of one recorded episode; mean over those steps, then over "
    "layers; not normalised"
)


def _window_batches(windows: list[dict], max_batch: int):
    """Consecutive windows of the same shapes, concatenated along the batch: (indices, kwargs)."""

    def shapes(w):
        return tuple((k, None if v is None else tuple(v.shape)) for k, v in w.items())

    i = 0
    while i < len(windows):
        j, sig = i + 1, shapes(windows[i])
        while j < len(windows) and j - i < max_batch and shapes(windows[j]) == sig:
            j += 1
        part = windows[i:j]
        yield range(i, j), {k: None if v is None else torch.cat([w[k] for w in part]) for k, v in part[0].items()}
        i = j


@torch.no_grad()
def last_token_attention(model, windows: list[dict], max_batch: int = 16) -> np.ndarray:
    """Mean |α| over channels of the current token's attention row, by lag, for each window.

    windows: what `Policy.window()` returns (the model's keyword arguments, batch 1 each; e.g.
    from rollout.replay_windows). Returns (n_windows, n_layer, L) float64, L = cfg.window_tokens():
    entry [w, layer, l] = mean_c |α_c[q, q - l]| with q the current token, NaN past the window's
    first token. DeMa: the d_inner channels of the hidden attention, of which only row q is
    computed (ssm.hidden_attention_row); DT: the heads' attention probabilities.
    """
    from dema_lab.ssm import Mamba

    cfg = model.cfg
    L = cfg.window_tokens()
    model.eval()
    out = np.full((len(windows), cfg.n_layer, L), np.nan)
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    for idx, kwargs in _window_batches(list(windows), max_batch):
        T = kwargs["states"].shape[1]
        if mixers:
            inputs = []  # each mixer's input (b, n_tokens, d_model), in layer order
            hooks = [m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for m in mixers]  # noqa: B023 - removed below
            try:
                model(**kwargs)
            finally:
                for h in hooks:
                    h.remove()
            q = current_token(model, T, inputs[0].shape[1])
            rows = [m.attention_row(x, q)[..., None, : q + 1] for m, x in zip(mixers, inputs)]  # (b, d, 1, q+1)
        else:
            _, attn = model(**kwargs, return_attention=True)  # (b, heads, n, n)
            q = current_token(model, T, attn[0].shape[-1])
            rows = [a[..., q : q + 1, : q + 1] for a in attn]
        for layer, r in enumerate(rows):
            by_lag = aggregate_channels(r, "abs")[:, 0].flip(-1).double().cpu().numpy()  # (b, q+1), lag 0 first
            out[idx.start : idx.stop, layer, : min(L, by_lag.shape[1])] = by_lag[:, :L]
    return out


def paper_statistics(
    surface: np.ndarray, decision_steps, cfg, checkpoint: int | None = None, attrs: dict | None = None
) -> xr.Dataset:
    """The paper's display from its surface, as a Dataset (see paper_attention).

    surface (layer, decision_step, lag): the current token's mean |α| over channels at each
    decision step, by lag in tokens (last_token_attention, transposed). Averages it over the
    steps (mass, per layer) and then over layers (curve: the paper's curve), fits an exponential
    to each (fit_decay: rate, amplitude, half-life, R²), and splits both by key kind with lags in
    env steps (mass_by_kind, curve_by_kind, with their own fits kind_* and curve_kind_*).
    """
    surface = np.asarray(surface, dtype=np.float64)
    n_layer, n_steps, L = surface.shape
    tps = cfg.tokens_per_step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN lags stay NaN
        mass = np.nanmean(surface, axis=1)  # (layer, lag)
        curve = np.nanmean(mass, axis=0)  # (lag,)
    kinds, mass_k = by_key_kind(mass, cfg)  # (layer, kind, step_lag)
    _, curve_k = by_key_kind(curve, cfg)  # (kind, step_lag)
    lab = token_labels(cfg)
    lag_label = [str(x) for x in lab["label"][::-1][:L]]
    lag_kind = [str(x) for x in lab["kind"][::-1][:L]]
    ds = xr.Dataset(
        {
            "surface": (("layer", "decision_step", "lag"), surface),
            "mass": (("layer", "lag"), mass),
            "curve": ("lag", curve),
            "mass_by_kind": (("layer", "key_kind", "step_lag"), mass_k),
            "curve_by_kind": (("key_kind", "step_lag"), curve_k),
            **fit_variables(mass, ("layer",), tps, "", "tokens"),
            **fit_variables(curve, (), tps, "curve_", "tokens"),
            **fit_variables(mass_k, ("layer", "key_kind"), 1, "kind_", "env steps"),
            **fit_variables(curve_k, ("key_kind",), 1, "curve_kind_", "env steps"),
        },
        coords={
            "layer": np.arange(n_layer),
            "decision_step": np.asarray(decision_steps, np.int64),
            "lag": np.arange(L),
            "lag_steps": ("lag", np.arange(L) / tps),
            "lag_label": ("lag", lag_label),
            "lag_kind": ("lag", lag_kind),
            "key_kind": kinds,
            "step_lag": np.arange(mass_k.shape[-1]),
        },
    )
    unit = "mean |α| over channels (not normalised)"
    ds["surface"].attrs = {"long_name": "current token's attention by lag at each decision step", "units": unit}
    ds["mass"].attrs = {"long_name": "current token's attention by lag, mean over decision steps", "units": unit}
    ds["curve"].attrs = {
        "long_name": "the paper's curve: current token's attention by lag, mean over decision steps and layers",
        "units": unit,
    }
    ds["mass_by_kind"].attrs = {
        "long_name": "current token's attention on keys of one kind by lag in env steps, mean over decision steps",
        "units": unit,
    }
    ds["curve_by_kind"].attrs = {
        "long_name": "current token's attention on keys of one kind by lag in env steps, "
        "mean over decision steps and layers",
        "units": unit,
    }
    fit_attributes(ds, "", "mass (per layer)", "tokens")
    fit_attributes(ds, "curve_", "the paper's curve (mean of layers)", "tokens")
    fit_attributes(ds, "kind_", "mass_by_kind (per layer and key kind)", "env steps")
    fit_attributes(ds, "curve_kind_", "curve_by_kind (mean of layers, per key kind)", "env steps")
    ds["decision_step"].attrs = {"long_name": "env step of the decision (0-based)", "units": "env steps"}
    ds["lag"].attrs = {"long_name": "lag from the current token", "units": "tokens"}
    ds["lag_steps"].attrs = {"long_name": "lag from the current token", "units": "env steps (tokens / tokens per step)"}
    ds["lag_label"].attrs = {"long_name": "key token at this lag (kind, step relative to now)"}
    ds["lag_kind"].attrs = {"long_name": "kind of the key token at this lag"}
    ds["step_lag"].attrs = {"long_name": "key's step before the current one", "units": "env steps"}
    ds["key_kind"].attrs = {"long_name": "kind of key token (R return-to-go, s state, a action; t BL3D step token)"}
    ds.attrs = {
        "method": PAPER_METHOD,
        "other_method": DEMA_LAB_METHOD,
        "aggregation": "abs",
        "tokens_per_step": tps,
        "lag_unit": "tokens",
        "n_steps": int(n_steps),
        "official": "AndssY/dema branch attention: gym/decision_transformer/evaluation/evaluate_episodes.py "
        "(evaluate_episode_rtg, attention='step'), gym/plot_attn.py",
        "description": "fits: least-squares line through log(value) against lag, value ~ amplitude * "
        "exp(-rate * lag) (fit_decay)",
        **(attrs or {}),
    }
    if checkpoint is not None:
        ds = ds.expand_dims(checkpoint=[int(checkpoint)])
        ds["checkpoint"].attrs = {"long_name": "training step of the checkpoint"}
    return ds


def paper_selection(ds: xr.Dataset, layer: int | None = None) -> dict:
    """What a view of the paper's display draws, for one layer or (layer None) the mean of
    layers (the paper's own): surface (decision_step, lag), decision_steps, curve (lag) with its
    fit, by_kind {kind: values by env-step lag} with fits, lag_labels, tokens_per_step.
    ds: a paper_attention Dataset of one checkpoint (no checkpoint dim)."""

    def fit(prefix, sel=None):
        out = {}
        for n in FIT_NAMES:
            if f"{prefix}{n}" in ds:
                v = ds[f"{prefix}{n}"]
                out[n] = float(v.sel(sel).values if sel else v.values)
        return out

    if "checkpoint" in ds.dims:
        raise ValueError("paper_selection takes one checkpoint's display: select it first (ds.sel(checkpoint=...))")
    kinds = [str(k) for k in ds["key_kind"].values]
    if layer is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            surface = np.nanmean(ds["surface"].values, axis=0)
        curve, curve_fit = ds["curve"].values, fit("curve_")
        by_kind = {k: ds["curve_by_kind"].sel(key_kind=k).values for k in kinds}
        kind_fits = {k: fit("curve_kind_", {"key_kind": k}) for k in kinds}
    else:
        if int(layer) not in ds["layer"].values:
            raise ValueError(f"layer {layer} is not in this display (layers {list(ds['layer'].values)})")
        sel = {"layer": int(layer)}
        surface, curve, curve_fit = ds["surface"].sel(sel).values, ds["mass"].sel(sel).values, fit("", sel)
        by_kind = {k: ds["mass_by_kind"].sel(layer=int(layer), key_kind=k).values for k in kinds}
        kind_fits = {k: fit("kind_", {"layer": int(layer), "key_kind": k}) for k in kinds}
    steps = ds["decision_step"].values
    keep = np.isfinite(surface).any(axis=1)  # steps past this episode's end (after a concat) are NaN
    return {
        "surface": surface[keep],
        "decision_steps": steps[keep],
        "curve": curve,
        "fit": curve_fit,
        "by_kind": by_kind,
        "kind_fits": kind_fits,
        "lag_labels": [str(x) for x in ds["lag_label"].values],
        "tokens_per_step": int(ds.attrs.get("tokens_per_step", 1)),
    }
