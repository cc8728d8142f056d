"""The sweep report drawn: Markdown for `dema-lab report`, notebooks and notes, and the plot of
score against K (HoloViews). What it draws (the tables, the findings and their verdicts) comes
from dema_lab.study.report; nothing here computes a statistic.

    to_markdown(report)       the whole report as Markdown
    markdown_table(df)        one table as a Markdown table (its index as columns)
    score_plot(report)        normalized score against K, one line per dataset and family
"""

from __future__ import annotations

import pandas as pd

from dema_lab.analysis.runs import family_label
from dema_lab.analysis.scoring import METHODS
from dema_lab.study.report import Report

__all__ = ["markdown_table", "score_plot", "to_markdown"]


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
