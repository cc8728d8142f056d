"""The dashboards on Atari runs, in real headless Chromium: the explorer shows the game's
colour frame and the hidden attention over (a, R, s) tokens, the live page plays an Atari checkpoint,
and the comparison and study pages render with Atari runs (a DeMa with ARS tokens and a DT with RSA
tokens). Every page is checked for console errors. The server and browser helpers are
in tests/helpers/browser.py."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from helpers.browser import (  # noqa: E402
    ARTIFACTS,
    COMPARISON_PLOTS,
    EXPLORER_PLOTS,
    FIGURES_JS,
    LIVE_PLOTS,
    STUDY_PLOTS,
    Page,
    Server,
    assert_drawn,
    page_figures,
    read_probe,
    stop_live,
    wait_probe,
)

TINY_ATARI = dict(
    steps=4,
    batch_size=2,
    K=3,
    d_model=16,
    n_layer=1,
    d_state=4,
    eval_episodes=1,
    eval_max_steps=24,
    record_episodes=1,
    render_size=32,
    decay_windows=2,
    checkpoint_every=2,
    log_every=2,
)


@pytest.fixture(scope="module")
def atari_store(tmp_path_factory):
    """A tiny Breakout dataset, a DeMa (atari-small: ARS tokens) and a DT (RSA tokens) trained on it
    for 4 steps, each evaluated with a recorded 24-step episode of 32x32 colour frames (24: the
    paper's attention display starts at step 20)."""
    from dema_lab.data.generate.atari import build_atari_dataset
    from dema_lab.training import TrainConfig, train

    root = tmp_path_factory.mktemp("atari-dash")
    data = build_atari_dataset("breakout", "mixed", root / "bm.hdf5", transitions=120, progress=False)
    store = root / "store"
    for run_id, arch in (("atari-dema", {}), ("atari-dt", dict(arch="dt", token_order="RSA", n_head=1))):
        cfg = TrainConfig.from_preset(
            "atari-small", dataset=str(data), store=str(store), run_id=run_id, **TINY_ATARI, **arch
        )
        run = train(cfg, progress=False, log=lambda *_: None)
        assert run.attrs["status"] == "finished"
    return str(store)


@pytest.fixture(scope="module")
def atari_server(atari_store):
    ARTIFACTS.mkdir(exist_ok=True)
    s = Server(atari_store, ARTIFACTS / "atari-dashboards-server.log")
    yield s
    s.stop()


# The live page's "Actions" figure: its y axis and every action streamed into it.
ACTIONS_JS = """() => {
  for (const v of Bokeh.index.all_views()) {
    if (v.model.type !== 'Figure' || !v.model.title || v.model.title.text !== 'Actions') continue;
    const ys = [];
    for (const r of v.model.renderers) {
      const src = r.data_source;
      if (!src) continue;
      for (const name of src.columns()) if (name !== 'step') ys.push(...Array.from(src.get_column(name)));
    }
    return {start: v.model.y_range.start, end: v.model.y_range.end, ys: ys.map(Number)};
  }
  return null;
}"""


def _figure(page, pattern: str) -> dict:
    return next(f for f in page.evaluate(FIGURES_JS)["figures"] if re.fullmatch(pattern, f["title"]))


def _colour_share(page, fig: dict) -> float:
    """The share of a figure's plot area, as the screen shows it, in clearly coloured (not grey) pixels."""
    import imageio.v3 as iio

    clip = {"x": fig["fx"], "y": fig["fy"], "width": fig["fw"], "height": fig["fh"]}
    px = iio.imread(io.BytesIO(page.screenshot(clip=clip)))[..., :3].reshape(-1, 3).astype(int)
    return float(((px.max(axis=1) - px.min(axis=1)) > 40).mean())


def test_browser_explorer_shows_the_game_frame_and_attention_over_a_r_s_tokens(atari_server, browser):  # noqa: F811
    p = Page(browser, atari_server.url("attention") + "?run=atari-dema")
    page = p.page
    shown = wait_probe(page, lambda s: s["heatmap"] not in (None, "none"), timeout=90)
    assert shown["frame"] not in (None, "none"), shown
    figures = page_figures(page, EXPLORER_PLOTS)
    assert_drawn(page, figures)
    # ARS tokens (atari-small): ... a-2 R-1 s-1 a-1 R0 s0, the a token holding the previous action
    labels = set(figures[EXPLORER_PLOTS[1]]["labels"])
    assert {"a-2", "R-1", "s-1", "a-1", "R0", "s0"} <= labels, sorted(labels)
    assert {lab[0] for lab in labels} == {"a", "R", "s"}, sorted(labels)
    # the decay: the current state token's attention by lag with its fitted half-life
    assert re.fullmatch(
        r"s0 by lag · half-life [\d.]+ tokens = [\d.]+ steps, R² .*", figures[EXPLORER_PLOTS[2]]["title"]
    )
    # the frame is Breakout's colour screen (its bricks), not a grey observation or a blank
    frame = _figure(page, EXPLORER_PLOTS[0])
    assert _colour_share(page, frame) > 0.02
    p.shot("atari-explorer")
    p.check_clean()
    page.close()


def test_browser_live_plays_an_atari_checkpoint(atari_server, browser):  # noqa: F811
    p = Page(browser, atari_server.url("live") + "?checkpoint=atari-dema@4&fps=8")
    page = p.page
    page.get_by_text(re.compile(r"Max steps per second:\s*8(\.0)?$")).first.wait_for(timeout=60_000)
    selects = page.locator("select")
    chosen = [selects.nth(i).input_value() for i in range(selects.count())]
    assert "breakout" in chosen, chosen  # the env, from the checkpoint's run
    page.locator(".dema-live-start button").click(timeout=60_000)
    css = ".dema-live-probe span"
    a = wait_probe(page, lambda s: s["step"] is not None and int(s["step"]) >= 1, css=css, timeout=60)
    wait_probe(page, lambda s: int(s["step"]) >= int(a["step"]) + 3, css=css)
    page.locator(".dema-live-pause button").click()
    page.locator(".dema-live-status").get_by_text("paused").wait_for(timeout=20_000)
    page.wait_for_timeout(500)
    assert read_probe(page, css)["frame"] not in (None, "none")
    figs = page_figures(page, LIVE_PLOTS)
    assert_drawn(page, figs)
    labels = set(figs[r"Hidden attention · .*"]["labels"])
    assert {"a-1", "R0", "s0"} <= labels, sorted(labels)
    assert _colour_share(page, _figure(page, LIVE_PLOTS[0])) > 0.02  # the game's colour frame
    # the actions are Breakout's indices 0..3, all on the plot (not the continuous actions' [-1, 1])
    acts = page.evaluate(ACTIONS_JS)
    assert acts and len(acts["ys"]) >= 4 and set(acts["ys"]) <= {0, 1, 2, 3}, acts
    assert acts["start"] <= 0 and acts["end"] >= 3, (
        f"the Actions axis {acts['start']}..{acts['end']} clips indices 0..3"
    )
    p.shot("atari-live")
    stop_live(page)
    p.check_clean()
    page.close()


def test_browser_compare_and_study_pages_render_atari_runs(atari_server, browser):  # noqa: F811
    p = Page(browser, atari_server.url("compare"))
    page = p.page
    page.get_by_text("atari-dema").first.wait_for(timeout=60_000)  # the runs table
    page.get_by_text("atari-dt").first.wait_for(timeout=10_000)
    page.wait_for_timeout(1000)
    assert_drawn(page, page_figures(page, COMPARISON_PLOTS))
    p.shot("atari-compare")
    p.check_clean()
    page.close()
    p = Page(browser, atari_server.url("study"))
    page = p.page
    page.get_by_text("Which of the paper's findings hold").wait_for(timeout=90_000)
    page.get_by_text("2 finished runs").first.wait_for(timeout=10_000)
    page.locator(".dema-study-table table").first.wait_for(timeout=30_000)
    assert "breakout" in page.locator(".dema-study-table table").first.inner_text()
    assert_drawn(page, page_figures(page, STUDY_PLOTS))
    p.shot("atari-study")
    p.check_clean()
    page.close()


def test_atari_episodes_have_colour_frames_and_their_model_s_token_labels(atari_store):
    # what the pages show: (H, W, 3) colour frames, and the tokens in each model's order (the
    # DeMa's (a, R, s), the DT's (R, s, a): its window ends at the current state, no a0)
    from dema_lab.dashboard import StoreIndex

    index = StoreIndex(atari_store)
    for run_id, labels in (
        ("atari-dema", ["a-3", "R-2", "s-2", "a-2", "R-1", "s-1", "a-1", "R0", "s0"]),
        ("atari-dt", ["R-2", "s-2", "a-2", "R-1", "s-1", "a-1", "R0", "s0"]),
    ):
        ep = index.episode(run_id, index.info(run_id).episodes[0].name)
        assert ep.frames.shape[1:] == (32, 32, 3) and ep.tokens_per_step == 3
        assert np.ptp(ep.frames.astype(int), axis=-1).max() > 40  # colour, not grey
        assert ep.key_label == labels and ep.query_label == labels
        assert ep.query_kind == [lab[0] for lab in labels]


@pytest.mark.parametrize("mode", ["transformer", "rnn"])
def test_explorer_recomputes_atari_attention_from_the_checkpoint(atari_store, mode):
    # the explorer's other aggregations replay the episode's stacked uint8 frames through the model
    from dema_lab.analysis import right_align
    from dema_lab.dashboard import AttentionExplorer, StoreIndex
    from dema_lab.evaluation.rollout import replay_attention
    from dema_lab.store.zarr_store import RunStore

    name = f"step_00000004-{mode}-t0-e0"
    view = AttentionExplorer(atari_store, run="atari-dema")
    ex = view.state
    ex.episode = name
    ro = RunStore(atari_store, mode="r").run("atari-dema").open("rollout", name).load()
    ck = StoreIndex(atari_store).checkpoint("atari-dema", 4)
    mean, std = ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy()
    for step in (20, 5):  # forward, then back
        ex.step = step
        ex.aggregation = "minmax"
        np.testing.assert_allclose(ex.matrix(), ro.attention.values[step, 0], equal_nan=True)
        ex.aggregation = "abs"
        want = replay_attention(ck.model, ro, step, "abs", mean, std, ck.meta["rtg_scale"])
        np.testing.assert_allclose(ex.matrix(), right_align(want, 9)[0], rtol=1e-5, atol=1e-7, equal_nan=True)
    assert ex.message == ""
