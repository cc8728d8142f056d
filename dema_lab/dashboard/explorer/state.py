"""The attention explorer's state: which episode, step, layer and aggregation, and what they show.

    state = ExplorerState(store="store")        # or a StoreIndex; no Panel, no HoloViews
    state.step = 40
    state.attention                             # (L, L) hidden attention now (layer, aggregation applied)
    state.window_labels, state.frame            # the window's token labels, the env frame (or None)
    state.cue_keys, state.cue_lags              # memory tasks: the window's tokens of the steps with
                                                # the cue in view, and their lags from the query token

Parameters only, and the data they select, read through dema_lab.dashboard.common.data; the rules of
what to open on are the library's (dema_lab.analysis.runs.featured_run, dema_lab.analysis.opening_step).
AttentionExplorer (dema_lab.dashboard.explorer.view) renders one; a notebook or a test can use one alone.
"""

from __future__ import annotations

import zlib

import numpy as np
import param

from dema_lab.analysis import opening_step, paper_selection, right_align
from dema_lab.analysis.cue import cue_keys
from dema_lab.analysis.runs import featured_run
from dema_lab.dashboard.common.data import (
    AttentionReplayer,
    EpisodeData,
    RunInfo,
    StoreIndex,
    friendly_error,
    lag_profile_of,
)
from dema_lab.dashboard.common.text import Markdown, join_markdown, md
from dema_lab.models.config import ATTENTION_ARCHS
from dema_lab.store.errors import StoreError

AGGREGATION_LABELS = {
    "minmax (stored)": "minmax",
    "abs (mean |α|)": "abs",
    "mean (signed)": "mean",
    "one channel": "channel",
}
MEAN_LAYERS = -1


def crc(a) -> str:
    """A short checksum of an array (what a view shows), "none" for None."""
    if a is None:
        return "none"
    return f"{zlib.crc32(np.ascontiguousarray(a).view(np.uint8).ravel()):08x}"


class CueMarks:
    """What an ExplorerState shows of a memory task's cue (MiniGrid Memory episodes record whether the
    cue object is in view at each step): the window's tokens of those steps, their lags from the
    query token, and the legend. Empty for an episode without the cue flag or without attention."""

    def _episode_cue(self):
        """(cue_visible (T,), key_step (L,), key_kind (L,)) of the selected episode, read once per
        episode; None when it has no attention or does not record the cue."""
        ep = self.episode_data
        ds = None if ep is None else ep.dataset
        if ds is None or ep.attention is None or "cue_visible" not in ds or "key_step" not in ds.coords:
            return None
        cached = getattr(self, "_cue_cache", None)
        if cached is None or cached[0] != (ep.run_id, ep.name):
            arrays = (ds["cue_visible"].values.astype(bool), ds["key_step"].values, ds["key_kind"].values)
            cached = self._cue_cache = ((ep.run_id, ep.name), arrays)
        return cached[1]

    @property
    def cue_keys(self) -> list[int]:
        """Window positions (keys, oldest first) of the tokens of the steps, up to this one, whose
        observation showed the cue (dema_lab.analysis.cue.cue_keys); [] without a cue."""
        cue = self._episode_cue()
        return [] if cue is None else cue_keys(cue[0], self.t, cue[1], cue[2]).tolist()

    @property
    def cue_lags(self) -> list[int]:
        """The cue keys' lags (tokens back from the query token), those at or before it."""
        q = self.query_index
        return [] if q is None else [q - k for k in self.cue_keys if k <= q]

    @property
    def cue_note(self) -> str:
        """The legend of the cue marks (plain text, no store strings); "" without the cue flag."""
        cue = self._episode_cue()
        if cue is None:
            return ""
        seen = np.flatnonzero(cue[0][: self.t + 1])
        when = f"last seen at step {seen[-1]}" if len(seen) else "not seen yet in this episode"
        return (
            "Memory cue: the dashed red boxes on the heatmap and the red bands on the lag plot mark the "
            f"state tokens of the steps whose observation showed the cue object ({len(self.cue_keys)} in "
            f"this window; {when})."
        )


class ExplorerState(CueMarks, param.Parameterized):
    """A run, checkpoint, episode, layer and aggregation of a store, and a step of the episode;
    every choice list follows the one before it (run -> checkpoint -> episode -> layer, query)."""

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
    explanation = param.Selector(
        objects=[], doc="explanation method shown by the explanations block (the checkpoint's explain group)"
    )
    message = param.String(default="", doc="what went wrong, if anything (shown above the views)")
    revision = param.Integer(default=0, precedence=-1, doc="bumped when the episode data is (re)loaded")

    def __init__(self, store="store", **params):
        self.index = store if isinstance(store, StoreIndex) else StoreIndex(store)
        self._infos: dict[str, RunInfo] = {}
        self._info: RunInfo | None = None
        self._ep: EpisodeData | None = None
        self._replayers: dict = {}
        self._matrix_key = None
        self._matrix = None
        self._decay_cache: dict = {}
        self._explained: dict = {}
        self.run_errors: dict[str, str] = {}
        self._first_episode = "step" not in params  # open mid-episode unless a step is asked for
        super().__init__(**params)
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
        """The message: the runs that cannot be read, and `extra` (Markdown made by text.md, or
        plain text); store strings in it are escaped (dashboard.common.text)."""
        parts = [md("Run **{}** cannot be read: {}", r, m) for r, m in self.run_errors.items()]
        if not self._infos and not self.run_errors:
            parts.append("This store has no runs yet.")
        self.message = join_markdown([*parts, extra])

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
                md(
                    "Run **{}** has no recorded episodes yet (status {}, {} of {} training steps); "
                    "episodes are recorded at each evaluation.",
                    info.run_id,
                    info.status,
                    info.steps_done,
                    info.config.get("steps", "?"),
                )
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

    @param.depends("run", "checkpoint", watch=True)
    def _on_explained(self):
        """The explanation methods of the checkpoint's explain group (none: an empty choice)."""
        explain, _ = self.explanations()
        methods = [] if explain is None else [str(m) for m in explain.explanation.values]
        self.param.explanation.objects = methods
        if self.explanation not in methods:
            self.explanation = methods[0] if methods else None

    def explanations(self):
        """(explain, faithfulness) Datasets of the run's checkpoint (evaluation.faithfulness's
        groups, `dema-lab explain`), (None, None) when it has none or they cannot be read."""
        if self.run is None or self.checkpoint is None:
            return None, None
        key = (self.run, int(self.checkpoint))
        if key not in self._explained:
            from dema_lab.evaluation.faithfulness import explain_table, faithfulness_table

            try:
                run = self.index.run(self.run)
                found = explain_table(run, key[1]), faithfulness_table(run, key[1])
            except Exception:  # noqa: BLE001 - an unreadable group: the block is not shown
                found = None, None
            self._explained[key] = found
        return self._explained[key]

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
        """Tell the views to redraw after a change of episode (same step value)."""
        self._matrix_key = None
        self.revision += 1

    # ------------------------------------------------------------------ what is selected
    @property
    def episode_data(self) -> EpisodeData | None:
        """The selected episode, in memory (None when there is none)."""
        return self._ep

    @property
    def t(self) -> int | None:
        """The step, within the episode (None without one)."""
        ep = self._ep
        return None if ep is None else min(self.step, ep.n_steps - 1)

    @property
    def frame(self) -> np.ndarray | None:
        """The env frame (H, W, 3) of the step; None when the episode has no frames."""
        ep = self._ep
        return None if ep is None or ep.frames is None else ep.frames[self.t]

    @property
    def frame_note(self) -> Markdown:
        """Why no frame is shown and how to get some, or "" when there are frames (or no episode).
        Its link opens the live page on the checkpoint; saving is the visitor's own tick there (a
        link never pre-arms a write)."""
        from urllib.parse import urlencode

        ep, info = self._ep, self._info
        if ep is None or ep.frames is not None:
            return Markdown("")
        step = self.checkpoint  # the episode's checkpoint (its name's), not an attribute it holds
        link = "live?" + urlencode({"checkpoint": f"{ep.run_id}@{step}"})  # %-escaped: no Markdown in it
        how = md(
            "play checkpoint {} on the [live rollout page]({}) with *Save the rollout to the run* ticked: "
            "the episode it saves has frames and opens here",
            step,
            Markdown(link),
        )
        if info is not None and info.config.get("render_size") == 0:
            return md(
                "**No frames recorded:** run {} was trained with render_size=0. To see frames, {}.", ep.run_id, how
            )
        return md("**No frames recorded** in this episode. To see frames, {}.", how)

    @property
    def window_labels(self) -> list[str]:
        """The labels of the window's tokens (keys, oldest first: R/s/a and the step back from now)."""
        return [] if self._ep is None else list(self._ep.key_label)

    @property
    def query_labels(self) -> list[str]:
        return [] if self._ep is None else list(self._ep.query_label)

    @property
    def query_index(self) -> int | None:
        """The row of the attention of the query token (the last one when it is not in the window)."""
        ep = self._ep
        if ep is None or not ep.query_label:
            return None
        return ep.query_label.index(self.query) if self.query in ep.query_label else len(ep.query_label) - 1

    @property
    def attention(self) -> np.ndarray | None:
        """The (L, L) hidden attention of the step (layer and aggregation applied), right-aligned."""
        return self.matrix()

    @property
    def lag_profile(self) -> np.ndarray | None:
        """The query token's attention by lag (entry l: the key l tokens back), not normalised."""
        m, q = self.matrix(), self.query_index
        return None if m is None or q is None else lag_profile_of(m, q)

    @property
    def model_has_attention(self) -> bool:
        """Whether the run's model has attention maps (not an LSTM, GRU or MLP baseline)."""
        arch = self._info.config.get("arch") if self._info is not None else None
        return not arch or arch in ATTENTION_ARCHS

    @property
    def attention_note(self) -> str:
        """Why no attention is shown: the run's model has none (LSTM, GRU, MLP), or none was recorded."""
        return "no attention recorded" if self.model_has_attention else "this model has no hidden attention"

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
        step = self.t
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
        ckpt = int(self.checkpoint)  # the episode name's checkpoint, not an attribute it holds
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

    def reference_profile(self, q: int | None = None) -> np.ndarray | None:
        """The checkpoint's dataset-average lag profile (its decay statistics) for this layer and the
        kind of query token `q` (default: the query's), if logged; None for one channel."""
        ep, info = self._ep, self._info
        q = self.query_index if q is None else q
        if ep is None or info is None or not ep.query_kind or q is None:
            return None
        key = (info.run_id, self.checkpoint)
        if key not in self._decay_cache:
            try:
                ds = self.index.run(info.run_id).open("decay", f"step_{int(self.checkpoint):08d}").load()
            except Exception:  # noqa: BLE001 - no decay statistics: no reference curve
                ds = None
            self._decay_cache = {key: ds}
        ds = self._decay_cache[key]
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

    def snapshot(self) -> dict:
        """What the views show now (step, frame and attention checksums), for tests and benchmarks."""
        return {
            "run": self.run,
            "episode": self.episode,
            "step": self.step,
            "frame": crc(self.frame),
            "heatmap": crc(self.matrix()),
        }

    def episode_video(self):
        """The current episode's frames as an mp4 (BytesIO), for the download button."""
        import io
        import tempfile
        from pathlib import Path

        from dema_lab.evaluation.rollout import export_video

        ds = self.index.run(self.run).open("rollout", self.episode)
        with tempfile.TemporaryDirectory() as tmp:
            return io.BytesIO(export_video(ds, Path(tmp) / "episode.mp4").read_bytes())
