"""The store survives what interrupts or starves it: a delete killed at any point, a missing runs
index, a full disk; and a run id with a trailing newline is refused."""

import errno
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_EVAL
import xarray as xr

from dema_lab.cli.main import main
from dema_lab.store.errors import StoreError
from dema_lab.store.zarr_store import RunStore


def _run_with_groups(store: RunStore, run_id: str):
    """A finished run with a few published groups of each storage kind (datasets and a blob)."""
    run = store.create_run(run_id, {"arch": "dema", "dataset": "hopper-medium", "K": 5}, {}, hold_lock=True)
    for i in range(3):
        steps = np.arange(10 * i + 1, 10 * i + 11)
        run.write("train", f"steps_{i}", xr.Dataset({"loss": ("step", np.linspace(1, 0, 10))}, coords={"step": steps}))
    run.write_bytes("checkpoint", "step_00000030", os.urandom(4096), attrs={"step": 30})
    run.set_attrs(status="finished", steps_done=30)
    run.release()
    return run


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- delete, killed part-way
@pytest.mark.parametrize("cut", ["first", "half", "all_but_one"])
def test_a_delete_killed_part_way_is_listed_and_finished_by_delete(tmp_path, capsys, monkeypatch, cut):
    """A delete killed while it removes files left data that `runs` did not show and that `delete`
    called "not in store". Now the run stays listed, marked "deleting", until its last file goes,
    and a second `delete` finishes it."""
    path = tmp_path / "s"
    store = RunStore(path, mode="a")
    _run_with_groups(store, "keep")
    _run_with_groups(store, "doomed")
    doomed = path / "runs" / "doomed"
    n = len(_files(doomed))
    allowed = {"first": 0, "half": n // 2, "all_but_one": n - 1}[cut]
    removed = []
    real_unlink = os.unlink

    class Killed(Exception):
        pass

    def dying_unlink(p, *args, **kwargs):
        """os.unlink that 'kills' the delete (raises) once `allowed` files of the run are gone
        (shutil.rmtree unlinks names relative to a directory's descriptor)."""
        if "doomed" in str(p) or kwargs.get("dir_fd") is not None:
            if len(removed) >= allowed:
                raise Killed
            removed.append(str(p))
        return real_unlink(p, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", dying_unlink)
    with pytest.raises(Killed):
        RunStore(path, mode="a").delete_run("doomed")
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert len(removed) == allowed and doomed.exists()

    # listed, marked deleting, with its readers seeing nothing published
    reader = RunStore(path, mode="r")
    assert set(reader.run_ids()) == {"keep", "doomed"}
    assert reader.run("doomed").attrs["status"] == "deleting"
    assert reader.run("doomed").published("train") == [] and reader.run("doomed").checkpoints() == []
    rc, out, _ = _cli(capsys, "runs", "--store", path)
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("doomed "))
    assert "deleting" in row.split()
    assert f"dema-lab delete doomed --store {path}" in out

    # a second delete finishes it; the other run is untouched
    rc, out, _ = _cli(capsys, "delete", "doomed", "--store", path, "--yes")
    assert rc == 0 and "partly deleted" in out and "deleted" in out
    assert not doomed.exists()
    reader = RunStore(path, mode="r")
    assert reader.run_ids() == ["keep"] and reader.unreadable == {}
    assert len(reader.run("keep").published("train")) == 3 and reader.run("keep").checkpoints() == [30]


def test_a_run_directory_without_its_zarr_json_is_listed_and_deletable(tmp_path, capsys):
    """What an older release's killed delete left (files, but no zarr.json): listed as unreadable
    with the command that removes it, and `delete` removes it."""
    path = tmp_path / "s"
    store = RunStore(path, mode="a")
    _run_with_groups(store, "keep")
    _run_with_groups(store, "leftover")
    (path / "runs" / "leftover" / "zarr.json").unlink()
    rc, out, _ = _cli(capsys, "runs", "--store", path)
    assert rc == 0
    line = next(line for line in out.splitlines() if "leftover" in line)
    assert "unreadable" in line and "zarr.json is missing" in line and "dema-lab delete leftover" in line
    rc, out, _ = _cli(capsys, "delete", "leftover", "--store", path, "--yes")
    assert rc == 0 and not (path / "runs" / "leftover").exists()
    assert RunStore(path, mode="r").run_ids() == ["keep"]


# ---------------------------------------------------------------- the runs index missing
def test_a_missing_runs_index_is_rebuilt_from_the_runs_on_disk(tmp_path, capsys):
    """With runs/zarr.json gone, `runs` said "has no runs yet" while the runs sat on disk."""
    path = tmp_path / "s"
    store = RunStore(path, mode="a")
    for run_id in ("a", "b", "c"):
        _run_with_groups(store, run_id)
    index = path / "runs" / "zarr.json"
    index.unlink()

    reader = RunStore(path, mode="r")
    assert reader.run_ids() == ["a", "b", "c"]
    assert reader.run("b").checkpoints() == [30]
    assert not index.exists()  # a reader writes nothing
    rc, out, _ = _cli(capsys, "runs", "--store", path)
    assert rc == 0 and "no runs yet" not in out
    assert {line.split()[0] for line in out.splitlines()[1:4]} == {"a", "b", "c"}

    writer = RunStore(path, mode="a")
    assert writer.run_ids() == ["a", "b", "c"]
    assert index.exists()  # written again by a writable store
    assert RunStore(path, mode="r").run_ids() == ["a", "b", "c"]
    assert len(RunStore(path, mode="r").run("c").published("train")) == 3


# ---------------------------------------------------------------- a full disk
def _full_disk(monkeypatch, when):
    """Make zarr's file writes fail with ENOSPC (as a write to a full disk does: no file name)
    while `when(path)` says so."""
    import zarr.storage._local as local

    real_put = local._put

    def put(path, *args, **kwargs):
        if when(str(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_put(path, *args, **kwargs)

    monkeypatch.setattr(local, "_put", put)


def _disk_filled_by_a_checkpoint(monkeypatch):
    """A disk that a checkpoint's write fills: the write of a checkpoint file lands (taking the last
    free space) and fails with ENOSPC; from then on every write fails, until the partial
    checkpoint is removed again."""
    import zarr.storage._local as local

    real_put = local._put
    partial: list[Path] = []
    lock = threading.Lock()  # zarr writes a group's files from several threads

    def put(path, *args, **kwargs):
        path = Path(path)
        parts = path.parts
        in_slot = "checkpoint" in parts and parts.index("checkpoint") + 2 < len(parts)
        with lock:
            if in_slot and not partial:
                real_put(path, *args, **kwargs)
                partial.append(Path(*parts[: parts.index("checkpoint") + 2]))  # its slot
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            full = bool(partial) and partial[0].exists()
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_put(path, *args, **kwargs)

    monkeypatch.setattr(local, "_put", put)
    return partial


def test_a_full_disk_names_the_store_and_what_to_do(tmp_path, monkeypatch):
    """ENOSPC used to surface as "OSError: [Errno 28] No space left on device" with no path and no
    advice, and left the partial group on the full disk, so the run's status could not be written."""
    path = tmp_path / "s"
    store = RunStore(path, mode="a")
    run = _run_with_groups(store, "r1").claim()
    partial = _disk_filled_by_a_checkpoint(monkeypatch)
    with pytest.raises(StoreError) as caught:
        run.write_bytes("checkpoint", "step_00000040", os.urandom(4096), attrs={"step": 40})
    msg = str(caught.value)
    assert str(path) in msg and "free space or choose another --store" in msg and "checkpoint" in msg
    assert partial == [path / "runs" / "r1" / "checkpoint" / "step_00000040"]
    assert not partial[0].exists()  # the partial write is removed, its space given back
    assert run.checkpoints() == [30]  # nothing new published
    # so the run's status can still be written (a trainer marks it interrupted)
    run.set_attrs(status="interrupted")
    assert RunStore(path, mode="r").run("r1").attrs["status"] == "interrupted"
    run.release()

    _full_disk(monkeypatch, lambda p: True)  # a disk filled by another process: every write fails
    for write in (
        lambda: run.set_attrs(status="finished"),
        lambda: run.write("eval", "x", xr.Dataset({"v": ("i", np.arange(3))})),
        lambda: store.create_run("r2", {}, {}),
    ):
        with pytest.raises(StoreError, match=f"store {path} .*free space or choose another --store"):
            write()


def test_the_cli_names_a_full_disk(capsys):
    """An ENOSPC that reaches the CLI's handler (an export, a video) is one line with advice."""
    from dema_lab.cli.flags import error_line

    line = error_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert "no space left" in line.lower() and "free space or choose another --store" in line
    line = error_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out.mp4"))
    assert line.startswith("/data/out.mp4: ") and "free space" in line


@pytest.mark.slow
def test_training_on_a_full_disk_stops_with_advice_and_marks_the_run_interrupted(tiny_config, monkeypatch):
    """A trainer whose checkpoint fills the disk stops with the store's path and what to do, and
    the run is marked interrupted (it was left "running")."""
    from dema_lab.training import train

    store = tiny_config.run.store
    partial = _disk_filled_by_a_checkpoint(monkeypatch)
    with pytest.raises(StoreError) as caught:
        train(tiny_config.replace(**FAST_EVAL), progress=False, log=lambda *_: None)
    assert store in str(caught.value) and "free space or choose another --store" in str(caught.value)
    assert partial and not partial[0].exists()
    run = RunStore(store, mode="r").run(tiny_config.run.run_id)
    assert run.attrs["status"] == "interrupted" and run.writer() is None and run.checkpoints() == []


# ---------------------------------------------------------------- run ids
@pytest.mark.parametrize("bad", ["abc\n", "abc\r\n", "a b", "", "x" * 129])
def test_a_run_id_with_a_trailing_newline_or_other_stray_characters_is_refused(tmp_path, bad):
    store = RunStore(tmp_path / "s", mode="a")
    with pytest.raises(StoreError, match="must be letters, digits"):
        store.create_run(bad, {}, {})
    assert store.run_ids() == []
    assert [p.name for p in (tmp_path / "s" / "runs").iterdir()] == ["zarr.json"]  # no run directory


# ---------------------------------------------------------------- the same on an object store
def test_on_s3_a_killed_delete_is_finished_and_a_missing_index_rebuilt():
    """S3 (moto on 127.0.0.1): the delete removes the run's zarr.json last, and the listing is
    rebuilt from the prefixes under runs/ when runs/zarr.json is missing."""
    pytest.importorskip("s3fs", reason="the cluster extra (s3fs) is not installed")
    pytest.importorskip("moto", reason="the cluster extra (moto[server]) is not installed")
    import s3fs
    from helpers.moto_s3 import s3_server

    with s3_server("dema"):
        url = "s3://dema/recovery"
        store = RunStore(url, mode="a")
        for run_id in ("keep", "doomed"):
            _run_with_groups(store, run_id)
        fs = s3fs.S3FileSystem()
        fs.rm("dema/recovery/runs/zarr.json")
        fs.invalidate_cache()
        assert RunStore(url, mode="r").run_ids() == ["keep", "doomed"]
        assert not fs.exists("dema/recovery/runs/zarr.json")
        assert RunStore(url, mode="a").run_ids() == ["keep", "doomed"]
        assert fs.exists("dema/recovery/runs/zarr.json")

        import fsspec

        store_fs = fsspec.core.url_to_fs(url)[0]  # the filesystem instance the store uses (cached)
        real_rm = store_fs.rm

        def rm_then_die(path, *args, **kwargs):
            real_rm(path, *args, **kwargs)
            raise RuntimeError("killed")  # after the run's other files went

        store_fs.rm = rm_then_die
        try:
            with pytest.raises(RuntimeError, match="killed"):
                RunStore(url, mode="a").delete_run("doomed")
        finally:
            store_fs.rm = real_rm
        fs.invalidate_cache()
        reader = RunStore(url, mode="r")
        assert reader.run_ids() == ["keep", "doomed"] and reader.run("doomed").attrs["status"] == "deleting"
        RunStore(url, mode="a").delete_run("doomed")
        fs.invalidate_cache()
        assert RunStore(url, mode="r").run_ids() == ["keep"] and not fs.exists("dema/recovery/runs/doomed")
        assert RunStore(url, mode="r").run("keep").checkpoints() == [30]
