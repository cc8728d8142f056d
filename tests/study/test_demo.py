"""The demo's parallel training: its worker processes die with the process that runs the demo,
however that process dies, and a bad number of workers is refused before anything starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import wait_until

from dema_lab.study.demo import run_demo


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is `pid`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, ppid = stat.rsplit(") ", 1)[1].split()[:2]
        if int(ppid) == pid and state not in "ZX":
            found.append((int(proc.name), cmdline))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_demo_workers_die_with_a_killed_parent(hopper_small, tiny_run, tmp_path):
    # SIGKILL runs no handler at all: only the kernel (PR_SET_PDEATHSIG) can stop the workers,
    # which would otherwise go on training into the store for minutes
    script = tmp_path / "demo.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import dema_lab.data
            from dema_lab.study import demo

            if __name__ == "__main__":  # the workers are spawned: they import this file as a module
                dema_lab.data.ensure_embedded = lambda *a, **k: None  # the tiny dataset is built
                tiny = dict({dict(tiny_run)!r}, eval_every=0, record_episodes=0)
                demo.DEMO_CONFIG = demo.DEMO_CONFIG.replace(dataset={str(hopper_small)!r}, steps=10**6, **tiny)
                demo.run_demo({str(tmp_path / "store")!r}, progress=False, workers=2)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        spawned = lambda: [p for p, cmd in children(parent.pid) if "spawn_main" in cmd]
        workers = wait_until(lambda: len(spawned()) == 2 and spawned(), 120, "two demo workers")
        store = tmp_path / "store" / "runs"
        wait_until(lambda: parent.poll() is not None or store.exists(), 120, "the workers to start training")
        assert parent.poll() is None, parent.stderr.read()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not any(alive(p) for p in workers), 15, "the workers to stop with their parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in workers:
            if alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("workers", [0, -1, 1.5])
def test_a_bad_number_of_workers_is_refused_before_anything_starts(workers, tmp_path):
    with pytest.raises(ValueError, match="workers must be a whole number of processes, at least 1"):
        run_demo(str(tmp_path / "store"), workers=workers)
    assert not (tmp_path / "store").exists()
