"""Stores at fsspec URLs: created on an empty S3 prefix (a real S3 protocol server, moto, on
127.0.0.1, through s3fs), storage options from --storage-option or the environment, and the
publish-after-write protocol on S3: a reader polling while a trainer writes never sees a partial
group."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="the cluster extra (s3fs) is not installed")
pytest.importorskip("moto", reason="the cluster extra (moto[server]) is not installed")

from helpers.moto_s3 import s3_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3():
    with s3_server("dema") as endpoint:
        yield endpoint


def test_store_is_created_on_an_empty_prefix(s3, capsys):
    import s3fs

    from dema_lab.cli.main import main
    from dema_lab.store.errors import EmptyStoreError, StoreError
    from dema_lab.store.zarr_store import RunStore

    with pytest.raises(EmptyStoreError, match="no dema-lab store at s3://dema/fresh"):
        RunStore("s3://dema/fresh", mode="r")
    assert main(["runs", "--store", "s3://dema/fresh"]) == 2  # reading never creates anything
    assert not s3fs.S3FileSystem().exists("dema/fresh/zarr.json")
    store = RunStore("s3://dema/fresh", mode="a")
    run = store.create_run("r1", {"K": 3}, {"env": "hopper"})
    assert RunStore("s3://dema/fresh").run_ids() == ["r1"] and run.attrs["status"] == "running"
    capsys.readouterr()
    assert main(["runs", "--store", "s3://dema/fresh"]) == 0
    assert "r1" in capsys.readouterr().out
    # a bucket that does not exist: one line that says what to check, no traceback
    with pytest.raises(StoreError, match="check that the bucket exists"):
        RunStore("s3://no-such-bucket/x", mode="a")
    assert main(["runs", "--store", "s3://dema/not-a-store-file"]) == 2


def test_storage_options_from_the_flag(s3, monkeypatch, capsys):
    import fsspec.config
    import s3fs

    from dema_lab.cli.main import main
    from dema_lab.store.zarr_store import RunStore

    RunStore("s3://dema/opts", mode="a").create_run("r2", {}, {})
    monkeypatch.setattr(fsspec.config, "conf", {})
    monkeypatch.delenv("FSSPEC_S3", raising=False)
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    s3fs.S3FileSystem.clear_instance_cache()
    capsys.readouterr()
    assert (
        main(
            [
                "runs",
                "--store",
                "s3://dema/opts",
                "--storage-option",
                f"endpoint_url={s3}",
                "--storage-option",
                "key=testing",
                "--storage-option",
                "secret=testing",
            ]
        )
        == 0
    )
    assert "r2" in capsys.readouterr().out  # the options reached the store (no AWS_* env left)
    assert "s3" not in fsspec.config.conf and "FSSPEC_S3" not in os.environ  # for that command only
    assert main(["runs", "--store", "s3://dema/opts", "--storage-option", "novalue"]) == 2
    assert "takes KEY=VALUE" in capsys.readouterr().err
    s3fs.S3FileSystem.clear_instance_cache()


def test_memory_url_store_round_trip():
    import xarray as xr

    from dema_lab.store.zarr_store import RunStore

    run = RunStore("memory://dema-test-store", mode="a").create_run("m1", {}, {})
    ds = xr.Dataset({"loss": ("step", np.arange(5.0))}, coords={"step": np.arange(1, 6)})
    run.write("train", "steps_1_5", ds)
    run.write("train", "steps_1_5", ds * 2)  # a rewrite goes to the next slot
    back = RunStore("memory://dema-test-store").run("m1").train_metrics()
    np.testing.assert_array_equal(back["loss"].values, np.arange(5.0) * 2)


def _check_published(run, seen: set, again: bool = True) -> None:
    """Open every published group of `run` whole; a partial one raises (or fails an assert). Without
    `again`, a group already in `seen` is opened again only if the writer rewrites it (the train log,
    republished longer at every log step): a poll then reads what changed, not the whole run."""
    from dema_lab.models.checkpoint import load_checkpoint

    for kind, needed in (
        ("train", {"loss", "lr", "grad_norm"}),
        ("eval", {"normalized_score", "return"}),
        ("decay", {"half_life", "mass"}),
        ("rollout", {"frames", "attention", "reward"}),
    ):
        for name in run.published(kind):
            if not again and kind != "train" and (kind, name) in seen:
                continue
            ds = run.open(kind, name).load()
            assert needed <= set(ds.data_vars), f"{kind}/{name} is partial: {sorted(ds.data_vars)}"
            assert all(v.size for v in ds.data_vars.values()), f"{kind}/{name} has an empty variable"
            seen.add((kind, name))
    for name in run.published("checkpoint"):
        if not again and ("checkpoint", name) in seen:
            continue
        load_checkpoint(run.read_bytes("checkpoint", name))
        seen.add(("checkpoint", name))


def test_publish_after_write_holds_on_s3(s3, hopper_small, tiny_run):
    """A trainer in another process writes into S3; this process polls the store all along."""
    from dema_lab.store.errors import EmptyStoreError
    from dema_lab.store.zarr_store import RunStore

    url = "s3://dema/polled"
    args = [
        sys.executable,
        "-m",
        "dema_lab.cli.main",
        "train",
        "--dataset",
        str(hopper_small),
        "--store",
        url,
        "--steps",
        "20",
        "--eval_every",
        "10",
        "--run_id",
        "polled",
        "--quiet",
        # one mode and one target: two evaluations of one recorded episode each (moto is slow to write)
        "--eval_modes",
        "transformer",
        "--eval_targets",
        "3600",
    ]
    for key, value in {**tiny_run, "log_every": 4, "checkpoint_every": 5}.items():
        args += [f"--{key}", str(value)]
    writer = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    seen, polls, states = set(), 0, set()
    try:
        while writer.poll() is None:
            try:
                store = RunStore(url, mode="r")
            except EmptyStoreError:
                time.sleep(0.1)
                continue
            for run_id in store.run_ids():
                run = store.run(run_id)
                _check_published(run, seen, again=False)
                states.add(len(seen))
            polls += 1
            time.sleep(1.0)  # a reader polls now and then: a tight loop would starve the writer and moto
    finally:
        out = writer.communicate(timeout=300)[0]
    assert writer.returncode == 0, out
    run = RunStore(url).run("polled")
    _check_published(run, seen)
    assert run.attrs["status"] == "finished"
    assert {("eval", "step_00000010"), ("eval", "step_00000020"), ("checkpoint", "step_00000020")} <= seen
    assert sum(k == "rollout" for k, _ in seen) == 2
    assert polls > 5 and len(states) > 3, (polls, states)  # the reader did see the run grow meanwhile
