"""A live page that one visitor cannot take down, and `serve`/`demo` that refuse
a bad port with one line.

The file field of /live reads only regular files under the store and the server's
--checkpoint-dir, size-capped, header first, off the event loop; a missing file and a refused one
get the same message. Unit tests for those rules (dema_lab.models.checkpoint_files), the page's messages
for a checkpoint without state_mean and a directory, then a served store fed a FIFO, /dev/zero, a
2 GB sparse file and paths outside, in headless Chromium, while another page of the server is
polled: it answers within a second throughout and the server's memory stays flat."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import wait_until
from helpers.browser import ARTIFACTS, Page, free_port

from dema_lab.models import CheckpointError, ModelConfig, build_model, save_checkpoint
from dema_lab.models.checkpoint_files import CheckpointAccessError, load_checkpoint_file, read_checkpoint_file

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(path: Path, normalization: bool = True) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(state_dim=11, act_dim=3, K=3, d_model=16, n_layer=1, d_state=4))
    extra = {"state_mean": torch.zeros(11), "state_std": torch.ones(11)} if normalization else None
    return save_checkpoint(path, model, meta={"rtg_scale": 1000.0}, extra=extra)


def _in_time(fn, seconds: float = 5.0):
    """fn() in a thread: its result or exception, failing (not hanging) if it blocks."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for more than {seconds} s"
    return out


def _refusal(fn) -> str:
    out = _in_time(fn)
    assert "error" in out, f"read {len(out['value'])} bytes instead of refusing"
    assert isinstance(out["error"], CheckpointError), repr(out["error"])
    msg = str(out["error"])
    assert "\n" not in msg
    return msg


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture
def allowed(tmp_path):
    d = tmp_path / "allowed"
    d.mkdir()
    return d


# ---------------------------------------------------------------------------- the access rules
def test_a_good_checkpoint_in_an_allowed_dir_loads_and_matches_the_file(allowed):
    path = _checkpoint(allowed / "ck.safetensors")
    data = read_checkpoint_file(path, [allowed])
    assert bytes(data) == path.read_bytes()
    ck = load_checkpoint_file(path, [allowed])
    assert ck.path == path and ck.config.d_model == 16
    mean, std = ck.state_normalization()
    assert mean.shape == (11,) and (std == 1).all()
    # a symlink inside the allowed directory to a file inside it is resolved and read
    (allowed / "link.safetensors").symlink_to(path)
    assert bytes(read_checkpoint_file(allowed / "link.safetensors", [allowed])) == path.read_bytes()


def test_missing_and_refused_paths_get_the_same_message(tmp_path, allowed):
    outside = _checkpoint(tmp_path / "outside.safetensors")  # a real checkpoint, not allowed
    (allowed / "escape.safetensors").symlink_to(outside)  # a symlink out of the allowed dir
    (allowed / "sub").mkdir()
    cases = {
        "missing": allowed / "missing.safetensors",
        "outside": outside,
        "dotdot": allowed / "sub" / ".." / ".." / "outside.safetensors",
        "symlink": allowed / "escape.safetensors",
        "system": Path("/etc/passwd"),
        "device": Path("/dev/zero"),
    }
    messages = {k: _refusal(lambda p=p: read_checkpoint_file(p, [allowed])) for k, p in cases.items()}
    generic = {k: m.replace(str(cases[k]), "PATH") for k, m in messages.items()}
    assert len(set(generic.values())) == 1, generic  # no existence oracle
    assert "not a checkpoint file this server may read" in generic["missing"]
    assert str(allowed) in generic["missing"] and "--checkpoint-dir" in generic["missing"]
    assert all(
        isinstance(_in_time(lambda p=p: read_checkpoint_file(p, [allowed]))["error"], CheckpointAccessError)
        for p in cases.values()
    )


def test_a_fifo_is_refused_without_blocking(allowed):
    fifo = allowed / "ck.safetensors"
    os.mkfifo(fifo)
    msg = _refusal(lambda: read_checkpoint_file(fifo, [allowed]))
    assert "not a regular file" in msg
    msg = _refusal(lambda: read_checkpoint_file(fifo))  # no directory rule: still refused
    assert "not a regular file" in msg


def test_dev_zero_is_refused_before_reading(tmp_path):
    before = _peak_rss_mb()
    msg = _refusal(lambda: read_checkpoint_file("/dev/zero", [Path("/dev")]))
    assert "not a regular file" in msg
    assert _peak_rss_mb() - before < 50


def test_a_2gb_sparse_file_is_refused_by_size_without_reading(allowed):
    big = allowed / "big.safetensors"
    subprocess.run(["truncate", "-s", "2G", str(big)], check=True)
    before, t0 = _peak_rss_mb(), time.perf_counter()
    msg = _refusal(lambda: read_checkpoint_file(big, [allowed]))
    assert "2.0 GiB" in msg and "1.0 GiB limit" in msg
    assert time.perf_counter() - t0 < 1.0 and _peak_rss_mb() - before < 50
    # the limit is configurable: a small one refuses a real checkpoint
    ck = _checkpoint(allowed / "ck.safetensors")
    assert "limit" in _refusal(lambda: read_checkpoint_file(ck, [allowed], max_bytes=1000))


def test_a_directory_is_named_as_one(allowed):
    msg = _refusal(lambda: read_checkpoint_file(allowed, [allowed]))
    assert msg == f"{allowed} is a directory, not a checkpoint file: give the .safetensors file in it"


def test_absurd_headers_are_refused_and_only_declared_bytes_are_read(allowed):
    absurd = allowed / "absurd.safetensors"
    absurd.write_bytes((2**60).to_bytes(8, "little") + b"{}" * 100)
    assert "header claims 1152921504606846976 bytes" in _refusal(lambda: read_checkpoint_file(absurd, [allowed]))
    big_header = allowed / "big-header.safetensors"  # within the file, over the header cap
    with open(big_header, "wb") as f:
        f.write((64 << 20).to_bytes(8, "little"))
        f.truncate(8 + (64 << 20) + 10)
    before = _peak_rss_mb()
    assert "over the 16777216 allowed" in _refusal(lambda: read_checkpoint_file(big_header, [allowed]))
    assert _peak_rss_mb() - before < 50
    # a foreign safetensors file is refused from its header
    from safetensors.torch import save_file

    foreign = allowed / "foreign.safetensors"
    save_file({"w": torch.zeros(4)}, str(foreign), metadata={"format": "pt"})
    msg = _refusal(lambda: read_checkpoint_file(foreign, [allowed]))
    assert msg.startswith(f"{foreign} is a safetensors file but not a dema-lab checkpoint")
    # trailing bytes past what the header declares are not read; a truncated file says so
    good = _checkpoint(allowed / "ck.safetensors").read_bytes()
    padded = allowed / "padded.safetensors"
    padded.write_bytes(good + b"\0" * 100_000)
    assert bytes(read_checkpoint_file(padded, [allowed])) == good
    cut = allowed / "cut.safetensors"
    cut.write_bytes(good[:-10])
    assert "declares" in _refusal(lambda: read_checkpoint_file(cut, [allowed]))


# ---------------------------------------------------------------------------- the live component
@pytest.fixture
def live(tmp_path, allowed):
    from dema_lab.dashboard import LiveState

    return LiveState(str(tmp_path / "store"), checkpoint_dirs=[str(allowed)], render_size=32)


def test_live_page_names_a_checkpoint_without_state_mean_and_a_directory(live, allowed):
    live.checkpoint_file = str(_checkpoint(allowed / "bare.safetensors", normalization=False))
    live.start()
    assert live.worker is None and live.status == "idle"
    assert live.message.startswith("Cannot start: ") and "has no state_mean and state_std" in live.message
    assert "dema-lab import" in live.message and "\n" not in live.message
    live.checkpoint_file = str(allowed)
    live.start()
    assert live.worker is None and "is a directory, not a checkpoint file" in live.message
    live.checkpoint_file = "/etc/passwd"
    live.start()
    assert live.worker is None and "not a checkpoint file this server may read" in live.message
    # and a good file under the checkpoint dir still runs
    live.checkpoint_file, live.fps = str(_checkpoint(allowed / "ck.safetensors")), 240.0
    live.start()
    assert live.message == "" and live.worker is not None
    live.worker.join(60)
    live.poll()
    assert live.status.startswith("finished"), (live.status, live.message)


def test_live_start_async_loads_off_the_event_loop(live, allowed, monkeypatch):
    """The page's Start awaits the load in a worker thread: the loop keeps running meanwhile."""
    live.checkpoint_file = str(_checkpoint(allowed / "ck.safetensors"))
    slow_load, loop_threads = live._load, set()
    ticked = threading.Event()  # set by the event loop's ticker after 10 ticks

    def slow():  # a load that lasts until the event loop has ticked 10 times meanwhile
        loop_threads.add(threading.current_thread().name)
        ticked.wait(10)
        return slow_load()

    monkeypatch.setattr(live, "_load", slow)
    live.fps = 240.0

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1
                if ticks >= 10:
                    ticked.set()

        t = asyncio.ensure_future(ticker())
        await live.start_async()
        t.cancel()
        return ticks

    ticks = asyncio.run(main())
    assert ticks >= 10, ticks  # the loop kept ticking while the load waited for it (a blocked loop: 0)
    assert loop_threads and all(n.startswith("dema-live-load") for n in loop_threads)
    assert live.worker is not None
    live.stop()


# ---------------------------------------------------------------------------- serve/demo ports
@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_serve_and_demo_refuse_a_port_in_use_or_out_of_range(command, busy_port, tmp_path, capsys):
    from dema_lab.cli.main import main

    store = tmp_path / "store"
    for port, want in (
        (busy_port, f"port {busy_port} on 127.0.0.1 is in use"),
        (70000, "port 70000 is out of range: give --port between 1 and 65535"),
        (0, "port 0 is out of range"),
    ):
        t0 = time.perf_counter()
        assert main([command, "--store", str(store), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"dema-lab {command}: {want}") and err.count("\n") == 1, err
        assert time.perf_counter() - t0 < 10 and not store.exists()  # demo: refused before training
    assert main([command, "--store", str(store), "--checkpoint-dir", str(tmp_path / "nope")]) == 2
    assert "--checkpoint-dir" in capsys.readouterr().err


def test_serve_port_in_use_in_a_process_prints_one_line(busy_port, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "dema_lab.cli.main", "serve", "--store", str(tmp_path / "s"), "--port", str(busy_port)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"dema-lab serve: port {busy_port} on 127.0.0.1 is in use "
        f"(another dema-lab serve?): stop what listens there, or pick "
        f"another port with --port"
    ]


# ---------------------------------------------------------------------------- in the browser
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Poller(threading.Thread):
    """GET a page of the server every 0.1 s; the slowest answer while `measuring` (a failure counts
    as forever). Building a new session's page holds Panel's event loop by itself, so the window is
    set around what a visitor feeds the live page, not around opening pages."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.worst, self.count, self.failures = url, 0.0, 0, []
        self.measuring = False
        self.phase = ""
        self.slow = []  # (phase, seconds) of the answers over 0.3 s, for the failure message
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            t0, measured = time.perf_counter(), self.measuring
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                    assert r.status == 200
            except Exception as e:  # noqa: BLE001
                self.failures.append(repr(e))
            if measured and self.measuring:
                took = time.perf_counter() - t0
                self.worst = max(self.worst, took)
                self.count += 1
                if took > 0.3:
                    self.slow.append((self.phase, round(took, 2)))
            self._halt.wait(0.1)

    def stop(self):
        self._halt.set()
        self.join(10)


@pytest.fixture(scope="module")
def live_server(hopper_small, tiny_run, tmp_path_factory):
    """`dema-lab serve` of a store with one tiny run and one --checkpoint-dir, on 127.0.0.1."""
    from dema_lab.training import TrainConfig, train

    store = str(tmp_path_factory.mktemp("live-store") / "store")
    train(
        TrainConfig.from_flat(
            dataset=str(hopper_small),
            store=store,
            steps=10,
            run_id="tiny",
            **{**tiny_run, "eval_modes": ["transformer"], "render_size": 0},
        ),
        progress=False,
        log=lambda *_: None,
    )
    allowed = tmp_path_factory.mktemp("checkpoints")
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "live-security-server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dema_lab.cli.main",
            "serve",
            "--store",
            store,
            "--port",
            str(port),
            "--checkpoint-dir",
            str(allowed),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, (ARTIFACTS / "live-security-server.log").read_text()
        try:
            urllib.request.urlopen(base + "/", timeout=1)
            return True
        except OSError:
            return False

    wait_until(answers, 90, "dema-lab serve to answer", interval=0.3)
    yield {"base": base, "pid": proc.pid, "allowed": allowed}
    proc.terminate()
    proc.wait(20)
    log.close()


def test_browser_live_page_refuses_hostile_files_while_the_server_keeps_answering(live_server, browser, tmp_path):
    allowed = live_server["allowed"]
    fifo = allowed / "fifo.safetensors"
    os.mkfifo(fifo)
    sparse = allowed / "sparse.safetensors"
    subprocess.run(["truncate", "-s", "2G", str(sparse)], check=True)
    outside = _checkpoint(tmp_path / "outside.safetensors")
    bare = _checkpoint(allowed / "bare.safetensors", normalization=False)
    refused = "is not a checkpoint file this server may read"
    # the first case loads a real checkpoint: the server's first load imports what building a model
    # needs (seconds, once per process), before the hostile files are measured
    cases = [
        (str(bare), "has no state_mean and state_std"),
        (str(fifo), "is not a regular file"),
        ("/dev/zero", refused),
        (str(sparse), "over the 1.0 GiB limit"),
        (str(outside), refused),
        (str(allowed / "missing.safetensors"), refused),
        (str(allowed), "is a directory"),
    ]

    poller = Poller(live_server["base"] + "/")  # another page of the same server
    poller.start()
    try:
        # a link cannot pre-fill the file field (dashboard.common.url.URL_SKIP): the visitor types the FIFO
        p = Page(browser, f"{live_server['base']}/live?fps=4&checkpoint_file={fifo}")
        page = p.page
        field = page.get_by_placeholder("/path/to/checkpoint.safetensors")
        field.wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"Max steps per second:\s*4(\.0)?$")).first.wait_for(timeout=60_000)
        assert field.input_value() == ""
        alert = page.locator(".alert")
        page.locator(".dema-live-start button").wait_for(timeout=60_000)
        for i, (path, want) in enumerate(cases):
            if i == 1:
                rss0, poller.measuring = _rss_mb(live_server["pid"]), True
            poller.phase = Path(path).name
            field.fill(path)
            field.press("Enter")
            page.locator(".dema-live-start button").click(timeout=60_000)
            alert.filter(has_text=Path(path).name).filter(has_text=want).first.wait_for(timeout=30_000)
            page.locator(".dema-live-status").get_by_text("idle").wait_for(timeout=10_000)
            assert "Traceback" not in alert.first.inner_text()
        poller.measuring = False
        # a second page of the same server is served while the first holds its messages
        q = Page(browser, f"{live_server['base']}/live")
        q.page.locator(".dema-live-start button").wait_for(timeout=60_000)
        q.check_clean()
        q.page.close()
        p.check_clean()
        page.close()
    finally:
        poller.stop()
    growth = _rss_mb(live_server["pid"]) - rss0
    print(
        f"another page: {poller.count} answers, slowest {poller.worst:.3f} s (over 0.3 s: {poller.slow}); "
        f"server memory {growth:+.0f} MB"
    )
    assert poller.count >= 10 and not poller.failures, poller.failures[:3]
    assert poller.worst < 1.0, f"the server took {poller.worst:.2f} s to answer another page; slow: {poller.slow}"
    assert growth < 300, f"the server's memory grew by {growth:.0f} MB"
