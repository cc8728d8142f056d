"""A live rollout's state: which checkpoint plays in which env, and the episode as it is played.

    live = LiveState(store="store")      # no Panel, no HoloViews: a notebook or a test can use it
    live.start()                         # loads the checkpoint, starts a RolloutWorker thread
    new, before = live.poll()            # the StepRecords played since the last poll
    live.pause(); live.stop()

It opens on the run the explorer opens on (dema_lab.analysis.runs.featured_run); a finished rollout is
saved with dema_lab.evaluation.rollout.save_rollout when `save` is set. A checkpoint file is read by
dema_lab.models.checkpoint_files' rules (under the store or `checkpoint_dirs` only, regular files,
size-capped); start_async reads it in a worker thread, never on the caller's event loop.
LiveRollout (dema_lab.dashboard.live.view) renders one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import param

from dema_lab.analysis.runs import featured_run
from dema_lab.dashboard.common.data import StoreIndex, friendly_error
from dema_lab.envs.spec import known_envs
from dema_lab.evaluation.defaults import default_modes
from dema_lab.models.checkpoint_files import DEFAULT_MAX_BYTES, allowed_roots, load_checkpoint_file
from dema_lab.models.policy import inference_modes

# Checkpoints are read and built here, off the server's event loop (every visitor's page), two at a
# time at most in the process: many visitors starting at once queue instead of multiplying memory.
_LOADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dema-live-load")


# How often the page shows a step (LiveRollout's periodic callback): the worker renders frames and
# computes the hidden attention this often, not at every env step.
DISPLAY_FPS = 10.0

# A step that ran late is made up for by running the next ones sooner, up to this far behind
# (seconds); further behind, the schedule restarts from now (no burst after a pause or a stall).
CATCH_UP = 0.2

# How often poll() rewrites the running status ("running · step t · return r"), in seconds.
STATUS_PERIOD = 0.5


class RolloutWorker(threading.Thread):
    """One episode in its own thread: make the env, act, render, keep every StepRecord.

    display_fps: render the frame and compute the hidden attention only this often (the steps in
    between have frame and attention None), as a page shows them; None: at every step (a rollout
    that is saved needs them all; `every_step` can be set while it runs)."""

    torch_threads = 0  # intra-op threads of the model in this thread (0: torch's default)

    def __init__(
        self,
        checkpoint,
        env: str,
        target: float,
        mode: str,
        aggregation: str | None,
        seed: int = 0,
        render_size: int = 256,
        max_steps: int | None = None,
        fps: float = 30.0,
        display_fps: float | None = None,
    ):
        super().__init__(daemon=True, name=f"dema-live-{env}")
        self.ck, self.env_name, self.target, self.mode = checkpoint, env, float(target), mode
        self.aggregation, self.seed, self.render_size, self.max_steps, self.fps = (
            aggregation,
            seed,
            render_size,
            max_steps,
            fps,
        )
        self.display_fps = display_fps
        self.every_step = not display_fps
        # the layer whose hidden attention the page shows: at display speed only its attention is
        # computed (Transformer-like; the others are NaN); None, or with every_step: all layers
        self.layer: int | None = None
        self.taken = 0  # records a viewer has taken (LiveState.poll): the worker details no faster
        self.records: list = []
        self.error: str = ""
        self.done = False
        self.env_closed = False
        self._resume = threading.Event()
        self._resume.set()
        self._halt = threading.Event()

    def run(self):
        from dema_lab.envs.make import make_env
        from dema_lab.models import Policy

        env = None
        try:
            import torch

            # this thread's own setting (the server's other threads keep theirs); measured on a
            # loaded 2-core machine, 1 thread was no faster than torch's default
            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            ck = self.ck
            mean, std = ck.state_normalization()
            policy = Policy(
                ck.model, self.mode, mean, std, float(ck.meta.get("rtg_scale", 1000.0)), attention=self.aggregation
            )
            env = make_env(self.env_name, render_size=self.render_size)
            steps = self._steps(policy, env)
            due = time.perf_counter()  # when the next step may run
            for rec in steps:
                self.records.append(rec)
                if self.fps:
                    due += 1.0 / self.fps
                    wait = due - time.perf_counter()
                    if wait > 0:
                        self._halt.wait(wait)
                    elif wait < -CATCH_UP:
                        due = time.perf_counter()
                if not self._resume.is_set():
                    while not self._resume.is_set() and not self._halt.is_set():
                        self._resume.wait(0.1)
                    due = time.perf_counter()
                if self._halt.is_set():
                    steps.close()
                    break
        except Exception as e:  # noqa: BLE001 - reported on the page
            self.error = friendly_error(e)
        finally:
            if env is not None:
                env.close()
                self.env_closed = True
            self.done = True

    def _steps(self, policy, env):
        """dema_lab.evaluation.rollout.rollout_steps (the same episode, step for step), with the frame and the
        hidden attention made only for the steps that will be shown: at the first step, and then
        once the viewer has taken the last detailed step (`taken`) and 1 / display_fps seconds
        have passed since it was made (every step with `every_step`). Transformer-like, the other
        steps run the model without attention; RNN-like, the scan is recorded (and its attention
        computed) at every step either way."""
        from dema_lab.evaluation.rollout import rollout_steps

        period = 1.0 / self.display_fps if self.display_fps else 0.0
        shown, last = -float("inf"), -1  # when the last detailed step was made, and its index

        def detail(t: int) -> bool:
            # once the page has taken the last detailed step (a loaded page polls less often), and
            # a little early rather than a tick late: the page polls on its own clock
            nonlocal shown, last
            now = time.perf_counter()
            if self.every_step or last < 0 or (self.taken > last and now - shown >= 0.8 * period):
                shown, last = now, t
                policy.attention_layers = None if self.every_step or self.layer is None else (self.layer,)
                return True
            return False

        yield from rollout_steps(
            policy, env, self.target, self.seed, render=True, max_steps=self.max_steps, detail=detail
        )

    def pause(self):
        self._resume.clear()

    def resume(self):
        self._resume.set()

    def stop(self, wait: float = 5.0):
        self._halt.set()
        self._resume.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(wait)

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()


class LiveState(param.Parameterized):
    """Choose a checkpoint, env, target return and inference mode; start, pause, stop; save."""

    checkpoint = param.Selector(objects=[], doc="a checkpoint of a run in the store ('run@step')")
    checkpoint_file = param.String(default="", doc="or a .safetensors checkpoint file (overrides the above)")
    env = param.Selector(objects=known_envs(), default="hopper", doc="environment")
    target = param.Number(default=3600.0, doc="target return (return-to-go at the start)")
    mode = param.Selector(objects=["transformer", "rnn"], default="transformer", doc="inference mode")
    aggregation = param.Selector(
        objects=["minmax", "abs", "mean"], default="minmax", doc="channel aggregation of the streamed attention"
    )
    layer = param.Integer(default=0, bounds=(0, None), doc="layer of the attention shown")
    seed = param.Integer(default=0, doc="env seed")
    fps = param.Number(default=30.0, bounds=(1, 240), doc="at most this many env steps a second")
    save = param.Boolean(default=False, doc="save the finished (or stopped) rollout to the checkpoint's run")
    status = param.String(default="idle")
    message = param.String(default="")
    rollout = param.Integer(default=0, precedence=-1, doc="bumped when a new rollout starts (views reset)")

    def __init__(
        self,
        store="store",
        render_size: int = 256,
        checkpoint_dirs=(),
        max_checkpoint_bytes: int = DEFAULT_MAX_BYTES,
        **params,
    ):
        """checkpoint_dirs: where the file field may read besides the store (`serve --checkpoint-dir`);
        max_checkpoint_bytes: the largest file it reads."""
        self.index = store if isinstance(store, StoreIndex) else StoreIndex(store)
        self.render_size = render_size
        self.allowed = allowed_roots(self.index.path, checkpoint_dirs)
        self.max_checkpoint_bytes = int(max_checkpoint_bytes)
        self._pending = None  # the load start_async waits for (a newer click supersedes it)
        self._closed = False
        self.worker: RolloutWorker | None = None
        self._source = None  # (run_id, step, Checkpoint) of the rollout
        self._shown = 0  # records handed out by poll()
        self._status_at = -float("inf")  # when poll() last wrote the running status
        self._returned = 0.0  # their return
        self.saved: str = ""
        super().__init__(**params)
        self.refresh()

    # ------------------------------------------------------------------ choices
    def refresh(self):
        """The store's checkpoints; the featured run's newest is chosen unless one is already."""
        names, configs, with_episodes, newest = {}, {}, set(), {}
        try:
            for run_id in self.index.run_ids():
                try:
                    info = self.index.info(run_id)
                except Exception:  # noqa: BLE001 - listed by the explorer's message
                    continue
                for step in info.checkpoints:
                    names[f"{run_id} @ step {step}"] = newest[run_id] = f"{run_id}@{step}"
                if info.checkpoints:
                    configs[run_id] = info.config
                    if info.episodes:
                        with_episodes.add(run_id)
        except Exception as e:  # noqa: BLE001
            self.message = friendly_error(e)
        self.param.checkpoint.names = names
        self.param.checkpoint.objects = list(names.values())
        if self.checkpoint not in self.param.checkpoint.objects and names:
            run = featured_run(configs, with_episodes)  # the run the explorer opens on
            self.checkpoint = newest.get(run, list(names.values())[-1])

    @param.depends("checkpoint", watch=True, on_init=True)
    def _defaults_from_checkpoint(self):
        if not self.checkpoint:
            return
        try:
            run_id, step = self.checkpoint.rsplit("@", 1)
            info = self.index.info(run_id)
            env = info.provenance.get("env")
            if env in self.param.env.objects:
                self.env = env
            targets = info.provenance.get("eval_targets") or []
            if targets:
                self.target = float(targets[0])
            modes = default_modes(info.config.get("arch", "dema"))
            if self.mode not in modes:  # DT and the MLP act Transformer-like only, LSTM and GRU RNN-like
                self.mode = modes[0]
        except Exception:  # noqa: BLE001 - the choice stays as it was
            pass

    def _load(self):
        from dema_lab.models import load_checkpoint

        if self.checkpoint_file.strip():
            # a visitor's path: only regular files under the store or --checkpoint-dir, size-capped
            ck = load_checkpoint_file(self.checkpoint_file, self.allowed, self.max_checkpoint_bytes)
            run_id, step = None, None
        elif not self.checkpoint:
            raise ValueError("choose a checkpoint (or give a .safetensors file)")
        else:
            run_id, step = self.checkpoint.rsplit("@", 1)
            step = int(step)
            # a fresh model per rollout: sessions never share a model's buffers across threads
            ck = load_checkpoint(self.index.run(run_id).checkpoint_bytes(step), map_location="cpu")
        ck.state_normalization()  # acting needs it: say so now, not in the worker
        if self.mode not in inference_modes(ck.config.arch):
            raise ValueError(
                f"RNN-like inference needs a recurrent checkpoint (DeMa, LSTM, GRU); "
                f"a {ck.config.arch!r} model runs Transformer-like only"
            )
        return ck, run_id, step

    def policy_zip(self):
        """The selected checkpoint exported as an ONNX graph of the selected inference mode, with its
        JSON (dema_lab.integrations.policy_export), as a zip in memory: the page's Export button.
        On failure `message` says why and the error is raised."""
        import io
        import tempfile
        import zipfile
        from pathlib import Path

        from dema_lab.integrations.policy_export import export_policy

        try:
            ck, run_id, _ = self._load()
            provenance = self.index.run(run_id).attrs.get("provenance", {}) if run_id else {}
            with tempfile.TemporaryDirectory() as folder:
                path, info = export_policy(ck, self.mode, "onnx", Path(folder) / "policy.onnx", provenance=provenance)
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
                    z.write(path, path.name)
                    z.write(info, info.name)
        except Exception as e:
            self.message = f"Cannot export: {friendly_error(e)}"
            raise
        self.message = ""
        buffer.seek(0)
        return buffer

    @property
    def export_filename(self) -> str:
        """The name of the Export button's zip: run, step and mode of the selected checkpoint."""
        source = self.checkpoint.replace("@", "-step") if self.checkpoint else "policy"
        return f"{source}-{self.mode}-onnx.zip"

    def _try_load(self):
        """_load's result, or the message saying why it failed."""
        try:
            return self._load()
        except Exception as e:  # noqa: BLE001
            return f"Cannot start: {friendly_error(e)}"

    # ------------------------------------------------------------------ what plays
    @property
    def config(self):
        """The model config of the rollout (None before one starts)."""
        return None if self._source is None else self._source[2].config

    @property
    def window_labels(self) -> list[str]:
        """The labels of the window's tokens of the rollout's model (analysis.token_labels)."""
        from dema_lab.analysis import token_labels

        return [] if self.config is None else list(token_labels(self.config)["label"])

    @property
    def return_so_far(self) -> float:
        """The return of the records poll() has handed out."""
        return self._returned

    @property
    def drained(self) -> bool:
        """The rollout has ended and poll() has handed out all of it (or none has started)."""
        w = self.worker
        return w is None or (w.done and self._shown >= len(w.records))

    # ------------------------------------------------------------------ control
    def start(self):
        """Start a new episode (stopping one that runs), loading the checkpoint in this thread."""
        self.stop()
        self._begin(self._try_load())

    async def start_async(self, *_):
        """start() for an event loop (the page's button): the checkpoint is read and built in a worker
        thread, so the loop, which serves every visitor, never waits for a file."""
        self.stop()
        token = self._pending = object()
        self.message, self.status = "", "loading the checkpoint…"
        loaded = await asyncio.wrap_future(_LOADS.submit(self._try_load))
        if self._pending is not token or self._closed:  # clicked again meanwhile, or the tab is gone
            return
        self._pending = None
        self._begin(loaded)

    def _begin(self, loaded):
        if isinstance(loaded, str):
            self.message = loaded
            self.status = "idle"
            return
        ck, run_id, step = loaded
        self.message = ""
        self.saved = ""
        self._source = (run_id, step, ck)
        self.param.layer.bounds = (0, ck.config.n_layer - 1)
        self.layer = min(self.layer, ck.config.n_layer - 1)
        self.worker = RolloutWorker(
            ck,
            self.env,
            self.target,
            self.mode,
            self.aggregation,
            seed=self.seed,
            render_size=self.render_size,
            fps=self.fps,
            display_fps=DISPLAY_FPS,
        )
        self.worker.every_step = self.save  # a saved rollout keeps every frame and attention
        self.worker.layer = self.layer  # the page shows one layer: only its attention is computed
        self._shown, self._returned, self._status_at = 0, 0.0, -float("inf")
        self.rollout += 1  # the views reset
        self.worker.start()
        self.status = "running"

    @param.depends("layer", watch=True)
    def _layer_changed(self):
        if self.worker is not None:
            self.worker.layer = self.layer

    @param.depends("save", watch=True)
    def _save_changed(self):
        if self.worker is not None and not self.worker.done:
            self.worker.every_step = self.worker.every_step or self.save

    def pause(self):
        """Pause a running rollout, or resume a paused one."""
        if self.worker and not self.worker.done:
            if self.worker.paused:
                self.worker.resume()
                self.status = "running"
            else:
                self.worker.pause()
                self.status = "paused"

    def stop(self):
        """Stop the rollout and close its env; a checkpoint still loading starts nothing."""
        if self._pending is not None:
            self._pending = None
            self.status = "idle"
        w = self.worker
        if w is not None and not w.done:
            w.stop()
            self._finish(stopped=True)

    def close(self):
        """The state is done with (its page closed): stop, and start nothing still loading."""
        self._closed = True
        self.stop()
        # the model, its env's records and frames go now, not when the session's objects are collected
        self.worker, self._source = None, None

    def poll(self) -> tuple[list, float]:
        """The StepRecords played since the last poll and the return before them; once the worker is
        done and all were handed out, the rollout is finished (and saved when `save` is set)."""
        w = self.worker
        if w is None:
            return [], 0.0
        n = len(w.records)
        new = w.records[self._shown : n]
        w.taken = n  # the worker renders the next frame (and attention) for the next poll
        before = self._returned
        if new:
            self._shown = n
            self._returned = before + float(sum(r.reward for r in new))
            now = time.perf_counter()
            if self.status.startswith("running") and now - self._status_at >= STATUS_PERIOD:
                # a new status re-renders the page's status pane: twice a second is enough to read
                self._status_at = now
                self.status = f"running · step {new[-1].t} · return {self._returned:.0f}"
        if self.drained and not self.status.startswith(("stopped", "finished")):
            self._finish(stopped=False)
        return new, before

    def _finish(self, stopped: bool):
        w = self.worker
        if w is None:
            return
        if w.error:
            self.message = f"The rollout failed: {w.error}"
        ret = sum(r.reward for r in w.records)
        self.status = f"{'stopped' if stopped else 'finished'} after {len(w.records)} steps, return {ret:.0f}"
        if self.save and w.records:
            self._save(w)

    def _save(self, w: RolloutWorker):
        from dema_lab.evaluation.rollout import save_rollout
        from dema_lab.store.errors import StoreError

        run_id, step, ck = self._source
        if run_id is None:
            self.message = "Rollouts of a checkpoint file are not saved: choose a checkpoint from the store."
            return
        records, note = w.records, ""
        for field, what in (("frame", "frames"), ("attention", "hidden attention")):
            if any(getattr(r, field) is None for r in records) and any(getattr(r, field) is not None for r in records):
                # saving was switched on while it ran: the steps before were not all rendered
                records = [dataclasses.replace(r, **{field: None}) for r in records]
                note += f" (without {what}: saving was switched on after the start)"
        try:
            name = save_rollout(
                self.index.path,
                run_id,
                step,
                records,
                ck.config,
                attrs={
                    "target": self.target,
                    "seed": self.seed,
                    "mode": self.mode,
                    "aggregation": self.aggregation,
                    "env": self.env,
                },
            )
        except StoreError as e:
            self.message = f"Not saved: {friendly_error(e)}"
            return
        except Exception as e:  # noqa: BLE001
            self.message = f"Saving failed: {friendly_error(e)}"
            return
        self.saved = name
        self.status += f" · saved as {name}{note}"
