"""Whether an explanation is true: perturbation tests of the relevance that analysis.explain gives
each earlier token of a decision, against the recency and random baselines, and the causal
horizon (the shortest window whose score the full window's cannot be told from).

For a batch of Transformer-like decisions (windows), each method ranks the earlier tokens (those
before the current state token; the current token itself is never replaced). Then, at each
fraction p, the top p of them (positive perturbation) or the bottom p (negative) have their
embeddings replaced by the baseline token's, and the decision is re-run:

    change    continuous actions: the L2 distance of the actions; discrete: the drop in the
              chosen (argmax) action's probability
    kl        discrete only: KL(p || p') of the action distributions

The AUC is the area under change against p, with change 0 at p = 0, divided by the largest p (the
mean change over the fractions). A faithful method has a high positive AUC (removing what it
ranks first moves the decision) and a low negative AUC. Intervals are percentile bootstraps over
decisions (analysis.scoring.bootstrap_interval); a method beats a baseline when the 95% interval
of its paired positive-AUC difference lies above 0.

Every perturbed window of every (method, fraction, direction) goes through the backbone in a few
large batches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from dema_lab.analysis.explain import (
    ATTENTION_FREE_METHODS,
    DT_METHODS,
    METHODS,
    decision,
    embed_window,
    occlusion_baseline,
    relevance,
)
from dema_lab.analysis.scoring import bootstrap_interval, t_interval
from dema_lab.models.config import ATTENTION_ARCHS

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BASELINES = ("recency", "random")
DIRECTIONS = ("positive", "negative")
CHUNK = 512  # perturbed windows per backbone call


def methods_for(model) -> tuple[str, ...]:
    """Every explanation method that applies to the model (DeMa: 8, DT: 6; those that read no
    attention for a model without it: LSTM, GRU, MLP)."""
    arch = model.cfg.arch
    return METHODS if arch == "dema" else DT_METHODS if arch == "dt" else ATTENTION_FREE_METHODS


def stack_windows(windows: list[dict]) -> dict:
    """Windows of batch 1 (what evaluation.rollout.replay_windows gives) with the same number of
    steps, concatenated into one batch."""
    if not windows:
        raise ValueError("no decisions to explain: pick steps of episodes at least K steps long")
    Ts = {w["states"].shape[1] for w in windows}
    if len(Ts) > 1:
        raise ValueError(f"windows of different lengths ({sorted(Ts)} steps) cannot be batched; use full windows")
    return {k: torch.cat([w[k] for w in windows]) for k in windows[0] if windows[0][k] is not None}


def _changes(model, before: torch.Tensor, after: torch.Tensor) -> dict:
    """The decision's change (and for discrete actions the KL divergence), before (b, out) against
    after (..., b, out)."""
    if not model.cfg.discrete:
        return {"change": (after - before).double().norm(dim=-1)}
    logp, logq = F.log_softmax(before.double(), -1), F.log_softmax(after.double(), -1)
    chosen = before.argmax(-1, keepdim=True)  # (b, 1)
    p, pq = logp.exp(), logq.exp()
    drop = p.gather(-1, chosen)[..., 0] - pq.gather(-1, chosen.expand(*pq.shape[:-1], 1))[..., 0]
    return {"change": drop, "kl": (p * (logp - logq)).sum(-1)}


def perturbation_masks(ranking: np.ndarray, fractions, n_tokens: int) -> np.ndarray:
    """Which tokens each perturbation replaces, (direction, fraction, b, n_tokens) bool, from the
    earlier tokens' relevance (b, q) (q = the current token's index; ties broken by position):
    positive: the top round(p q) (at least one), negative: the bottom ones."""
    b, q = ranking.shape
    order = np.argsort(-ranking, axis=-1, kind="stable")  # most relevant first
    masks = np.zeros((2, len(fractions), b, n_tokens), bool)
    rows = np.arange(b)[:, None]
    for f, p in enumerate(fractions):
        k = min(q, max(1, int(round(p * q))))
        masks[0, f, rows, order[:, :k]] = True
        masks[1, f, rows, order[:, q - k :]] = True
    return masks


@torch.no_grad()
def perturbation_curves(model, window: dict, relevances: dict, fractions=FRACTIONS, baseline="zero", means=None):
    """The decision's change under positive and negative perturbation for each method's ranking:
    a dict of arrays (method, direction, fraction, b) per measure ("change", and "kl" for
    discrete actions). relevances: {method: (b, q + 1)} relevance up to the current token."""
    model.eval()
    T = window["states"].shape[1]
    tokens = embed_window(model, window)  # (b, n, d)
    b, n, d = tokens.shape
    base = occlusion_baseline(model, window, baseline, means)  # (b, n, d)
    before = decision(model, tokens, T)  # (b, out)
    names = list(relevances)
    masks = np.stack([perturbation_masks(np.asarray(relevances[m])[:, :-1], fractions, n) for m in names])
    flat = torch.as_tensor(masks.reshape(-1, b, n))  # (M * 2 * F, b, n)
    outs = []
    for i in range(0, flat.shape[0], max(1, CHUNK // b)):
        m = flat[i : i + max(1, CHUNK // b), ..., None].to(tokens.device)  # (c, b, n, 1)
        mixed = torch.where(m, base[None], tokens[None]).reshape(-1, n, d)
        outs.append(decision(model, mixed, T).reshape(m.shape[0], b, -1))
    after = torch.cat(outs)  # (M * 2 * F, b, out)
    return {k: v.reshape(*masks.shape[:3], b).cpu().numpy() for k, v in _changes(model, before, after).items()}


def auc(curve: np.ndarray, fractions) -> np.ndarray:
    """Area under change against fraction (..., fraction, b) -> (..., b), with change 0 at fraction
    0, divided by the largest fraction: the mean change over [0, max p]."""
    x = np.concatenate([[0.0], np.asarray(fractions, float)])
    y = np.concatenate([np.zeros_like(curve[..., :1, :]), curve], axis=-2)
    return np.trapezoid(y, x, axis=-2) / x[-1]


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of the rows of a and b (n, q): NaN where a row is constant."""
    from scipy.stats import spearmanr

    out = np.full(len(a), np.nan)
    for i, (x, y) in enumerate(zip(a, b)):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            out[i] = spearmanr(x, y).statistic
    return out


def faithfulness(
    model,
    window: dict,
    methods=None,
    fractions=FRACTIONS,
    baseline="zero",
    means=None,
    options: dict | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """Relevance, perturbation curves, AUCs with bootstrap intervals, rank agreement with occlusion
    and the comparison with the recency and random baselines, for a batch of decisions (`window`,
    the model's keyword arguments, batch = decisions; stack_windows builds it).

    methods: default every one that applies (methods_for); recency, random and occlusion are
    always computed (the baselines and the reference of the agreement). options: {method: {..}}
    passed to relevance; occlusion takes the perturbation's baseline (and means).
    Returns a Dataset with dims explanation (the method: a dim named "method" would clash with
    xarray's .sel(method=...)), direction, fraction, decision, token, baseline:
      relevance (method, decision, token), change [, kl] (method, direction, fraction, decision),
      auc (method, direction, decision), auc_mean / auc_low / auc_high (method, direction),
      spearman (method, decision) and its median, top_agreement (method): the share of decisions
      whose most relevant earlier token is occlusion's, versus_mean / versus_low / versus_high
      (method, baseline): the paired positive-AUC difference, and beats (method, baseline).
    """
    fractions = tuple(float(p) for p in fractions)
    if not fractions or not all(0 < p <= 1 for p in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {fractions}")
    allowed = methods_for(model)
    methods = list(allowed if methods is None else methods)
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise ValueError(f"method(s) {', '.join(unknown)} do not apply to this model; choose from {', '.join(allowed)}")
    methods = list(dict.fromkeys([*methods, *BASELINES, "occlusion"]))
    options = {m: dict(o) for m, o in (options or {}).items()}
    options.setdefault("occlusion", {}).update({"baseline": baseline, "means": means})
    options.setdefault("random", {}).setdefault("seed", seed)
    rel, attrs = {}, {}
    for m in methods:
        if m == "recency" and model.cfg.arch not in ATTENTION_ARCHS and not options.get(m):
            # no attention to fit a rate from: by lag, as below (only the ranking matters)
            options[m] = {"rate": 1.0}
        try:
            ds = relevance(model, window, m, **options.get(m, {}))
        except ValueError:
            if m != "recency" or "rate" in options.get(m, {}):
                raise
            # the attention does not fall with lag: no rate to fit, but every positive rate ranks the
            # tokens the same (by lag), and only the ranking enters the perturbations
            ds = relevance(model, window, m, rate=1.0).assign_attrs(
                rate_note="not fitted: attention does not fall with lag"
            )
        rel[m] = ds["relevance"].values  # (b, q + 1)
        attrs[m] = {k: v for k, v in ds.attrs.items() if isinstance(v, int | float | str)}
        coords = {c: ds[c] for c in ds["relevance"].coords if c != "window"}
    curves = perturbation_curves(model, window, rel, fractions, baseline, means)
    b = window["states"].shape[0]
    dims = ("explanation", "direction", "fraction", "decision")
    data = {k: (dims, v) for k, v in curves.items()}
    aucs = auc(curves["change"], fractions)  # (method, direction, b)
    data["auc"] = (("explanation", "direction", "decision"), aucs)
    stats = np.array([[bootstrap_interval(aucs[i, j], seed=seed) for j in range(2)] for i in range(len(methods))])
    for k, name in enumerate(("auc_mean", "auc_low", "auc_high")):
        data[name] = (("explanation", "direction"), stats[..., k])
    occl = rel["occlusion"][:, :-1]
    spear = np.stack([_spearman(rel[m][:, :-1], occl) for m in methods])
    data["spearman"] = (("explanation", "decision"), spear)
    data["spearman_median"] = (
        ("explanation",),
        np.array([np.nanmedian(s) if np.isfinite(s).any() else np.nan for s in spear]),
    )
    top = np.stack([rel[m][:, :-1].argmax(-1) == occl.argmax(-1) for m in methods])
    data["top_agreement"] = (("explanation",), top.mean(-1))
    versus = np.full((len(methods), len(BASELINES), 3), np.nan)
    for i in range(len(methods)):
        for j, base in enumerate(BASELINES):
            diff = aucs[i, 0] - aucs[methods.index(base), 0]
            versus[i, j] = bootstrap_interval(diff, seed=seed)
    for k, name in enumerate(("versus_mean", "versus_low", "versus_high")):
        data[name] = (("explanation", "baseline"), versus[..., k])
    data["beats"] = (("explanation", "baseline"), versus[..., 1] > 0)
    data["relevance"] = (("explanation", "decision", "token"), np.stack([rel[m] for m in methods]))
    ds = xr.Dataset(
        data,
        coords={
            "explanation": methods,
            "direction": list(DIRECTIONS),
            "fraction": list(fractions),
            "decision": np.arange(b),
            "baseline": list(BASELINES),
            **coords,
        },
        attrs={
            "perturbation_baseline": baseline if isinstance(baseline, str) else "tensor",
            "measure": "drop in the chosen action's probability" if model.cfg.discrete else "L2 change of the action",
            "auc": "area under change against fraction (0 at fraction 0) divided by the largest fraction",
            "interval": "95% percentile bootstrap over decisions",
        },
    )
    for m, a in attrs.items():
        ds.attrs[f"options_{m}"] = ", ".join(f"{k}={v}" for k, v in a.items() if k != "method")
    ds["change"].attrs = {"long_name": ds.attrs["measure"]}
    ds["auc"].attrs = {"long_name": "area under the perturbation curve"}
    ds["beats"].attrs = {"long_name": "the paired positive-AUC difference's 95% interval lies above 0"}
    return ds


def verdict(ds: xr.Dataset) -> str:
    """In plain words, which methods beat recency and random on positive-perturbation AUC (with the
    paired difference's 95% interval), from a faithfulness Dataset."""
    lines = []
    for m in ds.explanation.values:
        if m in BASELINES:
            continue
        parts = []
        for base in BASELINES:
            v = ds.sel(explanation=m, baseline=base)
            word = "beats" if bool(v["beats"]) else "does not beat"
            parts.append(
                f"{word} {base} (positive AUC {float(v['versus_mean']):+.3g}, "
                f"95% [{float(v['versus_low']):+.3g}, {float(v['versus_high']):+.3g}])"
            )
        lines.append(f"{m}: " + "; ".join(parts))
    winners = [
        m
        for m in ds.explanation.values
        if m not in BASELINES and bool(ds["beats"].sel(explanation=m, baseline="recency"))
    ]
    head = f"beat recency: {', '.join(winners)}" if winners else "no method beats recency"
    return "\n".join([head, *lines])


# ----------------------------------------------------------------------------- the causal horizon


def cut_window(window: dict, k: int) -> dict:
    """The window cut to its last k steps; prev_action becomes the action before the cut (the
    window's own action slot k + 1 from the end), so a RAS model sees what it saw there."""
    T = window["states"].shape[1]
    if not 1 <= k <= T:
        raise ValueError(f"k must be between 1 and the window's {T} steps, got {k}")
    out = {key: (v[:, T - k :] if key != "prev_action" and v is not None else v) for key, v in window.items()}
    if k < T and window.get("prev_action") is not None:
        out["prev_action"] = window["actions"][:, T - k - 1]
    return out


@torch.no_grad()
def window_change(model, window: dict, ks) -> np.ndarray:
    """The mean change of the decision (L2 of the action, or KL for discrete actions) when the
    window is cut to its last k steps, for each k, over the batch: (len(ks),)."""
    model.eval()
    full = model(**window)[:, -1]
    out = []
    for k in ks:
        cut = model(**cut_window(window, int(k)))[:, -1]
        if model.cfg.discrete:
            logp, logq = F.log_softmax(full.double(), -1), F.log_softmax(cut.double(), -1)
            out.append(float((logp.exp() * (logp - logq)).sum(-1).mean()))
        else:
            out.append(float((cut - full).double().norm(dim=-1).mean()))
    return np.asarray(out)


def causal_horizon(scores: np.ndarray, ks, full: np.ndarray, confidence: float = 0.95) -> dict:
    """The smallest k whose mean score lies within the full window's Student-t interval
    (analysis.scoring.t_interval) of its episode scores, or above it (a shorter window that
    scores better is long enough too). scores (len(ks), episodes). Returns
    {"horizon": k or NaN, "full_mean", "full_low", "full_high"}; with one full-window episode
    (no interval) the horizon is the smallest k whose mean reaches the full window's."""
    mean, low, high, n = t_interval(np.asarray(full, float), confidence)
    if n < 2:
        low, high = mean, mean
    horizon = np.nan
    for k, s in zip(ks, np.asarray(scores, float)):
        m = np.nanmean(s) if np.isfinite(s).any() else np.nan
        if np.isfinite(m) and m >= low:
            horizon = int(k)
            break
    return {"horizon": horizon, "full_mean": mean, "full_low": low, "full_high": high}


__all__ = [
    "BASELINES",
    "DIRECTIONS",
    "FRACTIONS",
    "auc",
    "causal_horizon",
    "cut_window",
    "faithfulness",
    "methods_for",
    "perturbation_curves",
    "perturbation_masks",
    "stack_windows",
    "verdict",
    "window_change",
]
