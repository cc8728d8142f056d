"""The dashboards on runs of models without hidden attention (a tiny LSTM and a memoryless MLP beside
a DeMa), in real headless Chromium: the explorer shows the LSTM's recorded episode and says the model
has no hidden attention instead of drawing one, the live page plays the LSTM checkpoint RNN-like, and
the comparison and study pages render the three families. Every page is checked for console errors."""

from __future__ import annotations

import re

import pytest
from helpers.browser import (
    ARTIFACTS,
    COMPARISON_PLOTS,
    FIGURES_JS,
    Page,
    Server,
    assert_drawn,
    page_figures,
    stop_live,
    wait_probe,
)

NO_ATTENTION = "this model has no hidden attention"


@pytest.fixture(scope="module")
def baseline_store(hopper_small, tiny_run, tmp_path_factory):
    """tiny-lstm (RNN-like), tiny-mlp (Transformer-like) and tiny-dema on one hopper dataset, 20 steps each."""
    from dema_lab.training import TrainConfig, train

    store = tmp_path_factory.mktemp("baselines") / "store"
    base = TrainConfig.from_flat(
        dataset=str(hopper_small), store=str(store), steps=20, **{**tiny_run, "eval_max_steps": 30}
    )
    for arch in ("dema", "lstm", "mlp"):
        run = train(base.replace(arch=arch, run_id=f"tiny-{arch}"), progress=False, log=lambda *_: None)
        assert run.attrs["status"] == "finished"
    return str(store)


@pytest.fixture(scope="module")
def baseline_server(baseline_store):
    ARTIFACTS.mkdir(exist_ok=True)
    s = Server(baseline_store, ARTIFACTS / "baseline-dashboards-server.log")
    yield s
    s.stop()


def titles(page) -> list[str]:
    return [f["title"] for f in page.evaluate(FIGURES_JS)["figures"]]


def test_browser_explorer_says_an_lstm_has_no_hidden_attention(baseline_server, browser):
    p = Page(browser, baseline_server.url("attention") + "?run=tiny-lstm")
    page = p.page
    shown = wait_probe(page, lambda s: s["frame"] not in (None, "none"), timeout=90)
    assert shown["heatmap"] in (None, "none"), shown  # nothing drawn as attention
    # the heatmap, the lag plot and the paper's three plots say so, none draws an attention
    page_figures(
        page,
        [
            r"step \d+",
            NO_ATTENTION,
            NO_ATTENTION + " · .*",
            r"Reward and return-to-go .*",
            "Paper's method: " + NO_ATTENTION,
            "Paper's curve: " + NO_ATTENTION + " · .*",
            "By key kind: " + NO_ATTENTION,
        ],
    )
    assert sum(NO_ATTENTION in t for t in titles(page)) == 5, titles(page)
    page.get_by_text("This model has no hidden attention").first.wait_for(timeout=10_000)
    p.shot("baseline-explorer")
    p.check_clean()
    page.close()


def test_browser_live_plays_an_lstm_checkpoint_rnn_like(baseline_server, browser):
    p = Page(browser, baseline_server.url("live") + "?checkpoint=tiny-lstm@20&fps=8")
    page = p.page
    page.get_by_text(re.compile(r"Max steps per second:\s*8(\.0)?$")).first.wait_for(timeout=60_000)
    # the LSTM's mode is RNN-like (its default), chosen from the checkpoint
    page.locator(".bk-btn-group .bk-active").get_by_text("rnn").wait_for(timeout=20_000)
    page.locator(".dema-live-start button").click(timeout=60_000)
    css = ".dema-live-probe span"
    a = wait_probe(page, lambda s: s["step"] is not None and int(s["step"]) >= 1, css=css, timeout=60)
    wait_probe(page, lambda s: int(s["step"]) >= int(a["step"]) + 3, css=css)
    page_figures(page, [r"step \d+", NO_ATTENTION, r"Return", r"Actions"])
    p.shot("baseline-live")
    stop_live(page)
    p.check_clean()
    page.close()


def test_browser_compare_and_study_pages_render_lstm_mlp_and_dema(baseline_server, browser):
    p = Page(browser, baseline_server.url("compare"))
    page = p.page
    for run in ("tiny-lstm", "tiny-mlp", "tiny-dema"):
        page.get_by_text(run).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    assert_drawn(page, page_figures(page, COMPARISON_PLOTS))
    p.shot("baseline-compare")
    p.check_clean()
    page.close()
    # the baselines alone: the attention plots say why they are empty
    p = Page(browser, baseline_server.url("compare") + "?runs=tiny-lstm%2Ctiny-mlp")
    page = p.page
    page.get_by_text("tiny-lstm").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    page_figures(
        page,
        [
            r"Normalized score vs K .*",
            r"Score vs K by model family .*",
            "Half-life of attention vs K: " + NO_ATTENTION.replace("this model has", "these models have"),
            r"Decay curves \(these models have no hidden attention\)",
            r"Parameters vs K",
            r"MACs per step vs K .*",
            r"Training time",
        ],
    )
    p.check_clean()
    page.close()
    p = Page(browser, baseline_server.url("study"))
    page = p.page
    page.get_by_text("3 finished runs").first.wait_for(timeout=90_000)
    page.locator(".dema-study-table table").first.wait_for(timeout=30_000)
    tables = page.locator(".dema-study-table table").all_inner_texts()
    assert any("LSTM" in t for t in tables) and any("MLP" in t for t in tables), tables
    p.shot("baseline-study")
    p.check_clean()
    page.close()
