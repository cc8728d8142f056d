"""Replay a run from the store into experiment trackers: TensorBoard event files or an offline
Weights & Biases run (`dema-lab export RUN_ID --to tensorboard DIR`, `--to wandb [DIR]`), or
live during training (`dema-lab train --log-to tensorboard DIR`, see LiveTensorBoard).

What is replayed, as (tag, step, value) scalars and (tag, step, episode) videos:

    train/loss, train/lr, train/grad_norm, train/steps_per_second     by training step
    eval/<mode>/score_t<target>      the checkpoint's score per target (dema_lab.analysis.scoring)
    eval/<mode>/last, eval/<mode>/best
                                     the run's scores had training stopped at that checkpoint:
                                     last and best (scoring.run_scores over the checkpoints so far),
                                     so at the final checkpoint they are the run's last and best
    decay/layer<l>/<kind>_half_life, decay/layer<l>/<kind>_r2
                                     dema-lab's decay fit per layer and query kind (R, s, a)
    rollout/<mode>-t<i>-e<j>         each recorded episode's frames, as a GIF, at its checkpoint
    summary: score/last, score/best, score/mode (the run's headline), and the run's config

Nothing here contacts a server: W&B runs in offline mode (`wandb sync DIR/wandb/offline-run-*`
uploads it later, if wanted).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from dema_lab.analysis.scoring import checkpoint_scores, headline, run_scores
from dema_lab.store.schema import step_of
from dema_lab.store.zarr_store import Run

TRACKERS = ("tensorboard", "wandb")
_INSTALL = "install the cluster extra: pip install -c constraints.txt 'dema-lab[cluster]'"


@dataclasses.dataclass
class Replay:
    """What a run holds, in tracker terms (see the module docstring)."""

    scalars: list[tuple[str, int, float]]  # (tag, step, value)
    videos: list[tuple[str, int, str]]  # (tag, step, rollout name in the store)
    config: dict

    def steps(self) -> list[int]:
        return sorted({s for _, s, _ in self.scalars} | {s for _, s, _ in self.videos})


def replay(run: Run, done: set | None = None) -> Replay:
    """The run's records as tracker scalars and videos. `done` (a set, updated in place) holds what
    was replayed already: LiveTensorBoard passes it to get (and read from the store) only what is
    new."""
    done = set() if done is None else done
    scalars: list[tuple[str, int, float]] = []
    # only the training segments not replayed yet are read; on a repeated step (a segment published
    # again after a resume) the later one wins, as in Run.train_metrics
    train: dict[tuple[str, int], float] = {}
    for name in run.published("train"):
        if ("train", name) in done:
            continue
        done.add(("train", name))
        segment = run.open("train", name).load()
        for var in ("loss", "lr", "grad_norm", "steps_per_second"):
            if var in segment:
                train.update({(var, int(st)): float(v) for st, v in zip(segment.step.values, segment[var].values)})
    scalars += [
        (f"train/{var}", step, v) for (var, step), v in sorted(train.items(), key=lambda kv: kv[0][1]) if np.isfinite(v)
    ]

    # evaluations and decay statistics are read again only when a new one is published
    new_evals = [n for n in run.published("eval") if ("eval_name", n) not in done]
    done.update(("eval_name", n) for n in new_evals)
    evals = run.evals() if new_evals else xr.Dataset()
    if evals.sizes.get("checkpoint"):
        scores = checkpoint_scores(evals)  # (checkpoint, mode, target)
        steps = [int(s) for s in scores.checkpoint.values]
        for i, step in enumerate(steps):
            if ("eval", step) in done:
                continue
            done.add(("eval", step))
            so_far = run_scores(evals.isel(checkpoint=slice(0, i + 1)))  # last and best, mean over targets
            for mode in scores.mode.values:
                for target in scores.target.values:
                    v = float(scores.sel(checkpoint=step, mode=mode, target=target))
                    if np.isfinite(v):
                        scalars.append((f"eval/{mode}/score_t{target:g}", step, v))
                for method in ("last", "best"):
                    v = float(so_far[method].sel(mode=mode))
                    if np.isfinite(v):
                        scalars.append((f"eval/{mode}/{method}", step, v))

    new_decay = [n for n in run.published("decay") if ("decay_name", n) not in done]
    done.update(("decay_name", n) for n in new_decay)
    decay = run.decay() if new_decay else xr.Dataset()
    if decay.sizes.get("checkpoint"):
        for step in (int(s) for s in decay.checkpoint.values):
            if ("decay", step) in done:
                continue
            done.add(("decay", step))
            for layer in decay.layer.values:
                for kind in decay.query_kind.values:
                    for var in ("half_life", "r2"):
                        v = float(decay[var].sel(checkpoint=step, layer=layer, query_kind=kind))
                        if np.isfinite(v):
                            scalars.append((f"decay/layer{int(layer)}/{kind}_{var}", step, v))

    videos = []
    for name in run.rollouts():
        if ("rollout", name) in done:
            continue
        done.add(("rollout", name))
        _, _, rest = name.partition("-")
        step = step_of(name)
        if step < 0:
            step = int(run.open("rollout", name).attrs.get("checkpoint", 0))
        videos.append((f"rollout/{rest or name}", step, name))

    return Replay(scalars=scalars, videos=videos, config=run.config)


def run_summary(run: Run) -> dict:
    """The run's headline scores (dema_lab.analysis.scoring.headline) and status, as tracker summary values."""
    evals = run.evals()
    score = headline(evals if "normalized_score" in evals else xr.Dataset())
    return {
        "score/last": score["last"],
        "score/best": score["best"],
        "score/mode": score["mode"] or "",
        "score/last_checkpoint": score["last_checkpoint"],
        "status": run.attrs.get("status", ""),
    }


def _gif(run: Run, name: str, folder: str, fps: float = 30.0) -> Path | None:
    """A recorded episode as a GIF file in `folder`, or None when it was recorded without frames."""
    from dema_lab.evaluation.rollout import export_video

    episode = run.open("rollout", name)
    if "frames" not in episode or episode.sizes.get("step", 0) == 0:
        return None
    return export_video(episode, Path(folder) / f"{name}.gif", fps=fps)


# ------------------------------------------------------------------------------ TensorBoard
EXPORT_SUFFIX = ".dema-lab-export"  # the end of the event files that `dema-lab export` writes


def _tensorboard_writer(logdir, filename_suffix: str = ""):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(f"exporting to TensorBoard needs the tensorboard package; {_INSTALL}") from None
    return SummaryWriter(log_dir=str(logdir), filename_suffix=filename_suffix)


def _write_tensorboard(writer, run: Run, rec: Replay, fps: float) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    for tag, step, value in rec.scalars:
        writer.add_scalar(tag, value, step)
    with tempfile.TemporaryDirectory() as tmp:
        for tag, step, name in rec.videos:
            path = _gif(run, name, tmp, fps)
            if path is None:
                continue
            frames = run.open("rollout", name)["frames"]
            image = Summary.Image(
                height=frames.sizes["y"], width=frames.sizes["x"], colorspace=3, encoded_image_string=path.read_bytes()
            )
            writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


def to_tensorboard(run: Run, logdir, fps: float = 30.0) -> Path:
    """Write the run's records as TensorBoard event files under logdir/<run_id>; returns that folder.

    Exporting again replaces the previous export (its event files end in EXPORT_SUFFIX), so no
    scalar is doubled: the new file is written whole in a hidden folder beside the export, the old
    export's files are removed, then the new file is renamed in. A killed export leaves at worst
    that hidden folder (removed by the next export) or no export, never two."""
    logdir = Path(logdir).expanduser()
    out = logdir / run.run_id
    rec = replay(run)
    logdir.mkdir(parents=True, exist_ok=True)
    partial = f".{run.run_id}.export-"
    for old in logdir.glob(partial + "*"):  # what a killed export left
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=partial, dir=logdir))
    try:
        writer = _tensorboard_writer(tmp, EXPORT_SUFFIX)
        try:
            writer.add_text(
                "config", "```\n" + json.dumps(rec.config, indent=2, sort_keys=True, default=str) + "\n```", 0
            )
            _write_tensorboard(writer, run, rec, fps)
            summary = run_summary(run)
            for key in ("score/last", "score/best"):
                if np.isfinite(summary[key]):
                    writer.add_scalar(key, summary[key], max(summary["score/last_checkpoint"], 0))
        finally:
            writer.close()
        out.mkdir(parents=True, exist_ok=True)
        for old in exported_event_files(out):
            old.unlink()
        for new in exported_event_files(tmp):
            new.rename(out / new.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def exported_event_files(folder) -> list[Path]:
    """The event files of `dema-lab export` in `folder` (not those of live logging, or of others)."""
    return sorted(Path(folder).glob(f"events.out.tfevents.*{EXPORT_SUFFIX}"))


def other_event_files(folder) -> list[Path]:
    """The event files in `folder` that `dema-lab export` did not write (live logging during
    training, an export by an older dema-lab): TensorBoard shows their scalars beside the export's."""
    return [p for p in sorted(Path(folder).glob("events.out.tfevents.*")) if not p.name.endswith(EXPORT_SUFFIX)]


class LiveTensorBoard:
    """`dema-lab train --log-to tensorboard DIR`: after each publication the trainer calls
    `update(run)`, which writes what is new in the run to DIR/<run_id>."""

    def __init__(self, logdir, fps: float = 30.0):
        self.logdir, self.fps = Path(logdir).expanduser(), fps
        self.writer = None
        self.done: set = set()

    def update(self, run: Run) -> None:
        if self.writer is None:
            self.writer = _tensorboard_writer(self.logdir / run.run_id)
        _write_tensorboard(self.writer, run, replay(run, self.done), self.fps)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def live_tracker(tracker: str, folder) -> LiveTensorBoard:
    """The live tracker of `dema-lab train --log-to TRACKER DIR` (TensorBoard only: W&B gets a
    run after the fact, with `dema-lab export RUN_ID --to wandb`)."""
    if tracker != "tensorboard":
        raise ValueError(
            f"--log-to {tracker}: live logging goes to tensorboard; for W&B, export the run "
            f"afterwards with `dema-lab export RUN_ID --to wandb`"
        )
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ValueError(f"--log-to tensorboard needs the tensorboard package; {_INSTALL}") from None
    return LiveTensorBoard(folder)


# ------------------------------------------------------------------------------ W&B
def to_wandb(run: Run, folder=".", project: str = "dema-lab", fps: float = 30.0) -> Path:
    """Write the run as an offline W&B run under folder/wandb/ (nothing is uploaded: `wandb sync`
    does it later). Returns the offline run's folder."""
    os.environ["WANDB_MODE"] = "offline"  # never contact a server, whatever the user's settings
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError:
        raise ImportError(f"exporting to W&B needs the wandb package; {_INSTALL}") from None
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    rec = replay(run)
    by_step: dict[int, dict] = {}
    for tag, step, value in rec.scalars:
        by_step.setdefault(step, {})[tag] = value
    wb = wandb.init(
        project=project,
        name=run.run_id,
        dir=str(folder),
        mode="offline",
        config=rec.config,
        settings=wandb.Settings(disable_git=True, x_disable_stats=True, console="off"),
        reinit="create_new",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            videos: dict[int, dict] = {}
            for tag, step, name in rec.videos:
                path = _gif(run, name, tmp, fps)
                if path is not None:
                    videos.setdefault(step, {})[tag] = wandb.Video(str(path), format="gif")
            for step in sorted(set(by_step) | set(videos)):
                wb.log({**by_step.get(step, {}), **videos.get(step, {})}, step=step)
        wb.summary.update(
            {k: v for k, v in run_summary(run).items() if not (isinstance(v, float) and not np.isfinite(v))}
        )
        out = Path(wb.settings.sync_dir)
    finally:
        wb.finish()
        if wandb.run is None:
            # the W&B service process writes the run file: shut it down, so that the file is whole
            # and closed when this returns (finish() can return before the service has flushed)
            wandb.teardown()
    return out


def export_run(run: Run, tracker: str, folder=None, project: str = "dema-lab") -> Path:
    """Replay `run` into `tracker` ("tensorboard" or "wandb"); returns where it was written."""
    if tracker == "tensorboard":
        return to_tensorboard(run, folder or "runs")
    if tracker == "wandb":
        return to_wandb(run, folder or ".", project=project)
    raise ValueError(f"unknown tracker {tracker!r}; choose one of {', '.join(TRACKERS)}")
