"""The sweep report drawn: Markdown for `dema-lab report`, notebooks and notes, and the plot of
score against K (HoloViews). What it draws (the tables, the findings and their verdicts) comes
from dema_lab.study.report; nothing here computes a statistic.

    to_markdown(report)       the whole report as Markdown
    markdown_table(df)        one table as a Markdown table (its index as columns)
    score_plot(report)        normalized score against K, one line per dataset and family
    cue_plot(decisions)       per decision, the attention share on the cue against its lag-matched
                              average (report.cue_decisions), the diagonal where they are equal
"""

from __future__ import annotations

import pandas as pd

from dema_lab.analysis.runs import family_label
from dema_lab.analysis.scoring import METHODS
from dema_lab.study.report import Report

__all__ = ["cue_plot", "markdown_table", "score_plot", "to_markdown"]


def to_markdown(report: Report) -> str:
    """The report as Markdown: the command that made it, the settings, the method paragraph, the
    runs left out, the findings and every table."""
    lines = [f"# Sweep report ({len(report.runs)} runs)", ""]
    if report.source:
        lines += [f"Made by `{report.source}`.", ""]
    if len(report.runs):
        lines += ["Settings: " + "; ".join(report.settings()) + ".", "", report.methods(), ""]
    if report.skipped:
        lines += [
            "Runs left out because they cannot be read: "
            + "; ".join(f"{r} ({why})" for r, why in report.skipped.items()),
            "",
        ]
    lines += ["## Findings", "", "| paper's finding | on this data | evidence |", "|---|---|---|"]
    lines += [f"| {f} | {v} | {e} |" for f, v, e in report.findings]
    for title, table in report.tables.items():
        lines += ["", f"## {title}", ""]
        lines += [markdown_table(table) if not table.empty else "(no runs for this table)"]
    return "\n".join(lines) + "\n"


def markdown_table(df: pd.DataFrame) -> str:
    """A Markdown table of `df` with its index as leading columns; the levels of a column
    MultiIndex joined by " / "."""
    df = df.reset_index()
    cols = [" / ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(str(v) for v in r.values) + " |")
    return "\n".join(out)


def score_plot(report: Report, mode: str = "transformer", width: int = 520, height: int = 320, method: str = "last"):
    """Normalized score against K at the `method` ("last" or "best") checkpoint: a line per
    dataset and family (DeMa / DT, layout, timestep embedding), points at each run's mean over
    seeds, error bars at ± one std over seeds."""
    import holoviews as hv  # loaded only where a plot is drawn: `import dema_lab.study` stays light
    import holoviews.plotting.bokeh  # noqa: F401 - registers the renderer: the options below need one

    if method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; use one of {', '.join(METHODS)}")
    col = f"score_{mode}" if method == "last" else f"best_score_{mode}"
    title = f"normalized score against K ({mode}-like, {method} checkpoint)"
    if report.runs.empty or col not in report.runs:
        return hv.Curve([], "K", "normalized score").opts(title=f"{title}: no runs", width=width, height=height)
    df = report.runs.dropna(subset=[col]).copy()
    df["family"] = [family_label(a, lay, te) for a, lay, te in zip(df.arch, df.layout, df.timestep_embedding)]
    stats = df.groupby(["dataset", "family", "K"])[col].agg(["mean", "std", "count"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    layers = []
    for (dataset, family), part in stats.groupby(["dataset", "family"]):
        label = f"{dataset} · {family}"
        layers.append(hv.Curve(part, "K", ("mean", "normalized score"), label=label))
        layers.append(
            hv.Scatter(part, "K", [("mean", "normalized score"), "count"], label=label).opts(size=7, tools=["hover"])
        )
        if (part["count"] > 1).any():
            layers.append(hv.ErrorBars(part, "K", [("mean", "normalized score"), "std"]))
    ks = sorted(stats.K.unique())
    return hv.Overlay(layers).opts(
        title=title,
        width=width,
        height=height,
        logx=bool(len(ks) > 2 and ks[-1] >= 4 * ks[0]),
        xticks=[int(k) for k in ks],
        show_grid=True,
        legend_position="right",
        toolbar="above",
    )


def cue_plot(decisions, width: int = 420, height: int = 360):
    """One point per decision whose window held the cue (dema_lab.study.report.cue_decisions): the
    lag-matched average share (x) against the share on the cue (y), in %, a colour per dataset and
    inference mode; above the dashed diagonal, the decision looked at the cue more than usual."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401 - registers the renderer: the options below need one
    import numpy as np

    title = "attention on the cue at the decision"
    kd, vd = ("baseline_share", "lag-matched average (%)"), ("cue_share", "share on the cue (%)")
    inside = (
        decisions.isel(decision=np.flatnonzero(decisions["in_window"].values)) if "in_window" in decisions else None
    )
    if inside is None or not inside.sizes.get("decision"):
        return hv.Scatter([], kd, vd).opts(title=f"{title}: no decision had the cue in its window", width=width,
                                           height=height)  # fmt: skip
    df = inside.reset_coords().to_dataframe()
    df["group"] = [f"{d} · {m}-like" for d, m in zip(df["dataset"], df["mode"])] if "mode" in df else "decisions"
    top = float(max(df.cue_share.max(), df.baseline_share.max(), 1.0)) * 1.05
    layers = [hv.Curve([(0, 0), (top, top)], kd, vd).opts(color="#888888", line_dash="dashed")]
    for group, part in df.groupby("group"):
        layers.append(hv.Scatter(part, kd, [vd, "episode"], label=str(group)).opts(size=8, tools=["hover"]))
    return hv.Overlay(layers).opts(
        title=title, width=width, height=height, xlim=(0, top), ylim=(0, top), show_grid=True, legend_position="bottom"
    )
