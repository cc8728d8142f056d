"""The dashboards: components on a store made by a small real run, then the served
apps in real headless Chromium (screenshots under test-artifacts/).

The browser tests check what a person sees, not only the server's state: every main plot is laid
out at a usable size inside the window, drawn, not overlapping another, and the step text follows
the slider. With DEMA_LAB_SCREENSHOTS=docs/screenshots they also write the README's screenshots
there (1600x1000, under 400 KB each)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until
from helpers.browser import (
    ARTIFACTS,
    COMPARISON_PLOTS,
    EXPLORER_PLOTS,
    FIGURES_JS,
    LIVE_PLOTS,
    STUDY_PLOTS,
    Page,
    Server,
    assert_drawn,
    live_status,
    page_figures,
    read_probe,
    stop_live,
    wait_probe,
)


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


def test_store_index_of_a_missing_or_empty_store_is_empty_and_of_a_file_an_error(tmp_path):
    from dema_lab.dashboard import StoreIndex
    from dema_lab.store.errors import StoreError

    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "missing", tmp_path / "empty"):
        index = StoreIndex(str(path))
        assert index.is_empty() and index.run_ids() == [] and not index.unreadable
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        StoreIndex(str(tmp_path / "a-file")).is_empty()


def test_store_index_logs_are_the_stores_and_follow_new_publications(tmp_path):
    """StoreIndex.log gives what RunStore reads, once per version: a new training-log segment, a
    progress update or a rewritten group (its slot moves) is read again."""
    import xarray as xr

    from dema_lab.dashboard import StoreIndex
    from dema_lab.store.zarr_store import RunStore

    run = RunStore(str(tmp_path / "s"), mode="a").create_run("r", {"arch": "dema"}, {"env": "hopper"})

    def segment(first, n, value):
        steps = np.arange(first, first + n)
        return xr.Dataset({"loss": ("step", np.full(n, value))}, coords={"step": steps})

    run.write("train", "steps_00000001_00000005", segment(1, 5, 1.0))
    index = StoreIndex(str(tmp_path / "s"))
    first = index.log("r", "train")
    xr.testing.assert_identical(first, run.train_metrics())
    assert index.log("r", "train") is first  # cached
    assert StoreIndex(str(tmp_path / "s")).log("r", "train") is first  # by every index of the process
    run.write("train", "steps_00000006_00000010", segment(6, 5, 2.0))
    grown = index.log("r", "train")
    assert list(grown.step.values) == list(range(1, 11)) and grown.loss.values[-1] == 2.0
    run.set_attrs(steps_done=10)
    assert index.log("r", "train") is not grown  # progress: read again
    again = index.log("r", "train")
    run.write("train", "steps_00000006_00000010", segment(6, 5, 3.0))  # rewritten: a new slot
    xr.testing.assert_identical(index.log("r", "train"), run.train_metrics())
    assert index.log("r", "train").loss.values[-1] == 3.0 and again.loss.values[-1] == 2.0
    assert index.log("r", "eval").sizes == run.evals().sizes and index.log("r", "decay").sizes == {}


def test_explorer_scrub_changes_frame_heatmap_and_every_view(dash_store):
    import holoviews as hv
    import panel as pn
    from bokeh.document import Document
    from bokeh.models import Span

    from dema_lab.dashboard import AttentionExplorer

    view = AttentionExplorer(dash_store)
    ex = view.state
    assert ex.run == "tiny-K5" and "broken" in ex.message and ex.episode.startswith("step_00000020")
    assert isinstance(view.frame(), hv.RGB) and isinstance(view.heatmap(), hv.Image)
    assert isinstance(view.lag(), hv.Overlay) and isinstance(view.traces(), hv.Overlay)
    pn.panel(view).get_root(Document())  # what a notebook or server renders
    traces = view._panes["traces"].object  # reward on its own axis, not flat on the return's
    assert [a.axis_label for a in traces.yaxis] == ["return", "reward per step"]
    # it opens mid-episode with a full window (dema_lab.analysis.opening_step), cursor there
    n, K = ex.episode_data.n_steps, ex.index.info(ex.run).config["K"]
    assert ex.step == max(n // 2, K - 1) and K - 1 <= ex.step < n
    assert set(traces.extra_y_ranges) == {"reward"} and traces.select_one({"type": Span}).location == ex.step
    before = view.snapshot()
    heat_fig = view._panes["heatmap"].object
    img_before = heat_fig.renderers[0].data_source.data["image"][0].copy()
    ex.step = 3
    after = view.snapshot()
    assert after["step"] == 3 and after["frame"] != before["frame"] and after["heatmap"] != before["heatmap"]
    # the served figures were patched with exactly the data the HoloViews views hold
    img = heat_fig.renderers[0].data_source.data["image"][0]
    assert not np.array_equal(np.nan_to_num(img), np.nan_to_num(img_before))
    fresh = hv.render(view.heatmap()).renderers[0].data_source.data["image"][0]
    np.testing.assert_array_equal(np.nan_to_num(img), np.nan_to_num(fresh))
    frame = hv.render(view.frame()).renderers[0].data_source.data["image"][0]
    np.testing.assert_array_equal(view._panes["frame"].object.renderers[0].data_source.data["image"][0], frame)
    assert "3" in view._probe_div.text and after["frame"] in view._probe_div.text
    assert "step <b>3</b>" in view._info_div.text and traces.select_one({"type": Span}).location == 3
    # the trace's click moves the step; a heatmap click picks the query token
    view._on_tap_trace(type("E", (), {"x": 5.2})())
    assert ex.step == 5
    view._on_tap_heatmap(type("E", (), {"y": 0.5})())  # the bottom row: the current state token
    assert ex.query == "s0"
    view._on_tap_heatmap(type("E", (), {"y": len(ex.episode_data.query_label) - 0.5})())  # the top row
    assert ex.query == ex.episode_data.query_label[0]


@pytest.mark.parametrize("mode", ["transformer", "rnn"])
def test_other_aggregations_are_recomputed_from_the_checkpoint(dash_store, mode):
    from dema_lab.analysis import right_align
    from dema_lab.dashboard import AttentionExplorer
    from dema_lab.evaluation.rollout import replay_attention

    view = AttentionExplorer(dash_store, run="tiny-K3")
    ex = view.state
    ex.run = "tiny-K3"
    ex.episode = f"step_00000020-{mode}-t0-e0"
    stored = ex.matrix().copy()
    ck = ex.index.checkpoint("tiny-K3", 20)
    ro = ex.episode_data.dataset.load()
    for step in (7, 3, 15):  # forward, back, forward again
        ex.step = step
        ex.aggregation = "minmax"
        np.testing.assert_allclose(ex.matrix(), ro.attention.values[step, 0], equal_nan=True)
        ex.aggregation = "abs"
        want = replay_attention(
            ck.model,
            ro,
            step,
            "abs",
            ck.extra["state_mean"].numpy(),
            ck.extra["state_std"].numpy(),
            ck.meta["rtg_scale"],
        )
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
    assert np.isfinite(df["last_score"]).all() and np.isfinite(df["step_macs"]).all()
    # the scores are dema_lab.analysis.scoring's: mean over targets of the episodes' mean, last and best checkpoint
    for _, row in df.iterrows():
        ns = comp.index.run(row.run).evals()["normalized_score"].sel(mode="transformer").mean("episode")
        assert row.last_score == pytest.approx(float(ns.isel(checkpoint=-1).mean()))
        assert row.best_score == pytest.approx(float(ns.max("checkpoint").mean()))
    assert "broken" in comp.message
    for plot in (comp.score_plot(), comp.cost_plot(), comp.time_plot(), comp.decay_plot(), comp.half_life_plot()):
        assert isinstance(plot, (hv.Overlay, hv.Layout, hv.Bars)), type(plot)
        hv.render(plot)
    # sizes on a linear axis start at 0: parameters equal across K draw a flat line, not noise
    # around them on an axis a few units tall; MACs stay on a log axis
    params = hv.render(comp.parameters_plot())
    assert params.y_range.start == 0 and params.y_range.end == pytest.approx(1.15 * df["parameters"].max())
    assert hv.render(comp.half_life_plot()).y_range.start == 0
    assert type(hv.render(comp.macs_plot()).y_scale).__name__ == "LogScale"
    # the table prints scores to 0.1 and counts with separators; K and the run id as they are
    shown = comp.table_view().object
    row = df.iloc[0]
    cell = shown.iloc[0]
    assert cell["last score (final checkpoint)"] == f"{row['last_score']:.1f}"
    assert cell["parameters"] == f"{row['parameters']:,.0f}" and "," in cell["parameters"]
    assert cell["steps"] == f"{row['steps']:,}" and cell["K"] == row["K"] and cell["run"] == row["run"]
    assert cell["train_seconds"] == f"{row['train_seconds']:.2f}"


def test_comparison_of_dema_dt_and_layouts(tiny_config):
    # the comparison page on runs that differ in model, layout and timestep embedding, not only K
    import holoviews as hv

    from dema_lab.dashboard import SequenceComparison
    from dema_lab.training import train

    cfg = tiny_config.replace(eval_modes=["transformer"], render_size=0)
    for change in (
        dict(run_id="dema-K3"),
        dict(run_id="dema-K5", K=5),
        dict(run_id="dema-bl3d", layout="BL3D"),
        dict(run_id="dt-K3", arch="dt"),
    ):
        train(cfg.replace(**change), progress=False, log=lambda *_: None)
    comp = SequenceComparison(cfg.run.store)
    df = comp.table.set_index("run")
    assert not comp.bad and comp.message == ""
    assert df.family.to_dict() == {
        "dema-K3": "DeMa B3LD",
        "dema-K5": "DeMa B3LD",
        "dema-bl3d": "DeMa BL3D",
        "dt-K3": "DT B3LD +t-emb",
    }
    assert df.loc["dt-K3", "parameters"] > df.loc["dema-K3", "parameters"]
    assert np.isfinite(df.last_score).all() and np.isfinite(df.best_score).all() and np.isfinite(df.step_macs).all()
    assert np.isfinite(df.half_life_steps).all()  # DT's is from its softmax attention (heads)
    score = comp.score_plot()
    labels = {el.label for el in score}
    assert labels == {f"{f} · {m}" for f in ("DeMa B3LD", "DeMa BL3D", "DT B3LD +t-emb") for m in ("last", "best")}
    decay = comp.decay_plot()  # hidden attention and DT's overlaid
    # each curve is named by its run's family and K (the run ids are in the table)
    assert {el.label for el in decay} == {"DeMa B3LD K=3", "DeMa B3LD K=5", "DeMa BL3D K=3", "DT B3LD +t-emb K=3"}
    assert not comp.bad
    for plot in (score, comp.cost_plot(), comp.time_plot(), decay, comp.half_life_plot()):
        hv.render(plot)


def test_study_report_lists_findings_tables_and_the_unreadable_run(dash_store):
    import holoviews as hv
    import panel as pn

    from dema_lab.dashboard import StudyReport
    from dema_lab.dashboard.study.view import ALL_RUNS

    study = StudyReport(dash_store, latency=False)
    assert study.param.sweep.objects == [ALL_RUNS] and study.sweep == ALL_RUNS  # no sweep: every finished run
    rep = study.report()
    assert sorted(rep.runs.run) == ["tiny-K3", "tiny-K5"] and "broken" in rep.skipped
    summary = study._summary()
    from test_escaping import texts_of

    text = texts_of([summary])  # what the page shows (store strings in the Markdown are escaped)
    assert "2 finished runs" in text and "broken" in text and "each target's best checkpoint" in text
    assert "Transformer-like DeMa beats RNN-like DeMa" in text and "A short K (8–20) is enough" in text
    plot = next(p.object for p in summary.objects if isinstance(p, pn.pane.HoloViews))
    hv.render(plot)
    assert plot.get(0).data["K"].tolist() == [3, 5]
    frames = [p.object for p in study._tables().objects if isinstance(p, pn.pane.DataFrame)]
    assert len(frames) == len(rep.tables) >= 4
    by_k = frames[0]
    assert list(by_k.columns) == ["dataset", "3 / last", "3 / best", "5 / last", "5 / best"], by_k.columns
    runs = rep.runs.set_index("run")
    assert by_k.iloc[0]["3 / last"] == f"{runs.loc['tiny-K3', 'score_transformer']:.1f}"
    assert by_k.iloc[0]["5 / best"] == f"{runs.loc['tiny-K5', 'best_score_transformer']:.1f}"


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
    wait_until(lambda: len(w.records) >= 3, 60, "three records of the rollout", interval=0.02)
    w.pause()
    w.stop()
    assert w.done and w.env_closed and len(w.records) < 1000
    # the component: a finished rollout is saved to its (finished) run and reopens as an episode
    view = LiveRollout(dash_store, render_size=64)
    live = view.state
    live.checkpoint, live.save, live.fps = "tiny-K3@20", True, 240.0
    view.start()
    wait_until(lambda: live.worker.done, 120, "the live rollout to finish")
    view._tick()
    assert live.status.startswith("finished"), (live.status, live.message)
    assert live.saved and live.saved in StoreIndex(dash_store).info("tiny-K3").episodes[-1].name
    assert live.message == ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"  # a zombie has exited
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("guarded", [True, False])
def test_the_demo_child_dies_with_the_server_however_it_dies(guarded):
    # the dashboard trains the demo in a child process; a server stopped by SIGTERM runs no
    # atexit hooks, so the kernel has to stop the child (the unguarded case shows the difference)
    code = (
        "import subprocess, sys, time\n"
        + ("from dema_lab.common.process import stop_with_parent\n" if guarded else "")
        + f"p = subprocess.Popen(['sleep', '120'], preexec_fn={'stop_with_parent()' if guarded else 'None'})\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.terminate()
        parent.wait(10)
        deadline = time.time() + 5
        while _alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert _alive(child) != guarded
    finally:
        if _alive(child):
            os.kill(child, 15)


# ---------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def server(dash_store, tmp_path_factory):
    ARTIFACTS.mkdir(exist_ok=True)
    checkpoints = tmp_path_factory.mktemp("checkpoints")  # where /live's file field may read
    s = Server(dash_store, ARTIFACTS / "dashboards-server.log", args=("--checkpoint-dir", str(checkpoints)))
    s.checkpoint_dir = checkpoints
    yield s
    s.stop()


def _wait_stable_probe(page, css=".dema-probe span", gap: float = 1.0, timeout: float = 15.0) -> dict:
    """The probe once two reads `gap` seconds apart agree (within `timeout`)."""
    deadline = time.time() + timeout
    last = read_probe(page, css)
    while True:
        time.sleep(gap)
        now = read_probe(page, css)
        if now == last:
            return now
        if time.time() > deadline:
            raise AssertionError(f"the page did not settle: {last} then {now}")
        last = now


def _shown_steps(page) -> dict:
    """The step as the slider, the text above the plots and the frame's title show it."""
    slider = page.locator(".dema-step-slider .bk-slider-value").inner_text(timeout=5000)
    info = page.locator(".dema-step-info .bk-clearfix").inner_text(timeout=5000)
    m = re.search(r"^step (\d+) ·", info, re.M)
    frame = [f["title"] for f in page.evaluate(FIGURES_JS)["figures"] if re.fullmatch(r"step \d+", f["title"])]
    return {"slider": slider.strip(), "text": m and m.group(1), "frame": frame[0][5:] if frame else None}


def _wait_steps_agree(page, step: int | None = None, timeout: float = 20.0) -> int:
    """Wait until the step text and the frame's title show the slider's step (that step, if given)."""
    deadline = time.time() + timeout
    while True:
        shown = _shown_steps(page)
        if len(set(shown.values())) == 1 and (step is None or shown["slider"] == str(step)):
            return int(shown["slider"])
        if time.time() > deadline:
            raise AssertionError(
                f"the step shown does not follow the slider{'' if step is None else f' ({step})'}: {shown}"
            )
        page.wait_for_timeout(100)


def _scrub_to(page, step: int):
    """Move the slider with the keyboard, as a person does."""
    handle = page.locator(".dema-step-slider .noUi-handle")
    handle.focus()
    for _ in range(200):
        now = round(float(handle.get_attribute("aria-valuenow")))
        if now == step:
            return
        page.keyboard.press("ArrowRight" if now < step else "ArrowLeft")
    raise AssertionError(f"the slider did not reach step {step}")


def _show_middle(page) -> int:
    """Scrub to the middle of the episode and check that every explorer plot is drawn there."""
    middle = _middle_step(page)
    _scrub_to(page, middle)
    wait_probe(page, lambda s: s["step"] == str(middle))
    _wait_steps_agree(page, middle)
    assert_drawn(page, page_figures(page, EXPLORER_PLOTS))
    page.wait_for_timeout(300)
    return middle


def _middle_step(page) -> int:
    """A step in the middle of the episode (its attention window is full there)."""
    return round(float(page.locator(".dema-step-slider .noUi-handle").get_attribute("aria-valuemax"))) // 2


def test_browser_explorer_loads_scrubs_and_plays(server, browser):
    p = Page(browser, server.url("attention"))
    page = p.page
    first = wait_probe(page, lambda s: s["heatmap"] not in (None, "none"), timeout=60)
    # it opens mid-episode, where the window is full (dema_lab.analysis.opening_step; K 5 here)
    n_steps = round(float(page.locator(".dema-step-slider .noUi-handle").get_attribute("aria-valuemax"))) + 1
    assert first["step"] == str(max(n_steps // 2, 4)), (first, n_steps)
    page.get_by_text("cannot be read").first.wait_for(timeout=10_000)  # the broken run's message
    figures = page_figures(page, EXPLORER_PLOTS)
    assert_drawn(page, figures)
    heat = figures[EXPLORER_PLOTS[1]]
    assert {"R0", "s0", "a-1", "s-1"} <= set(heat["labels"]), heat["labels"]  # R/s/a token ticks
    _scrub_to(page, 6)
    moved = wait_probe(page, lambda s: s["step"] == "6")
    assert moved["frame"] != first["frame"] and moved["heatmap"] != first["heatmap"]
    _wait_steps_agree(page, 6)
    # the player advances the step on its own; the text follows it
    page.locator(".dema-player button").nth(5).click()  # ▶ play
    played = wait_probe(page, lambda s: int(s["step"]) >= int(moved["step"]) + 3)
    assert played["frame"] != moved["frame"]
    page.locator(".dema-player button").nth(4).click()  # ⏸ pause
    assert _wait_steps_agree(page) >= 9
    # the middle of the episode: the window of tokens is full, the heatmap filled
    middle = _show_middle(page)
    p.shot("attention-explorer", docs=True)
    # the episode downloads as an mp4 of its frames
    import imageio.v3 as iio

    with page.expect_download(timeout=60_000) as got:
        page.locator(".dema-video button").click()
    assert re.fullmatch(r"tiny-K\d-step_\d{8}-\w+-t\d-e\d\.mp4", got.value.suggested_filename)
    got.value.save_as(ARTIFACTS / "explorer-episode.mp4")
    video = iio.imread(ARTIFACTS / "explorer-episode.mp4")
    assert video.shape[0] > middle and video.shape[1:] == (96, 96, 3) and video.std() > 0
    p.check_clean()
    page.close()


def _wait_url(page, **expected) -> dict:
    """Wait until the page's URL carries the expected query settings; its settings."""
    from urllib.parse import parse_qs, urlparse

    deadline = time.time() + 30
    while True:
        q = {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}
        if all(q.get(k) == str(v) for k, v in expected.items()):
            return q
        if time.time() > deadline:
            raise AssertionError(f"the URL {page.url} does not carry {expected}")
        page.wait_for_timeout(100)


def test_browser_every_view_round_trips_through_its_url(server, browser):
    """A view's state is in its URL as it changes, and opening that URL shows the same view
    (presentation mode included): a presenter can bookmark the exact view of a talk."""
    p = Page(browser, server.url("attention") + "?presentation=1&run=tiny-K3&step=5&layer=0")
    page = p.page
    wait_probe(page, lambda s: s["step"] == "5" and s["heatmap"] not in (None, "none"), timeout=60)
    # the view writes the rest of its state into the URL after it has drawn (later on a loaded machine)
    every = {"checkpoint", "episode", "layer", "aggregation", "query"}
    deadline = time.time() + 30
    while not every <= set(q := _wait_url(page, run="tiny-K3", step=5, presentation=1)) and time.time() < deadline:
        page.wait_for_timeout(200)
    assert every <= set(q), q
    _scrub_to(page, 8)
    q = _wait_url(page, step=8, presentation=1)
    bookmark = page.url
    p.check_clean()
    page.close()
    p = Page(browser, bookmark)  # the bookmark opens the same view
    page = p.page
    shown = wait_probe(page, lambda s: s["step"] == "8" and s["heatmap"] not in (None, "none"), timeout=60)
    assert page.locator(".dema-step-slider .noUi-handle").get_attribute("aria-valuenow").startswith("8")
    assert _wait_url(page, **q) and shown["step"] == "8"
    assert "tiny-K3" in page.locator("select").first.input_value()
    p.check_clean()
    page.close()
    # the other pages carry their settings too, and read them back
    for path, setting, written in (
        ("compare", {"mode": "rnn"}, "query_kind"),
        ("study", {"latency": "false"}, "sweep"),
        ("live", {"fps": "7.0", "mode": "rnn"}, "env"),
    ):
        query = "&".join(f"{k}={v}" for k, v in setting.items())
        p = Page(browser, server.url(path) + f"?presentation=1&{query}")
        deadline = time.time() + 30
        while written not in (got := _wait_url(p.page, presentation=1, **setting)) and time.time() < deadline:
            p.page.wait_for_timeout(200)
        assert written in got, f"/{path} writes only what it was given: {got}"
        p.check_clean()
        p.page.close()


def test_browser_index_page_lists_the_pages_offline(server, browser):
    p = Page(browser, server.url(""))
    links = p.page.locator(".dema-index-page")
    links.first.wait_for(timeout=30_000)
    assert [links.nth(i).get_attribute("href").rsplit("/", 1)[-1] for i in range(links.count())] == [
        "attention",
        "compare",
        "live",
        "study",
    ]
    p.check_clean()
    p.page.close()


def test_browser_presentation_mode_and_comparison(server, browser):
    p = Page(browser, server.url("attention") + "?presentation=1")
    page = p.page
    wait_probe(page, lambda s: s["heatmap"] not in (None, "none"), timeout=60)
    _show_middle(page)
    p.shot("attention-presentation", docs=True)
    p.check_clean()
    page.close()
    for url in (server.url("compare"), server.url("compare") + "?presentation=1"):
        p = Page(browser, url)
        page = p.page
        page.get_by_text("tiny-K5").first.wait_for(timeout=60_000)  # the runs table
        page.get_by_text("cannot be read").first.wait_for(timeout=10_000)  # the broken run's message
        page.wait_for_timeout(1000)
        assert_drawn(page, page_figures(page, COMPARISON_PLOTS))
        if "presentation" not in url:
            p.shot("sequence-length", docs=True)
        p.check_clean()
        page.close()


def test_browser_live_rollout_streams_changing_frames(server, browser):
    # 4 steps a second (set from the URL), and stopped while paused: the tiny model's episode
    # (13 steps or more) cannot end between what the page last showed and a click, even on a
    # loaded machine
    p = Page(browser, server.url("live") + "?fps=4")
    page = p.page
    status = page.locator(".dema-live-status")
    page.get_by_text(re.compile(r"Max steps per second:\s*4(\.0)?$")).first.wait_for(timeout=60_000)
    page.locator(".dema-live-start button").click(timeout=60_000)
    css = ".dema-live-probe span"
    a = wait_probe(page, lambda s: s["step"] not in (None,) and int(s["step"]) >= 1, css=css, timeout=60)
    b = wait_probe(page, lambda s: int(s["step"]) >= int(a["step"]) + 3, css=css)
    assert a["frame"] != b["frame"] and float(b["return"]) != float(a["return"])
    page.locator(".dema-live-pause button").click()  # paused: the rollout holds still
    status.get_by_text("paused").wait_for(timeout=20_000)
    # the last record made before the pause may reach the page a little later on a loaded
    # machine: wait until the shown step settles, then it must hold still
    held = _wait_stable_probe(page, css)
    time.sleep(1.5)
    assert read_probe(page, css) == held
    assert_drawn(page, page_figures(page, LIVE_PLOTS))
    page.locator(".dema-live-pause button").click()  # resumed: it goes on
    wait_probe(page, lambda s: int(s["step"]) >= int(held["step"]) + 2, css=css)
    page.locator(".dema-live-pause button").click()  # paused again, then stopped
    status.get_by_text("paused").wait_for(timeout=20_000)
    p.shot("live-rollout", docs=True)
    page.locator(".dema-live-stop button").click()
    status.get_by_text("stopped").wait_for(timeout=60_000)
    p.check_clean()
    page.close()


def test_browser_live_runs_a_checkpoint_imported_from_the_official_code(server, browser, hopper_small, tmp_path):
    """A model_iter*.pkl written as the official DeMa code writes it (AdamW object included),
    imported with `dema-lab import --out`, typed into /live's file field, runs: frames change, and
    the heatmap's tokens follow its (R, a, s) order."""
    from helpers.official import official_dema_sd, save_official

    from dema_lab.cli.main import main

    pkl = save_official(official_dema_sd(seed=7), tmp_path / "model_iter9.pkl")
    out = server.checkpoint_dir / "official.safetensors"  # the field reads only the store and --checkpoint-dir
    assert main(["import", str(pkl), "--dataset", str(hopper_small), "--K", "4", "--out", str(out)]) == 0
    # 2 steps a second: the untrained model's hopper falls within seconds, and the pause below
    # must come before the episode's end even on a loaded machine
    p = Page(browser, server.url("live") + "?fps=2")
    page = p.page
    page.get_by_text(re.compile(r"Max steps per second:\s*2(\.0)?$")).first.wait_for(timeout=60_000)
    field = page.get_by_placeholder("/path/to/checkpoint.safetensors")
    field.fill(str(out))
    field.press("Enter")
    page.locator(".dema-live-start button").click(timeout=60_000)
    css = ".dema-live-probe span"
    a = wait_probe(page, lambda s: s["step"] not in (None,) and int(s["step"]) >= 1, css=css, timeout=60)
    b = wait_probe(page, lambda s: int(s["step"]) >= int(a["step"]) + 1, css=css)
    assert a["frame"] != b["frame"]
    page.locator(".dema-live-pause button").click()
    page.locator(".dema-live-status").get_by_text("paused").wait_for(timeout=20_000)
    figs = page_figures(page, LIVE_PLOTS)
    labels = set(figs[r"Hidden attention · .*"]["labels"])
    assert {"R0", "a-1", "s0"} <= labels, sorted(labels)
    page.locator(".dema-live-stop button").click()
    page.locator(".dema-live-status").get_by_text("stopped").wait_for(timeout=60_000)
    p.check_clean()
    page.close()


def test_browser_live_sessions_run_side_by_side_and_a_closed_one_stops(server, browser):
    # two browser sessions, each with its own rollout, 3 steps a second
    pages = [Page(browser, server.url("live") + "?fps=3") for _ in range(2)]
    css = ".dema-live-probe span"
    for p in pages:
        p.page.locator(".dema-live-start button").click(timeout=60_000)
    for p in pages:
        a = wait_probe(p.page, lambda s: s["step"] is not None and int(s["step"]) >= 1, css=css, timeout=60)
        wait_probe(p.page, lambda s, a=a: int(s["step"]) >= int(a["step"]) + 2, css=css)
    # The closed tab's rollout is paused first, so that it cannot end on its own while the server
    # notices the closed tab: the server must then stop it. An untrained hopper may have fallen
    # before the Pause on a loaded machine: the server then says the rollout had ended.
    first = pages[0].page
    first.locator(".dema-live-pause button").click()
    shown = wait_until(
        lambda: re.search(r"paused|finished after", live_status(first)) and live_status(first),
        60,
        "the first rollout to pause",
        interval=0.2,
    )
    expected = "had ended" if "finished after" in shown else "stopped"
    closed = re.compile(r"closed: its live rollout (stopped|had ended) after (\d+) steps; env closed: (\w+)")

    def quiet_count():  # the lines once 3 s pass without a new one (an earlier test's closed tabs)
        n = len(closed.findall(server.log_text()))
        time.sleep(3)
        return len(closed.findall(server.log_text())) == n and [n]

    (before,) = wait_until(quiet_count, 60, "the server log to settle")
    first.close()
    # the server destroys the closed session: its rollout stops and its env is closed ...
    found = wait_until(
        lambda: closed.findall(server.log_text())[before:],
        150,
        "the server to destroy the closed tab's session",
        interval=0.3,
    )
    assert found == [(expected, found[0][1], "True")], (shown, found)
    # ... while the other session's rollout goes on (or its hopper falls, after more steps)
    second = pages[1].page
    now = int(read_probe(second, css)["step"])
    wait_until(
        lambda: int(read_probe(second, css)["step"]) >= now + 2 or "finished after" in live_status(second),
        60,
        "the other rollout to go on",
        interval=0.2,
    )
    assert re.search(r"(stopped|finished) after \d+ steps", stop_live(second))
    pages[1].check_clean()
    second.close()


def test_browser_study_report(server, browser):
    p = Page(browser, server.url("study"))
    page = p.page
    page.get_by_text("Which of the paper's findings hold").wait_for(timeout=90_000)
    page.get_by_text("2 finished runs").first.wait_for(timeout=10_000)
    findings = page.locator(".dema-study-findings")
    for scoring in ("best checkpoint (the paper's scoring)", "last checkpoint (dema-lab's)"):  # side by side
        findings.get_by_text(f"Transformer-like DeMa beats RNN-like DeMa · {scoring}").wait_for(timeout=10_000)
    page.get_by_text("is left out").first.wait_for(timeout=10_000)  # the broken run, named
    page.locator(".dema-study-table table").first.wait_for(timeout=30_000)
    assert page.locator(".dema-study-table table").count() >= 4
    assert_drawn(page, page_figures(page, STUDY_PLOTS))
    p.shot("study-report", docs=True)
    p.check_clean()
    page.close()


def _demo_children(server: int) -> list[int]:
    """The processes multiprocessing spawned for `server` (the demo's; not its resource tracker)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(") ", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server and "spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def test_browser_empty_store_page_and_its_demo_button(browser, tmp_path, hopper_small):
    empty = tmp_path / "no-store-yet"  # a path that does not exist yet (`dema-lab serve` on
    assert not empty.exists()  # a fresh clone): the same page as an empty directory
    # The demo's dataset cache, in which the small hopper-medium (the same builder and policy, so
    # current) stands for the default dataset: the demo finds it built, and the user's cache is
    # neither read nor written.
    cache = tmp_path / "datasets"
    cache.mkdir()
    shutil.copy(hopper_small, cache / "hopper-medium.hdf5")
    s = Server(str(empty), tmp_path / "server.log", env={"DEMA_LAB_DATA": str(cache)})
    try:
        p = Page(browser, s.url("attention"))
        page = p.page
        page.get_by_text("This store has no runs yet").wait_for(timeout=60_000)
        assert page.locator(".dema-demo-button button").is_visible()
        assert "Traceback" not in page.content()
        p.shot("empty-store")
        p.check_clean()
        # the button trains the demo runs in a child process and shows its progress
        page.locator(".dema-demo-button button").click(timeout=60_000)
        # "NN% · what it is doing" (Panel's panes live in shadow roots: get_by_text pierces them)
        status = page.get_by_text(
            re.compile(
                r"\d+% · (starting the demo runs|building the default dataset|"
                r"training demo-dema-K10)"
            )
        )
        status.first.wait_for(timeout=60_000)
        text = status.first.inner_text()
        p.shot("demo-button-progress")
        trainer = _demo_children(s.proc.pid)
        assert len(trainer) == 1, trainer  # the training runs in a child process
        # the explorer replaces the page as soon as the first run is in the store
        page.get_by_text("This store has no runs yet").wait_for(state="detached", timeout=240_000)
        page.locator("option", has_text="demo-dema-K10").first.wait_for(state="attached", timeout=180_000)
        # and shows the training's progress above its tabs while the demo goes on
        page.get_by_text(re.compile(r"demo-dema-K10: \d+/2000 steps \(running\)")).first.wait_for(timeout=60_000)
        p.shot("demo-explorer-while-training")
        p.check_clean()
    finally:
        s.stop()
    # the server gone (SIGTERM, no atexit hooks), its demo training stops too
    wait_until(
        lambda: not any(_alive(pid) for pid in trainer),
        10,
        "the demo training to stop with the server",
        interval=0.2,
    )
    assert "%" in text


def test_components_made_before_the_page_is_rendered_link_the_servers_files():
    """A component made for a session's page before the server renders the page's HTML (by a
    background thread, say) takes its stylesheet URLs from the document; Panel falls back to its
    CDN there, which fails offline. The page builders pin the server's own files first."""
    import panel as pn
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    from dema_lab.dashboard.common.template import pin_local_resources

    class Request:
        arguments: dict = {}
        headers: dict = {}
        cookies: dict = {}
        path = "/live"

    class Session:  # what a served document has: a session context
        request = Request()
        id = "test-session"

    def sheets(pin: bool) -> list[str]:
        doc = Document()
        session = Session()
        doc._session_context = lambda: session  # bokeh keeps a weak reference
        with set_curdoc(doc):
            if pin:
                pin_local_resources()
            model = pn.widgets.Button(label="x").get_root(doc)
        return [str(s.url) for s in model.stylesheets if hasattr(s, "url")]

    assert [u for u in sheets(pin=False) if "cdn.holoviz.org" in u]  # Panel's fallback: the test bites
    pinned = sheets(pin=True)
    assert pinned and not [u for u in pinned if "cdn.holoviz.org" in u], pinned
