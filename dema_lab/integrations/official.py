"""`dema-lab import`: a checkpoint of the official DeMa code as a dema-lab checkpoint file, or as a
run in the store that the explorer, the sequence-length page and /live open like any other.

    dema-lab import model_iter9.pkl --dataset hopper-medium --out official.safetensors
    dema-lab import model_iter9.pkl --dataset hopper-medium --store store [--run_id ID] [--eval-episodes 5]

The store variant creates a run (config: a TrainConfig describing the imported model and the
official training settings; provenance: source "official", the file, its sha256, the env,
parameters), publishes the checkpoint, then evaluates it as the trainer does: every (mode,
target) with one recorded episode each (frames, hidden attention), eval/, rollout/ and decay/
groups, and status "finished". Reading the pickle executes nothing (dema_lab.models.official.convert).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from dema_lab.data import load_dataset
from dema_lab.envs.spec import env_spec
from dema_lab.evaluation.checkpoint import evaluate_checkpoint
from dema_lab.evaluation.defaults import default_modes, default_targets
from dema_lab.models.checkpoint import checkpoint_bytes
from dema_lab.models.official.convert import OFFICIAL_N_HEAD, official_checkpoint
from dema_lab.models.official.unpickler import OfficialCheckpointError
from dema_lab.store.errors import StoreError
from dema_lab.store.provenance import provenance
from dema_lab.store.schema import checkpoint_name
from dema_lab.store.zarr_store import DEFAULT_STORE, Run, RunStore
from dema_lab.training import PRESETS, TrainConfig

# How the official gym/experiment.py trains (recorded in the imported run's config; nothing is trained
# here): the optimiser and sampling settings of the 'official' preset, which DeMa and DT share there.
OFFICIAL_TRAINING_FIELDS = (
    "lr",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "batch_size",
    "decay_all",
    "train_padding",
)


def default_run_id(ck, dataset_name: str, source: Path) -> str:
    """official-<dema|dt>-<dataset>-iter<N> (the file's stem when it is not model_iter<N>.pkl)."""
    name = Path(dataset_name).stem if dataset_name.endswith((".hdf5", ".h5")) else dataset_name
    tail = f"iter{ck.meta['iteration']}" if ck.meta.get("iteration") is not None else source.stem
    run_id = re.sub(r"[^A-Za-z0-9._-]+", "-", f"official-{ck.config.arch}-{name}-{tail}").strip("-.")
    return run_id[:128]


def train_config_for(ck, dataset: str, **fields):
    """The TrainConfig that describes an imported model (its ModelConfig, the official optimiser
    settings) with flat `fields` (store, run_id, evaluation settings) on top."""
    extra = {k: PRESETS["official"][k] for k in OFFICIAL_TRAINING_FIELDS}
    if ck.config.arch == "dema" and ck.config.token_order == "RAS":
        extra["rtg_form"] = "previous"  # the official trainer's R_{t-1} with s_t (`del_r`)
    steps = max(1, int(ck.meta.get("step") or 0))
    return TrainConfig.from_flat(
        {"model": ck.config.to_dict()},
        dataset=dataset,
        steps=steps,
        rtg_scale=float(ck.meta["rtg_scale"]),
        device="cpu",
        **extra,
        **fields,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_to_store(
    path,
    store=DEFAULT_STORE,
    *,
    dataset: str,
    env: str | None = None,
    run_id: str = "",
    K: int | None = None,
    n_head: int = OFFICIAL_N_HEAD,
    rtg_scale: float | None = None,
    eval_episodes: int = 5,
    eval_targets=None,
    eval_modes=None,
    eval_max_steps: int = 1000,
    record_episodes: int = 1,
    render_size: int = 128,
    attention: str = "minmax",
    decay_windows: int = 64,
    seed: int = 0,
    log=print,
) -> Run:
    """Import an official checkpoint as a finished run of `store` and evaluate it like the trainer.

    Returns the run. Raises OfficialCheckpointError / UnsafeCheckpointError (the file), DatasetError
    or ValueError (dataset, env, settings), StoreError (the store, an existing run id)."""
    from dema_lab.data import load_dataset

    path = Path(path).expanduser()
    ds = load_dataset(dataset, progress=False)
    ck = import_official(path, env=env, dataset=ds, rtg_scale=rtg_scale, K=K, n_head=n_head)
    env_name = ck.meta["env"]
    if not env_name:
        raise ValueError(f"dataset {dataset!r} does not say which environment it comes from; give --env")
    rs = RunStore(store, mode="a")
    run_id = run_id or default_run_id(ck, ds.name, path)
    if run_id in rs.run_ids():
        raise StoreError(f"run {run_id!r} already exists in {rs.path}; choose another --run_id (or delete that run)")
    modes = list(eval_modes or default_modes(ck.config.arch))
    targets = [float(t) for t in (eval_targets or default_targets(env_name, ds))]
    cfg = train_config_for(
        ck,
        str(dataset),
        store=str(store),
        run_id=run_id,
        seed=seed,
        eval_episodes=eval_episodes,
        eval_targets=targets,
        eval_modes=modes,
        eval_max_steps=eval_max_steps,
        record_episodes=record_episodes,
        render_size=render_size,
        attention=attention,
        decay_windows=decay_windows,
    )
    step = int(ck.meta["step"])
    meta = {**ck.meta, "run_id": run_id}
    prov = provenance(
        ds,
        env_name,
        ck.model,
        modes,
        targets,
        device="cpu",
        source="official",
        source_path=meta["source_path"],
        source_sha256=_sha256(path),
        official_class=meta["official_class"],
        iteration=meta["iteration"],
        dropped_tensors=meta["dropped"],
        optimizer_steps=meta.get("optimizer_steps"),
        state_normalisation="dataset mean and std + 1e-6 over all observations (as the official code)",
    )
    run = rs.create_run(run_id, cfg.to_flat(), prov)
    try:
        run.write_bytes("checkpoint", checkpoint_name(step), checkpoint_bytes(ck.model, meta, ck.extra), attrs=meta)
        run.set_attrs(steps_done=step)
        evaluate_into(run, ck, ds, cfg, log=log)
    except BaseException:
        run.set_attrs(status="interrupted")
        raise
    run.set_attrs(status="finished", steps_done=step, wall_seconds=0.0)
    return run


def evaluate_into(run: Run, ck, ds, cfg, log=print):
    """Evaluate an imported checkpoint as the trainer does (evaluate_checkpoint) and publish
    eval/, rollout/, decay/ and paper_attention/ under its checkpoint name."""
    from dema_lab.data import WindowSampler

    mean, std = ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy()
    K, rtg_scale, seed = cfg.model.K, cfg.data.rtg_scale, cfg.optim.seed
    sampler = WindowSampler(ds, K, rtg_scale=rtg_scale, seed=seed, state_mean=mean, state_std=std)
    return evaluate_checkpoint(
        run,
        ck.model,
        int(ck.meta["step"]),
        cfg.evaluation,
        ck.meta["env"],
        cfg.evaluation.eval_targets,
        cfg.evaluation.eval_modes,
        sampler,
        ds.normalized_score,
        rtg_scale=rtg_scale,
        seed=seed,
        log=log,
        attrs={"source": "official"},
    )


def import_official(path, *, env: str | None = None, dataset=None, **options):
    """A checkpoint of the official DeMa code (`model_iter{N}.pkl`: Mamba_mujoco or its
    DecisionTransformer) as a dema-lab Checkpoint, read without executing anything.

    dataset: a name/path for dema_lab.data.load_dataset, or a loaded dataset: the state
        normalisation (mean, std + 1e-6) and the env come from it. Or give state_mean/state_std
        (and env). env: validated with dema_lab.envs.env_spec; must agree with the dataset's.
    options: dema_lab.models.official.official_checkpoint's state_mean, state_std, rtg_scale, K
    (not in the weights; the official default 20, Atari 30) and n_head (DT's; the official 1).
    """
    ds = None
    if dataset is not None:
        ds = dataset if hasattr(dataset, "state_mean") else load_dataset(dataset, progress=False)
    return official_checkpoint(path, env=_resolve_env(env, ds), dataset=ds, **options)


def _resolve_env(env, ds) -> str:
    ds_env = None
    if ds is not None and ds.env:
        try:
            ds_env = env_spec(ds.env).name
        except ValueError:
            ds_env = None
    if env is None:
        return ds_env or ""
    try:
        name = env_spec(env).name
    except ValueError as e:
        raise OfficialCheckpointError(str(e)) from None
    if ds_env and name != ds_env:
        raise OfficialCheckpointError(f"env {env!r} is not the dataset's env {ds_env!r}")
    return name
