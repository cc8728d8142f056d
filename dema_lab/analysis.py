"""Hidden-attention analysis: token labels, attention by lag, and its exponential decay.

The paper's central observation is that DeMa's hidden attention decays roughly exponentially
with the distance (lag) between tokens, so a short context K suffices. Here:

    window_attention   per-layer attention over an acting window, right-aligned and labelled
    attention_by_lag   the mass a query token puts on each lag (row-normalised, averaged)
    fit_decay          mass(lag) ~ amplitude * exp(-rate * lag): rate, half-life, R^2
    decay_statistics   all of it for a model on dataset windows, as an xarray Dataset
                       (dema-lab's method, DEMA_LAB_METHOD)
    by_key_kind        attention by lag in tokens -> by key kind (R/s/a) and lag in env steps
    paper_attention    the paper's display (PAPER_METHOD) on a recorded Transformer-like episode:
                       the current token's mean |α| row by decision step and lag, not normalised,
                       its means over steps and layers and their fits; publish_paper_attention
                       stores it in a run (paper_attention/<checkpoint>)

Token positions in a window are right-aligned: position p of L_max counts back from the
current token, so labels ("s0" = the current state, "a-1" = the previous action) are the same
at every step. Lags are in tokens; `tokens_per_step` converts them to env steps.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import xarray as xr

from .ssm import aggregate_channels


def token_labels(cfg) -> dict:
    """Labels of the right-aligned window positions: kind (R/s/a or t) and the step each token
    belongs to, relative to now. The a token of RAS step t holds a_{t-1}: it is labelled a-1
    like RSA's a_{t-1} token, so a label always names the action's own step."""
    L = cfg.window_tokens()
    if cfg.layout == "B3LD":
        # RSA: ... R_{-1} s_{-1} a_{-1} R_0 s_0   (position L-1 is s_0)
        # RAS: ... R_{-1} a_{-2} s_{-1} R_0 a_{-1} s_0
        order = getattr(cfg, "token_order", "RSA")  # ARS (Atari): ... a_{-2} R_{-1} s_{-1} a_{-1} R_0 s_0
        kinds, steps = [], []
        for p in range(L):
            back = L - 1 - p  # tokens back from s_0
            if order == "RSA":
                q = back + 1  # tokens back from a virtual a_0
                kind, step = ["a", "s", "R"][q % 3], -(q // 3)
            else:
                kind, step = (["s", "a", "R"] if order == "RAS" else ["s", "R", "a"])[back % 3], -(back // 3)
                step -= kind == "a"  # the RAS/ARS action token holds the previous step's action
            kinds.append(kind)
            steps.append(step)
    else:
        kinds = ["t"] * L
        steps = [-(L - 1 - p) for p in range(L)]
    labels = [f"{k}{s}" if s else f"{k}0" for k, s in zip(kinds, steps)]
    return {"label": labels, "kind": kinds, "step": steps}


def token_coords(cfg, dim: str) -> dict:
    lab = token_labels(cfg)
    return {
        dim: np.arange(cfg.window_tokens()),
        f"{dim}_label": (dim, lab["label"]),
        f"{dim}_kind": (dim, lab["kind"]),
        f"{dim}_step": (dim, np.asarray(lab["step"])),
    }


def opening_step(n_steps: int, K: int) -> int:
    """The step a view of a recorded episode opens on: the middle of the episode, and never before
    the window is full (step K-1), so that the heatmap and the lag profile have a whole window."""
    if n_steps <= 0:
        return 0
    return int(min(n_steps - 1, max(n_steps // 2, K - 1)))


def right_align(att: np.ndarray, L: int) -> np.ndarray:
    """(..., n, n) attention of an n-token window -> (..., L, L), right-aligned, NaN-padded."""
    n = att.shape[-1]
    out = np.full(att.shape[:-2] + (L, L), np.nan, dtype=np.float32)
    out[..., L - n :, L - n :] = att[..., -L:, -L:] if n > L else att
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
            **_fit_vars(by_kind, ("layer", "key_kind"), 1, "kind_", "env steps"),
        )
        ds["mass_by_kind"].attrs = {
            "long_name": f"share of the current ({current}) token's attention on keys of one kind by lag in env steps",
            "units": "fraction of row",
            "query_kind": current,
        }
        _fit_attrs(ds, "kind_", f"mass_by_kind (the current {current} token, per layer and key kind)", "env steps")
        ds["kind_amplitude"].attrs["units"] = "fraction of row"
        ds["step_lag"].attrs = {"long_name": "key's step before the current one", "units": "env steps"}
    if checkpoint is not None:
        ds = ds.expand_dims(checkpoint=[int(checkpoint)])
    return ds


# ---------------------------------------------------------------------------------------------
# The paper's attention display (official code, branch `attention`: evaluate_episodes.py
# `evaluate_episode_rtg(attention="step")` with experiment.py's --start_time 20 --end_time 800,
# and plot_attn.py). At each Transformer-like decision step t >= 20 of one rollout it keeps the
# last token's row of |alpha| (per layer and channel; the window is whatever the policy acted on,
# left-padded to K steps there), averages it over channels, plots decision step x position per
# layer, then averages over steps and layers. No row normalisation, no fit.

PAPER_START = 20
PAPER_METHOD = (
    "paper: the current (last) token's row of |α|, mean over channels, at every Transformer-like "
    "decision step from 20 to the end of one recorded episode; mean over those steps, then over "
    "layers; not normalised"
)
DEMA_LAB_METHOD = (
    "dema-lab: every query token's row of mean |α| over channels, normalised to sum 1, "
    "averaged over full windows of the training data, per layer and query kind"
)
FIT_NAMES = ("rate", "amplitude", "half_life", "half_life_steps", "r2")


def current_token(model, n_steps: int, n_tokens: int) -> int:
    """Index, in a window of `n_steps` steps and `n_tokens` tokens, of the token that predicts
    the window's last action (the current state token: the paper's "last token")."""
    pos = model.embed.action_positions(n_steps)
    if isinstance(pos, slice):
        return range(n_tokens)[pos][-1]
    return int(torch.as_tensor(pos).reshape(-1)[-1])


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
    from .ssm import Mamba

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


def _fit_vars(curves: np.ndarray, dims: tuple, tokens_per_step: int, prefix: str, unit: str) -> dict:
    """fit_decay over the last axis of `curves` -> {prefix+name: (dims, values)} for FIT_NAMES."""
    flat = curves.reshape(-1, curves.shape[-1])
    fits = [fit_decay(c, tokens_per_step) for c in flat]
    shape = curves.shape[:-1]
    names = FIT_NAMES if unit == "tokens" else ("rate", "amplitude", "half_life", "r2")
    return {f"{prefix}{n}": (dims, np.array([f[n] for f in fits], dtype=np.float64).reshape(shape)) for n in names}


def _fit_attrs(ds: xr.Dataset, prefix: str, what: str, unit: str) -> None:
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
            **_fit_vars(mass, ("layer",), tps, "", "tokens"),
            **_fit_vars(curve, (), tps, "curve_", "tokens"),
            **_fit_vars(mass_k, ("layer", "key_kind"), 1, "kind_", "env steps"),
            **_fit_vars(curve_k, ("key_kind",), 1, "curve_kind_", "env steps"),
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
    _fit_attrs(ds, "", "mass (per layer)", "tokens")
    _fit_attrs(ds, "curve_", "the paper's curve (mean of layers)", "tokens")
    _fit_attrs(ds, "kind_", "mass_by_kind (per layer and key kind)", "env steps")
    _fit_attrs(ds, "curve_kind_", "curve_by_kind (mean of layers, per key kind)", "env steps")
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


def paper_attention(
    model,
    episode: xr.Dataset,
    state_mean=None,
    state_std=None,
    rtg_scale: float = 1000.0,
    start: int = PAPER_START,
    end: int | None = None,
    checkpoint: int | None = None,
    max_batch: int = 16,
) -> xr.Dataset:
    """The paper's attention display on a recorded Transformer-like episode (a rollout/<name>
    group), recomputed with its checkpoint's model: at every decision step from `start` (the
    official 20) to `end` (exclusive; None: the episode's end; the official code stops at 800)
    the window the policy acted on is replayed (rollout.replay_windows) and the current token's
    row of |α| averaged over channels (last_token_attention); then paper_statistics. Not row
    normalised, unlike decay_statistics (DEMA_LAB_METHOD): the two are different methods.
    state_mean, state_std, rtg_scale: the checkpoint's (its extras and meta)."""
    from .rollout import replay_windows

    n = int(episode.sizes["step"])
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be a step >= 0, got {start!r}")
    stop = n if end is None else min(int(end), n)
    if stop <= start:
        raise ValueError(
            f"the episode has {n} steps, so none from step {start} on (the paper's display "
            f"averages decision steps {start}..{(n if end is None else end) - 1}); use a longer "
            f"episode (a better checkpoint, or eval_max_steps) or a smaller start"
        )
    steps = np.arange(int(start), stop)
    windows = replay_windows(model, episode, steps, state_mean, state_std, rtg_scale)
    surface = last_token_attention(model, windows, max_batch).transpose(1, 0, 2)  # (layer, step, lag)
    cfg = model.cfg
    attrs = {
        "start": int(start),
        "end": int(stop),
        "episode_length": n,
        "target": float(episode.attrs["target"]),
        "episode_return": float(episode.attrs.get("return", np.nan)),
        "window_padding": getattr(cfg, "window_padding", "none"),
        "token_order": getattr(cfg, "token_order", "RSA"),
        "layout": cfg.layout,
        "K": cfg.K,
    }
    return paper_statistics(surface, steps, cfg, checkpoint=checkpoint, attrs=attrs)


def publish_paper_attention(
    run,
    checkpoint: int | None = None,
    model=None,
    state_mean=None,
    state_std=None,
    rtg_scale: float | None = None,
    start: int = PAPER_START,
    end: int | None = None,
    if_short: str = "raise",
    log=None,
) -> xr.Dataset | None:
    """Compute the paper's attention display for a checkpoint of a run and publish it as the
    run's paper_attention/<checkpoint> group (next to decay/<checkpoint>); returns it.

    The episode is the longest Transformer-like episode recorded at that checkpoint (the first
    target's on ties). model, state_mean, state_std, rtg_scale: the checkpoint's, loaded from
    the run when model is None (so stores written before this existed can get it). When no
    recorded episode reaches step `start`: if_short "raise" raises ValueError, "skip" calls
    log(reason) and returns None (the trainer's choice: early checkpoints fall over quickly).
    """
    from .store import StoreError, checkpoint_name

    if if_short not in ("raise", "skip"):
        raise ValueError(f"if_short must be 'raise' or 'skip', got {if_short!r}")
    ckpts = run.checkpoints()
    if checkpoint is None:
        if not ckpts:
            raise StoreError(f"run {run.run_id} has no checkpoint yet")
        checkpoint = ckpts[-1]
    checkpoint = int(checkpoint)
    if model is None and checkpoint not in ckpts:
        raise StoreError(
            f"run {run.run_id} has no checkpoint {checkpoint} (checkpoints: {', '.join(map(str, ckpts)) or 'none'})"
        )
    name = checkpoint_name(checkpoint)
    found = []
    for ep_name in run.rollouts():
        if not ep_name.startswith(name + "-"):
            continue
        ep = run.open("rollout", ep_name)
        if ep.attrs.get("mode", "transformer") == "transformer":
            found.append((int(ep.sizes["step"]), ep_name, ep))
    problem = None
    if not found:
        problem = f"run {run.run_id} has no Transformer-like episode recorded at checkpoint {checkpoint}"
    else:
        length, ep_name, ep = max(found, key=lambda x: x[0])  # max keeps the first of equals
        if length <= start:
            problem = (
                f"the longest Transformer-like episode recorded at checkpoint {checkpoint} of run "
                f"{run.run_id} ({ep_name}) has {length} steps, none from step {start} on"
            )
    if problem:
        if if_short == "skip":
            if log:
                log(f"{problem}: no paper's attention display for this checkpoint")
            return None
        raise ValueError(
            f"{problem}; the paper's attention display needs one (record longer episodes, or pass a smaller start)"
        )
    if model is None:
        from .models import load_checkpoint

        ck = load_checkpoint(run.checkpoint_bytes(checkpoint), map_location="cpu")
        model, state_mean, state_std = ck.model, ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy()
        rtg_scale = float(ck.meta.get("rtg_scale", 1000.0)) if rtg_scale is None else rtg_scale
    if rtg_scale is None:
        rtg_scale = float(run.config.get("rtg_scale", 1000.0))
    ds = paper_attention(
        model,
        ep,
        state_mean,
        state_std,
        rtg_scale,
        start=start,
        end=end,  # ep lazy: no frames read
        checkpoint=checkpoint,
    )
    ds.attrs.update(episode=ep_name, run_id=run.run_id)
    run.write("paper_attention", name, ds)
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
