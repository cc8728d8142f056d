"""Train DeMa or DT on an offline dataset; every run lands in the Zarr run store.

One config (dema_lab.training.config), one visible loop (Trainer.run_loop), and hooks around it,
as minGPT's callbacks:

    sample K-step windows -> the objective's step (dema_lab.training.objective)
    Progress     a progress bar
    Metrics      every log_every steps: publish the training metrics since the last flush
    Checkpoints  every checkpoint_every steps: publish a checkpoint and its resume state
    Evaluation   every eval_every steps: evaluate in the env (each target and inference mode),
                 record episodes (frames, hidden attention) and decay statistics
    Tracker      a live tracker (the CLI's --log-to), given by the caller

Everything that can be checked before the first step is checked before the run is created
(the config, the dataset's reference scores, the model's bounds, the memory the step needs), so
that a refused config leaves nothing behind.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from dema_lab.evaluation.checkpoint import evaluate_checkpoint
from dema_lab.evaluation.defaults import default_modes, default_targets
from dema_lab.models import build_model, official_init
from dema_lab.models.checkpoint import checkpoint_bytes
from dema_lab.store.provenance import provenance
from dema_lab.store.schema import checkpoint_name, step_of
from dema_lab.store.zarr_store import Run, RunStore
from dema_lab.training.config import TrainConfig
from dema_lab.training.memory import check_memory
from dema_lab.training.objective import loss_for, make_optimizer, train_step
from dema_lab.training.resume import check_resumable, load_state, resume_steps, save_state, saved_config


class Hook:
    """A trainer callback: override the events you need. `on_checkpoint` follows each published
    checkpoint; `on_end` gets the error that stopped the loop (None when it finished)."""

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, trainer: Trainer) -> None:
        pass

    def on_checkpoint(self, trainer: Trainer) -> None:
        pass

    def on_end(self, trainer: Trainer, error: BaseException | None) -> None:
        pass


class Progress(Hook):
    """A tqdm bar of the steps, with the loss."""

    def on_start(self, trainer):
        from tqdm.auto import tqdm

        cfg = trainer.cfg
        self.bar = tqdm(
            total=cfg.optim.steps,
            initial=trainer.step,
            disable=not trainer.progress,
            desc=trainer.run.run_id,
            unit="step",
            dynamic_ncols=True,
        )

    def on_step(self, trainer):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{trainer.metrics['loss'][-1]:.4f}", refresh=False)

    def on_end(self, trainer, error):
        if hasattr(self, "bar"):
            self.bar.close()


class Metrics(Hook):
    """Publishes the training metrics every log_every steps and at the end (what an interruption
    leaves too: metrics past the last checkpoint are dropped on resume, but kept for inspection)."""

    def on_step(self, trainer):
        if trainer.step % trainer.cfg.run.log_every == 0 or trainer.last_step:
            trainer.flush_metrics()

    def on_end(self, trainer, error):
        try:
            trainer.flush_metrics()
        except Exception:  # noqa: BLE001 - never mask the original error
            if error is None:
                raise


class Checkpoints(Hook):
    """Publishes a checkpoint and its resume state every checkpoint_every steps, at each evaluation
    step and at the last step."""

    def on_step(self, trainer):
        if trainer.step % trainer.cfg.run.checkpoint_every == 0 or trainer.last_step or trainer.eval_step:
            trainer.flush_metrics()
            trainer.checkpoint()


class Evaluation(Hook):
    """Evaluates the checkpoints of evaluation steps and of the last step; at the start, also one
    whose evaluation a kill interrupted."""

    def on_start(self, trainer):
        step = trainer.step
        evaluated = {step_of(n) for n in trainer.run.published("eval")}
        if step and step not in evaluated and (trainer.is_eval_step(step) or step >= trainer.cfg.optim.steps):
            trainer.evaluate()

    def on_checkpoint(self, trainer):
        if trainer.eval_step or trainer.last_step:
            trainer.evaluate()


class Tracker(Hook):
    """Sends what is newly published to a live tracker (`update(run)`, `close()`, as
    dema_lab.integrations.trackers.LiveTensorBoard); a tracker failure never stops training."""

    def __init__(self, tracker):
        self.tracker, self.seen = tracker, 0

    def _update(self, trainer):
        if self.tracker is None or trainer.publications == self.seen:
            return
        self.seen = trainer.publications
        try:
            self.tracker.update(trainer.run)
        except Exception as e:  # noqa: BLE001
            trainer.log(f"live tracker stopped: {type(e).__name__}: {e}")
            self.tracker = None

    on_start = on_step = on_checkpoint = _update

    def on_end(self, trainer, error):
        if self.tracker is not None:
            self._update(trainer)
            self.tracker.close()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def default_run_id(cfg: TrainConfig, dataset_name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = Path(dataset_name).stem if dataset_name.endswith((".hdf5", ".h5")) else dataset_name.replace(":", "-")
    return f"{cfg.model.arch}-{name}-K{cfg.model.K}-s{cfg.optim.seed}-{stamp}"


def check_scores(dataset) -> None:
    """ValueError, before training, when the dataset's reference scores cannot normalize a return
    (equal, or not numbers), instead of at the first evaluation."""
    try:
        score = dataset.normalized_score(np.zeros(1))
        ok = bool(np.all(np.isfinite(np.asarray(score, np.float64))))
    except (ValueError, TypeError, KeyError) as e:
        ok, why = False, f" ({str(e).strip(chr(39))})"
    else:
        why = ""
    if not ok:
        raise ValueError(
            f"dataset {dataset.name!r}: its reference scores (ref_min_score {dataset.ref_min_score!r}, "
            f"ref_max_score {dataset.ref_max_score!r}) cannot normalize a return{why}; give two different "
            f"numbers in its attributes (or remove them to use D4RL's table for its env)"
        )


class Trainer:
    """Holds the pieces of one run; `run_loop()` is the loop, `hooks` what happens around it."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: str | None = None,
        progress: bool = True,
        log=print,
        from_step: int | None = None,
        hooks=(),
    ):
        """A new run, or with `resume` the run of that id continued from its newest resume state (or
        from the one of step `from_step`). Either way this trainer is the run's one writer: it holds
        the run's lock (store.Run.claim) until run_loop ends. `hooks` (Hook) run after the built-in
        ones (progress, metrics, checkpoints, evaluation)."""
        self.run = None
        self.resumed_from: int | None = None  # the step of the state a resume restored
        self.hooks = [Progress(), Metrics(), Checkpoints(), Evaluation(), *hooks]
        try:
            self._setup(cfg, resume, progress, log, from_step)
        except BaseException:
            if self.run is not None:
                self.run.release()
            raise

    def _setup(self, cfg: TrainConfig, resume: str | None, progress: bool, log, from_step: int | None):
        from dema_lab.data import WindowSampler, load_dataset
        from dema_lab.data.windows import check_context_length
        from dema_lab.envs.spec import env_spec

        self.log, self.progress = log, progress
        if from_step is not None and not resume:
            raise ValueError("--from-step goes with --resume RUN: it picks which saved state to resume from")
        self.store = RunStore(cfg.run.store, mode="a")
        if resume:
            self.run = self.store.run(resume).claim()  # a second writer is refused here, by name
            cfg = check_resumable(saved_config(self.run), cfg, resume)
        self.cfg = cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.device = resolve_device(cfg.run.device)
        torch.manual_seed(cfg.optim.seed)
        np.random.seed(cfg.optim.seed)

        self.dataset = load_dataset(cfg.data.dataset, progress=progress)
        if not self.dataset.env:
            raise ValueError(
                f"dataset {cfg.data.dataset!r} does not say which environment it comes from, so it "
                f"cannot be evaluated; give a D4RL file whose attrs name the env"
            )
        try:
            self.env = env_spec(self.dataset.env).name
        except ValueError as e:
            raise ValueError(
                f"dataset {cfg.data.dataset!r} was recorded in env {self.dataset.env!r}, which cannot be "
                f"evaluated here: {e}"
            ) from None
        check_context_length(self.dataset, cfg.model.K)  # before any training, not at the first evaluation
        check_scores(self.dataset)  # the evaluations' normalized scores, before any training
        ds = self.dataset
        self.model_cfg = cfg.model_config(ds.obs_dim, ds.act_dim, ds.obs_shape if ds.is_image else (), ds.n_actions)
        check_memory(self.model_cfg, cfg.optim.batch_size, self.device)  # before anything is allocated
        self.sampler = WindowSampler(
            ds, cfg.model.K, rtg_scale=cfg.data.rtg_scale, seed=cfg.optim.seed, padding=cfg.data.train_padding
        )
        self.model = build_model(self.model_cfg)
        if cfg.optim.init == "official" and not resume:
            official_init(self.model)
        if self.model_cfg.frame_norm == "center" and not resume:  # a resume loads them with the weights
            self.model.embed.embed_state.set_frame_stats(*ds.frame_stats())
        self.model = self.model.to(self.device)
        self.loss = loss_for(self.model_cfg)
        self.opt, self.sched = make_optimizer(self.model, cfg.optim)
        self.targets = cfg.evaluation.eval_targets or default_targets(self.env, ds)
        self.modes = cfg.evaluation.eval_modes or default_modes(cfg.model.arch)
        self.step = 0
        self.metrics: dict[str, list] = {k: [] for k in ("step", "loss", "lr", "grad_norm", "steps_per_second")}
        self.wall = 0.0  # training seconds, summed over resumes
        self.publications = 0  # groups published so far (for the live tracker)

        if resume:
            abandoned = load_state(self, from_step)
            self.resumed_from = self.step
            self.run.set_attrs(
                status="running", config=cfg.to_flat(), steps_done=self.step
            )  # what it now continues with
            self.log(
                f"resuming run {self.run.run_id} from step {self.step}"
                + (f" (the later states of steps {', '.join(map(str, abandoned))} are set aside)" if abandoned else "")
            )
        else:
            self.cfg = cfg = cfg.replace(run_id=cfg.run.run_id or default_run_id(cfg, ds.name))
            prov = provenance(ds, self.env, self.model, self.modes, self.targets, device=self.device)
            self.run = self.store.create_run(cfg.run.run_id, cfg.to_flat(), prov, hold_lock=True)

    # ------------------------------------------------------------------ what the hooks call
    @property
    def last_step(self) -> bool:
        return self.step == self.cfg.optim.steps

    @property
    def eval_step(self) -> bool:
        return self.is_eval_step(self.step)

    def is_eval_step(self, step: int) -> bool:
        return bool(self.cfg.evaluation.eval_every) and step % self.cfg.evaluation.eval_every == 0

    def resume_steps(self) -> list[int]:
        """Steps of the run's saved resume states, oldest first (what --from-step can take)."""
        return resume_steps(self.run)

    def checkpoint(self):
        """Publish the checkpoint of this step and its resume state; then the hooks' on_checkpoint."""
        meta = {
            "step": self.step,
            "run_id": self.run.run_id,
            "env": self.env,
            "rtg_scale": self.cfg.data.rtg_scale,
            "dataset": self.dataset.name,
            "device": str(self.device),
        }
        extra = {
            "state_mean": torch.as_tensor(self.sampler.state_mean),
            "state_std": torch.as_tensor(self.sampler.state_std),
        }
        name = checkpoint_name(self.step)
        self.run.write_bytes("checkpoint", name, checkpoint_bytes(self.model, meta, extra), attrs=meta)
        save_state(self)  # the resume state completes the checkpoint
        self.publications += 1
        self._fire("on_checkpoint")

    def flush_metrics(self):
        """Publish the training metrics since the last flush (a train/ group)."""
        import xarray as xr

        if not self.metrics["step"]:
            return
        m = self.metrics
        ds = xr.Dataset(
            {k: ("step", np.asarray(v, np.float64)) for k, v in m.items() if k != "step"},
            coords={"step": np.asarray(m["step"], np.int64)},
        )
        ds["loss"].attrs = {"long_name": self.loss.long_name, "units": self.loss.units}
        ds["lr"].attrs = {"long_name": "learning rate (AdamW, linear warm-up, then cfg.lr_schedule)"}
        ds["grad_norm"].attrs = {"long_name": "gradient norm before clipping", "clip": self.cfg.optim.grad_clip}
        ds["steps_per_second"].attrs = {"long_name": "training throughput", "units": "steps/s"}
        ds.attrs = {"run_id": self.run.run_id, "batch_size": self.cfg.optim.batch_size}
        self.run.write("train", f"steps_{m['step'][0]:08d}_{m['step'][-1]:08d}", ds)
        self.metrics = {k: [] for k in m}
        self.publications += 1

    def evaluate(self):
        """Evaluate the current weights, record episodes, decay statistics and the paper's attention
        display, publish them."""
        cfg = self.cfg
        results = evaluate_checkpoint(
            self.run,
            self.model,
            self.step,
            cfg.evaluation,
            self.env,
            self.targets,
            self.modes,
            self.sampler,
            self.dataset.normalized_score,
            rtg_scale=cfg.data.rtg_scale,
            seed=cfg.optim.seed,
            device=self.device,
            log=self.log,
        )
        self.publications += 1
        return results

    def _fire(self, event: str, *args):
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    # ------------------------------------------------------------------ the loop
    def run_loop(self) -> Run:
        cfg = self.cfg
        if self.step >= cfg.optim.steps:
            self.log(f"run {self.run.run_id} has already trained {self.step} of {cfg.optim.steps} steps")
        error = None
        try:
            self._fire("on_start")
            tick, tick_step = time.perf_counter(), self.step
            while self.step < cfg.optim.steps:
                batch = self.sampler.sample(cfg.optim.batch_size)
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                t0 = time.perf_counter()
                loss, gnorm = train_step(
                    self.model, batch, self.opt, self.sched, cfg.optim.grad_clip, cfg.data.rtg_form, cfg.data.burn_in
                )
                self.wall += time.perf_counter() - t0
                self.step += 1
                if not math.isfinite(loss):
                    raise FloatingPointError(self._diverged(loss))
                now = time.perf_counter()
                rate = (self.step - tick_step) / max(now - tick, 1e-9)
                tick, tick_step = now, self.step
                for k, v in zip(self.metrics, (self.step, loss, self.sched.get_last_lr()[0], gnorm, rate)):
                    self.metrics[k].append(v)
                self._fire("on_step")
        except BaseException as e:
            error = e
            raise
        finally:
            self._end(error)
        return self.run

    def _end(self, error: BaseException | None):
        """Every hook's on_end (each, even after another's failed), then the run's status: finished,
        or interrupted; the run's lock is released. A hook's failure is raised if the loop had none."""
        failed = None
        for hook in self.hooks:
            try:
                hook.on_end(self, error)
            except Exception as e:  # noqa: BLE001
                failed = failed or e
        try:
            if error is None and failed is None:
                self.run.set_attrs(status="finished", steps_done=self.step, wall_seconds=round(self.wall, 2))
            else:
                self.run.set_attrs(status="interrupted", steps_done=self.step)
        finally:
            self.run.release()  # no longer its writer: a resume may take it
        if failed is not None and error is None:
            raise failed

    def _diverged(self, loss) -> str:
        """The message for a non-finite loss: which state a resume restored, the earlier ones it can
        go back to (--from-step), and what needs a new run (a resume keeps lr and the batches)."""
        run_id, lr = self.run.run_id, self.cfg.optim.lr
        new_run = (
            f"a resume keeps the run's lr ({lr:g}) and replays its batches, so for a lower one train a "
            f"new run (--lr {lr / 10:g}, or a longer --warmup_steps)"
        )
        if self.resumed_from is None:
            return f"loss became {loss} at step {self.step}: the run diverged; {new_run}"
        others = [s for s in self.resume_steps() if s != self.resumed_from][::-1]
        back = (
            f"resume from another saved state: dema-lab train --resume {run_id} --from-step S "
            f"(S: {', '.join(map(str, others))}); if it diverges again, "
            if others
            else "no other state is kept to resume from; "
        )
        return (
            f"loss became {loss} at step {self.step}, {self.step - self.resumed_from} steps after resuming "
            f"run {run_id} from its checkpoint of step {self.resumed_from} "
            f"({checkpoint_name(self.resumed_from)}); {back}{new_run}"
        )


def train(cfg: TrainConfig, resume: str | None = None, **options) -> Run:
    """Train (or resume the run `resume`) and return the finished run. `options` are Trainer's:
    progress (a progress bar), log (a print-like function), from_step (with `resume`: resume from
    that saved state, not the newest) and hooks (Hook objects, a live tracker's say, run beside the
    built-in ones)."""
    return Trainer(cfg, resume=resume, **options).run_loop()


def ensure_trained(cfg: TrainConfig, progress: bool = True, log=print) -> tuple[Run, str]:
    """Make sure the run `cfg.run.run_id` is finished: skip it if it is, resume it from its last
    checkpoint if it was interrupted, start it otherwise. Returns (run, "skipped" | "resumed" |
    "trained"). A run killed before its first checkpoint holds nothing to keep and restarts."""
    run_id = cfg.run.run_id
    if not run_id:
        raise ValueError("ensure_trained needs a fixed run_id, so that a rerun finds the run again")
    store = RunStore(cfg.run.store, mode="a")
    if run_id in store.run_ids():
        run = store.run(run_id)
        if run.attrs.get("status") == "finished" and run.attrs.get("steps_done", 0) >= cfg.optim.steps:
            return run, "skipped"
        if run.published("resume"):
            return train(cfg, resume=run_id, progress=progress, log=log), "resumed"
        store.delete_run(run_id)  # not while another process still writes it (RunBusyError)
    return train(cfg, progress=progress, log=log), "trained"
