"""The live page at display speed : env steps per second of a K 20 DeMa
rollout on /live, with frames and hidden attention on, at a 30 steps/s setting, measured in a
real browser (target: >= 25 env steps/s).

    python benchmarks/bench_live.py [--store store] [--run demo-dema-K20] [--seconds 20]

It serves the store with `dema-lab serve` on 127.0.0.1 (a free port), opens
/live?checkpoint=RUN@STEP&fps=30 in headless Chromium, presses Start and watches the page's
probe (`.dema-live-probe span`, which names the newest step shown and the frame's checksum) with
a MutationObserver for --seconds. Two figures: env steps/s (how far the step the page names
advanced: the steps the worker made and the page received) and display updates/s (how often the
page showed a new frame). An episode that ends inside the window is started again; the rates
add up the segments. Without the run in the store, a small K 20 DeMa is trained (a few hundred
steps) into a temporary store: the speed does not depend on how well it plays. Prints a markdown
section; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TARGET = 25.0

# Every change of the probe, with the page's clock: (ms, step, frame checksum).
# Bokeh renders into shadow roots: find the probe through them.
DEEP_QUERY_JS = """(css) => {
  const walk = (root) => {
    const hit = root.querySelector(css);
    if (hit) return hit;
    for (const el of root.querySelectorAll('*'))
      if (el.shadowRoot) { const h = walk(el.shadowRoot); if (h) return h; }
    return null;
  };
  return walk(document);
}"""

# Every change of the probe, with the page's clock: (ms, step, frame checksum).
OBSERVE_JS = (
    """() => {
  const find = """
    + DEEP_QUERY_JS
    + """;
  window.__demaLive = [];
  const probe = find('.dema-live-probe');
  const read = () => {
    const s = probe.querySelector('span') || (probe.shadowRoot && probe.shadowRoot.querySelector('span'));
    const log = window.__demaLive, last = log[log.length - 1];
    if (s && s.dataset.step !== undefined && !(last && last[1] === Number(s.dataset.step)))
      log.push([performance.now(), Number(s.dataset.step), s.dataset.frame]);
  };
  const opts = {subtree: true, childList: true, attributes: true, characterData: true};
  new MutationObserver(read).observe(probe, opts);
  if (probe.shadowRoot) new MutationObserver(read).observe(probe.shadowRoot, opts);
  read();
}"""
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoint(store: str, run: str) -> tuple[str, str, int, dict]:
    """(store, run, newest step, config) of the run, training a small K 20 DeMa when it is missing."""
    from dema_lab.dashboard import StoreIndex

    index = StoreIndex(store)
    if run not in index.run_ids() or not index.info(run).checkpoints:
        from dema_lab.study.demo import DEMO_CONFIG
        from dema_lab.training import train

        store = str(Path(tempfile.mkdtemp(prefix="bench-live-")) / "store")
        run = "bench-live-K20"
        print(f"(training {run} into {store}: a few hundred steps)", file=sys.stderr)
        cfg = DEMO_CONFIG.replace(
            store=store,
            run_id=run,
            K=20,
            steps=300,
            eval_every=0,
            eval_targets=[3600.0],
            record_episodes=0,
            checkpoint_every=300,
        )
        train(cfg, progress=False, log=lambda *a, **k: None)
        index = StoreIndex(store)
    info = index.info(run)
    return store, run, max(info.checkpoints), info.config


class Server:
    """`dema-lab serve` on 127.0.0.1 in a subprocess."""

    def __init__(self, store: str, log: Path):
        self.port = _free_port()
        self.log = open(log, "w")
        exe = Path(sys.executable).parent / "dema-lab"
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--store", store, "--address", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dema-lab serve exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2)  # the index page
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError("dema-lab serve did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class CpuMeter:
    """CPU time of the server and of the browser (this process's other descendants) over a window."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def _read(self):
        others = [p for p in _descendants(os.getpid()) if p != self.server_pid and p not in self._server_tree()]
        return time.perf_counter(), _cpu_seconds(self.server_pid), sum(_cpu_seconds(p) for p in others)

    def _server_tree(self):
        return set(_descendants(self.server_pid))

    def start(self):
        self.t0 = self._read()

    def stop(self) -> dict:
        t1 = self._read()
        wall = t1[0] - self.t0[0]
        return {
            "server_cpu_pct": 100 * (t1[1] - self.t0[1]) / wall,
            "browser_cpu_pct": 100 * (t1[2] - self.t0[2]) / wall,
        }


def _rates(events: list, seconds: float) -> dict:
    """Env steps/s and display updates/s from the probe's changes, split where a new episode
    starts (the step goes back)."""
    segments, cur = [], []
    for ev in events:
        if cur and ev[1] < cur[-1][1]:
            segments.append(cur)
            cur = []
        cur.append(ev)
    if cur:
        segments.append(cur)
    steps = sum(s[-1][1] - s[0][1] for s in segments)
    span = sum(s[-1][0] - s[0][0] for s in segments) / 1000
    shown = sum(len(s) - 1 for s in segments)
    frames = sum(len({e[2] for e in s}) - 1 for s in segments)
    gaps = sorted(b[0] - a[0] for s in segments for a, b in zip(s, s[1:]))
    return {
        "env_steps": steps,
        "span_s": span,
        "episodes": len(segments),
        "env_steps_per_s": steps / span if span > 0 else 0.0,
        "display_updates": shown,
        "display_updates_per_s": shown / span if span > 0 else 0.0,
        "distinct_frames_per_s": frames / span if span > 0 else 0.0,
        "steps_per_update": steps / shown if shown else 0.0,
        "update_gap_ms_median": gaps[len(gaps) // 2] if gaps else None,
        "update_gap_ms_p95": gaps[int(len(gaps) * 0.95)] if gaps else None,
    }


def measure(url: str, seconds: float, settle: float = 3.0, on_start=None, cpu=None) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url, timeout=120_000)
            page.locator(".dema-live-start button").wait_for(timeout=120_000)
            status = page.locator(".dema-live-status")
            page.locator(".dema-live-start button").click(timeout=60_000)
            probe = page.locator(".dema-live-probe span")
            deadline = time.time() + 120
            while True:  # the first step shown
                try:
                    if int(probe.get_attribute("data-step", timeout=2000) or 0) >= 1:
                        break
                except Exception:  # noqa: BLE001 - not drawn yet
                    pass
                if time.time() > deadline:
                    raise TimeoutError("the live page showed no step within 120 s")
                page.wait_for_timeout(200)
            page.wait_for_timeout(settle * 1000)  # the first steps (model warm-up) are not measured
            page.evaluate(OBSERVE_JS)
            if on_start is not None:
                on_start()
            if cpu is not None:
                cpu.start()
            t0 = time.time()
            restarts = 0
            while time.time() - t0 < seconds:
                page.wait_for_timeout(500)
                text = status.inner_text(timeout=5000)
                if "finished" in text or "stopped" in text:  # the episode ended: play another
                    restarts += 1
                    page.locator(".dema-live-start button").click(timeout=30_000)
                    page.wait_for_timeout(1000)
            events = page.evaluate("() => window.__demaLive")
            used = cpu.stop() if cpu is not None else {}
            status_text = status.inner_text(timeout=5000)
            page.locator(".dema-live-stop button").click(timeout=30_000)
            page.wait_for_timeout(300)
        finally:
            browser.close()
    out = _rates(events, seconds)
    out.update(used)
    out.update(restarts=restarts, window_s=seconds, status=status_text.replace("\n", " "))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=os.environ.get("DEMA_LAB_STORE", "store"))
    p.add_argument("--run", default="demo-dema-K20", help="a K 20 DeMa run (trained into a temp store if missing)")
    p.add_argument("--seconds", type=float, default=20.0, help="measuring window")
    p.add_argument("--fps", type=float, default=30.0, help="the page's steps/s setting")
    p.add_argument("--label", default="", help="a name for this measurement (e.g. before / after)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--py-spy", default=None, help="profile the server with py-spy over the window (collapsed stacks)")
    a = p.parse_args()

    store, run, step, cfg = _checkpoint(a.store, a.run)
    load0 = os.getloadavg()
    log = Path(tempfile.mkdtemp(prefix="bench-live-log-")) / "serve.log"
    server = Server(store, log)
    try:
        url = server.url("live") + f"?checkpoint={run}@{step}&fps={a.fps:g}"
        spy = []

        def profile():
            exe = Path(sys.executable).parent / "py-spy"
            cmd = [str(exe), "record", "--pid", str(server.proc.pid), "--duration", str(int(a.seconds))]
            cmd += ["--format", "raw", "--threads", "--idle", "--nonblocking", "--output", a.py_spy]
            spy.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        row = measure(url, a.seconds, on_start=profile if a.py_spy else None, cpu=CpuMeter(server.proc.pid))
        for proc in spy:
            proc.wait(60)
    finally:
        server.stop()
    load1 = os.getloadavg()
    row.update(
        run=run,
        checkpoint_step=step,
        K=cfg.get("K"),
        d_model=cfg.get("d_model"),
        n_layer=cfg.get("n_layer"),
        fps_setting=a.fps,
        target=TARGET,
        met=row["env_steps_per_s"] >= TARGET,
        load_before=[round(x, 2) for x in load0],
        load_after=[round(x, 2) for x in load1],
        cores=os.cpu_count(),
        date=datetime.date.today().isoformat(),
        label=a.label,
    )
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=1))
    label = f" ({a.label})" if a.label else ""
    print(f"### Live page at display speed{label}\n")
    print(
        f"Measured {row['date']} on {row['cores']} cores; load average (1/5/15 min) "
        f"{' / '.join(f'{x:.2f}' for x in load0)} before, {' / '.join(f'{x:.2f}' for x in load1)} after.\n"
    )
    print(
        f"`{run}` @ step {step} (K {row['K']}, d_model {row['d_model']}, {row['n_layer']} layers) on /live in "
        f"headless Chromium, setting {a.fps:g} steps/s, frames and hidden attention on; "
        f"{row['span_s']:.1f} s measured over {row['episodes']} episode(s).\n"
    )
    print("| figure | measured | target | |")
    print("|---|---|---|---|")
    verdict = "**met**" if row["met"] else "**not met**"
    print(
        f"| env steps/s (worker, as the page received them) | {row['env_steps_per_s']:.1f} | >= {TARGET:g} | {verdict} |"
    )
    print(f"| display updates/s (new step shown) | {row['display_updates_per_s']:.1f} | | |")
    print(f"| distinct frames shown/s | {row['distinct_frames_per_s']:.1f} | | |")
    print(f"| env steps per display update | {row['steps_per_update']:.1f} | | |")
    print(
        f"| CPU while measuring: server (worker thread included) / browser | {row['server_cpu_pct']:.0f}% / "
        f"{row['browser_cpu_pct']:.0f}% of one core | | |"
    )
    if row["update_gap_ms_median"] is not None:
        print(
            f"| gap between display updates, median / p95 | {row['update_gap_ms_median']:.0f} ms / "
            f"{row['update_gap_ms_p95']:.0f} ms | | |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
