"""HoloViews elements of a run's explanations and their faithfulness: pure functions of the stored
explain/<checkpoint> and faithfulness/<checkpoint> groups (evaluation.faithfulness), no Panel.

relevance_view      one method's relevance of every token, decision by decision (hv.Image)
relevance_lag_view  one method's mean relevance by lag (share of the decision's total)
omega_alpha_view    the whole mixer's attention Ω against hidden attention α, token by token
perturbation_view   the decision's change against the fraction of tokens replaced, per method
auc_rows            the AUC table (method, positive and negative AUC with intervals, agreement)
horizon_view        the score against the steps of context kept, the attention half-life marked
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import xarray as xr

from dema_lab.dashboard.common.views import PALETTE, readable_ticks

BASELINE_COLOR = "#7f7f7f"


def shares(rel: np.ndarray) -> np.ndarray:
    """Relevance (decision, token) as shares of each decision's total (|.|), NaN-safe."""
    a = np.abs(np.asarray(rel, np.float64))
    total = a.sum(-1, keepdims=True)
    return np.divide(a, total, out=np.full_like(a, np.nan), where=total > 0)


def relevance_view(explain: xr.Dataset, method: str, width: int = 520, height: int = 300) -> hv.Image:
    """Decisions (rows, in episode order) x tokens (columns, right-aligned labels): the method's
    relevance of each token as a share of the decision's total."""
    rel = shares(explain["relevance"].sel(explanation=method).values)  # (decision, token)
    labels = [str(x) for x in explain["token_label"].values]
    n_dec, n_tok = rel.shape
    return hv.Image(rel, bounds=(0, 0, n_tok, n_dec), kdims=["token", "decision"], vdims=["share"]).opts(
        title=f"Relevance by {method} · decision × token",
        cmap="viridis",
        colorbar=True,
        xticks=[(j + 0.5, labels[j]) for j in readable_ticks(labels)],
        xrotation=90,
        tools=["hover"],
        width=width,
        height=height,
        xlabel="token (kind, step relative to now)",
        ylabel="decision",
        default_tools=[],
        toolbar="above",
    )


def relevance_lag_view(explain: xr.Dataset, method: str, width: int = 420, height: int = 300) -> hv.Overlay:
    """The method's mean share by lag (tokens back from the current one), with recency's for
    comparison where it was computed."""
    lag = explain["token_lag"].values
    order = np.argsort(lag)
    layers = []
    for name, color in ((method, PALETTE[0]), ("recency", BASELINE_COLOR)):
        if name not in explain.explanation.values or (name == "recency" and method == "recency"):
            continue
        mean = np.nanmean(shares(explain["relevance"].sel(explanation=name).values), 0)
        layers.append(hv.Curve((lag[order], mean[order]), "lag", "share", label=name).opts(color=color))
    return hv.Overlay(layers).opts(
        title=f"{method} by lag (mean over decisions)",
        width=width,
        height=height,
        xlabel="lag (tokens back)",
        ylabel="share of relevance",
        legend_position="top_right",
    )


def omega_alpha_view(explain: xr.Dataset, width: int = 360, height: int = 300) -> hv.Overlay:
    """Each (decision, token): its share by the whole mixer's attention Ω (unified) against its
    share by hidden attention α, with the diagonal; empty when either was not computed."""
    have = set(map(str, explain.explanation.values))
    if not {"alpha", "unified"} <= have:
        pts = np.zeros((0, 2))
    else:
        a = shares(explain["relevance"].sel(explanation="alpha").values).ravel()
        u = shares(explain["relevance"].sel(explanation="unified").values).ravel()
        pts = np.stack([a, u], -1)[np.isfinite(a) & np.isfinite(u)]
    top = float(np.nanmax(pts)) if len(pts) else 1.0
    return hv.Overlay(
        [
            hv.Scatter(pts, "alpha share", "unified share").opts(size=5, alpha=0.6, color=PALETTE[0], tools=["hover"]),
            hv.Curve([(0, 0), (top, top)], "alpha share", "unified share").opts(
                color=BASELINE_COLOR, line_dash="dashed"
            ),
        ]
    ).opts(title="Ω (whole mixer) against α, token shares", width=width, height=height)


def perturbation_view(faith: xr.Dataset, direction: str = "positive", width: int = 520, height: int = 300):
    """The decision's mean change against the fraction of earlier tokens replaced (0 at 0), one
    curve per method, the baselines grey and dashed."""
    frac = np.concatenate([[0.0], faith.fraction.values])
    curves = []
    for i, m in enumerate(map(str, faith.explanation.values)):
        y = np.concatenate([[0.0], faith["change"].sel(explanation=m, direction=direction).mean("decision").values])
        base = m in ("recency", "random")
        style = {"color": BASELINE_COLOR, "line_dash": "dashed"} if base else {"color": PALETTE[i % len(PALETTE)]}
        curves.append(hv.Curve((frac, y), "fraction replaced", "change", label=m).opts(**style))
    high = "higher" if direction == "positive" else "lower"
    return hv.Overlay(curves).opts(
        title=f"{direction.capitalize()} perturbation ({high}: more faithful)",
        width=width,
        height=height,
        ylabel=str(faith.attrs.get("measure", "change")),
        legend_position="right",
    )


def auc_rows(faith: xr.Dataset) -> list[dict]:
    """One row per method: positive and negative AUC as "mean [low, high]", the paired positive
    difference against recency with whether it beats it, the Spearman agreement with occlusion
    and the top-token agreement."""
    rows = []
    for m in map(str, faith.explanation.values):
        f = faith.sel(explanation=m)
        row = {"method": m}
        for d in ("positive", "negative"):
            v = f.sel(direction=d)
            row[f"{d} AUC"] = f"{float(v['auc_mean']):.3g} [{float(v['auc_low']):.3g}, {float(v['auc_high']):.3g}]"
        r = f.sel(baseline="recency")
        row["minus recency"] = (
            f"{float(r['versus_mean']):+.3g} [{float(r['versus_low']):+.3g}, {float(r['versus_high']):+.3g}]"
        )
        row["beats recency"] = "–" if m == "recency" else ("yes" if bool(r["beats"]) else "no")
        row["Spearman vs occlusion"] = f"{float(f['spearman_median']):.2f}"
        row["top token = occlusion's"] = f"{float(f['top_agreement']):.0%}"
        rows.append(row)
    return rows


def horizon_view(faith: xr.Dataset, width: int = 520, height: int = 300) -> hv.Overlay:
    """The normalized score against k (steps of context kept: window cut, and α truncated), the
    full window's 95% interval as a band and the attention half-life as a vertical line; empty
    when the causal horizon was not measured."""
    layers = []
    if "score_cut" in faith:
        k = faith.k.values
        layers.append(
            hv.Curve((k, faith["score_cut"].mean("horizon_episode").values), "k", "score", label="window cut")
        )
        if "score_alpha" in faith:
            layers.append(
                hv.Curve((k, faith["score_alpha"].mean("horizon_episode").values), "k", "score", label="α truncated")
            )
        low, high = faith.attrs.get("horizon_full_low"), faith.attrs.get("horizon_full_high")
        if low is not None and np.isfinite(low) and np.isfinite(high):
            layers.append(hv.HSpan(low, high).opts(color=BASELINE_COLOR, alpha=0.2))
    half = float(faith.attrs.get("half_life_steps", np.nan))
    if np.isfinite(half):
        layers.append(hv.VLine(half, label="half-life").opts(color=PALETTE[3], line_dash="dotted"))
    if not layers:
        layers = [hv.Curve([], "k", "score")]
    title = "Causal horizon" + (
        f": {float(faith['horizon_cut']):g} steps"
        if "horizon_cut" in faith
        else " (not measured: dema-lab explain --horizon)"
    )
    return hv.Overlay(layers).opts(
        title=title, width=width, height=height, xlabel="k (steps of context kept)", ylabel="normalized score"
    )
