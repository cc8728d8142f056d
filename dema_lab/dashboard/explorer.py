"""The attention explorer: a recorded episode, scrubbed step by step.

    explorer = AttentionExplorer(store="store")     # or StoreIndex
    explorer                                        # in a notebook after pn.extension()
    explorer.step = 120                             # every view follows

Views (HoloViews DynamicMaps, updated in place when a parameter changes): the env frame,
the hidden-attention heatmap over the window's R/s/a tokens, one token's attention by lag
with its fitted exponential and half-life, and the reward / return-to-go traces with a
cursor; below them the checkpoint's paper's attention display (analysis.paper_attention: the
surface of decision step x lag, its curve with the exponential fit, and the fit per key kind).
Clicking the traces moves the step; clicking a heatmap row picks the query token whose lag
profile is shown.
"""

from __future__ import annotations

import contextlib
import zlib

import holoviews as hv
import numpy as np
import panel as pn
import param
from bokeh.models import Div, Span

from ..analysis import DEMA_LAB_METHOD, PAPER_METHOD, opening_step, paper_selection, right_align
from ..demo import featured_run
from ..store import StoreError
from .data import AttentionReplayer, EpisodeData, RunInfo, StoreIndex, friendly_error
from .views import (
    attention_clim,
    attention_view,
    frame_view,
    kind_lag_view,
    lag_data,
    lag_profile_of,
    lag_title,
    lag_view,
    paper_curve_view,
    paper_surface_view,
    rgba,
    trace_view,
)

AGGREGATION_LABELS = {
    "minmax (stored)": "minmax",
    "abs (mean |α|)": "abs",
    "mean (signed)": "mean",
    "one channel": "channel",
}
MEAN_LAYERS = -1

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


def _crc(a) -> str:
    if a is None:
        return "none"
    return f"{zlib.crc32(np.ascontiguousarray(a).view(np.uint8).ravel()):08x}"


class AttentionExplorer(pn.viewable.Viewer):
    """Pick a run, checkpoint, episode and layer; scrub timesteps; all views linked."""

    run = param.Selector(objects=[], doc="run id")
    checkpoint = param.Selector(objects=[], doc="checkpoint (training step) of the recorded episodes")
    episode = param.Selector(objects=[], doc="recorded episode (inference mode, target, episode)")
    layer = param.Selector(objects=[], doc="model layer, or the mean over layers")
    aggregation = param.Selector(
        objects=list(AGGREGATION_LABELS.values()),
        default="minmax",
        doc="how the channels of the hidden attention are aggregated",
    )
    channel = param.Integer(default=0, bounds=(0, None), doc="channel shown when aggregation is 'channel'")
    query = param.Selector(objects=["s0"], default="s0", doc="query token whose attention by lag is shown")
    step = param.Integer(default=0, bounds=(0, 0), doc="env step of the episode")
    message = param.String(default="", doc="what went wrong, if anything (shown above the views)")
    revision = param.Integer(default=0, precedence=-1, doc="bumped when the episode data is (re)loaded")

    def __init__(self, store="store", presentation: bool = False, **params):
        self.index = store if isinstance(store, StoreIndex) else StoreIndex(store)
        self.presentation = presentation
        self._info: RunInfo | None = None
        self._ep: EpisodeData | None = None
        self._replayers: dict = {}
        self._matrix_key = None
        self._matrix = None
        self.run_errors: dict[str, str] = {}
        self._first_episode = "step" not in params  # open mid-episode unless a step is asked for
        super().__init__(**params)
        self._probe_div = Div(text="", css_classes=["dema-probe"], styles={"display": "none"})
        self._probe = pn.pane.Bokeh(self._probe_div, width=0, height=0, margin=0)
        self.refresh()

    # ------------------------------------------------------------------ selection
    def refresh(self):
        """Re-read the store's run list (new runs, new episodes of a running one)."""
        infos, bad = {}, {}
        try:
            ids = self.index.run_ids()
        except StoreError as e:
            self.message = str(e)
            ids = []
        bad.update({r: f"its metadata cannot be read ({m})" for r, m in self.index.unreadable.items()})
        for run_id in ids:
            try:
                infos[run_id] = self.index.info(run_id)
            except StoreError as e:
                bad[run_id] = str(e)
        self.run_errors = bad
        self._infos = infos
        usable = [r for r, i in infos.items() if i.episodes] or list(infos)
        names = {i.label and f"{r} · {i.label}": r for r, i in infos.items() if r in usable}
        current = self.run
        self.param.run.objects = list(names.values())
        self.param.run.names = names
        if current in infos and current in usable:
            self._on_run()  # same run: pick up new checkpoints / episodes
        elif usable:
            self.run = featured_run({r: infos[r].config for r in usable}, {r for r in usable if infos[r].episodes})
        else:
            self._set_message()

    def _set_message(self, extra: str = ""):
        parts = [f"Run **{r}** cannot be read: {m}" for r, m in self.run_errors.items()]
        if not self._infos and not self.run_errors:
            parts.append("This store has no runs yet.")
        if extra:
            parts.append(extra)
        self.message = "\n\n".join(parts)

    @param.depends("run", watch=True)
    def _on_run(self):
        info = self._infos.get(self.run)
        self._info = info
        if info is None:
            return
        ckpts = info.episode_checkpoints()
        names = {f"step {c}": c for c in ckpts}
        self.param.checkpoint.names = names
        self.param.checkpoint.objects = ckpts
        if not ckpts:
            self._ep = None
            self._set_message(
                f"Run **{info.run_id}** has no recorded episodes yet (status {info.status}, "
                f"{info.steps_done} of {info.config.get('steps', '?')} training steps); episodes "
                f"are recorded at each evaluation."
            )
            self._bump()
            return
        if self.checkpoint in ckpts:
            self._on_checkpoint()
        else:
            self.checkpoint = ckpts[-1]

    @param.depends("checkpoint", watch=True)
    def _on_checkpoint(self):
        info = self._info
        if info is None or self.checkpoint is None:
            return
        eps = [e for e in info.episodes if e.checkpoint == self.checkpoint]
        targets = info.provenance.get("eval_targets", [])

        def label(e):
            t = targets[e.target_index] if e.target_index < len(targets) else f"t{e.target_index}"
            return (
                f"{e.mode} · target {t:g} · episode {e.episode}"
                if isinstance(t, (int, float))
                else f"{e.mode} · {t} · episode {e.episode}"
            )

        names = {label(e): e.name for e in eps}
        self.param.episode.names = names
        self.param.episode.objects = [e.name for e in eps]
        if self.episode in self.param.episode.objects:
            self._on_episode()
        else:
            self.episode = eps[0].name

    @param.depends("episode", watch=True)
    def _on_episode(self):
        if self.run is None or self.episode is None:
            return
        try:
            ep = self.index.episode(self.run, self.episode)
        except StoreError as e:
            self._ep = None
            self._set_message(str(e))
            self._bump()
            return
        self._ep = ep
        self._set_message()
        layers = {f"layer {i}": i for i in range(ep.n_layers)}
        if ep.n_layers > 1:
            layers["mean of layers"] = MEAN_LAYERS
        self.param.layer.names = layers
        self.param.layer.objects = list(layers.values())
        queries = ep.query_label or ["s0"]
        self.param.query.objects = queries
        with param.parameterized.batch_call_watchers(self):
            if self.layer not in self.param.layer.objects:
                self.layer = 0 if ep.n_layers else None
            if self.query not in queries:
                self.query = queries[-1]
            self.param.step.bounds = (0, max(0, ep.n_steps - 1))
            if self._first_episode:
                self.step = opening_step(ep.n_steps, self._info.config.get("K", 1) if self._info else 1)
            elif self.step > ep.n_steps - 1:
                self.step = ep.n_steps - 1
            self._first_episode = False
        self._bump()

    def _bump(self):
        """Force the views to redraw after a change of episode (same step value)."""
        self._matrix_key = None
        self.revision += 1

    # ------------------------------------------------------------------ data of the current step
    @property
    def stored_aggregation(self) -> str:
        if self._ep is None:
            return "minmax"
        return str(self._ep.attrs.get("aggregation") or "minmax")

    def matrix(self) -> np.ndarray | None:
        """The (L, L) attention shown now (layer, aggregation and step applied), cached."""
        ep = self._ep
        if ep is None or ep.attention is None or self.layer is None:
            return None
        step = min(self.step, ep.n_steps - 1)
        key = (ep.run_id, ep.name, step, self.layer, self.aggregation, self.channel)
        if key == self._matrix_key:
            return self._matrix
        if self.aggregation == self.stored_aggregation:
            att = ep.attention[step]
        else:
            att = self._replayed(ep, step)
        if att is None:
            return None
        m = np.nanmean(att, axis=0) if self.layer == MEAN_LAYERS else att[self.layer]
        self._matrix_key, self._matrix = key, m
        return m

    def _replayed(self, ep: EpisodeData, step: int) -> np.ndarray | None:
        ckpt = int(ep.attrs.get("checkpoint", self.checkpoint))
        key = (ep.run_id, ep.name, ckpt)
        try:
            rep = self._replayers.get(key)
            if rep is None:
                rep = AttentionReplayer(self.index.checkpoint(ep.run_id, ckpt), ep)
                self._replayers = {key: rep}  # one episode at a time
            att = rep.attention(step, self.aggregation, self.channel)
        except Exception as e:  # noqa: BLE001 - shown as a message
            self.message = f"Cannot recompute the attention with {self.aggregation!r}: {friendly_error(e)}"
            return None
        return right_align(att, ep.attention.shape[-1])

    # ------------------------------------------------------------------ views
    @param.depends("step", "revision")
    def frame(self):
        ep = self._ep
        frame = None if ep is None or ep.frames is None else ep.frames[min(self.step, ep.n_steps - 1)]
        title = "" if ep is None else f"step {self.step}"
        return frame_view(frame, title=title, size=self._size("frame"))

    @param.depends("step", "revision", "layer", "aggregation", "channel")
    def heatmap(self):
        ep = self._ep
        m = self.matrix()
        if ep is None or m is None:
            return attention_view(None, [], [], title="no attention recorded")
        agg = self.aggregation if self.aggregation != "channel" else f"channel {self.channel}"
        layer = "mean of layers" if self.layer == MEAN_LAYERS else f"layer {self.layer}"
        return attention_view(
            m,
            ep.key_label,
            ep.query_label,
            title=f"Hidden attention · {layer} · {agg}",
            signed=self.aggregation in ("mean", "channel"),
            size=self._size("heatmap"),
        )

    @param.depends("step", "revision", "layer", "aggregation", "channel", "query")
    def lag(self):
        ep = self._ep
        m = self.matrix()
        w, h = self._size("lag")
        if ep is None or m is None:
            return lag_view(np.full(3, np.nan), 1, title="no attention recorded", width=w, height=h)
        q = ep.query_label.index(self.query) if self.query in ep.query_label else len(ep.query_label) - 1
        mass = lag_profile_of(m, q)
        return lag_view(
            mass, ep.tokens_per_step, title=f"{self.query} by lag", reference=self._reference(q), width=w, height=h
        )

    def _reference(self, q: int):
        """The checkpoint's dataset-average lag profile for this layer and query kind, if logged."""
        ep, info = self._ep, self._info
        if ep is None or info is None or not ep.query_kind:
            return None
        cache = getattr(self, "_decay_cache", {})
        key = (info.run_id, self.checkpoint)
        if key not in cache:
            try:
                ds = self.index.run(info.run_id).open("decay", f"step_{int(self.checkpoint):08d}").load()
            except Exception:  # noqa: BLE001 - no decay statistics: no reference curve
                ds = None
            self._decay_cache = cache = {key: ds}
        ds = cache[key]
        if ds is None or self.aggregation == "channel":
            return None
        kind = ep.query_kind[q]
        try:
            sel = ds["mass"].sel(query_kind=kind)
            if "checkpoint" in sel.dims:
                sel = sel.isel(checkpoint=0)
            sel = sel.mean("layer") if self.layer == MEAN_LAYERS else sel.sel(layer=self.layer)
            return sel.values
        except Exception:  # noqa: BLE001
            return None

    # ------------------------------------------------------------------ the paper's display
    def paper_data(self) -> dict | None:
        """The checkpoint's paper's attention display for the layer shown (analysis.paper_selection;
        the mean of layers is the paper's own), or None when the run has none for it."""
        if self.run is None or self.checkpoint is None:
            return None
        try:
            ds = self.index.paper_attention(self.run, int(self.checkpoint))
        except StoreError:
            return None
        if ds is None:
            return None
        layer = None if self.layer in (None, MEAN_LAYERS) else int(self.layer)
        return paper_selection(ds, layer if layer is None or layer in ds["layer"].values else None)

    def _paper_title(self, what: str) -> str:
        layer = "mean of layers" if self.layer in (None, MEAN_LAYERS) else f"layer {self.layer}"
        return f"Paper's method · {what} · {layer}" if what else f"Paper's method · {layer}"

    @param.depends("revision", "layer")
    def paper_surface(self):
        """The paper's surface: decision step x lag of the current token's mean |α| (not normalised)."""
        d = self.paper_data()
        w, h = self._size("paper")
        if d is None:
            return paper_surface_view(None, [], title="Paper's method: none for this checkpoint", width=w, height=h)
        return paper_surface_view(
            d["surface"], d["decision_steps"], d["lag_labels"], title=self._paper_title(""), width=w, height=h
        )

    @param.depends("revision", "layer")
    def paper_curve(self):
        """The paper's curve (mean over decision steps) with its exponential fit and half-life."""
        d = self.paper_data()
        w, h = self._size("paper")
        if d is None:
            return paper_curve_view(None, {}, 1, title="Paper's method: none for this checkpoint", width=w, height=h)
        return paper_curve_view(d["curve"], d["fit"], d["tokens_per_step"], title="Paper's curve", width=w, height=h)

    @param.depends("revision", "layer")
    def paper_kinds(self):
        """The paper's curve split by key kind, lags in env steps, each kind with its own fit."""
        d = self.paper_data()
        w, h = self._size("paper")
        if d is None:
            return kind_lag_view({}, {}, title="Paper's method: none for this checkpoint", width=w, height=h)
        return kind_lag_view(d["by_kind"], d["kind_fits"], title="By key kind (lags in env steps)", width=w, height=h)

    def _paper_note(self) -> str:
        missing = (
            ""
            if self.paper_data() is not None
            else (
                " *This checkpoint has none: its Transformer-like episodes end before step 20, or the store predates "
                "it (`dema_lab.analysis.publish_paper_attention(run, checkpoint)` adds it).*"
            )
        )
        return (
            f"**The paper's attention display**, per decision step and lag (left), its curve with an exponential "
            f"fit (middle) and the fits by key kind, lags in env steps (right). Method: {PAPER_METHOD}."
            f"{missing}<br>"
            f"The lag plot above is dema-lab's own: the current step's row normalised to sum 1 (solid), and the "
            f"dataset average (dotted) by {DEMA_LAB_METHOD.removeprefix('dema-lab: ')}."
        )

    @param.depends("step", "revision")
    def traces(self):
        """Return-to-go and return so far (left axis), reward per step (right axis), the step cursor."""
        ep = self._ep
        h = self._size("traces")
        if ep is None:
            return trace_view(np.zeros(1), np.zeros(1), height=h, cursor=self.step)
        return trace_view(ep.reward, ep.return_to_go, height=h, cursor=self.step)

    def _size(self, view: str):
        return SIZES[bool(self.presentation)][view]

    @param.depends("step", "revision", "layer", "aggregation", "channel", "message", watch=True, on_init=False)
    def _update_probe(self):
        ep = self._ep
        frame = None if ep is None or ep.frames is None else ep.frames[min(self.step, ep.n_steps - 1)]
        self._probe_div.text = (
            f'<span data-run="{self.run}" data-episode="{self.episode}" data-step="{self.step}" '
            f'data-frame="{_crc(frame)}" data-heatmap="{_crc(self.matrix())}"></span>'
        )

    def state(self) -> dict:
        """What the views show now (step, frame and attention checksums), for tests and benchmarks."""
        ep = self._ep
        frame = None if ep is None or ep.frames is None else ep.frames[min(self.step, ep.n_steps - 1)]
        return {
            "run": self.run,
            "episode": self.episode,
            "step": self.step,
            "frame": _crc(frame),
            "heatmap": _crc(self.matrix()),
        }

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

    def _build_panes(self):
        self._spans = {}
        self._panes = {
            "frame": pn.pane.Bokeh(self._render(self.frame())),
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
            paper_note=pn.pane.Markdown(self._paper_note(), sizing_mode="stretch_width"),
        )
        self.param.watch(self._on_step, ["step"])
        self.param.watch(self._on_view_change, ["revision", "layer", "aggregation", "channel", "query"])

    def _on_view_change(self, *events):
        names = {e.name for e in events}
        with hold():
            if "revision" in names:
                self._panes["frame"].object = self._render(self.frame())
                self._panes["traces"].object = self._render(self.traces(), tap=self._on_tap_trace, stretch=True)
            if names - {"query"}:
                self._panes["heatmap"].object = self._render(self.heatmap(), tap=self._on_tap_heatmap)
            self._panes["lag"].object = self._render(self.lag(), width=self._size("lag_width"))
            self._info_div.text = self._info_text()
            if names & {"revision", "layer"}:
                for view in ("paper_surface", "paper_curve", "paper_kinds"):
                    self._panes[view].object = self._render(getattr(self, view)(), width=self._size("paper_width"))
                self._panes["paper_note"].object = self._paper_note()

    def _on_step(self, *_):
        """The scrub fast path: new data into the existing figures."""
        ep = self._ep
        with hold():
            self._info_div.text = self._info_text()
            self._spans[id(self._panes["traces"].object)].location = float(self.step)
            if ep is None:
                return
            t = min(self.step, ep.n_steps - 1)
            fig = self._panes["frame"].object
            if ep.frames is not None:
                fig.renderers[0].data_source.data.update(image=[rgba(ep.frames[t])])
            fig.title.text = f"step {self.step}"
            m = self.matrix()
            if m is None:
                return
            fig = self._panes["heatmap"].object
            glyph = fig.renderers[0]
            glyph.data_source.data.update(image=[m[::-1].astype(np.float64)])
            lo, hi = attention_clim(m, self.aggregation in ("mean", "channel"))
            glyph.glyph.color_mapper.update(low=lo, high=hi)
            q = ep.query_label.index(self.query) if self.query in ep.query_label else len(ep.query_label) - 1
            d = lag_data(lag_profile_of(m, q), ep.tokens_per_step, self._reference(q))
            fig = self._panes["lag"].object
            for r, key in zip(fig.renderers[:4], ("points", "points", "ref", "fit_curve")):
                x, y = d[key]
                r.data_source.data = {"lag": x, "share": y}
            self._spans[id(fig)].location = d["half_life"]
            fig.y_range.update(start=d["ylim"][0], end=d["ylim"][1])
            fig.title.text = lag_title(f"{self.query} by lag", d)

    def _on_tap_trace(self, event):
        if event.x is not None and self._ep is not None:
            self.step = int(np.clip(round(event.x), 0, self._ep.n_steps - 1))

    def _on_tap_heatmap(self, event):
        ep = self._ep
        if event.y is None or ep is None or not ep.query_label:
            return
        L = len(ep.query_label)
        i = int(np.clip(L - 1 - int(np.floor(event.y)), 0, L - 1))
        self.query = ep.query_label[i]

    def _info_text(self) -> str:
        ep = self._ep
        if ep is None:
            return ""
        t = min(self.step, ep.n_steps - 1)
        act = ", ".join(f"{a:+.2f}" for a in ep.action[t])
        a = ep.attrs
        score = a.get("normalized_score")
        head = (
            f"<b>{ep.run_id}</b> · checkpoint {a.get('checkpoint', self.checkpoint)} · {a.get('mode', '')} · "
            f"target {a.get('target', float('nan')):g} · return {a.get('return', float('nan')):.0f}"
            + (f" (normalized {score:.1f})" if isinstance(score, (int, float)) else "")
            + f" · {ep.n_steps} steps"
        )
        now = (
            f"step <b>{t}</b> · reward {ep.reward[t]:.2f} · return-to-go {ep.return_to_go[t]:.0f} · "
            f"return so far {ep.reward[: t + 1].sum():.0f} · action [{act}]"
        )
        return f"{head}<br>{now}"

    def episode_video(self):
        """The current episode's frames as an mp4 (BytesIO), for the download button."""
        import io
        import tempfile
        from pathlib import Path

        from ..rollout import export_video

        ds = self.index.run(self.run).open("rollout", self.episode)
        with tempfile.TemporaryDirectory() as tmp:
            return io.BytesIO(export_video(ds, Path(tmp) / "episode.mp4").read_bytes())

    def controls(self) -> pn.Column:
        """The selection widgets, slider and player (a sidebar in the app)."""
        w = pn.widgets
        slider = w.IntSlider.from_param(
            self.param.step, name="Step", sizing_mode="stretch_width", css_classes=["dema-step-slider"]
        )
        player = w.Player.from_param(
            self.param.step,
            interval=120,
            loop_policy="once",
            name="Play",
            show_loop_controls=False,
            sizing_mode="stretch_width",
            scale_buttons=0.9,
            css_classes=["dema-player"],
        )
        channel = w.IntInput.from_param(
            self.param.channel, name="Channel", visible=self.param.aggregation.rx() == "channel"
        )
        refresh = w.Button(name="Reload store", button_type="light")
        refresh.on_click(lambda *_: self.refresh())
        video = w.FileDownload(
            callback=self.episode_video,
            label="Download the episode (mp4)",
            embed=False,
            filename=self.param.episode.rx().rx.pipe(lambda e: f"{self.run}-{e}.mp4"),
            visible=self.param.revision.rx().rx.pipe(lambda _: self._ep is not None and self._ep.frames is not None),
            sizing_mode="stretch_width",
            css_classes=["dema-video"],
        )
        return pn.Column(
            w.Select.from_param(self.param.run, name="Run"),
            w.Select.from_param(self.param.checkpoint, name="Checkpoint"),
            w.Select.from_param(self.param.episode, name="Episode"),
            w.Select.from_param(self.param.layer, name="Layer"),
            pn.pane.Markdown("Channel aggregation", margin=(5, 10, 0, 10)),
            w.RadioButtonGroup.from_param(
                self.param.aggregation,
                options=AGGREGATION_LABELS,
                button_type="primary",
                button_style="outline",
                sizing_mode="stretch_width",
                orientation="vertical",
            ),
            channel,
            w.Select.from_param(self.param.query, name="Lag profile of token"),
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
        alert = pn.pane.Alert(
            self.param.message, alert_type="warning", visible=self.param.message.rx.bool(), sizing_mode="stretch_width"
        )
        if self.presentation:
            plots = [pn.Row(p["frame"], p["heatmap"]), pn.Row(p["lag"], p["traces"], sizing_mode="stretch_width")]
        else:
            plots = [pn.Row(p["frame"], p["heatmap"], p["lag"], sizing_mode="stretch_width"), p["traces"]]
        paper = [
            p["paper_note"],
            pn.Row(p["paper_surface"], p["paper_curve"], p["paper_kinds"], sizing_mode="stretch_width"),
        ]
        return pn.Column(alert, self._info_pane, *plots, *paper, sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Row(pn.Column(self.controls(), width=300), self.views(), sizing_mode="stretch_width")
