"""The dashboards on tiny MiniGrid Memory runs (DeMa at K 12 and 5, an LSTM and a DT): the explorer
shows the grid frame and marks the tokens of the steps where the cue was in view on the heatmap and
the lag plot, with its legend; the comparison page draws score against K by model family (DeMa
Transformer-like and RNN-like, DT, LSTM). In headless Chromium with zero console errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.browser import ARTIFACTS, COMPARISON_PLOTS, EXPLORER_PLOTS, Page, Server, page_figures, wait_probe

pytest.importorskip("minigrid")

RUNS = {"m-dema": ("dema", 12), "m-dema-k5": ("dema", 5), "m-lstm": ("lstm", 5), "m-dt": ("dt", 5)}
CUE_JS = """() => {
  const out = {};
  for (const doc of Bokeh.documents)
    for (const m of doc.all_models)
      if (m.name && m.name.startsWith('dema-cue-') && m.data_source) {
        const d = m.data_source.data, col = d.get ? d.get(m.name === 'dema-cue-heatmap' ? 'left' : 'lag')
                                                  : d[m.name === 'dema-cue-heatmap' ? 'left' : 'lag'];
        out[m.name] = Array.from(col);
      }
  return out;
}"""


@pytest.fixture(scope="module")
def memory_store(tiny_run, tmp_path_factory):
    from dema_lab.data import build_dataset
    from dema_lab.training import TrainConfig, train

    tmp = tmp_path_factory.mktemp("memory-dash")
    data = build_dataset("minigrid-memory-s7", "mixed", tmp / "m7.hdf5", transitions=600, progress=False)
    base = {**tiny_run, "steps": 10, "eval_max_steps": 30, "rtg_scale": 1.0, "eval_episodes": 3, "decay_windows": 4}
    base["record_episodes"] = 3
    for run_id, (arch, K) in RUNS.items():
        cfg = TrainConfig.from_flat(
            dataset=str(data), store=str(tmp / "store"), run_id=run_id, **{**base, "arch": arch, "K": K}
        )
        assert train(cfg, progress=False, log=lambda *_: None).attrs["status"] == "finished"
    return str(tmp / "store")


def cue_step(state) -> int:
    """Selects the first Transformer-like episode of the state's run that saw the cue, and returns
    its first step whose window holds the token of an earlier step with the cue in view (brute
    force over the labels), so that the lag plot's band lies back from the current token."""
    for name in [e for e in state.param.episode.objects if "transformer" in e]:
        state.episode = name
        cue = state.episode_data.dataset["cue_visible"].values
        for t in range(state.episode_data.n_steps):
            if {f"s{c - t}" for c in np.flatnonzero(cue[:t]) if t - c < 12}:
                return t
    raise AssertionError("no recorded Transformer-like episode saw the cue (the seeds are fixed)")


def test_explorer_state_marks_the_cue_tokens_by_their_labels(memory_store):
    from dema_lab.dashboard.explorer.state import ExplorerState

    s = ExplorerState(memory_store, run="m-dema")
    t = cue_step(s)
    s.step = t
    cue = s.episode_data.dataset["cue_visible"].values
    want = {f"s{c - t}" if c != t else "s0" for c in np.flatnonzero(cue[: t + 1]) if t - c < 12}
    assert {s.window_labels[k] for k in s.cue_keys} == want and s.frame is not None
    q = s.query_index  # the current state token: lags are tokens back from it
    assert sorted(s.cue_lags) == sorted(q - k for k in s.cue_keys)
    assert f"{len(want)} in this window" in s.cue_note and f"last seen at step {np.flatnonzero(cue[: t + 1])[-1]}" in (
        s.cue_note
    )


def test_family_scores_give_dema_both_modes_and_each_baseline_once(memory_store):
    import holoviews as hv

    from dema_lab.dashboard.compare.view import SequenceComparison, family_scores

    comp = SequenceComparison(memory_store)
    df = family_scores(comp.index, comp.runs)
    assert sorted(df.model.unique()) == ["DT", "DeMa RNN-like", "DeMa Transformer-like", "LSTM"]
    assert sorted(df[df.model == "DeMa RNN-like"].K) == [5, 12] and list(df[df.model == "LSTM"].K) == [5]
    ev = comp.index.run("m-dema").evals()  # each point is the run's own score in that mode
    want = float(ev["normalized_score"].sortby("checkpoint").isel(checkpoint=-1).sel(mode="rnn").mean())
    assert df[(df.run == "m-dema") & (df.model == "DeMa RNN-like")].last_score.item() == pytest.approx(want)
    plot = comp.family_plot()
    assert {el.label for el in plot} == set(df.model)
    hv.render(plot)


@pytest.fixture(scope="module")
def memory_server(memory_store):
    ARTIFACTS.mkdir(exist_ok=True)
    s = Server(memory_store, ARTIFACTS / "memory-dashboards-server.log")
    yield s
    s.stop()


def test_browser_explorer_shows_the_grid_and_marks_the_cue(memory_store, memory_server, browser):
    from dema_lab.dashboard.explorer.state import ExplorerState

    s = ExplorerState(memory_store, run="m-dema")
    s.step = t = cue_step(s)
    p = Page(browser, memory_server.url("attention") + f"?run=m-dema&episode={s.episode}&step={t}")
    page = p.page
    shown = wait_probe(page, lambda x: x["step"] == str(t) and x["frame"] not in (None, "none"), timeout=90)
    assert shown["frame"] == s.snapshot()["frame"]  # the grid frame of that step
    page_figures(page, EXPLORER_PLOTS)
    page.locator(".dema-cue-note").get_by_text("Memory cue").wait_for(timeout=20_000)
    marks = page.evaluate(CUE_JS)
    assert sorted(marks["dema-cue-heatmap"]) == [float(k) for k in s.cue_keys]
    assert sorted(marks["dema-cue-lag"]) == sorted(float(lag) for lag in s.cue_lags) and max(s.cue_lags) > 0
    p.shot("memory-explorer")
    # one step on with the slider (the scrub fast path): the marks follow the step
    page.locator(".dema-step-slider .noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    wait_probe(page, lambda x: x["step"] == str(t + 1), timeout=30)
    s.step = t + 1
    want = ([float(k) for k in s.cue_keys], sorted(float(lag) for lag in s.cue_lags))
    for _ in range(50):  # the marks' data arrives beside the probe's, not necessarily with it
        marks = page.evaluate(CUE_JS)
        if (sorted(marks["dema-cue-heatmap"]), sorted(marks["dema-cue-lag"])) == want:
            break
        page.wait_for_timeout(100)
    assert (sorted(marks["dema-cue-heatmap"]), sorted(marks["dema-cue-lag"])) == want
    p.check_clean()
    page.close()


def test_browser_compare_draws_score_by_model_family(memory_server, browser):
    p = Page(browser, memory_server.url("compare"))
    page = p.page
    page.get_by_text("m-lstm").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    page_figures(page, COMPARISON_PLOTS)
    p.shot("memory-compare")
    p.check_clean()
    page.close()
