"""The study report: the paper's tables for one sweep, and which of its findings hold.

    StudyReport(store)    a sweep selector, the findings with their verdicts, score against K,
                          and every table of `dema_lab.study.report.build_report` (cells: mean ± std
                          over seeds)

The tables are computed by `build_report`; this view only lays them out (the notebook
04_study_report and `dema-lab report` show the same).
"""

from __future__ import annotations

import html

import pandas as pd
import panel as pn
import param

from dema_lab.dashboard.common.data import StoreIndex, friendly_error
from dema_lab.dashboard.common.text import alert, html_pane, markdown_pane, md, trusted_html
from dema_lab.study.render import score_plot
from dema_lab.study.report import Report, build_report, sweep_names

ALL_RUNS = "(all finished runs)"
VERDICT_COLOURS = {
    "holds": "#1a7f37",
    "holds (no significant difference)": "#1a7f37",
    "does not hold": "#b42318",
    "inconclusive": "#9a6700",
    "not measured": "#57606a",
}


def _findings_html(rep: Report):
    """The findings as an HTML table, each verdict in its colour (every cell's text escaped)."""
    rows = []
    for finding, verdict, evidence in rep.findings:
        colour = VERDICT_COLOURS.get(verdict, "#57606a")
        rows.append(
            f"<tr><td>{html.escape(finding)}</td>"
            f"<td style='color:{colour};font-weight:600;white-space:nowrap'>{html.escape(verdict)}</td>"
            f"<td>{html.escape(evidence)}</td></tr>"
        )
    return trusted_html(
        "<table class='dema-findings' style='border-collapse:collapse;width:100%'>"
        "<thead><tr><th style='text-align:left'>paper's finding</th><th style='text-align:left'>on this data</th>"
        "<th style='text-align:left'>evidence</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _flat(table: pd.DataFrame) -> pd.DataFrame:
    """A table with one header row (column levels joined by ' / '), its index as columns."""
    out = table.reset_index()
    out.columns = [" / ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c) for c in out.columns]
    return out


class StudyReport(pn.viewable.Viewer):
    """The paper's study on the runs of one sweep (`dema-lab sweep`)."""

    sweep = param.Selector(objects=[ALL_RUNS], default=ALL_RUNS, doc="the sweep whose finished runs are reported")
    latency = param.Boolean(
        default=True,
        label="Measure latency per step",
        doc="measure latency per env step (loads each run's last checkpoint once per server process)",
    )
    message = param.String(default="")

    def __init__(self, store="store", presentation: bool = False, **params):
        self.store = store.path if isinstance(store, StoreIndex) else str(store)
        self.presentation = presentation
        self._cache: dict = {}
        super().__init__(**params)
        self._refresh = pn.widgets.Button(label="Reload the store", css_classes=["dema-study-reload"], width=200)
        self._refresh.on_click(lambda *_: self.refresh())
        self.refresh()

    def refresh(self):
        """Re-read the store: new sweeps, new finished runs."""
        self._cache.clear()
        try:
            names = sweep_names(self.store)
        except Exception as e:  # noqa: BLE001 - shown on the page
            names, self.message = [], f"The store cannot be read: {friendly_error(e)}"
        self.param.sweep.objects = names + [ALL_RUNS]
        if self.sweep not in self.param.sweep.objects:
            self.sweep = names[0] if names else ALL_RUNS
        self.param.trigger("sweep")

    def report(self) -> Report:
        key = (self.sweep, self.latency)
        if key not in self._cache:
            self._cache[key] = build_report(
                self.store, None if self.sweep == ALL_RUNS else self.sweep, latency=self.latency
            )
        return self._cache[key]

    # ------------------------------------------------------------------ views
    @param.depends("sweep", "latency")
    def _summary(self):
        try:
            rep = self.report()
        except Exception as e:  # noqa: BLE001
            return alert(
                md("**The report cannot be built:** {}", friendly_error(e)), "danger", sizing_mode="stretch_width"
            )
        # sweep names, run ids, reasons and the store path are outside strings: escaped (text.md)
        n = len(rep.runs)
        what = md(" of sweep **{}**", self.sweep) if self.sweep != ALL_RUNS else ""
        head = md(
            "### Which of the paper's findings hold\n{} finished run{}{} in {}.", n, "s" * (n != 1), what, self.store
        )
        if n:
            head += md("\n\n{}", rep.methods())
        if rep.skipped:
            head += md("\n\n") + md("\n").join(
                md("* Run **{}** is left out: {}", r, why) for r, why in rep.skipped.items()
            )
        if not n:
            head += md(
                "\n\nRun a sweep first, e.g. dema-lab sweep --name study --store {} --datasets hopper-medium --K 5 10 20 40.",
                self.store,
            )
        plot = pn.pane.HoloViews(
            score_plot(rep, width=1000 if self.presentation else 860, height=440 if self.presentation else 360),
            css_classes=["dema-study-score"],
        )
        return pn.Column(
            markdown_pane(head, sizing_mode="stretch_width", css_classes=["dema-study-head"]),
            html_pane(_findings_html(rep), sizing_mode="stretch_width", css_classes=["dema-study-findings"]),
            plot,
            sizing_mode="stretch_width",
        )

    @param.depends("sweep", "latency")
    def _tables(self):
        try:
            rep = self.report()
        except Exception:  # noqa: BLE001 - the summary shows the error
            return pn.Column()
        parts = []
        for title, table in rep.tables.items():
            parts.append(markdown_pane(md("#### {}", title), sizing_mode="stretch_width"))
            if table.empty:
                parts.append(markdown_pane("(no runs for this table)"))
            else:
                parts.append(
                    pn.pane.DataFrame(_flat(table), index=False, justify="left", css_classes=["dema-study-table"])
                )
        return pn.Column(*parts, sizing_mode="stretch_width")

    def controls(self):
        return pn.Column(
            pn.pane.Markdown("### Study report"),
            pn.Param(
                self.param,
                parameters=["sweep", "latency"],
                show_name=False,
                widgets={"sweep": {"type": pn.widgets.Select, "css_classes": ["dema-study-sweep"]}},
            ),
            self._refresh,
            sizing_mode="stretch_width",
        )

    def views(self):
        return pn.Column(
            pn.panel(self._summary, loading_indicator=True),
            pn.panel(self._tables, loading_indicator=True),
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return pn.Row(pn.Column(self.controls(), width=300), self.views(), sizing_mode="stretch_width")
