"""`dema-lab sweep`: the paper's study as one command.

A grid over datasets x K x token layout x timestep embedding x model x seed; every grid point
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

Runs execute in parallel worker processes, one per core by default, each with one thread.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from dema_lab.study.executors import run_local, run_ray
from dema_lab.training import DT_PAPER, TrainConfig


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
    archs: list[str] = field(default_factory=lambda: ["dema"])  # dema and/or dt
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds
    eval_modes: list[str] = field(default_factory=lambda: ["transformer", "rnn"])  # transformer and/or rnn
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


def grid(sweep: SweepConfig) -> list[TrainConfig]:
    """One TrainConfig per grid point, with a stable run id. The timestep-embedding dimension is
    DeMa's: DT is always the papers' DT (train.DT_PAPER: its timestep embedding, tokens (R, s, a)),
    one DT run per other point."""
    configs, seen = [], set()
    for dataset, K, layout, ts, arch, seed in itertools.product(
        sweep.datasets, sweep.K, sweep.layouts, sweep.timestep_embedding, sweep.archs, sweep.seeds
    ):
        ts = DT_PAPER["timestep_embedding"] if arch == "dt" else ts
        if (dataset, K, layout, ts, arch, seed) in seen:
            continue
        seen.add((dataset, K, layout, ts, arch, seed))
        short = os.path.splitext(os.path.basename(dataset))[0].replace(":", "-")
        run_id = f"{sweep.name}-{short}-{arch}-{layout}-ts{int(ts)}-K{K}-s{seed}"
        modes = [m for m in sweep.eval_modes if arch == "dema" or m == "transformer"]
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
            )
        )
    return configs


def run_sweep(sweep: SweepConfig, log=print) -> list[dict]:
    """Run every grid point (in parallel processes) and return what happened to each."""
    from dema_lab.data import embedded_names, ensure_embedded, load_dataset
    from dema_lab.store.zarr_store import RunStore, check_store

    configs = grid(sweep)
    check_store(sweep.base.run.store)  # a path that is not a store fails first
    embedded = set(embedded_names())
    for name in dict.fromkeys(sweep.datasets):
        if name in embedded:
            ensure_embedded(name, progress=False)  # build shared datasets once, not in each worker
        else:
            load_dataset(name, progress=False)  # a missing or malformed file fails here, not in every run
    RunStore(sweep.base.run.store, mode="a")  # create the store once, before the workers
    if "dema" in sweep.archs:
        from dema_lab.ssm.kernels import scan_cpu as cpu_kernel

        cpu_kernel.warm_up()  # compile the scan into numba's cache once, too
    if sweep.executor == "ray":
        configs = [c.replace(threads=max(1, int(sweep.num_cpus))) for c in configs]
        log(f"sweep {sweep.name}: {len(configs)} runs on Ray, store {sweep.base.run.store}")
        return run_ray(sweep, configs, log=log)
    return run_local(sweep, configs, log=log)
