"""HoloViews elements for the dashboards: pure functions of numpy data (no Panel, no store).

frame_view          the env frame (hv.RGB)
attention_view      hidden attention among the window's tokens (hv.Image, R/s/a tick labels)
lag_view            one token's attention by lag, its fitted exponential and half-life
trace_view          reward and return-to-go over an episode; cursor_view marks a step
paper_surface_view  the paper's display: decision step x lag (hv.Image)
paper_curve_view    the paper's curve with its exponential fit; kind_lag_view: by key kind
"""

from __future__ import annotations

import math

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the renderer (options need it)
import numpy as np

from dema_lab.analysis import fit_decay

FRAME_SIZE = 340
MAX_TICK_LABELS = 21  # token labels printed per heatmap axis (420 px: 20 px each)
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
RETURN = ("value", "return")  # the return axis of the traces (and of the step cursor on it)


def rgba(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint32 RGBA, bottom row first (Bokeh's image_rgba layout)."""
    h, w = frame.shape[:2]
    out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = frame[::-1]
    out[..., 3] = 255
    return out.view(np.uint32)[..., 0]


def frame_view(frame: np.ndarray | None, title: str = "", size: int = FRAME_SIZE) -> hv.RGB:
    """An (H, W, 3) uint8 frame; a blank one when the episode has no frames."""
    if frame is None:
        frame = np.full((16, 16, 3), 235, np.uint8)
    h, w = frame.shape[:2]
    return hv.RGB(frame, bounds=(0, 0, w, h)).opts(
        title=title,
        xaxis=None,
        yaxis=None,
        toolbar=None,
        width=size,
        height=size,
        data_aspect=1,
        default_tools=[],
        active_tools=[],
    )


def attention_view(
    att: np.ndarray | None,
    key_labels: list[str],
    query_labels: list[str],
    title: str = "",
    signed: bool = False,
    size: int = 420,
) -> hv.Image:
    """att (L, L): rows are query tokens (oldest at the top), columns key tokens; the window is
    right-aligned, NaN where it has no token yet. Ticks carry the token labels (R/s/a, step)."""
    if att is None or not len(key_labels):
        key_labels, query_labels, att = ["-"], ["-"], np.full((1, 1), np.nan)
    L = len(key_labels)
    a = np.asarray(att, dtype=np.float64)
    return hv.Image(a, bounds=(0, 0, L, L), kdims=["key", "query"], vdims=["attention"]).opts(
        title=title,
        cmap="RdBu_r" if signed else "viridis",
        clim=attention_clim(a, signed),
        colorbar=True,
        xticks=[(j + 0.5, key_labels[j]) for j in readable_ticks(key_labels)],
        yticks=[(L - i - 0.5, query_labels[i]) for i in readable_ticks(query_labels)],
        xrotation=90,
        tools=["hover", "tap"],
        width=size + 90,
        height=size,
        clipping_colors={"NaN": "#f2f2f2"},
        xlabel="key token (kind, step relative to now)",
        ylabel="query token",
        default_tools=[],
        toolbar="above",
    )


def readable_ticks(labels: list[str], most: int = MAX_TICK_LABELS) -> list[int]:
    """Which token labels to print on an axis so that they never overlap: all of a short window;
    of a long one (K 20 has 59 tokens) the state tokens only, every k-th of them, always the
    current (last) one."""
    n = len(labels)
    if n <= most:
        return list(range(n))
    states = [i for i, lab in enumerate(labels) if str(lab).startswith("s")] or list(range(n))
    every = -(-len(states) // most)  # ceil
    keep = states[::-1][::every][::-1]  # counted back from the current token
    return keep


def attention_clim(att: np.ndarray, signed: bool) -> tuple[float, float]:
    finite = att[np.isfinite(att)]
    if signed:
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        lim = lim if lim > 0 else 1.0
        return (-lim, lim)
    hi = float(finite.max()) if finite.size else 1.0
    return (0.0, hi if hi > 0 else 1.0)


def lag_data(mass: np.ndarray, tokens_per_step: int, reference: np.ndarray | None = None) -> dict:
    """What the lag plot draws: the share of the token's attention at each lag (|attention|
    normalised over the row), its exponential fit (analysis.fit_decay), the half-life, and
    an optional reference profile. Arrays are (lag, share) pairs, empty where not drawable."""
    m = np.abs(np.asarray(mass, dtype=np.float64))
    total = np.nansum(m)
    share = m / total if total > 0 else m
    fit = fit_decay(share, tokens_per_step)
    lags = np.arange(len(share), dtype=np.float64)
    ok = np.isfinite(share) & (share > 0)
    out = {
        "points": (lags[ok], share[ok]),
        "fit": fit,
        "ref": (np.zeros(0), np.zeros(0)),
        "fit_curve": (np.zeros(0), np.zeros(0)),
        "half_life": -10.0,
        "text": half_life_text(fit, tokens_per_step),
        "n": len(share),
    }
    if reference is not None:
        r = np.asarray(reference, dtype=np.float64)
        rok = np.isfinite(r) & (r > 0)
        out["ref"] = (np.arange(len(r), dtype=np.float64)[rok], r[rok])
    if np.isfinite(fit["rate"]):
        xs = np.linspace(0, max(1.0, lags[ok].max()), 60)
        out["fit_curve"] = (xs, fit["amplitude"] * np.exp(-fit["rate"] * xs))
        if 0 < fit["half_life"] < 4 * len(share):
            out["half_life"] = float(fit["half_life"])
    lo = min([v.min() for v in (out["points"][1], out["ref"][1]) if len(v)] or [1e-3])
    out["ylim"] = (max(lo * 0.5, 1e-12), 1.5)
    out["xlim"] = (-0.5, max(1.5, len(share) - 0.5))
    return out


def lag_view(
    mass: np.ndarray,
    tokens_per_step: int,
    title: str = "",
    reference: np.ndarray | None = None,
    width: int = 520,
    height: int = 320,
) -> hv.Overlay:
    """Attention share by lag (log scale) with amplitude*exp(-rate*lag) and the half-life marked.

    reference: an optional dataset-average profile (analysis.decay_statistics) drawn dotted.
    Always the same five layers (line, points, reference, fit, half-life), some maybe empty.
    """
    d = lag_data(mass, tokens_per_step, reference)
    kd, vd = "lag", "share"
    layers = [
        hv.Curve(d["points"], kd, vd, label="this step").opts(color=PALETTE[0]),
        hv.Scatter(d["points"], kd, vd).opts(size=7, color=PALETTE[0], tools=["hover"]),
        hv.Curve(d["ref"], kd, vd, label="dataset average").opts(color="#888888", line_dash="dotted"),
        hv.Curve(d["fit_curve"], kd, vd, label="exp fit").opts(color=PALETTE[3], line_dash="dashed"),
        hv.VLine(d["half_life"]).opts(color=PALETTE[3], line_width=1.5, line_dash="dotted"),
    ]
    return hv.Overlay(layers).opts(
        title=lag_title(title, d),
        logy=True,
        width=width,
        height=height,
        xlabel="lag (tokens back)",
        ylabel="share of attention (log)",
        legend_position="top_right",
        ylim=d["ylim"],
        xlim=d["xlim"],
        toolbar="right",
        show_grid=True,
        fontsize={"title": "10.5pt"},
    )  # a long title: the width, smaller


def lag_title(title: str, d: dict) -> str:
    return f"{title} · {d['text']}" if title else d["text"]


def half_life_text(fit: dict, tokens_per_step: int) -> str:
    hl = fit.get("half_life", np.nan)
    if not np.isfinite(fit.get("rate", np.nan)):
        return "half-life: too few lags to fit"
    if not math.isfinite(hl):
        return "no decay (rate <= 0)"
    steps = f" = {hl / tokens_per_step:.2f} steps" if tokens_per_step > 1 else ""
    return f"half-life {hl:.2f} tokens{steps}, R² {fit.get('r2', np.nan):.2f}"


def trace_view(
    reward: np.ndarray,
    return_to_go: np.ndarray,
    width: int | None = None,
    height: int = 240,
    cursor: float | None = None,
) -> hv.Overlay:
    """Return-to-go and the return so far (env units, left axis), the reward per step (its own
    axis, right), and the step cursor if given.

    The options (multi_y: one y-axis per value dimension) are on this overlay: overlaying it
    again (``trace_view(...) * cursor_view(t)``) makes a new overlay without them, where the
    reward shares the return axis (a flat line). Pass ``cursor`` instead.
    """
    steps = np.arange(len(reward))
    ret = np.cumsum(reward)
    rtg = hv.Curve((steps, return_to_go), "step", RETURN, label="return-to-go").opts(color=PALETTE[0])
    got = hv.Curve((steps, ret), "step", RETURN, label="return so far").opts(color=PALETTE[2])
    rew = hv.Curve((steps, reward), "step", ("reward", "reward per step"), label="reward").opts(
        color=PALETTE[1], alpha=0.8
    )
    layers = [rtg, got, rew] + ([cursor_view(cursor)] if cursor is not None else [])
    size = dict(width=width) if width else dict(responsive=True, min_width=400)
    return hv.Overlay(layers).opts(
        multi_y=True,
        height=height,
        legend_position="right",
        **size,
        tools=["tap"],
        toolbar="above",
        title="Reward and return-to-go (click to jump)",
        show_grid=True,
    )


def cursor_view(step: float) -> hv.VLine:
    """The step cursor; on the return axis when overlaid on trace_view."""
    return hv.VLine(float(step), kdims=["step", RETURN]).opts(color="#d62728", line_width=2)


# ------------------------------------------------------------------ the paper's attention display


def paper_surface_view(
    surface: np.ndarray | None,
    decision_steps,
    lag_labels: list[str] | None = None,
    title: str = "",
    width: int = 520,
    height: int = 320,
) -> hv.Image:
    """The paper's surface (analysis.paper_attention): the current token's mean |α| over
    channels, not normalised, at each decision step (x) and lag in tokens (y, 0 = the current
    state token at the bottom). surface (decision_step, lag); NaN where the window has no key."""
    s = None if surface is None else np.asarray(surface, dtype=np.float64)
    if s is None or s.ndim != 2 or not s.size:
        return hv.Image(np.full((1, 1), np.nan), kdims=["decision step", "lag"], vdims=["mean |α|"]).opts(
            title=title or "no paper's display for this checkpoint", width=width, height=height, toolbar=None
        )
    steps = np.asarray(decision_steps, dtype=np.float64)
    lags = np.arange(s.shape[1], dtype=np.float64)
    img = hv.Image((steps, lags, s.T), kdims=["decision step", "lag"], vdims=["mean |α|"])  # rows: lags
    ticks = None
    if lag_labels is not None and len(lag_labels) == s.shape[1]:
        every = max(1, len(lag_labels) // 12)
        ticks = [(float(i), lab) for i, lab in enumerate(lag_labels) if i % every == 0]
    finite = s[np.isfinite(s)]
    hi = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    from bokeh.palettes import Turbo256  # low values dark blue, high dark red, as the paper's plots

    return img.opts(
        title=title,
        cmap=list(Turbo256),
        colorbar=True,
        clim=(0.0, hi),
        width=width,
        height=height,
        tools=["hover"],
        xlabel="decision step (env step)",
        ylabel="lag (key token)",
        clipping_colors={"NaN": "#f2f2f2"},
        toolbar="above",
        default_tools=[],
        **({"yticks": ticks} if ticks else {}),
    )


def fit_curve(fit: dict, n: int, points: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """amplitude * exp(-rate * lag) over lags 0..n-1 from a fit_decay result; empty without a fit."""
    if not np.isfinite(fit.get("rate", np.nan)) or not np.isfinite(fit.get("amplitude", np.nan)):
        return np.zeros(0), np.zeros(0)
    xs = np.linspace(0.0, max(1.0, n - 1.0), points)
    return xs, fit["amplitude"] * np.exp(-fit["rate"] * xs)


def paper_curve_view(
    curve: np.ndarray | None, fit: dict, tokens_per_step: int, title: str = "", width: int = 520, height: int = 320
) -> hv.Overlay:
    """The paper's curve (mean |α| by lag in tokens, not normalised; log scale) with its stored
    exponential fit (dashed) and the half-life marked: curve, points, fit, half-life."""
    c = np.full(1, np.nan) if curve is None else np.asarray(curve, dtype=np.float64)
    lags = np.arange(len(c), dtype=np.float64)
    ok = np.isfinite(c) & (c > 0)
    xs, ys = fit_curve(fit, len(c))
    hl = float(fit.get("half_life", np.nan))
    kd, vd = "lag", ("value", "mean |α|")
    layers = [
        hv.Curve((lags[ok], c[ok]), kd, vd, label="paper's curve").opts(color=PALETTE[4]),
        hv.Scatter((lags[ok], c[ok]), kd, vd).opts(size=6, color=PALETTE[4], tools=["hover"]),
        hv.Curve((xs, ys), kd, vd, label="exp fit").opts(color=PALETTE[3], line_dash="dashed"),
        hv.VLine(hl if np.isfinite(hl) and 0 < hl < 4 * len(c) else -10.0).opts(
            color=PALETTE[3], line_width=1.5, line_dash="dotted"
        ),
    ]
    lo = float(c[ok].min()) if ok.any() else 1e-3
    hi = float(c[ok].max()) if ok.any() else 1.0
    text = half_life_text(fit, tokens_per_step)
    return hv.Overlay(layers).opts(
        title=f"{title} · {text}" if title else text,
        logy=True,
        width=width,
        height=height,
        xlabel="lag (tokens back)",
        ylabel="mean |α| (log, not normalised)",
        legend_position="top_right",
        ylim=(max(lo * 0.5, 1e-12), hi * 2.0),
        xlim=(-0.5, max(1.5, len(c) - 0.5)),
        toolbar="right",
        show_grid=True,
        fontsize={"title": "9pt"},
    )


def kind_lag_view(by_kind: dict, fits: dict, title: str = "", width: int = 520, height: int = 320) -> hv.Overlay:
    """Attention on the keys of each kind (R, s, a) by lag in env steps, with each kind's own
    exponential fit (dashed; half-life in env steps and R² in the legend): the R/s/a sawtooth of
    the token-lag curve is gone.
    by_kind {kind: values by step lag}; fits {kind: fit_decay result, lags in env steps}."""
    layers = []
    n = max([len(v) for v in by_kind.values()] or [1])
    colors = {"s": PALETTE[0], "R": PALETTE[2], "a": PALETTE[1]}
    allv = []
    for i, (kind, values) in enumerate(by_kind.items()):
        v = np.asarray(values, dtype=np.float64)
        lags = np.arange(len(v), dtype=np.float64)
        ok = np.isfinite(v) & (v > 0)
        allv.append(v[ok])
        color = colors.get(kind, PALETTE[(i + 5) % len(PALETTE)])
        fit = fits.get(kind, {})
        hl, r2 = fit.get("half_life", np.nan), fit.get("r2", np.nan)
        label = f"{kind} keys: half-life {hl:.2f}, R² {r2:.2f}" if np.isfinite(hl) else f"{kind} keys: no fit"
        layers.append(hv.Curve((lags[ok], v[ok]), "lag_steps", ("value", "attention"), label=label).opts(color=color))
        layers.append(
            hv.Curve(fit_curve(fit, n), "lag_steps", ("value", "attention")).opts(color=color, line_dash="dashed")
        )
    v = np.concatenate(allv) if allv else np.zeros(0)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (1e-3, 1.0)
    return hv.Overlay(layers or [hv.Curve([], "lag_steps", "value")]).opts(
        title=title or "By key kind",
        logy=True,
        width=width,
        height=height,
        xlabel="lag (env steps back)",
        ylabel="attention (log)",
        legend_position="top_right",
        ylim=(max(lo * 0.5, 1e-12), hi * 4.0),
        xlim=(-0.5, max(1.5, n - 0.5)),
        toolbar="right",
        show_grid=True,
        fontsize={"title": "10pt", "legend": "8pt"},
    )
