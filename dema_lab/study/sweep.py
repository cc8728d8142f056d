"""`dema-lab sweep`: the paper's study as one command.

A grid over datasets x K x token layout x timestep embedding x model x seed (or, with `points`,
datasets x the listed (model, K, inference modes) x layout x timestep embedding x seed); every grid point
is one run in the store, with a run id derived from the point, so a rerun finds it again:
finished runs are skipped, interrupted ones resumed from their last checkpoint. The inference
modes (Transformer-like, RNN-like) are evaluated inside each DeMa run. After training, each
DeMa run's last checkpoint is evaluated with its hidden attention ablated by the paper's method
(mixer parameters set to zeros or U[0,1)) and by dema-lab's (alpha set to zeros or random), all
layers at once (each layer on its own too with ablation_layers=["all", "each"]); a model trained
with a timestep embedding also without it (see dema_lab.evaluation.ablation). Then (explain, on
by default) decisions of each run's last checkpoint are explained by every method and the
explanations' faithfulness measured (dema_lab.evaluation.faithfulness; the causal horizon too with
explain_horizon).

Models without hidden attention (LSTM, GRU, MLP) are trained and evaluated like the others and
skip the ablations, saying so in one line.

Named sweeps (SWEEP_PRESETS, `dema-lab sweep --preset NAME`) fix the grid and every run's settings:
    memory  where memory matters: Transformer-like DeMa at K 5, 20, 60; RNN-like DeMa trained on K 20
            and 60 (the same K 20 and 60 runs, evaluated in both modes); LSTM and GRU on K 20
            (RNN-like); DT at K 20; the memoryless MLP as the floor; on a partially observed MuJoCo
            task and MiniGrid Memory with a corridor shorter and one longer than K 20 reaches.

Runs execute in parallel worker processes, one per core by default, each with one thread.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from dema_lab.data.registry import is_memory_task_spec
from dema_lab.models import ARCHS
from dema_lab.models.policy import inference_modes
from dema_lab.study.executors import run_local, run_ray
from dema_lab.training import DT_PAPER, TrainConfig
from dema_lab.training.config import DataConfig


def parse_point(text: str) -> tuple[str, int, list[str], list[int] | None]:
    """'ARCH:K:MODE[+MODE][:SEED[+SEED]]' (e.g. 'dema:20:transformer+rnn', 'lstm:20:rnn',
    'dema:20:transformer+rnn:0+1+2') -> (arch, K, modes, seeds); seeds None: the sweep's own.
    ValueError naming what is wrong."""
    parts = str(text).split(":")
    usage = "write a point as ARCH:K:MODES[:SEEDS], e.g. dema:20:transformer+rnn, lstm:20:rnn or dema:20:rnn:0+1+2"
    if len(parts) not in (3, 4):
        raise ValueError(f"sweep point {text!r}: {usage}")
    arch, k, modes = parts[0], parts[1], [m for m in parts[2].split("+") if m]
    if arch not in ARCHS:
        raise ValueError(f"sweep point {text!r}: arch {arch!r} is unknown (choose {', '.join(ARCHS)})")
    if not k.isdigit() or int(k) < 1:
        raise ValueError(f"sweep point {text!r}: K must be a positive integer; {usage}")
    bad = [m for m in modes if m not in inference_modes(arch)]
    if not modes or bad:
        raise ValueError(
            f"sweep point {text!r}: a {arch!r} model acts in {' or '.join(inference_modes(arch))} "
            f"(modes joined by '+'), not {'+'.join(bad) or 'none'}"
        )
    seeds = None
    if len(parts) == 4:
        given = parts[3].split("+")
        if not all(v.isdigit() for v in given) or len(set(given)) != len(given):
            raise ValueError(f"sweep point {text!r}: seeds are distinct integers >= 0 joined by '+'; {usage}")
        seeds = [int(v) for v in given]
    return arch, int(k), modes, seeds


@dataclass
class SweepConfig:
    """A grid of runs (`dema-lab sweep`): every combination of datasets, K, layouts, timestep
    embedding, architectures and seeds, each a TrainConfig with a stable run id, trained into one
    store; finished runs are skipped and unfinished ones resumed."""

    name: str = "sweep"  # sweep name, the prefix of its run ids
    datasets: list[str] = field(default_factory=lambda: ["hopper-medium"])  # embedded name, .hdf5 path, minari:<id>
    K: list[int] = field(default_factory=lambda: [5, 10, 20, 40])  # context lengths
    layouts: list[str] = field(default_factory=lambda: ["B3LD"])  # B3LD and/or BL3D
    #: DeMa without (off) and/or with (on) a timestep embedding (DT always has its own)
    timestep_embedding: list[bool] = field(default_factory=lambda: [False])
    archs: list[str] = field(default_factory=lambda: ["dema"])  # dema, dt, lstm, gru, mlp
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds
    eval_modes: list[str] = field(default_factory=lambda: ["transformer", "rnn"])  # transformer and/or rnn
    #: instead of K x archs x eval_modes: the (model, K, inference modes[, seeds]) to run, each
    #: ARCH:K:MODES[:SEEDS], e.g. dema:20:transformer+rnn lstm:20:rnn dema:20:rnn:0+1+2 (no SEEDS: --seeds)
    points: list[str] = field(default_factory=list)
    ablations: bool = True  # hidden attention ablated (DeMa), timestep embedding removed (if trained with one)
    ablation_episodes: int = 5  # episodes per ablation and target
    #: hidden-attention ablations of all layers at once (all), of every layer on its own (each), or of
    #: layer N
    ablation_layers: list[str] = field(default_factory=lambda: ["all"])
    #: explain decisions of each run's last checkpoint by every method and measure their faithfulness
    #: (dema_lab.evaluation.faithfulness; about as costly as one ablation: on)
    explain: bool = True
    explain_episodes: int = 3  # episodes to take the decisions from
    explain_steps: int = 10  # decisions per episode
    explain_horizon: bool = False  # also the causal horizon: 2K evaluations per run (slow: off)
    workers: int = 0  # 0: one per core
    executor: str = "local"  # local (processes on this machine) | ray (dema_lab.study.executors)
    address: str = ""  # ray: the cluster's HOST:PORT ('': RAY_ADDRESS, else a local one)
    num_cpus: float = 1.0  # ray: CPUs per run (torch threads: this, at least 1)
    num_gpus: float = 0.0  # ray: GPUs per run, fractional to share one (0.25: four runs per GPU)
    max_retries: int = 3  # ray: reruns of a task whose worker died; each resumes from the store
    base: TrainConfig = field(default_factory=TrainConfig)  # everything else (steps, sizes, store, ...)

    def __post_init__(self):
        for name in ("datasets", "K", "layouts", "timestep_embedding", "archs", "seeds", "eval_modes"):
            if not getattr(self, name):
                raise ValueError(f"sweep dimension {name} is empty; give at least one value")
        self.ablation_layers = [str(v).lower() for v in self.ablation_layers] or ["all"]
        for point in self.points:
            parse_point(point)
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor {self.executor!r}: use 'local' (processes here) or 'ray' (a Ray cluster)")
        if self.num_cpus <= 0 or self.num_gpus < 0 or self.max_retries < 0:
            raise ValueError(
                f"num_cpus must be > 0, num_gpus and max_retries >= 0 (got {self.num_cpus:g}, "
                f"{self.num_gpus:g}, {self.max_retries})"
            )
        bad = [v for v in self.ablation_layers if v not in ("all", "each") and not v.isdigit()]
        if bad:
            raise ValueError(f"ablation layers {', '.join(bad)}: use 'all', 'each' or a layer index")


# Named sweeps: the grid's fields and every run's TrainConfig fields ("base").
#
# memory: 7 models x 3 datasets; K 60 is longer than every minigrid-memory-s13 episode, so
# run_sweep says so and trains the other 20. No ablations: the question here is memory, not the
# hidden attention's removal (--ablations adds them).
# Timed on this 2-core machine, 2026-12-07, `--workers 2` (one thread per run): 1 h 47 min wall from
# start to end (21:31-23:18 UTC), 16 min of it paused (SIGSTOP) and most of the rest shared with two
# full test-suite runs. The critical path is hopper-medium-pomdp DeMa K 60 (5819 s wall, pause
# included: 2000 training steps, then 2 modes x 2 targets of episodes up to 1000 steps, each
# recorded one with frames and hidden attention at every step; measured before this run, on a
# loaded machine: ~3 training steps/s and ~330 ms a recorded step at K 60); the
# other worker ran the 19 others meanwhile (hopper: DeMa K 5 199 s, K 20 1134 s, LSTM 240, GRU 584,
# DT 261, MLP 1089; MiniGrid runs 68-668 s, their episodes under 40 steps).
SWEEP_PRESETS = {
    "memory": {
        "grid": {
            "name": "memory",
            "datasets": ["hopper-medium-pomdp", "minigrid-memory-s13", "minigrid-memory-s31"],
            "points": [
                "dema:5:transformer",
                "dema:20:transformer+rnn",
                "dema:60:transformer+rnn",
                "lstm:20:rnn",
                "gru:20:rnn",
                "dt:20:transformer",
                "mlp:20:transformer",
            ],
            "ablations": False,
        },
        "base": {
            "d_model": 64,
            "n_layer": 3,
            "d_state": 16,
            "steps": 2000,
            "batch_size": 32,
            "lr": 6e-4,
            "warmup_steps": 100,
            "eval_every": 0,
            "eval_episodes": 5,
            "eval_max_steps": 1000,
            "record_episodes": 1,
            "render_size": 64,
            "decay_windows": 32,
            "log_every": 50,
            "checkpoint_every": 500,
        },
    }
}


def sweep_preset(name: str, **grid) -> SweepConfig:
    """The SweepConfig of named sweep `name` (SWEEP_PRESETS), with `grid` fields on top (base: a
    TrainConfig or flat fields over the preset's)."""
    if name not in SWEEP_PRESETS:
        raise ValueError(f"unknown sweep preset {name!r}; sweep presets: {', '.join(SWEEP_PRESETS)}")
    preset = SWEEP_PRESETS[name]
    base = grid.pop("base", None)
    if not isinstance(base, TrainConfig):
        base = TrainConfig.from_flat({**preset["base"], **(base or {})})
    return SweepConfig(**{**preset["grid"], **grid}, base=base)


def _points(sweep: SweepConfig) -> list[tuple[str, int, list[str] | None, list[int]]]:
    """(arch, K, modes, seeds) of every model the sweep trains per dataset, layout and embedding."""
    if sweep.points:
        return [(a, k, m, sweep.seeds if s is None else s) for a, k, m, s in map(parse_point, sweep.points)]
    out = []
    for K, arch in itertools.product(sweep.K, sweep.archs):
        modes = [m for m in sweep.eval_modes if m in inference_modes(arch)]
        out.append((arch, K, modes or None, sweep.seeds))  # None: the model's default modes
    return out


def grid(sweep: SweepConfig) -> list[TrainConfig]:
    """One TrainConfig per grid point, with a stable run id. The timestep-embedding dimension is
    DeMa's: DT is always the papers' DT (train.DT_PAPER: its timestep embedding, tokens (R, s, a)),
    one DT run per other point. Each run is evaluated in the sweep's modes that its model has
    (an LSTM or GRU asked only for "transformer" gets it; DT and the MLP only ever "transformer")."""
    configs, seen = [], set()
    runs = [
        (dataset, arch, K, modes, layout, ts, seed)
        for dataset, (arch, K, modes, seeds), layout, ts in itertools.product(
            sweep.datasets, _points(sweep), sweep.layouts, sweep.timestep_embedding
        )
        for seed in seeds
    ]
    for dataset, arch, K, modes, layout, ts, seed in runs:
        ts = DT_PAPER["timestep_embedding"] if arch == "dt" else ts
        if (dataset, K, layout, ts, arch, seed) in seen:
            continue
        seen.add((dataset, K, layout, ts, arch, seed))
        short = os.path.splitext(os.path.basename(dataset))[0].replace(":", "-")
        # returns of at most 1 (MiniGrid, POPGym) want no scaling; MuJoCo's 1000 stays where the base has it
        rtg = (
            {"rtg_scale": 1.0}
            if is_memory_task_spec(dataset) and sweep.base.data.rtg_scale == DataConfig.rtg_scale
            else {}
        )
        run_id = f"{sweep.name}-{short}-{arch}-{layout}-ts{int(ts)}-K{K}-s{seed}"
        configs.append(
            sweep.base.replace(
                **{k: v for k, v in DT_PAPER.items() if arch == "dt" and k != "timestep_embedding"},
                dataset=dataset,
                K=K,
                layout=layout,
                timestep_embedding=ts,
                arch=arch,
                seed=seed,
                eval_modes=modes,
                run_id=run_id,
                sweep=sweep.name,
                **rtg,
            )
        )
    return configs


def run_sweep(sweep: SweepConfig, log=print) -> list[dict]:
    """Run every grid point (in parallel processes) and return what happened to each."""
    from dema_lab.data import episode_lengths
    from dema_lab.data.trajectory import DatasetError
    from dema_lab.data.windows import check_context_length
    from dema_lab.store.zarr_store import RunStore, check_store

    configs = grid(sweep)
    check_store(sweep.base.run.store)  # a path that is not a store fails first
    too_long = []  # grid points whose K no whole window of their dataset holds: said, not trained
    for name in dict.fromkeys(sweep.datasets):
        # an embedded dataset is built here once, not in each worker; then only its episode
        # boundaries are read (a missing or unreadable file fails here, not in every run)
        lengths = episode_lengths(name, progress=False)
        for cfg in configs:
            if cfg.data.dataset == name:
                try:
                    check_context_length(lengths, cfg.model.K, name=name)
                except DatasetError as e:
                    too_long.append({"run_id": cfg.run.run_id, "what": f"not run: {e}", "seconds": 0.0})
    if too_long:
        skip = {r["run_id"] for r in too_long}
        configs = [c for c in configs if c.run.run_id not in skip]
        for r in too_long:
            log(f"{r['run_id']}: {r['what']}")
    RunStore(sweep.base.run.store, mode="a")  # create the store once, before the workers
    if "dema" in sweep.archs or any(parse_point(p)[0] == "dema" for p in sweep.points):
        from dema_lab.ssm.kernels.warm import warm_up_in_processes

        warm_up_in_processes()  # compile the scan and attention kernels into numba's cache once, too
    if sweep.executor == "ray":
        configs = [c.replace(threads=max(1, int(sweep.num_cpus))) for c in configs]
        log(f"sweep {sweep.name}: {len(configs)} runs on Ray, store {sweep.base.run.store}")
        return run_ray(sweep, configs, log=log) + too_long
    return run_local(sweep, configs, log=log) + too_long
