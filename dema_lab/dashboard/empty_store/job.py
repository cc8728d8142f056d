"""The demo job the empty-store page starts: trains the demo runs in a child process and reports
its progress."""

from __future__ import annotations

import os
import sys
import threading

import param

from dema_lab.dashboard.common.data import StoreIndex, friendly_error


def stop_with_parent():
    """A preexec_fn for subprocess.Popen that has Linux send the child SIGTERM when its parent
    dies, however it dies (`panel serve` stopped by SIGTERM runs no atexit hooks, and a child
    that is evaluating prints nothing for minutes, so a broken pipe would not stop it either).
    None where prctl is missing."""
    try:
        import ctypes
        import signal

        prctl, sigterm = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGTERM)  # resolved before the fork
        return lambda: prctl(1, sigterm)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------------- the demo job
class DemoJob(param.Parameterized):
    """The demo runs being trained into a store, shared by every session of the process."""

    message = param.String(default="")
    fraction = param.Number(default=0.0)
    running = param.Boolean(default=False)
    error = param.String(default="")
    finished = param.Boolean(default=False)

    _jobs: dict = {}
    _lock = threading.Lock()

    @classmethod
    def for_store(cls, path: str) -> DemoJob:
        key = os.path.abspath(path) if "://" not in path else path
        with cls._lock:
            job = cls._jobs.get(key)
            if job is None:
                job = cls._jobs[key] = cls(path=path)
            return job

    def __init__(self, path: str, **params):
        super().__init__(**params)
        self.path = path
        self._thread = None

    def start(self):
        with self._lock:
            if self.running:
                return
            self.running, self.error, self.finished = True, "", False
            self.message, self.fraction = "starting the demo runs", 0.0
            self._thread = threading.Thread(target=self._run, daemon=True, name="dema-demo")
            self._thread.start()

    def _progress(self, message: str, fraction: float):
        self.message, self.fraction = message, float(fraction)

    def _run(self):
        """Train in a child process (`dema-lab demo --no-serve`): the server keeps its GIL and
        its single-threaded acting for the live rollouts, and a crash cannot take it down.
        Progress comes from the child's "[demo NN%] message" lines."""
        import atexit
        import re
        import subprocess

        cmd = [sys.executable, "-m", "dema_lab.cli.main", "demo", "--no-serve", "--store", self.path]
        tail = []
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                env={**os.environ, "TQDM_DISABLE": "1"},
                preexec_fn=stop_with_parent(),
            )
            atexit.register(proc.terminate)  # the server stopping stops the training
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-5:]
                m = re.search(r"\[demo\s+(\d+)%\] (.*)", line.split("\r")[-1].strip())
                if m:
                    self._progress(m.group(2), int(m.group(1)) / 100)
            if proc.wait() != 0:
                self.error = "the demo runs failed: " + " / ".join(t for t in tail if t)
            else:
                self.finished = True
        except Exception as e:  # noqa: BLE001 - shown on the page
            self.error = friendly_error(e)
        finally:
            self.running = False

    def detail(self) -> tuple[float, str, int]:
        """Finer progress than the callback gives: the fraction of the demo runs' training steps
        done, a line per run, and how many runs the store holds (any, not only the demo's)."""
        from dema_lab.study.demo import demo_runs

        try:
            idx = StoreIndex(self.path)
            ids = idx.run_ids()
            done, total, parts = 0, 0, []
            for cfg in demo_runs(self.path):
                total += cfg.steps
                if cfg.run_id in ids:
                    info = idx.info(cfg.run_id)
                    done += min(info.steps_done, cfg.steps)
                    parts.append(f"{cfg.run_id}: {info.steps_done}/{cfg.steps} steps ({info.status})")
            return done / max(total, 1), "; ".join(parts), len(ids)
        except Exception:  # noqa: BLE001 - the store may be being created
            return self.fraction, "", 0
