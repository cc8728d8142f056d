"""The Ray executor of `dema-lab sweep --executor ray [--address ADDR]`.

Each grid point is one Ray task asking for `num_cpus` CPUs and `num_gpus` GPUs (fractional: 0.25
lets four small runs share a GPU; Ray sets the task's CUDA_VISIBLE_DEVICES). A task whose worker
process dies (killed, out of memory, node lost) is retried up to `max_retries` times, and the
retry resumes the run from the store: run ids are stable, so `ensure_trained` finds the run,
skips it when finished and resumes it from its last checkpoint otherwise (sweep._work, the
local executor's own function). The store must be one every node reaches: an s3:// (or other
fsspec) URL on a real cluster, or a shared filesystem.

Without --address, Ray joins the cluster named by RAY_ADDRESS or starts a local one; a Ray
already initialised in this process (a notebook, the tests) is used as it is.
"""

from __future__ import annotations

import os
import time


def _task(cfg, ablations: bool, ablation_episodes: int, ablation_layers, busy_wait: float) -> dict:
    """One grid point on a Ray worker: sweep._work, waiting out the lease of a writer that died on
    another node (a retried task can start before the dead writer's lease expires)."""
    from .lock import RunBusyError
    from .sweep import _work

    deadline = time.monotonic() + busy_wait
    while True:
        try:
            return _work(cfg, ablations, ablation_episodes, ablation_layers)
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
    from .lock import LEASE_SECONDS
    from .sweep import _line

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
    from .storage import forwarded_env

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
        remote.remote(cfg, sweep.ablations, sweep.ablation_episodes, sweep.ablation_layers, LEASE_SECONDS * 1.5): cfg
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
                    "run_id": cfg.run_id,
                    "what": f"failed: {type(cause).__name__}: "
                    f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}",
                    "seconds": 0.0,
                }
            )
        log(_line(results[-1], len(results), len(configs)))
    return results
