"""The demo job: the default dataset, a small DeMa that visibly learns on 2 CPU cores, and a
small sweep over the context length K, all logged into one store.

`make demo` runs it and then serves the dashboard; the dashboard's empty-store page starts it
with a button. Both call `run_demo`.
"""

from __future__ import annotations

import dataclasses
import time

from dema_lab.analysis.runs import MAIN_RUN
from dema_lab.training.trainer import TrainConfig, ensure_trained

# A DeMa at a quarter of the paper's width and a short context: it learns hopper-medium in a
# couple of minutes on 2 cores. lr is raised (and warm-up shortened) for the short schedule.
DEMO_CONFIG = TrainConfig(
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
    eval_episodes=2,
    eval_targets=[3600.0, 1800.0],
    eval_max_steps=1000,
    record_episodes=1,
    render_size=128,
    decay_windows=64,
    log_every=50,
    checkpoint_every=500,
)


# The K sweep beside it: as long as the main run (the score against K compares K, not training
# lengths), evaluated once at the end, one recorded episode each.
SWEEP_K = (5, 20)


def demo_runs(store: str, sweep: bool = True) -> list[TrainConfig]:
    """The configs the demo trains, in order (the main run first)."""
    main = dataclasses.replace(DEMO_CONFIG, store=store, run_id=MAIN_RUN)
    runs = [main]
    if sweep:
        for K in SWEEP_K:
            runs.append(dataclasses.replace(main, K=K, eval_every=0, eval_targets=[3600.0], run_id=f"demo-dema-K{K}"))
    return runs


def run_demo(store: str = "store", sweep: bool = True, on_progress=None, progress: bool = True) -> list[str]:
    """Train the demo runs into `store` (skipping any already finished, resuming unfinished ones).

    on_progress(message: str, fraction: float) is called as work advances (for dashboards).
    Returns the run ids.
    """
    from dema_lab.data import DEFAULT_DATASET, ensure_embedded
    from dema_lab.store.zarr_store import check_store

    check_store(store, writable=True)  # a path that is not a (writable) store fails now, not after the build
    report = on_progress or (lambda message, fraction: None)
    report(f"building the default dataset {DEFAULT_DATASET}", 0.0)
    ensure_embedded(DEFAULT_DATASET, progress=progress)
    configs = demo_runs(store, sweep)
    total = sum(c.steps for c in configs)
    done = 0
    for cfg in configs:
        report(f"training {cfg.run_id} ({cfg.steps} steps)", done / total)
        start = time.perf_counter()

        def log(message, _done=done, _cfg=cfg):
            report(f"{_cfg.run_id}: {message}", _done / total)

        _, what = ensure_trained(cfg, progress=progress, log=log)
        done += cfg.steps
        report(f"{cfg.run_id} {what} in {time.perf_counter() - start:.0f} s", done / total)
    report("demo runs ready", 1.0)
    return [c.run_id for c in configs]
