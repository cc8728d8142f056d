"""Sequence-length comparison: runs that differ in K (and layout, timestep embedding, DeMa vs DT).

runs_table(index)            one row per readable run (pandas DataFrame) and the unreadable ones
family_scores(index, runs)   one row per (run, model family): DeMa once per inference mode, DT,
                             LSTM, GRU and MLP once (analysis.runs.model_family)
SequenceComparison(store)    score (last and best checkpoint, dema_lab.analysis.scoring), parameters /
                             MACs, training time, decay curves and half-life against K, one
                             line per family of runs
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import NumeralTickFormatter

from dema_lab.analysis.runs import family_label, model_family
from dema_lab.analysis.scoring import METHODS, headline, headline_mode, run_scores
from dema_lab.dashboard.common.data import StoreIndex, friendly_error
from dema_lab.dashboard.common.text import alert, join_markdown, md
from dema_lab.dashboard.common.views import PALETTE
from dema_lab.models.config import ATTENTION_ARCHS


def runs_table(index: StoreIndex, mode: str = "transformer") -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per readable run: K, family, its scores in `mode` (the run's headline mode when it
    was not evaluated in `mode`) at the last and at the best checkpoint (dema_lab.analysis.scoring:
    mean over targets; best per target), cost, time, half-life (layer mean, state tokens).
    Unreadable runs come back as {run_id: message}."""
    rows, bad = [], {}
    ids = index.run_ids()
    bad.update({r: f"its metadata cannot be read ({m})" for r, m in index.unreadable.items()})
    for run_id in ids:
        try:
            info = index.info(run_id)
            cfg, prov = info.config, info.provenance
            scores = headline(index.log(run_id, "eval"), mode)
            decay = index.log(run_id, "decay")
            half = np.nan
            if "half_life_steps" in decay and decay.sizes.get("checkpoint"):
                hl = decay["half_life_steps"].isel(checkpoint=-1)
                kind = "s" if "s" in hl["query_kind"].values else hl["query_kind"].values[0]
                vals = hl.sel(query_kind=kind).values
                vals = vals[np.isfinite(vals)]
                half = float(np.median(vals)) if vals.size else np.nan
            metrics = index.log(run_id, "train")
            sps = float(np.nanmedian(metrics["steps_per_second"].values)) if "steps_per_second" in metrics else np.nan
            macs = prov.get("step_macs", {}) or {}
            rows.append(
                dict(
                    run=run_id,
                    family=family_label(
                        cfg.get("arch", ""),
                        cfg.get("layout", ""),
                        prov.get("timestep_embedding", cfg.get("timestep_embedding")),
                    ),
                    K=int(cfg.get("K", 0)),
                    arch=cfg.get("arch", ""),
                    layout=cfg.get("layout", ""),
                    status=info.status,
                    steps=info.steps_done,
                    last_score=scores["last"],
                    best_score=scores["best"],
                    parameters=float(prov.get("parameters", np.nan)),
                    forward_macs=float(prov.get("forward_macs", np.nan)),
                    step_macs=float(macs.get(mode, next(iter(macs.values()), np.nan)) if macs else np.nan),
                    train_seconds=info.wall_seconds,
                    steps_per_second=sps,
                    half_life_steps=half,
                )
            )
        except Exception as e:  # noqa: BLE001 - one bad run must not hide the others
            bad[run_id] = friendly_error(e)
    cols = [
        "run",
        "family",
        "K",
        "arch",
        "layout",
        "status",
        "steps",
        "last_score",
        "best_score",
        "parameters",
        "forward_macs",
        "step_macs",
        "train_seconds",
        "steps_per_second",
        "half_life_steps",
    ]
    return pd.DataFrame(rows, columns=cols).sort_values(["family", "K"]).reset_index(drop=True), bad


def family_scores(index: StoreIndex, runs) -> pd.DataFrame:
    """One row per (run, model family) of the runs given: DeMa once per evaluated inference mode (its
    Transformer-like and RNN-like acting are two families), the other architectures once, in their
    headline mode; with the dataset, K and the last and best scores (dema_lab.analysis.scoring).
    Runs not yet evaluated, or unreadable, give no row."""
    rows = []
    for run_id in runs:
        try:
            info = index.info(run_id)
            evals = index.log(run_id, "eval")
            if "normalized_score" not in evals or not evals.sizes.get("checkpoint"):
                continue
            scores = run_scores(evals)
        except Exception:  # noqa: BLE001 - runs_table names the unreadable runs
            continue
        cfg, prov = info.config, info.provenance
        arch = cfg.get("arch", "")
        modes = [str(m) for m in scores["mode"].values]
        for mode in modes if arch == "dema" else [headline_mode(modes)]:
            te = prov.get("timestep_embedding", cfg.get("timestep_embedding"))
            rows.append(
                {
                    "run": run_id,
                    "model": model_family(arch, mode, cfg.get("layout", ""), te),
                    "dataset": str(prov.get("dataset", cfg.get("dataset", ""))),
                    "K": int(cfg.get("K", 0)),
                    "last_score": float(scores["last"].sel(mode=mode)),
                    "best_score": float(scores["best"].sel(mode=mode)),
                }
            )
    return pd.DataFrame(rows, columns=["run", "model", "dataset", "K", "last_score", "best_score"])


def short_labels(df: pd.DataFrame) -> list[str]:
    """A label per run that fits a plot: its family and K (`DeMa B3LD K=5`), numbered where several
    runs share them (seeds); the run id itself is in the hover and the table."""
    base = [f"{f} K={k}" for f, k in zip(df["family"], df["K"])]
    seen: dict[str, int] = {}
    out = []
    for b in base:
        seen[b] = seen.get(b, 0) + 1
        out.append(b if base.count(b) == 1 else f"{b} #{seen[b]}")
    return out


def _by_family(df: pd.DataFrame, y: str, ylabel: str, title: str, logy: bool = False, width=430, height=300):
    if df.empty or df[y].isna().all():
        return hv.Curve([], "K", y).opts(title=f"{title} (no data yet)", width=width, height=height)
    layers = []
    for i, (fam, part) in enumerate(df.dropna(subset=[y]).groupby("family", sort=True)):
        part = part.sort_values("K")
        c = PALETTE[i % len(PALETTE)]
        layers.append(hv.Curve(part, "K", (y, ylabel), label=fam).opts(color=c))
        layers.append(hv.Scatter(part, "K", [(y, ylabel), "run"], label=fam).opts(color=c, size=9, tools=["hover"]))
    # a linear axis starts at 0 (parameters and half-lives are sizes): equal values across K show
    # as a flat line, not as noise around them on an axis of a few units
    top = float(df[y].max())
    ylim = {} if logy else {"ylim": (0, top * 1.15 if top > 0 else 1)}
    return hv.Overlay(layers).opts(
        title=title,
        width=width,
        height=height,
        logy=logy,
        show_grid=True,
        legend_position="top_left" if logy else "bottom_right",
        toolbar="above",
        yformatter=NumeralTickFormatter(format="0.[0]a"),  # 99651 -> 99.7k, 6500000 -> 6.5m
        **ylim,
    )


# the score columns' titles say how each score is made (dema_lab.analysis.scoring)
SCORE_TITLES = {
    "last_score": "last score (final checkpoint)",
    "best_score": "best score (each target's best checkpoint)",
}


def _number_formats(df: pd.DataFrame) -> dict:
    """The runs table's number columns, readable: {column: format spec}, scores to 0.1, counts
    with thousands separators, the other numbers (seconds, steps/s, half-lives) to 0.01; K as it is."""
    out = {}
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]) or col == "K":
            continue
        if col.endswith("_score"):
            out[col] = ".1f"
        elif col in ("steps", "parameters", "forward_macs", "step_macs"):
            out[col] = ",.0f"
        else:
            out[col] = ".2f"
    return out


def readable_table(df: pd.DataFrame) -> pd.DataFrame:
    """The runs table as it is shown: numbers formatted by _number_formats (a missing one blank),
    the score columns titled by how they are made (dema_lab.analysis.scoring)."""
    out = df.copy()
    for col, spec in _number_formats(df).items():
        out[col] = [format(v, spec) if pd.notna(v) else "" for v in df[col]]
    return out.rename(columns=SCORE_TITLES)


def _score_by_family(df: pd.DataFrame, title: str, width=430, height=300):
    """last_score (solid) and best_score (dashed) against K, one colour per family."""
    cols = [f"{m}_score" for m in METHODS]
    if df.empty or df[cols].isna().all().all():
        return hv.Curve([], "K", "last_score").opts(title=f"{title} (no data yet)", width=width, height=height)
    layers = []
    for i, (fam, part) in enumerate(df.groupby("family", sort=True)):
        c = PALETTE[i % len(PALETTE)]
        for m, dash in zip(METHODS, ("solid", "dashed")):
            p = part.dropna(subset=[f"{m}_score"]).sort_values("K").rename(columns={f"{m}_score": "score"})
            if p.empty:
                continue
            label = f"{fam} · {m}"
            layers.append(hv.Curve(p, "K", ("score", "normalized score"), label=label).opts(color=c, line_dash=dash))
            layers.append(
                hv.Scatter(p, "K", [("score", "normalized score"), "run"], label=label).opts(
                    color=c,
                    size=9 if m == "last" else 6,
                    tools=["hover"],
                    marker="circle" if m == "last" else "triangle",
                )
            )
    return hv.Overlay(layers).opts(
        title=title, width=width, height=height, show_grid=True, legend_position="top_left", toolbar="above"
    )


class SequenceComparison(pn.viewable.Viewer):
    """How the context length K (and the architecture variants) change score, cost and memory."""

    runs = param.ListSelector(default=[], objects=[], doc="runs compared (default: all readable ones)")
    mode = param.Selector(objects=["transformer", "rnn"], default="transformer", doc="inference mode of scores/MACs")
    layer = param.Selector(objects=["mean"], default="mean", doc="layer of the decay curves")
    query_kind = param.Selector(objects=["s", "R", "a", "t"], default="s", doc="query tokens of the decay curves")
    message = param.String(default="")

    def __init__(self, store="store", presentation: bool = False, **params):
        self.index = store if isinstance(store, StoreIndex) else StoreIndex(store)
        self.presentation = presentation
        super().__init__(**params)
        self.refresh()

    def refresh(self):
        try:
            df, bad = runs_table(self.index, self.mode)
        except Exception as e:  # noqa: BLE001
            df, bad = pd.DataFrame(columns=["run", "family", "K"]), {"(store)": friendly_error(e)}
        self._all, self.bad = df, bad
        ids = list(df["run"]) if not df.empty else []
        self.param.runs.objects = ids
        self.runs = [r for r in self.runs if r in ids] or ids
        layers = ["mean"]
        for r in ids:
            try:
                d = self.index.log(r, "decay")
                layers = ["mean"] + [int(x) for x in d["layer"].values] if "layer" in d.dims else layers
                break
            except Exception:  # noqa: BLE001
                continue
        self.param.layer.objects = layers
        self.message = join_markdown(md("Run **{}** cannot be read: {}", r, m) for r, m in bad.items())

    @property
    def table(self) -> pd.DataFrame:
        return self._all[self._all["run"].isin(self.runs)] if not self._all.empty else self._all

    def _size(self):
        return (540, 370) if self.presentation else (395, 290)

    @param.depends("runs", "mode")
    def score_plot(self):
        """Normalized score against K per family: the last checkpoint (solid) and the best
        (dashed), side by side."""
        w, h = self._size()
        return _score_by_family(
            self.table, f"Normalized score vs K ({self.mode}; last solid, best dashed)", width=w, height=h
        )

    @param.depends("runs")
    def family_plot(self):
        """Last-checkpoint score against K, a line per model family (DeMa Transformer-like, DeMa
        RNN-like, DT, LSTM, GRU, MLP; and per dataset when the runs cover several), each point the
        mean over the runs (seeds) at that K."""
        w, h = self._size()
        title = "Score vs K by model family (last checkpoint)"
        df = family_scores(self.index, self.runs).dropna(subset=["last_score"])
        if df.empty:
            return hv.Curve([], "K", "last_score").opts(title=f"{title} (no data yet)", width=w, height=h)
        several = df["dataset"].nunique() > 1
        df["group"] = [f"{m} · {d}" if several else m for m, d in zip(df["model"], df["dataset"])]
        stats = df.groupby(["group", "K"]).agg(score=("last_score", "mean"), runs=("run", "count")).reset_index()
        layers = []
        for i, (group, part) in enumerate(stats.groupby("group", sort=True)):
            c = PALETTE[i % len(PALETTE)]
            layers.append(hv.Curve(part, "K", ("score", "normalized score"), label=group).opts(color=c))
            layers.append(
                hv.Scatter(part, "K", [("score", "normalized score"), "runs"], label=group).opts(
                    color=c, size=8, tools=["hover"]
                )
            )
        return hv.Overlay(layers).opts(
            title=title, width=w, height=h, show_grid=True, legend_position="top_left", toolbar="above"
        )

    @param.depends("runs")
    def parameters_plot(self):
        w, h = self._size()
        return _by_family(self.table, "parameters", "parameters", "Parameters vs K", width=w, height=h)

    @param.depends("runs", "mode")
    def macs_plot(self):
        w, h = self._size()
        return _by_family(
            self.table,
            "step_macs",
            "MACs per env step",
            f"MACs per step vs K ({self.mode})",
            logy=True,
            width=w,
            height=h,
        )

    @param.depends("runs", "mode")
    def cost_plot(self):
        """Parameters and MACs per env step against K, side by side."""
        return (self.parameters_plot() + self.macs_plot()).cols(2)

    @param.depends("runs")
    def time_plot(self):
        w, h = self._size()
        df = self.table
        if df.empty:
            return hv.Bars([], "run", "train_seconds").opts(title="Training time (no runs)", width=w, height=h)
        bars = hv.Bars(
            df.assign(label=short_labels(df)),
            "label",
            [("train_seconds", "training time (s)"), "run", "steps_per_second", "steps"],
        )
        # horizontal bars: the labels read across instead of taking the plot's height
        return bars.opts(
            title="Training time", width=w, height=h, invert_axes=True, tools=["hover"], color=PALETTE[0], xlabel=""
        )

    @param.depends("runs", "layer", "query_kind")
    def decay_plot(self):
        w, h = self._size()
        layers = []
        names = dict(zip(self.table["run"], short_labels(self.table))) if not self.table.empty else {}
        for i, r in enumerate(names):
            try:
                d = self.index.log(r, "decay")
                if "mass" not in d or not d.sizes.get("checkpoint"):
                    continue
                m = d["mass"].isel(checkpoint=-1)
                kinds = list(m["query_kind"].values)
                kind = self.query_kind if self.query_kind in kinds else kinds[0]
                m = m.sel(query_kind=kind)
                m = m.mean("layer") if self.layer == "mean" else m.sel(layer=self.layer)
                x = d["lag_steps"].values if "lag_steps" in d.coords else d["lag"].values
                ok = np.isfinite(m.values) & (m.values > 0)
                layers.append(
                    hv.Curve(
                        (x[ok], m.values[ok]),
                        ("lag_steps", "lag (env steps)"),
                        ("mass", "attention mass"),
                        label=names[r],
                    ).opts(color=PALETTE[i % len(PALETTE)])
                )
            except Exception as e:  # noqa: BLE001
                self.bad[r] = friendly_error(e)
        if not layers:
            none = "these models have no hidden attention" if self.no_attention else "none logged yet"
            return hv.Curve([], "lag_steps", "mass").opts(title=f"Decay curves ({none})", width=w, height=h)
        return hv.Overlay(layers).opts(
            title=f"Attention by lag ({self.query_kind}, layer {self.layer})",
            logy=True,
            width=w,
            height=h,
            legend_position="top_right",
            show_grid=True,
            toolbar="above",
        )

    @property
    def no_attention(self) -> bool:
        """Whether every chosen run's model lacks hidden attention (LSTM, GRU, MLP baselines)."""
        df = self.table
        return not df.empty and not df["arch"].isin(ATTENTION_ARCHS).any()

    @param.depends("runs")
    def half_life_plot(self):
        w, h = self._size()
        title = "Half-life of attention vs K"
        if self.no_attention:  # nothing to wait for: say why the plot is empty
            return hv.Curve([], "K", "half_life_steps").opts(
                title=f"{title}: these models have no hidden attention", width=w, height=h
            )
        return _by_family(self.table, "half_life_steps", "half-life (env steps)", title, width=w, height=h)

    @param.depends("runs", "mode")
    def table_view(self):
        """The runs table, static HTML. Panel's Tabulator re-laid itself out about ten times a
        second while scrolled out of view (below the plots, or on the explorer's hidden tab),
        keeping a core of the browser a fifth busy for as long as the page was open."""
        if self.table.empty:
            return pn.pane.Markdown("No readable runs in this store yet.")
        return pn.pane.DataFrame(
            readable_table(self.table),
            index=False,
            justify="left",
            css_classes=["dema-runs-table"],
            sizing_mode="stretch_width",
            max_height=260,
            styles={"overflow": "auto"},
        )

    def controls(self):
        w = pn.widgets
        refresh = w.Button(label="Reload store", color="light")
        refresh.on_click(lambda *_: self.refresh())
        return pn.Column(
            w.MultiSelect.from_param(self.param.runs, name="Runs", size=8),
            w.RadioButtonGroup.from_param(self.param.mode, color="primary", variant="outline"),
            w.Select.from_param(self.param.layer, name="Decay curves: layer"),
            w.Select.from_param(self.param.query_kind, name="Decay curves: query tokens"),
            refresh,
            sizing_mode="stretch_width",
        )

    def views(self):
        """Seven plots, three to a row (two in presentation mode: larger), then the runs table. Plain
        Rows: a pn.FlexBox leaves Bokeh figures unrendered."""
        message = alert(self.param.message, "warning", sizing_mode="stretch_width")
        plots = [
            pn.pane.HoloViews(p)
            for p in (
                self.score_plot,
                self.family_plot,
                self.half_life_plot,
                self.decay_plot,
                self.parameters_plot,
                self.macs_plot,
                self.time_plot,
            )
        ]
        n = 2 if self.presentation else 3
        rows = [pn.Row(*plots[i : i + n]) for i in range(0, len(plots), n)]
        return pn.Column(message, *rows, self.table_view, sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Row(pn.Column(self.controls(), width=300), self.views(), sizing_mode="stretch_width")
