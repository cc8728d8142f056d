"""The demo job: the default dataset, a small DeMa that visibly learns on 2 CPU cores, and a
small study beside it, all logged into one store as the sweep "demo": DeMa at two more context
lengths K, a DT of the same size, and the paper's two hidden-attention ablations, so that the
study page (/study, `dema-lab report --sweep demo`) has findings to decide.

`make demo` runs it and then serves the dashboard; the dashboard's empty-store page starts it
with a button. Both call `run_demo`.
"""

from __future__ import annotations

import os
import time

from dema_lab.analysis.runs import MAIN_RUN
from dema_lab.analysis.scoring import MIN_PAIRS
from dema_lab.common.process import die_with_parent
from dema_lab.training import DT_PAPER, TrainConfig, ensure_trained

# A DeMa at a quarter of the paper's width and a short context: it learns hopper-medium in a
# couple of minutes on 2 cores. lr is raised (and warm-up shortened) for the short schedule.
DEMO_CONFIG = TrainConfig.from_flat(
    dataset="hopper-medium",
    arch="dema",
    K=10,
    layout="B3LD",
    n_layer=3,
    d_model=64,
    d_state=16,
    steps=2000,
    batch_size=32,
    lr=6e-4,
    warmup_steps=100,
    eval_every=1000,
    eval_episodes=1,  # deterministic MuJoCo: one episode per (mode, target), the recorded one
    eval_targets=[3600.0, 1800.0],
    eval_max_steps=1000,
    record_episodes=1,
    render_size=128,
    decay_windows=64,
    log_every=50,
    checkpoint_every=500,
)


# The sweep every demo run belongs to: the study page and `dema-lab report --sweep demo` find them by it.
DEMO_SWEEP = "demo"

# The K sweep beside it: as long as the main run (the score against K compares K, not training
# lengths), evaluated once at the end, Transformer-like (the main run shows both modes).
SWEEP_K = (5, 20)

# DT beside the main run: the same dataset, K, size, steps and evaluation (so the two pair up on
# dataset, K and seed), with DT's tokens as its papers ran it (DT_PAPER).
DT_RUN = "demo-dt-K10"

# The paper's two hidden-attention ablations (merge_exp.py: every mixer parameter but in_proj and
# out_proj set to zeros, or to U[0,1)) and the unablated model they are measured against.
PAPER_ABLATIONS = ("none", "mixer-zeros", "mixer-random")


def demo_runs(store: str, sweep: bool = True) -> list[TrainConfig]:
    """The configs the demo trains, in order (the main run first; with `sweep`, the K sweep and DT)."""
    main = DEMO_CONFIG.replace(store=store, run_id=MAIN_RUN, sweep=DEMO_SWEEP)
    runs = [main]
    if sweep:
        for K in SWEEP_K:
            runs.append(
                main.replace(
                    K=K, eval_every=0, eval_targets=[3600.0], eval_modes=["transformer"], run_id=f"demo-dema-K{K}"
                )
            )
        runs.append(main.replace(arch="dt", **DT_PAPER, run_id=DT_RUN))
    return runs


def ablation_plan(configs: list[TrainConfig]) -> dict[str, tuple[str, ...]]:
    """The ablations the demo evaluates after training, by run id: the paper's two on every DeMa
    run. Each run is one pair of the hidden-attention finding (unablated against ablated), so the
    three DeMa runs of the sweep give the MIN_PAIRS a verdict needs; with fewer (the main run
    alone) no verdict could come of them, and none are run."""
    dema = [c.run.run_id for c in configs if c.model.arch == "dema"]
    return {run_id: PAPER_ABLATIONS for run_id in dema} if len(dema) >= MIN_PAIRS else {}


def demo_workers() -> int:
    """The processes the demo trains in: two on a machine with two cores or more (each run takes
    one core: these models are too small for a second thread to pay), one otherwise."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def train_demo_run(cfg: TrainConfig, ablations: tuple[str, ...], progress: bool, log) -> str:
    """Train (or resume, or skip) one demo run, then evaluate its `ablations`; what was done."""
    from dema_lab.evaluation.ablation import complete_ablations

    run, what = ensure_trained(cfg, progress=progress, log=log)
    if ablations:  # the ones already published are kept: a rerun evaluates none again
        log(f"ablations {', '.join(ablations)}")
        _, added = complete_ablations(
            run,
            episodes=cfg.evaluation.eval_episodes,
            max_steps=cfg.evaluation.eval_max_steps,
            seed=cfg.optim.seed,
            methods=ablations,
        )
        what += f", ablated ({', '.join(added)})" if added else ""
    return what


_events = None  # a worker's queue of (run_id, message) back to run_demo


def _start_worker(events, parent: int) -> None:
    """A demo worker's first act: die with run_demo's process, report on `events`, no bars."""
    global _events
    die_with_parent(parent)
    os.environ["TQDM_DISABLE"] = "1"
    _events = events


def _worker_run(cfg: TrainConfig, ablations: tuple[str, ...]) -> tuple[str, float]:
    """One demo run in a worker process: (what was done, seconds)."""
    import torch

    torch.set_num_threads(max(1, cfg.run.threads or 1))
    start = time.perf_counter()
    what = train_demo_run(cfg, ablations, False, lambda message: _events.put((cfg.run.run_id, str(message))))
    return what, time.perf_counter() - start


def steps_done(store: str, configs: list[TrainConfig]) -> int:
    """The training steps the store holds of `configs`' runs (as of their last checkpoint)."""
    from dema_lab.store.errors import EmptyStoreError
    from dema_lab.store.zarr_store import RunStore

    try:
        runs = RunStore(store, mode="r")
    except EmptyStoreError:  # no run has been created yet
        return 0
    ids = set(runs.run_ids())
    return sum(
        min(int(runs.run(c.run.run_id).attrs.get("steps_done", 0)), c.optim.steps)
        for c in configs
        if c.run.run_id in ids
    )


def run_demo(
    store: str = "store", sweep: bool = True, on_progress=None, progress: bool = True, workers: int | None = None
) -> list[str]:
    """Train the demo runs into `store` (skipping any already finished, resuming unfinished ones),
    in `workers` processes at once (default demo_workers()).

    on_progress(message: str, fraction: float) is called as work advances (for dashboards).
    Returns the run ids.
    """
    from dema_lab.data import DEFAULT_DATASET, ensure_embedded
    from dema_lab.store.zarr_store import check_store

    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a whole number of processes, at least 1; got {workers!r}")
    check_store(store, writable=True)  # a path that is not a (writable) store fails now, not after the build
    report = on_progress or (lambda message, fraction: None)
    report(f"building the default dataset {DEFAULT_DATASET}", 0.0)
    ensure_embedded(DEFAULT_DATASET, progress=progress)
    configs = demo_runs(store, sweep)
    ablations = ablation_plan(configs)
    workers = min(demo_workers() if workers is None else workers, len(configs))
    if workers > 1:
        run_parallel(configs, ablations, workers, report)
    else:
        total, done = sum(c.optim.steps for c in configs), 0
        for cfg in configs:
            run_id = cfg.run.run_id
            report(f"training {run_id} ({cfg.optim.steps} steps)", done / total)
            start = time.perf_counter()

            def log(message, _done=done, _run_id=run_id):
                report(f"{_run_id}: {message}", _done / total)

            what = train_demo_run(cfg, ablations.get(run_id, ()), progress, log)
            done += cfg.optim.steps
            report(f"{run_id} {what} in {time.perf_counter() - start:.0f} s", done / total)
    report("demo runs ready", 1.0)
    return [c.run.run_id for c in configs]


def run_parallel(configs: list[TrainConfig], ablations: dict, workers: int, report, poll: float = 1.0) -> None:
    """Train `configs` in `workers` spawned processes, a core each, in order (the main run first);
    report each worker's messages and, every few seconds, the fraction of steps the store holds.
    The first run that fails stops the rest, and its error is raised here."""
    import multiprocessing as mp
    import queue
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // workers)
    store, total = configs[0].run.store, sum(c.optim.steps for c in configs)
    ctx = mp.get_context("spawn")  # not fork: the caller (a dashboard server) may have threads
    events = ctx.Queue()
    report(f"training {len(configs)} runs in {workers} processes x {threads} thread(s)", 0.0)
    fraction, checked = 0.0, time.monotonic()
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_start_worker, initargs=(events, os.getpid())
    ) as pool:
        futures = {
            pool.submit(_worker_run, cfg.replace(threads=threads), ablations.get(cfg.run.run_id, ())): cfg
            for cfg in configs
        }
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=poll, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        run_id, message = events.get_nowait()
                    except queue.Empty:
                        break
                    report(f"{run_id}: {message}", fraction)
                if finished or time.monotonic() - checked > 15 * poll:
                    fraction, checked = steps_done(store, configs) / total, time.monotonic()
                for fut in finished:
                    what, seconds = fut.result()  # a failed run raises here
                    report(f"{futures[fut].run.run_id} {what} in {seconds:.0f} s", fraction)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
