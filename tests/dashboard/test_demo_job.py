"""The empty-store page's demo job: dema_lab.study.demo.run_demo in a child process (multiprocessing's
spawn) that dies with the server, its progress and outcome passed as structured events."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import wait_until

from dema_lab.dashboard.empty_store.job import DemoJob


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"  # a zombie has exited
    except OSError:
        return False


def test_a_failure_of_the_library_reaches_the_page_as_one_line(tmp_path):
    not_a_store = tmp_path / "a-file"
    not_a_store.write_text("x")
    job = DemoJob.for_store(str(not_a_store))
    job.start()
    assert job.running
    wait_until(lambda: not job.running, 120, "the demo job to end")
    # run_demo's own message (store.check_store's), not text scraped from a command's output
    assert job.error.startswith("the demo runs failed: ") and "is a file" in job.error, job.error
    assert "\n" not in job.error and not job.finished
    assert job.process.exitcode == 1 and not alive(job.process.pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_spawned_demo_child_dies_with_the_server_however_it_dies(tmp_path):
    # the server stopped by SIGTERM runs no atexit hooks: the kernel stops the child
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, os, time
            from dema_lab.common.process import die_with_parent

            def child(parent):
                die_with_parent(parent)
                time.sleep(120)

            if __name__ == "__main__":
                p = multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(),))
                p.start()
                print(p.pid, flush=True)
                time.sleep(120)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        wait_until(lambda: alive(child), 10, "the child to start")
        parent.terminate()
        parent.wait(10)
        wait_until(lambda: not alive(child), 10, "the child to stop with its parent")
    finally:
        if alive(child):
            os.kill(child, 15)
        if parent.poll() is None:
            parent.kill()
