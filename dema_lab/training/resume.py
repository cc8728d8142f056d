"""Resuming a run: the config it continues with, what a resume may not change (RESUME_FIXED, derived
from TrainConfig's sections), and the resume state saved beside each checkpoint (optimiser,
scheduler, RNGs) and restored from it."""

from __future__ import annotations

import io

import torch

from dema_lab.models.checkpoint import CheckpointError, load_checkpoint
from dema_lab.store.errors import StoreError
from dema_lab.store.schema import checkpoint_name, step_of
from dema_lab.store.zarr_store import RunStore
from dema_lab.training.config import RESUME_FIXED, TrainConfig

# the groups whose entries after a resumed step belong to the abandoned line of training
LATER_KINDS = ("checkpoint", "resume", "eval", "decay", "paper_attention", "rollout")

__all__ = ["RESUME_FIXED", "check_resumable", "load_state", "resume_steps", "resumed_config", "save_state"]


def saved_config(run) -> TrainConfig:
    """The config a stored run was trained with (its `config` attribute: flat fields)."""
    return TrainConfig.from_flat(run.config)


def resumed_config(store, run_id: str, overrides: dict | None = None) -> TrainConfig:
    """The config a run was trained with, with flat `overrides` (more steps, other evaluation settings)."""
    saved = saved_config(RunStore(store, mode="r").run(run_id))
    return saved.replace(store=str(store), **(overrides or {}))


def check_resumable(saved: TrainConfig, cfg: TrainConfig, run_id: str) -> TrainConfig:
    """`cfg` for continuing run `run_id` (saved with `saved`): its run id and sweep are the run's;
    ValueError naming every RESUME_FIXED field `cfg` changes (a resume may extend a run, with more
    steps or other evaluation settings, but not change what it is)."""
    old, new = saved.to_flat(), cfg.to_flat()
    changed = [f"{k} ({old[k]!r} -> {new[k]!r})" for k in RESUME_FIXED if new[k] != old[k]]
    if changed:
        raise ValueError(
            f"--resume {run_id}: cannot change {', '.join(changed)} of an existing run; train a new run for that"
        )
    return cfg.replace(run_id=run_id, sweep=saved.run.sweep)


def resume_steps(run) -> list[int]:
    """Steps of the run's saved resume states, oldest first (what --from-step can take)."""
    return sorted(step_of(n) for n in run.published("resume"))


def save_state(trainer) -> None:
    """The resume state of the trainer's step, beside its checkpoint: optimiser, scheduler, RNGs.
    The newest keep_resume_states are kept; steps_done moves with the state, in the same write."""
    run, name = trainer.run, checkpoint_name(trainer.step)
    buf = io.BytesIO()
    torch.save(
        {
            "optimizer": trainer.opt.state_dict(),
            "scheduler": trainer.sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": trainer.step,
            "wall": trainer.wall,
        },
        buf,
    )
    old = sorted(n for n in run.published("resume") if n != name)
    drop = old[: max(0, len(old) - (trainer.cfg.run.keep_resume_states - 1))]
    run.write_bytes(
        "resume",
        name,
        buf.getvalue(),
        attrs={"step": trainer.step, "sampler_rng": trainer.sampler.rng.bit_generator.state},
        replace=tuple(drop),
        run_attrs={"steps_done": trainer.step, "wall_seconds": round(trainer.wall, 2)},
    )


def load_state(trainer, from_step: int | None = None) -> list[int]:
    """Restore the newest saved state (or that of step `from_step`) into the trainer: weights,
    optimiser, scheduler, RNGs, step. States, checkpoints and evaluations after it belong to the line
    of training this resume abandons; they are unpublished (their data stays until the new line
    rewrites it). Returns the abandoned steps."""
    run = trainer.run
    steps = resume_steps(run)
    if not steps:
        raise StoreError(
            f"run {run.run_id} has no checkpoint to resume from (it was stopped before its "
            f"first one); delete it (dema-lab delete {run.run_id} --store {trainer.store.path}) "
            f"and train it again, or train under another run id"
        )
    if from_step is not None and from_step not in steps:
        raise StoreError(
            f"run {run.run_id} has no saved state of step {from_step} to resume from; it "
            f"keeps those of steps {', '.join(map(str, steps))} (the newest keep_resume_states "
            f"of its checkpoints): use --from-step with one of them"
        )
    name = checkpoint_name(steps[-1] if from_step is None else from_step)
    try:
        ck = load_checkpoint(run.read_bytes("checkpoint", name), map_location=trainer.device, expect=trainer.model_cfg)
        trainer.model.load_state_dict(ck.model.state_dict())
        state = torch.load(io.BytesIO(run.read_bytes("resume", name)), map_location=trainer.device, weights_only=True)
    except StoreError:
        raise  # a damaged blob: the message names it and the other states
    except CheckpointError as e:
        raise CheckpointError(f"run {run.run_id}, checkpoint {name}: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"run {run.run_id}: checkpoint {name} cannot be read ({e})") from None
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    trainer.step, trainer.wall = int(state["step"]), float(state["wall"])
    trainer.sampler.rng.bit_generator.state = run.blob_attrs("resume", name)["sampler_rng"]
    # metrics logged after the checkpoint belong to steps that will be trained again
    run.unpublish("train", [n for n in run.published("train") if int(n.split("_")[-2]) > trainer.step])
    abandoned = [s for s in steps if s > trainer.step]
    if abandoned:  # --from-step: what came after it is trained again
        for kind in LATER_KINDS:
            run.unpublish(kind, [n for n in run.published(kind) if step_of(n) > trainer.step])
    return abandoned
