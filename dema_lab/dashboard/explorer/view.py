"""The attention explorer: a recorded episode, scrubbed step by step.

    explorer = AttentionExplorer(store="store")     # or StoreIndex, or an ExplorerState
    explorer                                        # in a notebook after pn.extension()
    explorer.state.step = 120                       # every view follows (explorer.step = 120 too)

The state (ExplorerState, dema_lab.dashboard.explorer.state: the run, checkpoint, episode, layer,
aggregation, step and what they select) is a param-only object; this module renders it.
Views (HoloViews elements, redrawn when the state changes): the env frame (or a note saying why
there is none), the hidden-attention heatmap over the window's R/s/a tokens, one token's
attention by lag with its fitted exponential and half-life, and the reward / return-to-go traces
with a cursor; below them the checkpoint's paper's attention display (analysis.paper_attention:
the surface of decision step x lag, its curve with the exponential fit, and the fit per key kind).
Clicking the traces moves the step; clicking a heatmap row picks the query token whose lag
profile is shown. On a memory task's episode (MiniGrid Memory records when the cue is in view),
dashed boxes on the heatmap and bands on the lag plot mark the tokens of the steps that showed
the cue, with a legend line below the plots.
"""

from __future__ import annotations

import contextlib

import holoviews as hv
import numpy as np
import panel as pn
import param
from bokeh.models import Div, Span

from dema_lab.analysis import DEMA_LAB_METHOD, PAPER_METHOD
from dema_lab.dashboard.common.data import lag_profile_of
from dema_lab.dashboard.common.text import alert, html, markdown_pane, md, trusted_markdown
from dema_lab.dashboard.common.views import (
    attention_clim,
    attention_view,
    frame_view,
    kind_lag_view,
    lag_data,
    lag_title,
    lag_view,
    paper_curve_view,
    paper_surface_view,
    rgba,
    trace_view,
)
from dema_lab.dashboard.explorer.state import AGGREGATION_LABELS, MEAN_LAYERS, ExplorerState, crc

__all__ = ["AGGREGATION_LABELS", "MEAN_LAYERS", "AttentionExplorer", "ExplorerState", "hold"]

_crc = crc  # its old name here

# Plot sizes (px) at a 1600x1000 window. Normal: frame, heatmap and lag curve side by side (the lag
# curve takes the width left), the traces below. Presentation (larger): frame and heatmap, then the
# lag curve beside the traces. The served layout is plain Rows and Columns of Bokeh figures: a
# Bokeh figure inside a pn.FlexBox (ReactiveHTML) is never laid out (an empty canvas) and the page
# never reports itself ready to Panel, which then drops held updates (the step text stood still).
SIZES = {
    False: dict(
        frame=300,
        heatmap=340,
        lag=(420, 330),
        lag_width=(360, 720),
        traces=260,
        paper=(420, 300),
        paper_width=(300, 600),
    ),
    True: dict(
        frame=380, heatmap=380, lag=(540, 320), lag_width=None, traces=320, paper=(480, 340), paper_width=(300, 700)
    ),
}


def hold():
    """pn.io.hold() once the browser has reported the document ready; before that, no hold (Panel
    drops the model changes held in a session it does not yet count as connected)."""
    return pn.io.hold() if pn.state.loaded else contextlib.nullcontext()


class AttentionExplorer(pn.viewable.Viewer):
    """The explorer's page for one ExplorerState: selection widgets, slider and player, and the
    linked plots. AttentionExplorer(store, run=..., step=...) makes the state too."""

    state = param.ClassSelector(class_=ExplorerState, constant=True, doc="what is shown")
    presentation = param.Boolean(default=False, constant=True, doc="larger plots (full-screen talks)")

    def __init__(self, store="store", presentation: bool = False, **params):
        """store: a store path or URL, a StoreIndex, or an ExplorerState to render; other keyword
        arguments set the state's parameters (run, episode, step, ...)."""
        view = {k: params.pop(k) for k in ("name",) if k in params}
        state = store if isinstance(store, ExplorerState) else ExplorerState(store, **params)
        if isinstance(store, ExplorerState):
            state.param.update(**params)
        super().__init__(state=state, presentation=presentation, **view)
        self._probe_div = Div(text="", css_classes=["dema-probe"], styles={"display": "none"})
        self._probe = pn.pane.Bokeh(self._probe_div, width=0, height=0, margin=0)
        state.param.watch(self._update_probe, ["step", "revision", "layer", "aggregation", "channel", "message"])

    # ------------------------------------------------------------------ views
    @param.depends("state.step", "state.revision")
    def frame(self):
        s = self.state
        title = "" if s.episode_data is None else f"step {s.step}"
        return frame_view(s.frame, title=title, size=self._size("frame"))

    @param.depends("state.step", "state.revision", "state.layer", "state.aggregation", "state.channel")
    def heatmap(self):
        s = self.state
        ep, m = s.episode_data, s.matrix()
        if ep is None or m is None:
            return attention_view(None, [], [], title=s.attention_note)
        agg = s.aggregation if s.aggregation != "channel" else f"channel {s.channel}"
        layer = "mean of layers" if s.layer == MEAN_LAYERS else f"layer {s.layer}"
        return attention_view(
            m,
            ep.key_label,
            ep.query_label,
            title=f"Hidden attention · {layer} · {agg}",
            signed=s.aggregation in ("mean", "channel"),
            size=self._size("heatmap"),
        )

    @param.depends("state.step", "state.revision", "state.layer", "state.aggregation", "state.channel", "state.query")
    def lag(self):
        s = self.state
        ep, m = s.episode_data, s.matrix()
        w, h = self._size("lag")
        if ep is None or m is None:
            return lag_view(np.full(3, np.nan), 1, title=s.attention_note, width=w, height=h)
        q = s.query_index
        return lag_view(
            lag_profile_of(m, q),
            ep.tokens_per_step,
            title=f"{s.query} by lag",
            reference=s.reference_profile(q),
            width=w,
            height=h,
        )

    # ------------------------------------------------------------------ the paper's display
    def _paper_title(self, what: str) -> str:
        layer = self.state.layer
        layer = "mean of layers" if layer in (None, MEAN_LAYERS) else f"layer {layer}"
        return f"Paper's method · {what} · {layer}" if what else f"Paper's method · {layer}"

    def _paper_missing(self, what: str) -> str:
        """The title of the paper's plot `what` with nothing to show, and why."""
        if not self.state.model_has_attention:
            return f"{what}: {self.state.attention_note}"
        return "Paper's method: none for this checkpoint"

    @param.depends("state.revision", "state.layer")
    def paper_surface(self):
        """The paper's surface: decision step x lag of the current token's mean |α| (not normalised)."""
        d = self.state.paper_data()
        w, h = self._size("paper")
        if d is None:
            return paper_surface_view(None, [], title=self._paper_missing("Paper's method"), width=w, height=h)
        return paper_surface_view(
            d["surface"], d["decision_steps"], d["lag_labels"], title=self._paper_title(""), width=w, height=h
        )

    @param.depends("state.revision", "state.layer")
    def paper_curve(self):
        """The paper's curve (mean over decision steps) with its exponential fit and half-life."""
        d = self.state.paper_data()
        w, h = self._size("paper")
        if d is None:
            return paper_curve_view(None, {}, 1, title=self._paper_missing("Paper's curve"), width=w, height=h)
        return paper_curve_view(d["curve"], d["fit"], d["tokens_per_step"], title="Paper's curve", width=w, height=h)

    @param.depends("state.revision", "state.layer")
    def paper_kinds(self):
        """The paper's curve split by key kind, lags in env steps, each kind with its own fit."""
        d = self.state.paper_data()
        w, h = self._size("paper")
        if d is None:
            return kind_lag_view({}, {}, title=self._paper_missing("By key kind"), width=w, height=h)
        return kind_lag_view(d["by_kind"], d["kind_fits"], title="By key kind (lags in env steps)", width=w, height=h)

    def _paper_note(self) -> str:
        """What the paper's display shows: text of this code and of dema_lab.analysis (no store strings)."""
        missing = (
            ""
            if self.state.paper_data() is not None
            else " *This model has no hidden attention (an LSTM, GRU or MLP baseline): there is none to display.*"
            if not self.state.model_has_attention
            else (
                " *This checkpoint has none: its Transformer-like episodes end before step 20, or the store predates "
                "it (`dema_lab.evaluation.publish_paper_attention(run, checkpoint)` adds it).*"
            )
        )
        return trusted_markdown(
            f"**The paper's attention display**, per decision step and lag (left), its curve with an exponential "
            f"fit (middle) and the fits by key kind, lags in env steps (right). Method: {PAPER_METHOD}."
            f"{missing}<br>"
            f"The lag plot above is dema-lab's own: the current step's row normalised to sum 1 (solid), and the "
            f"dataset average (dotted) by {DEMA_LAB_METHOD.removeprefix('dema-lab: ')}."
        )

    @param.depends("state.step", "state.revision")
    def traces(self):
        """Return-to-go and return so far (left axis), reward per step (right axis), the step cursor."""
        s = self.state
        ep = s.episode_data
        h = self._size("traces")
        if ep is None:
            return trace_view(np.zeros(1), np.zeros(1), height=h, cursor=s.step)
        return trace_view(ep.reward, ep.return_to_go, height=h, cursor=s.step)

    def _size(self, view: str):
        return SIZES[bool(self.presentation)][view]

    def _update_probe(self, *_):
        s = self.state
        self._probe_div.text = html(
            '<span data-run="{}" data-episode="{}" data-step="{}" data-frame="{}" data-heatmap="{}"></span>',
            s.run,
            s.episode,
            s.step,
            crc(s.frame),
            crc(s.matrix()),
        )

    def snapshot(self) -> dict:
        """What the views show now (ExplorerState.snapshot)."""
        return self.state.snapshot()

    # ------------------------------------------------------------------ served views
    # The methods above return HoloViews objects (notebooks, exports, tests). The served layout
    # renders each once to a Bokeh figure with hv.render and, when only the step changes,
    # patches the figures' data in place: a scrub costs a few numpy copies, not a HoloViews
    # re-render (see benchmarks/bench_dashboard.py). Any other change re-renders the figure.

    def _render(self, element, tap=None, stretch=False, width=None):
        fig = hv.render(element, backend="bokeh")
        self._spans[id(fig)] = fig.select_one({"type": Span})
        if stretch:
            fig.sizing_mode = "stretch_width"
        if width is not None:  # stretched between these widths
            fig.update(sizing_mode="stretch_width", min_width=width[0], max_width=width[1])
        if tap is not None:
            from bokeh.events import Tap

            fig.on_event(Tap, tap)
        return fig

    def _frame_slot(self):
        """What goes where the frame goes: the frame, or the note saying why there is none (swapped in
        its row, not hidden: a hidden pane still takes its width from the plots beside it)."""
        return self._panes["frame_note"] if self.state.frame_note else self._panes["frame"]

    def _build_panes(self):
        self._spans = {}
        self._frame_rows = []  # the rows that show the frame (or its note) first
        self._panes = {
            "frame": pn.pane.Bokeh(self._render(self.frame())),
            "frame_note": alert(
                self.state.frame_note, "info", width=self._size("frame"), css_classes=["dema-frame-note"]
            ),
            "heatmap": pn.pane.Bokeh(self._render(self.heatmap(), tap=self._on_tap_heatmap)),
            "lag": pn.pane.Bokeh(self._render(self.lag(), width=self._size("lag_width"))),
            "traces": pn.pane.Bokeh(
                self._render(self.traces(), tap=self._on_tap_trace, stretch=True), sizing_mode="stretch_width"
            ),
        }
        self._info_div = Div(
            text=self._info_text(),
            styles={"font-size": "1.05em"},
            sizing_mode="stretch_width",
            css_classes=["dema-step-info"],
        )
        self._info_pane = pn.pane.Bokeh(self._info_div, sizing_mode="stretch_width", margin=(0, 10))
        self._panes.update(
            paper_surface=pn.pane.Bokeh(self._render(self.paper_surface(), width=self._size("paper_width"))),
            paper_curve=pn.pane.Bokeh(self._render(self.paper_curve(), width=self._size("paper_width"))),
            paper_kinds=pn.pane.Bokeh(self._render(self.paper_kinds(), width=self._size("paper_width"))),
            paper_note=markdown_pane(self._paper_note(), sizing_mode="stretch_width"),
        )
        self.state.param.watch(self._on_step, ["step"])
        self.state.param.watch(self._on_view_change, ["revision", "layer", "aggregation", "channel", "query"])
        self._build_cue_marks()

    def _on_view_change(self, *events):
        names = {e.name for e in events}
        with hold():
            if "revision" in names:
                self._panes["frame"].object = self._render(self.frame())
                self._panes["frame_note"].object = self.state.frame_note
                slot = self._frame_slot()
                for row in self._frame_rows:
                    if row[0] is not slot:
                        row[0] = slot
                self._panes["traces"].object = self._render(self.traces(), tap=self._on_tap_trace, stretch=True)
            if names - {"query"}:
                self._panes["heatmap"].object = self._render(self.heatmap(), tap=self._on_tap_heatmap)
            self._panes["lag"].object = self._render(self.lag(), width=self._size("lag_width"))
            self._info_div.text = self._info_text()
            if names & {"revision", "layer"}:
                for view in ("paper_surface", "paper_curve", "paper_kinds"):
                    self._panes[view].object = self._render(getattr(self, view)(), width=self._size("paper_width"))
                self._panes["paper_note"].object = self._paper_note()
            self._mark_cue()

    def _on_step(self, *_):
        """The scrub fast path: new data into the existing figures."""
        s = self.state
        ep = s.episode_data
        with hold():
            self._info_div.text = self._info_text()
            self._mark_cue(figures=False)
            self._spans[id(self._panes["traces"].object)].location = float(s.step)
            if ep is None:
                return
            fig = self._panes["frame"].object
            frame = s.frame
            if frame is not None:
                fig.renderers[0].data_source.data.update(image=[rgba(frame)])
            fig.title.text = f"step {s.step}"
            m = s.matrix()
            if m is None:
                return
            fig = self._panes["heatmap"].object
            glyph = fig.renderers[0]
            glyph.data_source.data.update(image=[m[::-1].astype(np.float64)])
            lo, hi = attention_clim(m, s.aggregation in ("mean", "channel"))
            glyph.glyph.color_mapper.update(low=lo, high=hi)
            q = s.query_index
            d = lag_data(lag_profile_of(m, q), ep.tokens_per_step, s.reference_profile(q))
            fig = self._panes["lag"].object
            for r, key in zip(fig.renderers[:4], ("points", "points", "ref", "fit_curve")):
                x, y = d[key]
                r.data_source.data = {"lag": x, "share": y}
            self._spans[id(fig)].location = d["half_life"]
            fig.y_range.update(start=d["ylim"][0], end=d["ylim"][1])
            fig.title.text = lag_title(f"{s.query} by lag", d)

    def _on_tap_trace(self, event):
        ep = self.state.episode_data
        if event.x is not None and ep is not None:
            self.state.step = int(np.clip(round(event.x), 0, ep.n_steps - 1))

    def _on_tap_heatmap(self, event):
        ep = self.state.episode_data
        if event.y is None or ep is None or not ep.query_label:
            return
        L = len(ep.query_label)
        i = int(np.clip(L - 1 - int(np.floor(event.y)), 0, L - 1))
        self.state.query = ep.query_label[i]

    def _info_text(self) -> str:
        """The episode's line (run, checkpoint, mode, target, return) and the step's, as HTML: the
        run id and the rollout's attributes are store strings, escaped (text.html); an attribute
        of the wrong type shows as its text."""
        s = self.state
        ep = s.episode_data
        if ep is None:
            return ""
        t = s.t
        act = ", ".join(f"{a:+.2f}" for a in ep.action[t])
        a = ep.attrs
        score = a.get("normalized_score")
        head = html(
            "<b>{}</b> · checkpoint {} · {} · target {:g} · return {:.0f}",
            ep.run_id,
            a.get("checkpoint", s.checkpoint),
            a.get("mode", ""),
            a.get("target", float("nan")),
            a.get("return", float("nan")),
        )
        if isinstance(score, (int, float)):
            head += html(" (normalized {:.1f})", score)
        head += html(" · {} steps", ep.n_steps)
        now = html(
            "step <b>{}</b> · reward {:.2f} · return-to-go {:.0f} · return so far {:.0f} · action [{}]",
            t,
            ep.reward[t],
            ep.return_to_go[t],
            ep.reward[: t + 1].sum(),
            act,
        )
        return head + html("<br>") + now

    def controls(self) -> pn.Column:
        """The selection widgets, slider and player (a sidebar in the app)."""
        s, w = self.state, pn.widgets
        slider = w.IntSlider.from_param(
            s.param.step, name="Step", sizing_mode="stretch_width", css_classes=["dema-step-slider"]
        )
        # The player drives the slider in the browser (a client-side link, both ways), and only the
        # slider talks to the server. Bound to the state too, the player's ticks came back from a
        # busy server as pushes to the slider after the person had moved it on: the slider then
        # showed the stale step for good (the server does not echo a value to the widget that sent
        # it, so nothing corrected it) while the plots and the state showed the slider's last one.
        player = w.Player(
            value=slider.value,  # not a reference: a server push to the player would reach the slider too
            start=slider.start,
            end=slider.end,
            interval=120,
            loop_policy="once",
            label="Play",
            show_loop_controls=False,
            sizing_mode="stretch_width",
            scale_buttons=0.9,
            css_classes=["dema-player"],
        )
        player.jslink(slider, value="value", bidirectional=True)
        slider.param.watch(lambda e: setattr(player, e.name, e.new), ["start", "end"])  # a new episode's
        channel = w.IntInput.from_param(s.param.channel, name="Channel", visible=s.param.aggregation.rx() == "channel")
        refresh = w.Button(label="Reload store", color="light")
        refresh.on_click(lambda *_: s.refresh())
        video = w.FileDownload(
            callback=s.episode_video,
            label="Download the episode (mp4)",
            embed=False,
            filename=s.param.episode.rx().rx.pipe(lambda e: f"{s.run}-{e}.mp4"),
            visible=s.param.revision.rx().rx.pipe(lambda _: s.frame is not None),
            sizing_mode="stretch_width",
            css_classes=["dema-video"],
        )
        return pn.Column(
            w.Select.from_param(s.param.run, name="Run"),
            w.Select.from_param(s.param.checkpoint, name="Checkpoint"),
            w.Select.from_param(s.param.episode, name="Episode"),
            w.Select.from_param(s.param.layer, name="Layer"),
            pn.pane.Markdown("Channel aggregation", margin=(5, 10, 0, 10)),
            w.RadioButtonGroup.from_param(
                s.param.aggregation,
                options=AGGREGATION_LABELS,
                color="primary",
                variant="outline",
                sizing_mode="stretch_width",
                orientation="vertical",
            ),
            channel,
            w.Select.from_param(s.param.query, name="Lag profile of token"),
            w.Select.from_param(
                s.param.explanation,
                name="Explanation method",
                visible=s.param.explanation.rx().rx.pipe(lambda v: v is not None),
                css_classes=["dema-explanation-select"],
            ),
            slider,
            player,
            refresh,
            video,
            self._probe,
            sizing_mode="stretch_width",
        )

    def views(self) -> pn.Column:
        """The linked plots: frame, attention heatmap, lag profile, traces with the step cursor."""
        if not hasattr(self, "_panes"):
            self._build_panes()
        self._update_probe()
        p = self._panes
        message = alert(self.state.param.message, "warning", sizing_mode="stretch_width")
        if self.presentation:
            row = pn.Row(self._frame_slot(), p["heatmap"])
            plots = [row, pn.Row(p["lag"], p["traces"], sizing_mode="stretch_width")]
        else:
            row = pn.Row(self._frame_slot(), p["heatmap"], p["lag"], sizing_mode="stretch_width")
            plots = [row, p["traces"]]
        self._frame_rows.append(row)
        paper = [
            p["paper_note"],
            pn.Row(p["paper_surface"], p["paper_curve"], p["paper_kinds"], sizing_mode="stretch_width"),
        ]
        explained = pn.panel(self.explanations, sizing_mode="stretch_width")
        return pn.Column(
            message, self._info_pane, *plots, self._cue_pane, *paper, explained, sizing_mode="stretch_width"
        )

    # ------------------------------------------------------------------ explanations
    @param.depends("state.explanation", "state.checkpoint", "state.run")
    def explanations(self):
        """The checkpoint's explanations (dema-lab explain), when it has them: the chosen
        method's relevance heatmap and lag profile, Ω against α, the perturbation curves, the AUC
        table and the causal-horizon curve with the half-life marked."""
        from dema_lab.dashboard.common import explain_views as ev

        def render(element):
            return pn.pane.Bokeh(hv.render(element, backend="bokeh"))

        explain, faith = self.state.explanations()
        method = self.state.explanation
        if explain is None or method is None:
            return pn.Column(css_classes=["dema-explanations"])
        rows = [
            pn.Row(
                render(ev.relevance_view(explain, method)),
                render(ev.relevance_lag_view(explain, method)),
                render(ev.omega_alpha_view(explain)),
                sizing_mode="stretch_width",
            )
        ]
        if faith is not None:
            table = "\n".join(
                [
                    "| " + " | ".join(ev.auc_rows(faith)[0]) + " |",
                    "|" + "---|" * len(ev.auc_rows(faith)[0]),
                    *("| " + " | ".join(md("{}", v) for v in row.values()) + " |" for row in ev.auc_rows(faith)),
                ]
            )
            rows += [
                pn.Row(
                    render(ev.perturbation_view(faith, "positive")),
                    render(ev.perturbation_view(faith, "negative")),
                    render(ev.horizon_view(faith)),
                    sizing_mode="stretch_width",
                ),
                markdown_pane(trusted_markdown(table), sizing_mode="stretch_width"),
                markdown_pane(md("{}", faith.attrs.get("verdict", "")), sizing_mode="stretch_width"),
            ]
        head = markdown_pane(
            md("### Explanations of checkpoint {} ({} decisions)", self.state.checkpoint, explain.sizes["decision"])
        )
        return pn.Column(head, *rows, css_classes=["dema-explanations"], sizing_mode="stretch_width")

    # ------------------------------------------------------------------ a memory task's cue
    # Drawn as Bokeh glyphs added to the served heatmap and lag figures, with their own data sources:
    # the cue's tokens move with every step, and the scrub fast path patches these sources too.
    CUE_COLOR = "#d62728"

    def _build_cue_marks(self):
        from bokeh.models import ColumnDataSource

        self._cue_sources = {
            "heatmap": ColumnDataSource({"left": [], "right": [], "bottom": [], "top": []}),
            "lag": ColumnDataSource({"lag": []}),
        }
        self._cue_div = Div(text="", css_classes=["dema-cue-note"], sizing_mode="stretch_width")
        self._cue_pane = pn.pane.Bokeh(self._cue_div, sizing_mode="stretch_width", margin=(0, 10))
        self._mark_cue()

    def _mark_cue(self, figures: bool = True):
        """The cue marks of this step: a dashed box over each cue token's heatmap column, a band at
        each cue lag on the lag plot, and the legend; sent to the browser only when they change.
        With `figures`, the glyphs are first added to a newly rendered figure that lacks them."""
        s = self.state
        keys, lags, note = s.cue_keys, s.cue_lags, s.cue_note
        if figures:
            for view, add in (("heatmap", self._add_cue_boxes), ("lag", self._add_cue_bands)):
                fig = self._panes[view].object
                if fig.select_one({"name": f"dema-cue-{view}"}) is None:
                    add(fig)
        if (keys, lags, note) == getattr(self, "_cue_shown", None):
            return
        self._cue_shown = (keys, lags, note)
        L = len(s.window_labels)
        self._cue_sources["heatmap"].data = {
            "left": [float(k) for k in keys],
            "right": [float(k + 1) for k in keys],
            "bottom": [0.0] * len(keys),
            "top": [float(L)] * len(keys),
        }
        self._cue_sources["lag"].data = {"lag": [float(lag) for lag in lags]}
        self._cue_div.text = html("<i>{}</i>", note) if note else ""
        self._cue_pane.visible = bool(note)

    def _add_cue_boxes(self, fig):
        fig.quad(
            source=self._cue_sources["heatmap"],
            fill_alpha=0.0,
            line_color=self.CUE_COLOR,
            line_width=2,
            line_dash="dashed",
            name="dema-cue-heatmap",
        )

    def _add_cue_bands(self, fig):
        fig.vspan(
            x="lag",
            source=self._cue_sources["lag"],
            line_color=self.CUE_COLOR,
            line_width=6,
            line_alpha=0.35,
            name="dema-cue-lag",
        )

    def __panel__(self):
        return pn.Row(pn.Column(self.controls(), width=300), self.views(), sizing_mode="stretch_width")
