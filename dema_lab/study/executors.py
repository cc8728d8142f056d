"""The executors of `dema-lab sweep`: local processes (run_local) and Ray (run_ray), both running
run_point for each grid point.

Ray (`--executor ray [--address ADDR]`):

Each grid point is one Ray task asking for `num_cpus` CPUs and `num_gpus` GPUs (fractional: 0.25
lets four small runs share a GPU; Ray sets the task's CUDA_VISIBLE_DEVICES). A task whose worker
process dies (killed, out of memory, node lost) is retried up to `max_retries` times, and the
retry resumes the run from the store: run ids are stable, so `ensure_trained` finds the run,
skips it when finished and resumes it from its last checkpoint otherwise (run_point, the
local executor's own function). The store must be one every node reaches: an s3:// (or other
fsspec) URL on a real cluster, or a shared filesystem.

Without --address, Ray joins the cluster named by RAY_ADDRESS or starts a local one; a Ray
already initialised in this process (a notebook, the tests) is used as it is.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed


def _task(cfg, ablations: bool, ablation_episodes: int, ablation_layers, busy_wait: float, explain=None) -> dict:
    """One grid point on a Ray worker: run_point, waiting out the lease of a writer that died on
    another node (a retried task can start before the dead writer's lease expires)."""
    from dema_lab.store.lock import RunBusyError

    deadline = time.monotonic() + busy_wait
    while True:
        try:
            return run_point(cfg, ablations, ablation_episodes, ablation_layers, explain)
        except RunBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(5.0)


def run_ray(sweep, configs, log=print) -> list[dict]:
    """Run `configs` (sweep.grid's, with their threads set) as Ray tasks; return what happened to
    each, logging a line per finished or failed run as the local executor does."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "--executor ray needs Ray; install the cluster extra: pip install -c constraints.txt 'dema-lab[cluster]'"
        ) from None
    from dema_lab.store.lock import LEASE_SECONDS

    if not ray.is_initialized():
        try:
            ray.init(address=sweep.address or None, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ValueError(
                f"cannot reach the Ray cluster at {sweep.address or os.environ.get('RAY_ADDRESS', 'a new local one')}: "
                f"{e}. Start its head with `ray start --head` and pass --address HOST:PORT"
            ) from None
    resources = ray.cluster_resources()
    log(
        f"ray cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; each run asks for "
        f"{sweep.num_cpus:g} CPU and {sweep.num_gpus:g} GPU, retried up to {sweep.max_retries} times"
    )
    if sweep.num_gpus > resources.get("GPU", 0):
        raise ValueError(
            f"each run asks for {sweep.num_gpus:g} GPU but the Ray cluster has "
            f"{resources.get('GPU', 0):g}; lower --num-gpus (0 runs on CPUs)"
        )
    from dema_lab.store.remote import forwarded_env

    env = forwarded_env()  # the store's options and credentials, as the driver has them
    remote = ray.remote(_task).options(
        num_cpus=sweep.num_cpus,
        num_gpus=sweep.num_gpus,
        max_retries=sweep.max_retries,
        retry_exceptions=False,
        name="dema_lab_sweep_run",
        **({"runtime_env": {"env_vars": env}} if env else {}),
    )
    pending = {
        remote.remote(
            cfg,
            sweep.ablations,
            sweep.ablation_episodes,
            sweep.ablation_layers,
            LEASE_SECONDS * 1.5,
            explain_options(sweep),
        ): cfg
        for cfg in configs
    }
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        cfg = pending.pop(done[0])
        try:
            results.append(ray.get(done[0]))
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the sweep
            cause = getattr(e, "cause", None) or e
            results.append(
                {
                    "run_id": cfg.run.run_id,
                    "what": f"failed: {type(cause).__name__}: "
                    f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}",
                    "seconds": 0.0,
                }
            )
        log(result_line(results[-1], len(results), len(configs)))
    return results


def explain_options(sweep) -> dict | None:
    """What run_point explains after training (evaluation.faithfulness.evaluate's episodes, steps
    and horizon), None when the sweep does not explain."""
    if not sweep.explain:
        return None
    return {"episodes": sweep.explain_episodes, "steps": sweep.explain_steps, "horizon": sweep.explain_horizon}


def _explain_missing(run, explain: dict) -> bool:
    """Whether the run's last checkpoint lacks a faithfulness group (or its causal horizon, when asked)."""
    from dema_lab.evaluation.faithfulness import faithfulness_table
    from dema_lab.store.schema import checkpoint_name

    last = run.checkpoints()[-1]
    if checkpoint_name(last) not in run.published("faithfulness"):
        return True
    return bool(explain.get("horizon")) and "horizon_cut" not in faithfulness_table(run, last)


def run_point(cfg, ablations: bool, ablation_episodes: int, ablation_layers=("all",), explain=None) -> dict:
    """One grid point, in a worker process: train (or resume, or skip), then the ablations, then
    (explain: evaluation.faithfulness.evaluate's options) the explanations' faithfulness of the
    last checkpoint, when not published yet."""
    import torch

    from dema_lab.evaluation.ablation import complete_ablations
    from dema_lab.training import ensure_trained

    torch.set_num_threads(max(1, cfg.run.threads or 1))
    start = time.perf_counter()
    run, what = ensure_trained(cfg, progress=False, log=lambda *_: None)
    if ablations:  # hidden attention (DeMa), the timestep embedding (when the model has one)
        _, kinds = complete_ablations(
            run,
            episodes=ablation_episodes,
            max_steps=cfg.evaluation.eval_max_steps,
            seed=cfg.optim.seed,
            layers=ablation_layers,
        )
        if kinds and what == "skipped":
            what = f"ablations added ({', '.join(kinds)})"
        if not cfg.model.has_attention:
            what += f"; no hidden-attention ablations (a {cfg.model.arch!r} model has no hidden attention)"
    if explain and run.checkpoints() and _explain_missing(run, explain):
        from dema_lab.evaluation.faithfulness import evaluate as explain_run

        try:
            explain_run(run, max_steps=cfg.evaluation.eval_max_steps, seed=cfg.optim.seed, **explain)
        except ValueError as e:  # e.g. no episode as long as K: the run stays without explanations
            what = f"{what}; not explained: {e}"
        else:
            if what == "skipped":
                what = "explanations added"
    return {"run_id": cfg.run.run_id, "what": what, "seconds": time.perf_counter() - start}


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_devices(workers: int, device: str = "auto") -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each local worker: with several GPUs visible (and device auto or
    cuda), worker i gets the i-th of them round robin, so workers spread over the GPUs instead of
    all landing on GPU 0; None (leave the environment alone) with one GPU or none, or for a device
    named explicitly (cpu, cuda:N). GPUs already restricted by CUDA_VISIBLE_DEVICES stay within it."""
    if device not in ("auto", "cuda"):
        return [None] * workers
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = (
        [d.strip() for d in listed.split(",") if d.strip()]
        if listed is not None
        else [str(i) for i in range(cuda_device_count())]
    )
    if len(visible) < 2:
        return [None] * workers
    return [visible[i % len(visible)] for i in range(workers)]


def _init_worker(devices) -> None:
    """A local worker's first act, before anything touches CUDA: take its GPU from the queue."""
    device = devices.get(timeout=60)  # one entry per worker, put before any starts
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device


def local_pool(workers: int, devices: list[str | None]) -> ProcessPoolExecutor:
    """The local executor: `workers` spawned processes, worker i with CUDA_VISIBLE_DEVICES=devices[i]
    (see worker_devices)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for d in devices:
        queue.put(d)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(queue,))


def result_line(r: dict, i: int, n: int) -> str:
    """The progress line of the i-th of n finished grid points."""
    return f"[{i}/{n}] {r['run_id']}: {r['what']} ({r['seconds']:.0f} s)"


def run_local(sweep, configs, log=print) -> list[dict]:
    """The local executor: `sweep.workers` processes (default: one per core), the cores shared
    out as torch threads, GPUs round robin (worker_devices); one failed run does not stop the rest."""
    workers = sweep.workers or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // workers)
    configs = [c.replace(threads=threads) for c in configs]
    log(
        f"sweep {sweep.name}: {len(configs)} runs, {workers} worker(s) x {threads} thread(s), store {sweep.base.run.store}"
    )
    results = []
    if workers == 1:
        for cfg in configs:
            results.append(
                run_point(cfg, sweep.ablations, sweep.ablation_episodes, sweep.ablation_layers, explain_options(sweep))
            )
            log(result_line(results[-1], len(results), len(configs)))
        return results
    devices = worker_devices(workers, sweep.base.run.device)
    if any(devices):
        log(f"GPUs, round robin over the workers: CUDA_VISIBLE_DEVICES={', '.join(dict.fromkeys(devices))}")
    with local_pool(workers, devices) as pool:
        futures = {
            pool.submit(
                run_point, cfg, sweep.ablations, sweep.ablation_episodes, sweep.ablation_layers, explain_options(sweep)
            ): cfg
            for cfg in configs
        }
        for fut in as_completed(futures):
            cfg = futures[fut]
            try:
                results.append(fut.result())
            except Exception as e:  # noqa: BLE001 - one failed run must not stop the sweep
                results.append({"run_id": cfg.run.run_id, "what": f"failed: {type(e).__name__}: {e}", "seconds": 0.0})
            log(result_line(results[-1], len(results), len(configs)))
    return results
