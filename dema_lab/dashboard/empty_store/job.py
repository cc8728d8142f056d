"""The demo job the empty-store page starts: trains the demo runs (dema_lab.study.demo.run_demo) in
a child process that dies with the server, and reports its progress as structured events."""

from __future__ import annotations

import atexit
import functools
import os
import threading

import param

from dema_lab.common.process import die_with_parent
from dema_lab.dashboard.common.data import StoreIndex, friendly_error


def stop_process(proc) -> None:
    """At the server's exit: terminate the demo child (and so its workers) if it still runs. It is
    not a daemon, so multiprocessing's own exit handler would wait for it instead."""
    if proc.is_alive():
        proc.terminate()
        proc.join(10)


def demo_process(store: str, events, parent: int) -> None:
    """The demo job's child process: dema_lab.study.demo.run_demo into `store`, its progress put on
    `events` as {"event": "progress", "message", "fraction"}, then {"event": "done", "runs"} or
    {"event": "failed", "error"} (one line)."""
    die_with_parent(parent)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        from dema_lab.study.demo import run_demo

        def progress(message: str, fraction: float):
            events.put({"event": "progress", "message": str(message), "fraction": float(fraction)})

        runs = run_demo(store, on_progress=progress, progress=False)
        events.put({"event": "done", "runs": list(runs)})
    except BaseException as e:  # noqa: BLE001 - reported to the page, then the child exits
        events.put({"event": "failed", "error": friendly_error(e)})
        raise SystemExit(1) from None


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
        self.process = None  # the child process training the runs (multiprocessing's)

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
        """Train in a child process (demo_process, started by multiprocessing's spawn): the server
        keeps its GIL and its single-threaded acting for the live rollouts, a crash cannot take it
        down, and the child dies with the server however the server stops. Progress comes as events
        on a queue."""
        import multiprocessing
        import queue

        try:
            ctx = multiprocessing.get_context("spawn")  # not fork: the server has threads
            events = ctx.Queue()
            # not a daemon, since it trains in worker processes of its own (a daemon may have no
            # children): a server that exits normally terminates it (the atexit hook), one that is
            # killed has the kernel do it (die_with_parent)
            proc = self.process = ctx.Process(
                target=demo_process, args=(self.path, events, os.getpid()), name="dema-lab demo", daemon=False
            )
            proc.start()
            stop = functools.partial(stop_process, proc)  # this job's own hook, unregistered below
            atexit.register(stop)
            ended = None
            while ended is None:
                try:
                    event = events.get(timeout=1.0)
                except queue.Empty:
                    if not proc.is_alive():
                        ended = {"event": "failed", "error": f"the demo process stopped (exit code {proc.exitcode})"}
                    continue
                if event["event"] == "progress":
                    self._progress(event["message"], event["fraction"])
                else:
                    ended = event
            proc.join(30)
            atexit.unregister(stop)
            if ended["event"] == "done":
                self.finished = True
            else:
                self.error = "the demo runs failed: " + ended["error"]
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
                run_id, steps = cfg.run.run_id, cfg.optim.steps
                total += steps
                if run_id in ids:
                    info = idx.info(run_id)
                    done += min(info.steps_done, steps)
                    parts.append(f"{run_id}: {info.steps_done}/{steps} steps ({info.status})")
            return done / max(total, 1), "; ".join(parts), len(ids)
        except Exception:  # noqa: BLE001 - the store may be being created
            return self.fraction, "", 0
