"""The dashboards (issue 6): components on a store made by a small real run, then the served
apps in real headless Chromium (screenshots under test-artifacts/)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def dash_store(hopper_small, tmp_path_factory):
    """Two small real runs (K 3 and K 5, frames 96x96, 40-step episodes) and one run whose
    metadata is corrupt, in one store, built once per session."""
    from dema_lab.train import TrainConfig, train

    reuse = os.environ.get("DEMA_LAB_TEST_DASH_STORE")       # developers: keep the store between sessions
    if reuse and (Path(reuse) / "runs" / "broken").exists():
        return reuse
    store = Path(reuse) if reuse else tmp_path_factory.mktemp("dash") / "store"
    base = TrainConfig(dataset=str(hopper_small), store=str(store), steps=20, run_id="tiny-K3",
                       **{**TINY_RUN, "render_size": 96, "eval_max_steps": 40})
    train(base, progress=False, log=lambda *_: None)
    train(dataclasses.replace(base, K=5, run_id="tiny-K5", eval_modes=["transformer"]), progress=False,
          log=lambda *_: None)
    broken = store / "runs" / "broken"
    shutil.copytree(store / "runs" / "tiny-K5", broken)
    text = (broken / "zarr.json").read_text()
    (broken / "zarr.json").write_text(text[: len(text) // 2])          # a truncated write
    return str(store)


# ---------------------------------------------------------------------------- components
def test_store_index_lists_runs_and_reports_the_unreadable_one(dash_store):
    from dema_lab.dashboard import StoreIndex

    index = StoreIndex(dash_store)
    good, bad = index.infos()
    assert [i.run_id for i in good] == ["tiny-K3", "tiny-K5"]
    assert list(bad) == ["broken"] and "cannot be read" in bad["broken"]
    k3 = good[0]
    assert k3.checkpoints == [10, 20] and {e.mode for e in k3.episodes} == {"transformer", "rnn"}
    ep = index.episode("tiny-K3", k3.episodes[0].name)
    assert ep.frames.shape[1:] == (96, 96, 3) and ep.attention.shape[2:] == (8, 8) and ep.tokens_per_step == 3


def test_explorer_scrub_changes_frame_heatmap_and_every_view(dash_store):
    import holoviews as hv
    import panel as pn
    from bokeh.document import Document

    from dema_lab.dashboard import AttentionExplorer

    ex = AttentionExplorer(dash_store)
    assert ex.run == "tiny-K5" and "broken" in ex.message and ex.episode.startswith("step_00000020")
    assert isinstance(ex.frame(), hv.RGB) and isinstance(ex.heatmap(), hv.Image)
    assert isinstance(ex.lag(), hv.Overlay) and isinstance(ex.traces() * ex.cursor(), hv.Overlay)
    pn.panel(ex).get_root(Document())                       # what a notebook or server renders
    before = ex.state()
    heat_fig = ex._panes["heatmap"].object
    img_before = heat_fig.renderers[0].data_source.data["image"][0].copy()
    ex.step = 12
    after = ex.state()
    assert after["step"] == 12 and after["frame"] != before["frame"] and after["heatmap"] != before["heatmap"]
    # the served figures were patched with exactly the data the HoloViews views hold
    img = heat_fig.renderers[0].data_source.data["image"][0]
    assert not np.array_equal(np.nan_to_num(img), np.nan_to_num(img_before))
    fresh = hv.render(ex.heatmap()).renderers[0].data_source.data["image"][0]
    np.testing.assert_array_equal(np.nan_to_num(img), np.nan_to_num(fresh))
    frame = hv.render(ex.frame()).renderers[0].data_source.data["image"][0]
    np.testing.assert_array_equal(ex._panes["frame"].object.renderers[0].data_source.data["image"][0], frame)
    assert "12" in ex._probe_div.text and after["frame"] in ex._probe_div.text
    # the trace's click moves the step; a heatmap click picks the query token
    ex._on_tap_trace(type("E", (), {"x": 5.2})())
    assert ex.step == 5
    ex._on_tap_heatmap(type("E", (), {"y": 0.5})())         # the bottom row: the current state token
    assert ex.query == "s0"
    ex._on_tap_heatmap(type("E", (), {"y": len(ex._ep.query_label) - 0.5})())     # the top row
    assert ex.query == ex._ep.query_label[0]


@pytest.mark.parametrize("mode", ["transformer", "rnn"])
def test_other_aggregations_are_recomputed_from_the_checkpoint(dash_store, mode):
    from dema_lab.analysis import right_align
    from dema_lab.dashboard import AttentionExplorer
    from dema_lab.rollout import replay_attention

    ex = AttentionExplorer(dash_store, run="tiny-K3")
    ex.run = "tiny-K3"
    ex.episode = f"step_00000020-{mode}-t0-e0"
    stored = ex.matrix().copy()
    ck = ex.index.checkpoint("tiny-K3", 20)
    ro = ex._ep.dataset.load()
    for step in (7, 3, 15):                                  # forward, back, forward again
        ex.step = step
        ex.aggregation = "minmax"
        np.testing.assert_allclose(ex.matrix(), ro.attention.values[step, 0], equal_nan=True)
        ex.aggregation = "abs"
        want = replay_attention(ck.model, ro, step, "abs", ck.extra["state_mean"].numpy(),
                                ck.extra["state_std"].numpy(), ck.meta["rtg_scale"])
        np.testing.assert_allclose(ex.matrix(), right_align(want, 8)[0], rtol=1e-5, atol=1e-7, equal_nan=True)
    ex.aggregation = "channel"
    ex.channel = 3
    assert ex.matrix().shape == stored.shape and np.nanmin(ex.matrix()) < 0 < np.nanmax(ex.matrix())
    assert "Cannot recompute" not in ex.message


def test_comparison_table_and_plots(dash_store):
    import holoviews as hv

    from dema_lab.dashboard import SequenceComparison

    comp = SequenceComparison(dash_store)
    df = comp.table
    assert list(df["K"]) == [3, 5] and (df["parameters"] > 0).all() and (df["train_seconds"] > 0).all()
    assert np.isfinite(df["score"]).all() and np.isfinite(df["step_macs"]).all()
    assert "broken" in comp.message
    for plot in (comp.score_plot(), comp.cost_plot(), comp.time_plot(), comp.decay_plot(), comp.half_life_plot()):
        assert isinstance(plot, (hv.Overlay, hv.Layout, hv.Bars)), type(plot)
        hv.render(plot)


def test_live_worker_streams_changing_frames_and_closes_its_env(dash_store):
    from dema_lab.dashboard import LiveRollout, RolloutWorker, StoreIndex

    ck = StoreIndex(dash_store).checkpoint("tiny-K3", 20)
    w = RolloutWorker(ck, "hopper", 3600.0, "rnn", "minmax", render_size=64, max_steps=15, fps=0)
    w.start()
    w.join(60)
    assert w.done and not w.error and w.env_closed and len(w.records) == 15
    assert len({r.frame.tobytes() for r in w.records}) > 5 and w.records[-1].attention.shape == (1, 8, 8)
    # stopping a paused rollout ends it and closes the env
    w = RolloutWorker(ck, "hopper", 3600.0, "transformer", "abs", render_size=64, fps=20)
    w.start()
    while len(w.records) < 3:
        time.sleep(0.02)
    w.pause()
    w.stop()
    assert w.done and w.env_closed and len(w.records) < 1000
    # the component: a finished rollout is saved to its (finished) run and reopens as an episode
    live = LiveRollout(dash_store, render_size=64)
    live.checkpoint, live.save, live.fps = "tiny-K3@20", True, 240.0
    live.start()
    deadline = time.time() + 120
    while not live.worker.done and time.time() < deadline:
        time.sleep(0.05)
    live._tick()
    assert live.status.startswith("finished"), (live.status, live.message)
    assert live.saved and live.saved in StoreIndex(dash_store).info("tiny-K3").episodes[-1].name
    assert live.message == ""


# ---------------------------------------------------------------------------- the browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`panel serve` of the three dashboards in a subprocess on 127.0.0.1."""

    def __init__(self, store: str, log: Path):
        self.port = _free_port()
        self.log = open(log, "w")
        apps = [str(ROOT / "dashboards" / f"{a}.py") for a in ("attention", "compare", "live")]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "panel", "serve", *apps, "--address", "127.0.0.1", "--port", str(self.port),
             "--allow-websocket-origin", f"127.0.0.1:{self.port}", "--liveness", "--args", "--store", store],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"})
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/liveness", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("panel serve did not start")

    def url(self, app: str) -> str:
        return f"http://127.0.0.1:{self.port}/{app}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


@pytest.fixture(scope="module")
def browser():
    pw_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make apt)")
    ARTIFACTS.mkdir(exist_ok=True)
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(dash_store):
    s = Server(dash_store, ARTIFACTS / "dashboards-server.log" if ARTIFACTS.exists() else Path(os.devnull))
    yield s
    s.stop()


class Page:
    """A page with its JavaScript errors, failed requests and requests leaving 127.0.0.1."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.errors, self.external = [], []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.on("request", lambda r: self.external.append(r.url)
                     if not r.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else None)
        self.page.goto(url, wait_until="load", timeout=90_000)

    def check_clean(self):
        assert not self.errors, self.errors
        assert not self.external, f"requests outside 127.0.0.1 (the page must work offline): {self.external}"

    def shot(self, name: str):
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _probe(page, css=".dema-probe span") -> dict:
    data = page.locator(css).evaluate("e => Object.assign({}, e.dataset)", timeout=2000)   # one consistent read
    return {k: data.get(k) for k in ("step", "frame", "heatmap", "return")}


def _wait_probe(page, predicate, css=".dema-probe span", timeout=30.0) -> dict:
    deadline = time.time() + timeout
    while True:
        try:
            state = _probe(page, css)
            if predicate(state):
                return state
        except Exception:  # noqa: BLE001 - not attached yet
            state = None
        if time.time() > deadline:
            raise AssertionError(f"timed out; last state {state}")
        page.wait_for_timeout(100)


def test_browser_explorer_loads_scrubs_and_plays(server, browser):
    p = Page(browser, server.url("attention"))
    page = p.page
    first = _wait_probe(page, lambda s: s["step"] == "0" and s["heatmap"] not in (None, "none"), timeout=60)
    page.get_by_text("cannot be read").first.wait_for(timeout=10_000)       # the broken run's message
    handle = page.locator(".dema-step-slider .noUi-handle")
    handle.focus()
    for _ in range(6):
        page.keyboard.press("ArrowRight")
    moved = _wait_probe(page, lambda s: s["step"] not in ("0", None))
    assert moved["frame"] != first["frame"] and moved["heatmap"] != first["heatmap"]
    page.wait_for_timeout(500)
    p.shot("attention-explorer")
    # the player advances the step on its own
    page.locator(".dema-player button").nth(5).click()          # ▶ play
    played = _wait_probe(page, lambda s: int(s["step"]) >= int(moved["step"]) + 3)
    assert played["frame"] != moved["frame"]
    page.locator(".dema-player button").nth(4).click()          # ⏸ pause
    p.check_clean()
    page.close()


def test_browser_presentation_mode_and_comparison(server, browser):
    p = Page(browser, server.url("attention") + "?presentation=1")
    _wait_probe(p.page, lambda s: s["heatmap"] not in (None, "none"), timeout=60)
    p.page.wait_for_timeout(500)
    p.shot("attention-presentation")
    p.check_clean()
    p.page.close()
    p = Page(browser, server.url("compare"))
    p.page.get_by_text("tiny-K5").first.wait_for(timeout=60_000)          # the runs table
    p.page.get_by_text("cannot be read").first.wait_for(timeout=10_000)   # the broken run's message
    p.page.wait_for_timeout(1500)
    p.shot("sequence-length")
    p.check_clean()
    p.page.close()


def test_browser_live_rollout_streams_changing_frames(server, browser):
    p = Page(browser, server.url("live"))
    page = p.page
    page.locator(".dema-live-start button").click(timeout=60_000)
    css = ".dema-live-probe span"
    a = _wait_probe(page, lambda s: s["step"] not in (None,) and int(s["step"]) >= 2, css=css, timeout=60)
    b = _wait_probe(page, lambda s: int(s["step"]) >= int(a["step"]) + 5, css=css)
    assert a["frame"] != b["frame"] and float(b["return"]) != float(a["return"])
    p.shot("live-rollout")
    page.locator(".dema-live-stop button").click()
    page.locator(".dema-live-status").get_by_text("stopped").wait_for(timeout=20_000)
    p.check_clean()
    page.close()


def test_browser_empty_store_page(browser, tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    s = Server(str(empty), tmp_path / "server.log")
    try:
        p = Page(browser, s.url("attention"))
        p.page.get_by_text("This store has no runs yet").wait_for(timeout=60_000)
        assert p.page.locator(".dema-demo-button button").is_visible()
        assert "Traceback" not in p.page.content()
        p.shot("empty-store")
        p.check_clean()
    finally:
        s.stop()
