"""Scale-out: one GPU per local sweep worker (CUDA_VISIBLE_DEVICES, with the device count mocked),
and `dema-lab sweep --executor ray` on a real local Ray cluster, with a worker killed mid-run."""

import os
import re
import threading
import time
from pathlib import Path

import pytest
from helpers import FAST_EVAL


# ---------------------------------------------------------------------------- devices
def test_worker_devices_round_robin(monkeypatch):
    from dema_lab.study import executors

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(executors, "cuda_device_count", lambda: 3)
    assert executors.worker_devices(5) == ["0", "1", "2", "0", "1"]
    assert executors.worker_devices(2, "cuda") == ["0", "1"]
    assert executors.worker_devices(4, "cpu") == [None] * 4  # a device named explicitly: untouched
    assert executors.worker_devices(2, "cuda:1") == [None, None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # stay within what the user allowed
    assert executors.worker_devices(3) == ["4", "6", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert executors.worker_devices(3) == [None] * 3
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(executors, "cuda_device_count", lambda: 1)  # one GPU (or none): nothing to spread
    assert executors.worker_devices(3) == [None] * 3


def _probe(folder: str, n: int):
    """Check in, wait until n workers are in at once (so each runs on its own process), report."""
    Path(folder, str(os.getpid())).touch()
    deadline = time.time() + 120
    while len(os.listdir(folder)) < n and time.time() < deadline:
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_local_pool_gives_each_worker_its_gpu(monkeypatch, tmp_path):
    from dema_lab.study import executors

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(executors, "cuda_device_count", lambda: 3)
    devices = executors.worker_devices(3)
    with executors.local_pool(3, devices) as pool:
        seen = [f.result(timeout=180) for f in [pool.submit(_probe, str(tmp_path), 3) for _ in range(3)]]
    assert len({pid for pid, _ in seen}) == 3
    assert sorted(env for _, env in seen) == ["0", "1", "2"]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the parent's environment is untouched


# ---------------------------------------------------------------------------- Ray
def test_sweep_command_passes_the_ray_settings(monkeypatch, capsys):
    import fsspec.config

    from dema_lab.cli.main import main
    from dema_lab.study import sweep

    monkeypatch.setattr(fsspec.config, "conf", {})
    monkeypatch.delenv("FSSPEC_S3", raising=False)
    seen = {}

    def run_sweep(cfg):  # what the sweep (and its workers, through the env) sees
        seen.update(cfg=cfg, conf=dict(fsspec.config.conf.get("s3", {})), env=os.environ.get("FSSPEC_S3"))
        return []

    monkeypatch.setattr(sweep, "run_sweep", run_sweep)
    assert (
        main(
            [
                "sweep",
                "--executor",
                "ray",
                "--address",
                "10.0.0.1:6379",
                "--num-cpus",
                "2",
                "--num-gpus",
                "0.25",
                "--max-retries",
                "5",
                "--store",
                "s3://bucket/study",
                "--K",
                "5",
                "--set",
                "steps=7",
                "--storage-option",
                "endpoint_url=http://127.0.0.1:9",
                "--storage-option",
                "anon=false",
            ]
        )
        == 0
    )
    cfg = seen["cfg"]
    assert (cfg.executor, cfg.address, cfg.num_cpus, cfg.num_gpus, cfg.max_retries) == (
        "ray",
        "10.0.0.1:6379",
        2.0,
        0.25,
        5,
    )
    assert cfg.base.run.store == "s3://bucket/study" and cfg.base.optim.steps == 7
    assert seen["conf"] == {"endpoint_url": "http://127.0.0.1:9", "anon": False}
    assert seen["env"] == '{"endpoint_url": "http://127.0.0.1:9", "anon": false}'
    # only for the command: a later command in this process does not inherit them
    assert "s3" not in fsspec.config.conf and "FSSPEC_S3" not in os.environ
    with pytest.raises(ValueError, match="num_gpus"):
        sweep.SweepConfig(num_gpus=-1)
    with pytest.raises(ValueError, match="executor 'slurm'"):
        sweep.SweepConfig(executor="slurm")


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 CPUs, no dashboard, 127.0.0.1), stopped afterwards."""
    ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray nices its workers to 15: beside the suite's other workers they starved (330 s against
    # 107 s under the same load); the raylet reads this when it starts its workers
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=80 * 1024 * 1024,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def tiny_sweep(tiny_run, name, dataset, store, steps=60, **kw):
    from dema_lab.study.sweep import SweepConfig
    from dema_lab.training import TrainConfig

    # what this module checks is where runs go and that they finish and resume; the decay
    # statistics stay, for a report with a row to compare
    fast = {**FAST_EVAL, "decay_windows": tiny_run["decay_windows"]}
    base = TrainConfig.from_flat(
        dataset=str(dataset), store=str(store), steps=steps, **{**tiny_run, "checkpoint_every": 15, **fast}
    )
    return SweepConfig(
        name=name,
        datasets=[str(dataset)],
        K=[3],
        archs=["dema"],
        seeds=[0, 1],
        eval_modes=["transformer"],
        ablations=False,
        explain=False,
        base=base,
        **kw,
    )


def kill_one_writer_mid_run(store_path, run_ids, killed: dict, stop: threading.Event):
    """Wait until a run has a checkpoint (with its resume state) and is still training, then SIGKILL its writer (the Ray
    worker process executing it), once; record {run_id: pid} in `killed`."""
    import signal

    from dema_lab.store.errors import EmptyStoreError, StoreError
    from dema_lab.store.zarr_store import RunStore

    while not stop.is_set():
        try:
            store = RunStore(store_path, mode="r")
            for run_id in run_ids:
                if run_id not in store.run_ids():
                    continue
                run = store.run(run_id)
                if run.attrs.get("status") != "running" or not run.published("resume"):
                    continue
                writer = run.writer()
                if writer and writer.get("pid") and writer["pid"] != os.getpid():
                    os.kill(int(writer["pid"]), signal.SIGKILL)
                    killed[run_id] = int(writer["pid"])
                    return
        except (EmptyStoreError, StoreError, KeyError, OSError):
            pass
        time.sleep(0.2)


def run_with_a_kill(sweep_cfg):
    from dema_lab.study.sweep import grid, run_sweep

    killed, stop, lines = {}, threading.Event(), []
    watcher = threading.Thread(
        target=kill_one_writer_mid_run,
        args=(sweep_cfg.base.run.store, [c.run.run_id for c in grid(sweep_cfg)], killed, stop),
    )
    watcher.start()
    try:
        results = run_sweep(sweep_cfg, log=lines.append)
    finally:
        stop.set()
        watcher.join()
    return results, killed, lines


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs", reason="the cluster extra (s3fs) is not installed")
    pytest.importorskip("moto", reason="the cluster extra (moto[server]) is not installed")
    from helpers.moto_s3 import s3_server

    with s3_server("study") as endpoint:
        yield endpoint


def test_ray_sweep_into_s3_survives_a_killed_worker(ray_cluster, s3, hopper_small, tiny_run, tmp_path, request):
    """A 2-run tiny sweep on a real local Ray cluster into a moto S3 store, one
    worker killed mid-run; both runs complete, the report from S3 is the report of the same sweep
    run locally, and the dashboard serves the S3 store in Chromium."""
    from dema_lab.store.zarr_store import RunStore
    from dema_lab.study.render import to_markdown
    from dema_lab.study.report import build_report
    from dema_lab.study.sweep import run_sweep

    url = "s3://study/paper"
    sweep_cfg = tiny_sweep(tiny_run, "study", hopper_small, url, executor="ray", num_cpus=1, max_retries=2)
    results, killed, lines = run_with_a_kill(sweep_cfg)
    assert len(killed) == 1, f"no worker was caught mid-run: {lines}"
    ((killed_run, pid),) = killed.items()
    by_id = {r["run_id"]: r for r in results}
    assert sorted(by_id) == [
        "study-hopper-medium-small-dema-B3LD-ts0-K3-s0",
        "study-hopper-medium-small-dema-B3LD-ts0-K3-s1",
    ]
    assert by_id[killed_run]["what"] == "resumed", lines  # the retry resumed it from the store
    assert any(line.startswith("[2/2]") for line in lines) and any("ray cluster:" in line for line in lines)
    store = RunStore(url)
    for run_id in by_id:
        run = store.run(run_id)
        assert run.attrs["status"] == "finished" and run.attrs["steps_done"] == 60
        assert list(run.train_metrics().step.values) == list(range(1, 61))
        assert run.evals().sizes["checkpoint"] == 1
    assert sorted(r["what"] for r in run_sweep(sweep_cfg, log=lambda *_: None)) == ["skipped", "skipped"]

    # the same sweep, run locally (one thread per run, as each Ray task has): the same report
    local = tiny_sweep(tiny_run, "study", hopper_small, tmp_path / "local", workers=2)
    assert all(r["what"] == "trained" for r in run_sweep(local, log=lambda *_: None))
    remote_md = to_markdown(build_report(url, "study", latency=False)).replace(url, "STORE")
    local_md = to_markdown(build_report(str(tmp_path / "local"), "study", latency=False)).replace(
        str(tmp_path / "local"), "STORE"
    )
    wall = re.compile(r"training time: [0-9.]+ h")  # wall-clock, the one thing that differs
    assert wall.sub("training time", remote_md) == wall.sub("training time", local_md)
    assert "# Sweep report (2 runs)" in remote_md and "| hopper-medium | 3 |" in remote_md

    # the dashboard on the S3 store, in Chromium
    if not Path("/usr/bin/chromium").exists() and os.environ.get("DEMA_LAB_REQUIRE_BROWSER") != "1":
        pytest.skip("no Chromium here (make apt installs it)")
    import playwright.sync_api as pw_api
    from helpers.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, Page, Server

    ARTIFACTS.mkdir(exist_ok=True)
    server = Server(url, ARTIFACTS / "cluster-s3-server.log")
    try:
        with pw_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = Page(browser, server.url("compare"))
                page.page.get_by_text("study-hopper-medium-small-dema-B3LD-ts0-K3-s1").first.wait_for(timeout=90_000)
                page.page.wait_for_timeout(1000)
                page.shot("cluster-s3-compare")
                page.check_clean()
            finally:
                browser.close()
        assert "Traceback" not in server.log_text(), server.log_text()
    finally:
        server.stop()
