"""Shared by the browser tests: `panel serve` of the dashboards in a subprocess (Server), a
Chromium page that records its console errors and requests leaving 127.0.0.1 (Page), and readers of
what a page shows (the explorer's probe, the laid-out Bokeh figures, whether a plot is drawn).

The `browser` fixture (tests/conftest.py) launches Debian's Chromium with CHROMIUM_ARGS."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("DEMA_LAB_SCREENSHOTS")  # e.g. docs/screenshots (relative to the repo)
SCREENSHOT_MAX_BYTES = 400_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`panel serve` of the three dashboards in a subprocess on 127.0.0.1."""

    def __init__(self, store: str, log: Path, args: tuple = (), env: dict | None = None):
        self.port = free_port()
        self.log_path = log
        self.log = open(log, "w")
        apps = [str(ROOT / "dashboards" / f"{a}.py") for a in ("attention", "compare", "live", "study")]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "panel",
                "serve",
                *apps,
                "--address",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--allow-websocket-origin",
                f"127.0.0.1:{self.port}",
                "--liveness",
                "--index",
                str(ROOT / "dema_lab" / "dashboard" / "index.html"),  # as `dema-lab serve` does
                # a closed browser tab's session is destroyed within about 2 s (default: 15-30 s)
                "--check-unused-sessions",
                "1000",
                "--unused-session-lifetime",
                "1000",
                "--args",
                "--store",
                store,
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "MUJOCO_GL": "egl", **(env or {})},
        )
        wait_until(self._answers, 90, "panel serve to answer /liveness", interval=0.2)

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/liveness", timeout=1)
            return True
        except OSError:
            return False

    def url(self, app: str) -> str:
        return f"http://127.0.0.1:{self.port}/{app}"

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


class Page:
    """A page with its JavaScript errors, failed requests and requests leaving 127.0.0.1."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.errors, self.external = [], []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.on(
            "request",
            lambda r: (
                self.external.append(r.url)
                if not r.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))
                else None
            ),
        )
        self.page.goto(url, wait_until="load", timeout=90_000)

    def check_clean(self):
        assert not self.errors, self.errors
        assert not self.external, f"requests outside 127.0.0.1 (the page must work offline): {self.external}"

    def shot(self, name: str, docs: bool = False):
        """test-artifacts/NAME.png; with docs, also $DEMA_LAB_SCREENSHOTS/NAME.png if that is set."""
        self.page.evaluate(SCROLL_TOP_JS)
        png = self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        if docs and SCREENSHOTS:
            out = ROOT / SCREENSHOTS / f"{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(png)
            assert len(png) < SCREENSHOT_MAX_BYTES, f"{out}: {len(png)} bytes"


def read_probe(page, css=".dema-probe span") -> dict:
    data = page.locator(css).evaluate("e => Object.assign({}, e.dataset)", timeout=2000)  # one consistent read
    return {k: data.get(k) for k in ("step", "frame", "heatmap", "return")}


def wait_probe(page, predicate, css=".dema-probe span", timeout=30.0) -> dict:
    deadline = time.time() + timeout
    while True:
        try:
            state = read_probe(page, css)
            if predicate(state):
                return state
        except Exception:  # noqa: BLE001 - not attached yet
            state = None
        if time.time() > deadline:
            raise AssertionError(f"timed out; last state {state}")
        page.wait_for_timeout(100)


def live_status(page) -> str:
    """The /live page's status line as shown ("Status: paused"), or "" while it is not drawn. Read
    at once, without waiting: the pane is redrawn whenever the status changes."""
    shown = page.locator(".dema-live-status").get_by_text(re.compile(r"Status:\s*\S"))
    return " ".join(t.strip() for t in shown.all_inner_texts())


def stop_live(page, timeout: float = 60.0) -> str:
    """Stop the /live page's rollout with its buttons and return the final status. Pause comes
    first: a paused rollout cannot end on its own, so Stop must then say "stopped". An untrained
    model's hopper may fall before the test gets here: the status then says "finished", which the
    Pause leaves as it is (and Stop has nothing left to stop)."""
    page.locator(".dema-live-pause button").click()
    wait_until(
        lambda: re.search(r"paused|finished after", live_status(page)), timeout, "the rollout to pause", interval=0.2
    )
    if "finished after" in live_status(page):
        return live_status(page)
    page.locator(".dema-live-stop button").click()
    wait_until(
        lambda: re.search(r"stopped after \d+ steps", live_status(page)), timeout, "the rollout to stop", interval=0.2
    )
    return live_status(page)


# Every Bokeh figure shown: its box on the page and its plot area (the frame inside the axes, as
# BokehJS laid it out; 0x0 when a figure is never laid out, although its box may look right).
FIGURES_JS = """() => {
  const out = [];
  for (const v of Bokeh.index.all_views()) {
    if (v.model.type !== 'Figure' || !v.el.isConnected || !v.el.checkVisibility()) continue;
    const r = v.el.getBoundingClientRect(), f = v.frame.bbox;
    const labels = [];
    for (const axis of [...v.model.below, ...v.model.left]) {
      const o = axis.major_label_overrides;
      if (o instanceof Map) labels.push(...o.values()); else if (o) labels.push(...Object.values(o));
    }
    out.push({title: v.model.title ? v.model.title.text : '', x: r.x, y: r.y, w: r.width, h: r.height,
              fx: r.x + f.x, fy: r.y + f.y, fw: f.width, fh: f.height, labels: labels.map(String)});
  }
  return {figures: out, width: document.documentElement.clientWidth,
          idle: Bokeh.documents.length > 0 && Bokeh.documents.every(d => d.is_idle)};
}"""
SCROLL_TOP_JS = (
    "() => { for (const e of document.querySelectorAll('*')) if (e.scrollTop) e.scrollTop = 0; window.scrollTo(0, 0); }"
)
MIN_PX = 150
EXPLORER_PLOTS = [
    r"step \d+",
    r"Hidden attention · .*",
    r".* by lag · .*",
    r"Reward and return-to-go .*",
    r"Paper's method · (layer \d+|mean of layers)",
    r"Paper's curve · .*",
    r"By key kind .*",
]
COMPARISON_PLOTS = [
    r"Normalized score vs K .*",
    r"Score vs K by model family .*",
    r"Half-life of attention vs K",
    r"Attention by lag .*",
    r"Parameters vs K",
    r"MACs per step vs K .*",
    r"Training time",
]
LIVE_PLOTS = [r"step \d+", r"Hidden attention · .*", r"Return", r"Actions"]


def page_figures(page, expected: list[str], timeout: float = 30.0) -> dict[str, dict]:
    """The page's figures by expected title (regex): each shown once, at a usable size, inside the
    window's width, not overlapping another, its plot area laid out."""
    deadline = time.time() + timeout

    def settled(got) -> bool:  # idle, and every expected figure shown (a busy machine lays out late)
        titles = [f["title"] for f in got["figures"]]
        return got["idle"] and all(sum(bool(re.fullmatch(p, t)) for t in titles) == 1 for p in expected)

    while not settled(got := page.evaluate(FIGURES_JS)) and time.time() < deadline:
        page.wait_for_timeout(200)
    figs = got["figures"]
    assert got["idle"], "BokehJS never finished rendering the page (and Panel then drops held updates)"
    titles = [f["title"] for f in figs]
    byname = {}
    for pattern in expected:
        hits = [f for f in figs if re.fullmatch(pattern, f["title"])]
        assert len(hits) == 1, f"plot {pattern!r}: {len(hits)} of the figures shown {titles}"
        byname[pattern] = hits[0]
    assert len(figs) == len(expected), f"unexpected figures: {titles}"
    for f in figs:
        what = f"{f['title']!r} at x {f['x']:.0f} y {f['y']:.0f}, {f['w']:.0f}x{f['h']:.0f}"
        assert f["w"] > MIN_PX and f["h"] > MIN_PX, f"{what}: too small"
        assert f["fw"] > MIN_PX and f["fh"] > MIN_PX, (
            f"{what}: its plot area is {f['fw']:.0f}x{f['fh']:.0f} (not laid out)"
        )
        assert f["x"] >= 0 and f["x"] + f["w"] <= got["width"] + 0.5, (
            f"{what}: outside the window's width {got['width']}"
        )
    for i, a in enumerate(figs):
        for b in figs[i + 1 :]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            assert dx <= 1 or dy <= 1, f"{a['title']!r} and {b['title']!r} overlap by {dx:.0f}x{dy:.0f} px"
    return byname


def assert_drawn(page, figures: dict[str, dict]):
    """Each plot area, as the screen shows it, holds a drawing (not one flat colour)."""
    import imageio.v3 as iio

    for f in figures.values():
        page.evaluate(
            "t => { for (const v of Bokeh.index.all_views()) if (v.model.type === 'Figure' && "
            "v.model.title && v.model.title.text === t) v.el.scrollIntoView({block: 'nearest'}); }",
            f["title"],
        )
        f = next(g for g in page.evaluate(FIGURES_JS)["figures"] if g["title"] == f["title"])
        img = iio.imread(
            io.BytesIO(page.screenshot(clip={"x": f["fx"], "y": f["fy"], "width": f["fw"], "height": f["fh"]}))
        )[..., :3]
        px = img.reshape(-1, 3)
        colours, counts = np.unique(px, axis=0, return_counts=True)
        ink = 1 - counts.max() / len(px)  # share of pixels not in the commonest colour
        assert len(colours) >= 8 and ink > 0.01, (
            f"plot {f['title']!r} looks blank ({len(colours)} colours, {100 * ink:.1f}% not background)"
        )
    page.evaluate(SCROLL_TOP_JS)


STUDY_PLOTS = [r"normalized score against K \(transformer-like, last checkpoint\)"]
