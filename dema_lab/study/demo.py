"""The demo job: the default dataset, a small DeMa that visibly learns on 2 CPU cores, and a
small study beside it, all logged into one store as the sweep "demo": DeMa at two more context
lengths K, a DT of the same size, and the paper's two hidden-attention ablations, so that the
study page (/study, `dema-lab report --sweep demo`) has findings to decide.

`make demo` runs it and then serves the dashboard; the dashboard's empty-store page starts it
with a button. Both call `run_demo`.
"""

from __future__ import annotations

import time

from dema_lab.analysis.runs import MAIN_RUN
from dema_lab.analysis.scoring import MIN_PAIRS
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


def run_demo(store: str = "store", sweep: bool = True, on_progress=None, progress: bool = True) -> list[str]:
    """Train the demo runs into `store` (skipping any already finished, resuming unfinished ones).

    on_progress(message: str, fraction: float) is called as work advances (for dashboards).
    Returns the run ids.
    """
    from dema_lab.data import DEFAULT_DATASET, ensure_embedded
    from dema_lab.evaluation.ablation import complete_ablations
    from dema_lab.store.zarr_store import check_store

    check_store(store, writable=True)  # a path that is not a (writable) store fails now, not after the build
    report = on_progress or (lambda message, fraction: None)
    report(f"building the default dataset {DEFAULT_DATASET}", 0.0)
    ensure_embedded(DEFAULT_DATASET, progress=progress)
    configs = demo_runs(store, sweep)
    ablations = ablation_plan(configs)
    total = sum(c.optim.steps for c in configs)
    done = 0
    for cfg in configs:
        run_id, steps = cfg.run.run_id, cfg.optim.steps
        report(f"training {run_id} ({steps} steps)", done / total)
        start = time.perf_counter()

        def log(message, _done=done, _run_id=run_id):
            report(f"{_run_id}: {message}", _done / total)

        run, what = ensure_trained(cfg, progress=progress, log=log)
        if run_id in ablations:  # the ones already published are kept: a rerun evaluates none again
            report(f"{run_id}: ablations {', '.join(ablations[run_id])}", done / total)
            _, added = complete_ablations(
                run,
                episodes=cfg.evaluation.eval_episodes,
                max_steps=cfg.evaluation.eval_max_steps,
                seed=cfg.optim.seed,
                methods=ablations[run_id],
            )
            what += f", ablated ({', '.join(added)})" if added else ""
        done += steps
        report(f"{run_id} {what} in {time.perf_counter() - start:.0f} s", done / total)
    report("demo runs ready", 1.0)
    return [c.run.run_id for c in configs]
