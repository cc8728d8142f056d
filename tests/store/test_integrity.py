"""Checkpoints validated before allocation, checksums and a resume history, one writer per run,
and the messages for a damaged store and a diverging loss."""

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from helpers import FAST_EVAL, wait_until

from dema_lab.cli.main import main as cli
from dema_lab.models import CheckpointError, ModelConfig, build_model, checkpoint_bytes, load_checkpoint
from dema_lab.store.errors import IntegrityError, StoreError
from dema_lab.store.lock import RunBusyError, RunLock
from dema_lab.store.zarr_store import RunStore
from dema_lab.training import train

QUIET = dict(progress=False, log=lambda *_: None)


def _fake_checkpoint(config: dict, tensors: dict) -> bytes:
    from safetensors.torch import save

    header = {
        "format": "dema-lab-checkpoint",
        "version": "1",
        "arch": config.get("arch", "dema"),
        "model_config": json.dumps(config),
        "meta": "{}",
    }
    return save(tensors, metadata=header)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- 2. validated before allocation
def test_a_header_claiming_a_huge_model_fails_fast_without_allocating(tmp_path):
    huge = dict(ModelConfig(state_dim=11, act_dim=3).to_dict(), d_model=32768, n_layer=48)
    data = _fake_checkpoint(huge, {"model.x": torch.zeros(4)})
    assert len(data) < 1000  # a 580-byte file can claim a huge tensor
    path = tmp_path / "huge.safetensors"
    path.write_bytes(data)
    before, start = _peak_rss_mb(), time.perf_counter()
    for source in (path, data):
        with pytest.raises(
            CheckpointError, match=r"d_model 32768 is above the largest dema-lab builds \(d_model at most \d+\)"
        ):
            load_checkpoint(source)
    assert time.perf_counter() - start < 5
    assert _peak_rss_mb() - before < 100  # the unchecked load reached for 17 GB


def test_a_header_within_bounds_must_match_the_declared_tensors(tmp_path):
    cfg = ModelConfig(state_dim=11, act_dim=3, K=3, d_model=16, n_layer=1, d_state=4)
    good = checkpoint_bytes(build_model(cfg))
    assert load_checkpoint(good).config == cfg
    # a config within bounds that describes another (large) model than the tensors the file holds
    big = dict(cfg.to_dict(), d_model=4096, n_layer=64)
    before = _peak_rss_mb()
    from safetensors.torch import load

    with pytest.raises(
        CheckpointError, match="do not match the 'dema' model its header describes.*shape mismatches: .* vs config"
    ):
        load_checkpoint(_fake_checkpoint(big, load(good)))
    assert _peak_rss_mb() - before < 100  # a 4096 x 64 model is ~3 GB of float32
    # weights missing, and a weight too many
    tensors = load(good)
    first = sorted(tensors)[0]
    with pytest.raises(CheckpointError, match=f"1 weights missing \\(e.g. {first[6:]}\\)"):
        load_checkpoint(_fake_checkpoint(cfg.to_dict(), {k: v for k, v in tensors.items() if k != first}))
    with pytest.raises(CheckpointError, match="1 unexpected \\(e.g. extra_weight\\)"):
        load_checkpoint(_fake_checkpoint(cfg.to_dict(), {**tensors, "model.extra_weight": torch.zeros(2)}))


def test_a_tensor_table_that_does_not_fit_the_file_is_refused():
    cfg = ModelConfig(state_dim=11, act_dim=3, K=3, d_model=16, n_layer=1, d_state=4)
    data = checkpoint_bytes(build_model(cfg))
    n = int.from_bytes(data[:8], "little")
    table = json.loads(data[8 : 8 + n])
    key = next(k for k in table if k != "__metadata__")

    def with_table(t):
        text = json.dumps(t).encode()
        return len(text).to_bytes(8, "little") + text + data[8 + n :]

    lying = json.loads(json.dumps(table))
    lying[key]["shape"] = [100_000, 100_000]  # 40 GB claimed for a few bytes
    with pytest.raises(CheckpointError, match=f"{key}: shape \\[100000, 100000\\] of F32 needs 40000000000 bytes"):
        load_checkpoint(with_table(lying))
    outside = json.loads(json.dumps(table))
    outside[key]["data_offsets"] = [0, 10**12]
    with pytest.raises(CheckpointError, match="lies outside the .* data bytes"):
        load_checkpoint(with_table(outside))
    # a truncated file: its last tensors' ranges run past the end
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(data[: len(data) - 100])


# ---------------------------------------------------------------- 3. checksums and a history
def _chunk_of(run, kind, name) -> Path:
    """The chunk file on disk that holds a published blob (one chunk: blobs are < 16 MB here)."""
    group = Path(run.store.path) / run.location(kind, name)
    chunks = [p for p in (group / "c").rglob("*") if p.is_file()]
    assert len(chunks) == 1, chunks
    return chunks[0]


def test_a_damaged_stored_checkpoint_is_refused_by_name_and_an_earlier_state_resumes(tiny_config, capsys):
    cfg = tiny_config.replace(steps=40, **FAST_EVAL)  # checkpoints 10..40, states 20..40
    run = train(cfg, **QUIET)
    assert run.checkpoints() == [10, 20, 30, 40]
    assert run.published("resume") == ["step_00000020", "step_00000030", "step_00000040"]  # keep_resume_states 3
    original = {k: v.clone() for k, v in load_checkpoint(run.checkpoint_bytes(40)).model.state_dict().items()}
    assert len(run.blob_attrs("checkpoint", "step_00000040")["sha256"]) == 64

    # 64 bytes flipped in the middle of the stored chunk of checkpoint 40
    chunk = _chunk_of(run, "checkpoint", "step_00000040")
    raw = bytearray(chunk.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(b ^ 0xFF for b in raw[mid : mid + 64])
    chunk.write_bytes(bytes(raw))
    with pytest.raises(
        IntegrityError,
        match=r"run tiny: the stored checkpoint of step 40 \(step_00000040\) is "
        r"damaged .*use another checkpoint \(steps 10, 20, 30\)",
    ):
        run.checkpoint_bytes(40)
    load_checkpoint(run.checkpoint_bytes(30))  # the others still load
    # the resume refuses it, naming it and the states it can go back to; no traceback, exit 2
    assert cli(["train", "--quiet", "--store", cfg.run.store, "--resume", "tiny", "--steps", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "checkpoint of step 40 (step_00000040) is damaged" in err
    assert "dema-lab train --resume tiny --from-step S (S: 30, 20)" in err
    assert RunStore(cfg.run.store).run("tiny").writer() is None  # the refused resume let go of the run

    # --from-step 20: the older state, replayed to step 40, gives the undamaged run's weights again
    run = train(cfg, resume="tiny", from_step=20, **QUIET)
    again = load_checkpoint(run.checkpoint_bytes(40)).model.state_dict()
    for k in original:
        np.testing.assert_allclose(again[k].numpy(), original[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    assert run.published("resume") == ["step_00000020", "step_00000030", "step_00000040"]
    assert run.attrs["steps_done"] == 40 and run.attrs["status"] == "finished"
    # a step that has no saved state is refused with the ones there are
    with pytest.raises(StoreError, match="no saved state of step 10 .* those of steps 20, 30, 40"):
        train(cfg, resume="tiny", from_step=10, **QUIET)


def test_a_truncated_chunk_gives_one_line_naming_the_run_and_checkpoint(tiny_config, capsys):
    cfg = tiny_config.replace(steps=20, **FAST_EVAL)
    run = train(cfg, **QUIET)
    chunk = _chunk_of(run, "resume", "step_00000020")
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    with pytest.raises(
        IntegrityError,
        match=r"resume state of step 20 \(step_00000020\) is damaged \(it cannot be "
        r"read: .*; to continue training, resume from an earlier state.*S: 10",
    ):
        run.read_bytes("resume", "step_00000020")
    assert cli(["train", "--quiet", "--store", cfg.run.store, "--resume", "tiny", "--steps", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run tiny" in err and "step_00000020" in err and "--from-step" in err
    # a checkpoint chunk that is gone altogether reads as zeros in zarr: the size and checksum catch it
    _chunk_of(run, "checkpoint", "step_00000010").unlink()
    with pytest.raises(IntegrityError, match="checkpoint of step 10 .* damaged"):
        run.checkpoint_bytes(10)


def test_blobs_stored_without_a_checksum_still_load(tmp_path):
    run = RunStore(tmp_path / "s", mode="a").create_run("old", {}, {})
    run.write_bytes("checkpoint", "step_00000001", b"some bytes", attrs={"step": 1})
    arr = zarr.open_array(str(tmp_path / "s"), path=run.location("checkpoint", "step_00000001"), mode="a")
    arr.attrs.put({"step": 1})  # as written before checksums existed
    assert run.read_bytes("checkpoint", "step_00000001") == b"some bytes"
    arr[:3] = np.frombuffer(b"SOM", np.uint8)  # unchecked: nothing to check against
    assert run.read_bytes("checkpoint", "step_00000001") == b"SOMe bytes"


def test_a_diverging_loss_says_what_a_resume_can_do(tiny_config, monkeypatch, capsys):
    import dema_lab.training.trainer as train_module

    cfg = tiny_config.replace(steps=30, **FAST_EVAL)
    train(cfg, **QUIET)
    real = train_module.train_step
    calls = {"n": 0}

    def diverging(*args, **kw):
        loss, gnorm = real(*args, **kw)
        calls["n"] += 1
        return (float("nan") if calls["n"] >= 3 else loss), gnorm

    monkeypatch.setattr(train_module, "train_step", diverging)
    assert cli(["train", "--quiet", "--store", cfg.run.store, "--resume", "tiny", "--steps", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert (
        "loss became nan at step 33, 3 steps after resuming run tiny from its checkpoint of step 30 (step_00000030)"
    ) in err
    assert "resume from another saved state: dema-lab train --resume tiny --from-step S (S: 20, 10)" in err
    assert "a resume keeps the run's lr (0.001)" in err and "train a new run (--lr 0.0001" in err
    assert RunStore(cfg.run.store).run("tiny").attrs["status"] == "interrupted"
    # a fresh run that diverges: no resume can change lr, so the advice is a new run
    calls["n"] = 0
    assert (
        cli(
            [
                "train",
                "--quiet",
                "--store",
                cfg.run.store,
                "--run_id",
                "fresh",
                "--dataset",
                cfg.data.dataset,
                "--steps",
                "5",
                "--K",
                "3",
                "--d_model",
                "16",
                "--n_layer",
                "1",
                "--d_state",
                "4",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(
            "dema-lab train: loss became nan at step 3: the run diverged; a resume keeps the run's lr (0.0001)"
        )
        and "train a new run (--lr 1e-05" in err
    )


# ---------------------------------------------------------------- 4. one writer per run
HOLDER = """
import sys, time
from dema_lab.store.zarr_store import RunStore
rs = RunStore(sys.argv[1], mode="a")
run = rs.run(sys.argv[2]).claim() if sys.argv[2] in rs.run_ids() else rs.create_run(sys.argv[2], {}, {}, hold_lock=True)
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(tiny_config, capsys):
    cfg = tiny_config.replace(steps=20, **FAST_EVAL)
    train(cfg, **QUIET)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, cfg.run.store, "tiny"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = RunStore(cfg.run.store).run("tiny")
        writer = run.writer()
        assert writer["pid"] == holder.pid and writer["host"] == socket.gethostname()
        assert cli(["train", "--quiet", "--store", cfg.run.store, "--resume", "tiny", "--steps", "30"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        assert f"run tiny is being written by host {socket.gethostname()}, pid {holder.pid}, since 20" in err
        before = run.attrs
        assert RunStore(cfg.run.store).run("tiny").attrs == before  # the refused writer wrote nothing
        with pytest.raises(RunBusyError, match=f"pid {holder.pid}"):
            RunStore(cfg.run.store, mode="a").create_run("tiny", {}, {})
    finally:
        holder.kill()  # SIGKILL: no chance to let go of the lock
        holder.wait()
    assert RunStore(cfg.run.store).run("tiny").writer() is None
    run = train(cfg.replace(steps=30), resume="tiny", **QUIET)  # the stale lock is taken over
    assert run.attrs["steps_done"] == 30 and run.writer() is None


CREATOR = """
import sys
from dema_lab.store.zarr_store import RunStore
from dema_lab.store.errors import StoreError
store, who = sys.argv[1], sys.argv[2]
rs = RunStore(store, mode="a")
print("ready", flush=True)
for line in sys.stdin:  # one round per line: both creators get it at once and race
    i = int(line)
    try:
        rs.create_run(f"same-{i}", {"who": who}, {})
        print(f"{i} won", flush=True)
    except StoreError as e:
        print(f"{i} lost {type(e).__name__}: {e}", flush=True)
"""


def test_two_creators_of_one_run_id_cannot_both_win(tmp_path):
    store = str(tmp_path / "store")
    RunStore(store, mode="a")
    rounds = 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATOR, store, who],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in "ab"
    ]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]  # both imported
    answers = [[], []]
    for i in range(rounds):  # the round starts in both at once; the next once both answered
        for p in procs:
            p.stdin.write(f"{i}\n")
            p.stdin.flush()
        for p, got in zip(procs, answers):
            got.append(p.stdout.readline())
    outs = []
    for p, got in zip(procs, answers):
        rest, err = p.communicate(timeout=120)  # closes its stdin: the creator ends
        outs.append(("".join(got) + rest, err))
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err
    lines = [dict(line.split(" ", 1) for line in out.strip().splitlines()) for out, _ in outs]
    for i in range(rounds):
        results = [ls[str(i)] for ls in lines]
        assert sorted(r.split()[0] for r in results) == ["lost", "won"], results
        loser = next(r for r in results if r.startswith("lost"))
        assert "RunBusyError: run same-" in loser or "already exists" in loser, loser
    rs = RunStore(store)
    assert rs.run_ids() == [f"same-{i}" for i in range(rounds)]
    assert all(rs.run(f"same-{i}").writer() is None for i in range(rounds))


def test_a_remote_lease_names_its_holder_keeps_alive_and_expires(monkeypatch, tmp_path):
    import dema_lab.store.lock as lock

    monkeypatch.setattr(lock, "SETTLE_SECONDS", 0.05)
    url = f"file://{tmp_path}/remote-store"  # through fsspec, as an object store is
    a = RunLock(url, "r1", lease_seconds=1.0).acquire()
    assert a.remote and (tmp_path / "remote-store/locks/r1.lease.json").exists()
    with pytest.raises(
        RunBusyError, match=f"run r1 is being written by host {socket.gethostname()}, pid {os.getpid()}"
    ):
        RunLock(url, "r1", lease_seconds=1.0).acquire()
    lease = tmp_path / "remote-store/locks/r1.lease.json"
    first_expiry = json.loads(lease.read_text())["expires"]
    # past the first lease's expiry, the heartbeat has pushed it forward: still held
    wait_until(
        lambda: time.time() > first_expiry and json.loads(lease.read_text())["expires"] > time.time(),
        10,
        "the heartbeat to outlive the first lease",
    )
    with pytest.raises(RunBusyError):
        RunLock(url, "r1").acquire()
    a.release()
    assert RunLock(url, "r1").holder() is None
    # a holder that stopped refreshing (killed on another host): taken over once its lease expired
    path = tmp_path / "remote-store/locks/r1.lease.json"
    record = {"host": "elsewhere", "pid": 1, "since": time.time() - 100, "expires": time.time() + 60, "token": "x"}
    path.write_text(json.dumps(record))
    with pytest.raises(RunBusyError, match="host elsewhere, pid 1"):
        RunLock(url, "r1").acquire()
    path.write_text(json.dumps(dict(record, expires=time.time() - 1)))  # the same lease, a minute on: expired
    b = RunLock(url, "r1", lease_seconds=1.0).acquire()
    assert json.loads(path.read_text())["token"] == b.token
    # on this host, a lease whose pid is dead is stale at once
    b.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps(dict(record, host=socket.gethostname(), pid=int(dead.stdout), expires=time.time() + 60)))
    c = RunLock(url, "r1", lease_seconds=1.0).acquire()
    # a holder whose lease was taken over finds out at its next heartbeat and stops publishing
    path.write_text(json.dumps(dict(record, expires=time.time() + 60)))
    wait_until(lambda: c.lost is not None, 10, "the holder's heartbeat to see the takeover")
    with pytest.raises(RunBusyError, match="taken over by host elsewhere, pid 1"):
        c.check()
    c.release()
    assert json.loads(path.read_text())["host"] == "elsewhere"  # the new holder's lease is left alone


def test_a_filesystem_without_file_locks_falls_back_to_a_lease(monkeypatch, tmp_path):
    import errno
    import fcntl

    import dema_lab.store.lock as lock

    monkeypatch.setattr(lock, "SETTLE_SECONDS", 0.05)

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    a = RunLock(str(tmp_path), "r", lease_seconds=5).acquire()
    assert a.remote and (tmp_path / "locks/r.lease.json").exists()
    with pytest.raises(RunBusyError, match=f"pid {os.getpid()}"):
        RunLock(str(tmp_path), "r").acquire()
    assert RunLock(str(tmp_path), "r").holder()["token"] == a.token
    a.release()
    assert RunLock(str(tmp_path), "r").holder() is None
