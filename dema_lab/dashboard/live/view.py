"""Live rollouts: run a checkpoint in an env and watch frames, actions, the return and the hidden
attention stream in as it acts.

    live = LiveRollout(store="store")       # one per browser session (or notebook)
    live.start(); live.pause(); live.stop()

The state (LiveState, dema_lab.dashboard.live.state: the checkpoint, env, target, mode, the
RolloutWorker thread that plays the episode and the save rule) is a param-only object; this
module renders it. The page polls the state for the newest steps a few times a second. Every
session has its own state, model copy, env and thread, so sessions run side by side; closing a
session stops its rollout.
"""

from __future__ import annotations

import logging
import time
import warnings

import holoviews as hv
import numpy as np
import panel as pn
import param
from bokeh.models import Div

from dema_lab.dashboard.common.text import alert, markdown_pane, md
from dema_lab.dashboard.common.views import PALETTE, attention_clim, attention_view, frame_view, rgba
from dema_lab.dashboard.explorer.state import crc
from dema_lab.dashboard.explorer.view import hold
from dema_lab.dashboard.live.state import LiveState, RolloutWorker
from dema_lab.models.checkpoint_files import DEFAULT_MAX_BYTES

__all__ = ["LiveRollout", "LiveState", "RolloutWorker"]

log = logging.getLogger(__name__)
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)  # `panel serve` leaves the root logger at WARNING; sessions are news

_crc = crc  # its old name here

# How often the return and action traces get their new points (seconds); the frame and the
# heatmap follow every tick (100 ms). A stream re-ranges and redraws both stretched plots in the
# browser, which on 2 cores took the CPU the rollout needed.
TRACE_PERIOD = 0.5


class LiveRollout(pn.viewable.Viewer):
    """The live page of one LiveState: its settings, start/pause/stop, and the streaming plots.
    LiveRollout(store, checkpoint=..., fps=...) makes the state too."""

    state = param.ClassSelector(class_=LiveState, constant=True, doc="what plays")
    presentation = param.Boolean(default=False, constant=True, doc="larger plots (full-screen talks)")

    def __init__(
        self,
        store="store",
        presentation: bool = False,
        render_size: int = 256,
        checkpoint_dirs=(),
        max_checkpoint_bytes: int = DEFAULT_MAX_BYTES,
        **params,
    ):
        """store: a store path or URL, a StoreIndex, or a LiveState to render; checkpoint_dirs: where
        the file field may read besides the store (`serve --checkpoint-dir`); max_checkpoint_bytes:
        the largest file it reads; other keyword arguments set the state's parameters."""
        view = {k: params.pop(k) for k in ("name",) if k in params}
        if isinstance(store, LiveState):
            state = store
            state.param.update(**params)
        else:
            state = LiveState(
                store,
                render_size=render_size,
                checkpoint_dirs=checkpoint_dirs,
                max_checkpoint_bytes=max_checkpoint_bytes,
                **params,
            )
        super().__init__(state=state, presentation=presentation, **view)
        self._callback = None
        self._frame_crc = crc(None)  # the checksum of the frame shown (the probe names it)
        self._pending: list = []  # records whose trace points are not streamed yet
        self._streamed_at = -float("inf")  # when the traces were last streamed
        self._build()
        state.param.watch(self._on_new_rollout, ["rollout"])
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            # bokeh checks the callback's argument name: it must be `session_context`
            pn.state.on_session_destroyed(self._session_closed)

    def _session_closed(self, session_context):
        """The browser session is gone: stop its rollout, close its env, say so in the server log."""
        w = self.state.worker
        running = w is not None and not w.done
        self.state.close()  # a load still in flight starts nothing
        self._stop_polling()
        if w is not None:
            log.info(
                "session %s closed: its live rollout %s after %d steps; env closed: %s",
                getattr(session_context, "id", "?"),
                "stopped" if running else "had ended",
                len(w.records),
                w.env_closed,
            )

    # ------------------------------------------------------------------ control
    def start(self):
        """Start a new episode (LiveState.start: the checkpoint is loaded in this thread)."""
        self.state.start()

    async def start_async(self, *_):
        """The page's Start: LiveState.start_async, the checkpoint read in a worker thread."""
        await self.state.start_async()

    def pause(self):
        self.state.pause()

    def stop(self):
        """Stop the rollout and close its env; a checkpoint still loading starts nothing."""
        self.state.stop()
        self._stop_polling()

    def _stop_polling(self):
        if self._callback is not None:
            try:
                self._callback.stop()
            except Exception:  # noqa: BLE001 - the session may be gone already
                pass
            self._callback = None

    def _on_new_rollout(self, *_):
        self._reset_figures()
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self._tick, period=100)

    # ------------------------------------------------------------------ streaming views
    def _figure(self, element, stretch=False, follow_y=True):
        from bokeh.models import DataRange1d

        with warnings.catch_warnings():
            # a new rollout's heatmap is all NaN (no token yet), on purpose: holoviews' range check warns
            warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
            fig = hv.render(element, backend="bokeh")
        if stretch:  # streaming traces: ranges follow the data as it arrives
            fig.sizing_mode = "stretch_width"
            fig.x_range = DataRange1d()
            if follow_y:
                fig.y_range = DataRange1d()
        return fig

    def _size(self) -> int:
        return 420 if self.presentation else 320

    def _build(self):
        self._frame = pn.pane.Bokeh(self._figure(frame_view(None, title="frame", size=self._size())))
        self._heat = pn.pane.Bokeh(self._figure(attention_view(None, [], [], title="hidden attention")))
        self._ret = pn.pane.Bokeh(self._figure(self._return_element()), sizing_mode="stretch_width")
        self._act = pn.pane.Bokeh(self._figure(self._action_element(3)), sizing_mode="stretch_width")
        self._probe_div = Div(text="", css_classes=["dema-live-probe"], styles={"display": "none"})

    def _return_element(self):
        e = np.zeros(0)
        return (
            hv.Curve((e, e), "step", ("value", "return"), label="return so far").opts(color=PALETTE[2])
            * hv.Curve((e, e), "step", ("value", "return"), label="return-to-go").opts(color=PALETTE[0])
        ).opts(title="Return", responsive=True, height=250, legend_position="top_left", show_grid=True, toolbar=None)

    def _action_element(self, act_dim: int, n_actions: int = 0):
        """The actions' traces: continuous ones lie in [-1, 1]; discrete ones (Atari) are indices
        0 .. n_actions - 1, so the axis spans those instead of clipping every index above 1."""
        e = np.zeros(0)
        label = "action index" if n_actions else "action"
        return hv.Overlay(
            [
                hv.Curve((e, e), "step", ("action", label), label=f"a[{i}]").opts(color=PALETTE[i % len(PALETTE)])
                for i in range(act_dim)
            ]
        ).opts(
            title="Actions",
            responsive=True,
            height=250,
            legend_position="top_left",
            show_grid=True,
            toolbar=None,
            ylim=(-0.5, n_actions - 0.5) if n_actions else (-1.05, 1.05),
        )

    def _reset_figures(self):
        s = self.state
        self._frame_crc = crc(None)
        self._pending, self._streamed_at = [], -float("inf")
        labels = self._labels = s.window_labels
        L, size = len(labels), self._size()
        with hold():
            self._frame.object = self._figure(
                frame_view(np.zeros((s.render_size, s.render_size, 3), np.uint8), title="step 0", size=size)
            )
            self._heat.object = self._figure(
                attention_view(
                    np.full((L, L), np.nan),
                    labels,
                    labels,
                    title=f"Hidden attention · layer {s.layer} · {s.aggregation}"
                    if s.config.has_attention
                    else "this model has no hidden attention",
                    size=size,
                )
            )
            self._ret.object = self._figure(self._return_element(), stretch=True)
            self._act.object = self._figure(
                self._action_element(s.config.act_dim, s.config.n_actions), stretch=True, follow_y=False
            )

    def _tick(self):
        """Show what the worker produced since the last tick: the newest frame and attention (the
        worker makes them about as often as this runs, not at every step) and the traces' new
        points. Only deltas go to the browser: the frame's and heatmap's image data, a title, the
        colour range and the points streamed onto the traces."""
        from dema_lab.analysis import right_align

        s = self.state
        if s.worker is None:
            return
        new, before = s.poll()
        self._pending += new
        now = time.perf_counter()
        # the traces get their new points every TRACE_PERIOD (each stream re-ranges and redraws
        # two stretched plots in the browser), the frame and heatmap at every tick
        flush = self._pending and (now - self._streamed_at >= TRACE_PERIOD or s.drained)
        if new or flush:
            seen = next((r for r in reversed(new) if r.frame is not None), None)

            # the newest attention of the layer shown (the worker computes only that layer's: right
            # after the layer is changed, the newest records hold the previous one's, NaN for it)
            def has_layer(r):
                return r.attention is not None and np.isfinite(r.attention[min(s.layer, len(r.attention) - 1)]).any()

            att = next((r for r in reversed(new) if has_layer(r)), None)
            with hold():
                fig = self._frame.object
                if seen is not None:
                    fig.renderers[0].data_source.data.update(image=[rgba(seen.frame)])
                    self._frame_crc = crc(seen.frame)
                    fig.title.text = f"step {seen.t}"
                if att is not None:
                    L = len(self._labels)
                    m = right_align(att.attention, L)[min(s.layer, att.attention.shape[0] - 1)]
                    g = self._heat.object.renderers[0]
                    g.data_source.data.update(image=[m[::-1].astype(np.float64)])
                    lo, hi = attention_clim(m, s.aggregation == "mean")
                    g.glyph.color_mapper.update(low=lo, high=hi)
                if flush:
                    batch, self._pending, self._streamed_at = self._pending, [], now
                    steps = [r.t for r in batch]
                    rewards = [r.reward for r in batch]  # the return before them is derived, not kept
                    got = s.return_so_far - float(sum(rewards)) + np.cumsum(rewards)
                    rs = self._ret.object.renderers
                    self._stream(rs[0], steps, got)
                    self._stream(rs[1], steps, [r.return_to_go for r in batch])
                    for i, r in enumerate(self._act.object.renderers):
                        self._stream(r, steps, [float(x.action[i]) for x in batch])
                last = new[-1] if new else batch[-1]
                got = before + sum(r.reward for r in new)
                self._probe_div.text = (
                    f'<span data-step="{last.t}" data-frame="{self._frame_crc}" data-return="{got:.3f}"></span>'
                )
        if s.drained:
            self._stop_polling()

    @staticmethod
    def _stream(renderer, x, y):
        src = renderer.data_source
        kx, ky = list(src.data)[:2]
        src.stream({kx: np.asarray(x, np.float64), ky: np.asarray(y, np.float64)}, rollover=2000)

    # ------------------------------------------------------------------ layout
    def controls(self):
        s, w = self.state, pn.widgets
        start = w.Button(label="Start", color="success", css_classes=["dema-live-start"])
        pause = w.Button(label="Pause / resume", color="warning", css_classes=["dema-live-pause"])
        stop = w.Button(label="Stop", color="danger", css_classes=["dema-live-stop"])
        start.on_click(self.start_async)  # a coroutine: Panel awaits it on the server's loop
        pause.on_click(lambda *_: self.pause())
        stop.on_click(lambda *_: self.stop())
        return pn.Column(
            w.Select.from_param(s.param.checkpoint, name="Checkpoint"),
            w.TextInput.from_param(
                s.param.checkpoint_file,
                name="…or a .safetensors file",
                placeholder="/path/to/checkpoint.safetensors",
            ),
            w.Select.from_param(s.param.env, name="Environment"),
            w.FloatInput.from_param(s.param.target, name="Target return", step=100),
            w.RadioButtonGroup.from_param(s.param.mode, color="primary", variant="outline"),
            w.Select.from_param(s.param.aggregation, name="Channel aggregation"),
            w.IntInput.from_param(s.param.layer, name="Layer shown"),
            w.IntInput.from_param(s.param.seed, name="Seed"),
            w.FloatSlider.from_param(s.param.fps, name="Max steps per second"),
            w.Checkbox.from_param(s.param.save, name="Save the rollout to the run"),
            pn.Row(start, pause, stop),
            w.FileDownload(
                callback=s.policy_zip,
                label="Export policy (ONNX + JSON)",
                embed=False,
                filename=pn.bind(lambda *_: s.export_filename, s.param.checkpoint, s.param.mode),
                sizing_mode="stretch_width",
                css_classes=["dema-live-export"],
            ),
            sizing_mode="stretch_width",
        )

    def views(self):
        s = self.state
        message = alert(s.param.message, "warning", sizing_mode="stretch_width")
        status = markdown_pane(
            s.param.status.rx.pipe(lambda t: md("**Status:** {}", t)), css_classes=["dema-live-status"]
        )
        return pn.Column(
            message,
            status,
            pn.Row(self._frame, self._heat),
            pn.Row(self._ret, self._act, sizing_mode="stretch_width"),
            pn.pane.Bokeh(self._probe_div, width=0, height=0, margin=0),
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return pn.Row(pn.Column(self.controls(), width=300), self.views(), sizing_mode="stretch_width")
