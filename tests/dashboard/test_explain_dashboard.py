"""The explorer's explanations block: a run explained by `dema-lab explain` (with its causal
horizon) shows the chosen method's relevance and lag profile, Ω against α, the perturbation
curves, the AUC table and the horizon curve, in the component and in headless Chromium with zero
console errors; a run without explanations shows no block."""

from __future__ import annotations

import re
import shutil

import pytest
from helpers.browser import ARTIFACTS, FIGURES_JS, Page, Server, wait_probe


@pytest.fixture(scope="module")
def explained_store(dash_store, tmp_path_factory):
    """A copy of the dashboard store whose run tiny-K5 is explained, causal horizon included."""
    from dema_lab.evaluation.faithfulness import evaluate
    from dema_lab.store.zarr_store import RunStore

    store = tmp_path_factory.mktemp("explained") / "store"
    shutil.copytree(dash_store, store)
    shutil.rmtree(store / "runs" / "broken")
    run = RunStore(str(store), mode="a").run("tiny-K5")
    evaluate(run, episodes=1, steps=4, max_steps=40, horizon=True)
    return str(store)


EXPLAIN_PLOTS = (
    r"Relevance by \w+ · decision × token",
    r"\w+ by lag \(mean over decisions\)",
    r"Ω \(whole mixer\) against α, token shares",
    r"Positive perturbation .*",
    r"Negative perturbation .*",
    r"Causal horizon: \d+ steps",
)


def test_the_block_follows_the_method_and_is_absent_without_explanations(explained_store):
    from dema_lab.dashboard.explorer.state import ExplorerState
    from dema_lab.dashboard.explorer.view import AttentionExplorer

    explorer = AttentionExplorer(explained_store, run="tiny-K5")
    s = explorer.state
    assert s.param.explanation.objects[:3] == ["alpha", "unified", "rollout"] and s.explanation == "alpha"
    block = explorer.explanations()
    titles = [f.object.title.text for row in block[1:3] for f in row if hasattr(f, "object")]
    assert len(titles) == 6 and all(any(re.fullmatch(p, t) for t in titles) for p in EXPLAIN_PLOTS), titles
    s.explanation = "occlusion"
    again = explorer.explanations()
    assert again[1][0].object.title.text == "Relevance by occlusion · decision × token"
    assert "beats recency" in again[3].object and "occlusion" in again[3].object  # the AUC table
    other = ExplorerState(store=explained_store, run="tiny-K3")
    assert other.explanations() == (None, None) and not [o for o in other.param.explanation.objects if o]
    assert len(AttentionExplorer(explained_store, run="tiny-K3").explanations()) == 0


def test_browser_explanations_render_without_console_errors(explained_store, browser):
    server = Server(explained_store, ARTIFACTS / "explain-server.log")
    try:
        p = Page(browser, server.url("attention") + "?run=tiny-K5")
        wait_probe(p.page, lambda s: s["heatmap"] not in (None, "none"), timeout=60)
        p.page.locator(".dema-explanations").first.wait_for(timeout=30_000)
        deadline = 60
        while deadline:
            titles = [f["title"] for f in p.page.evaluate(FIGURES_JS)["figures"]]
            if all(any(re.fullmatch(pat, t) for t in titles) for pat in EXPLAIN_PLOTS):
                break
            p.page.wait_for_timeout(500)
            deadline -= 1
        assert all(any(re.fullmatch(pat, t) for t in titles) for pat in EXPLAIN_PLOTS), titles
        p.page.get_by_text("beats recency").first.wait_for(timeout=10_000)
        # the method selector redraws the relevance heatmap
        p.page.locator(".dema-explanation-select select").select_option("gradient")
        for _ in range(60):
            titles = [f["title"] for f in p.page.evaluate(FIGURES_JS)["figures"]]
            if "Relevance by gradient · decision × token" in titles:
                break
            p.page.wait_for_timeout(500)
        assert "Relevance by gradient · decision × token" in titles, titles
        p.page.locator(".dema-explanations").first.scroll_into_view_if_needed()
        p.shot("explorer-explanations")
        p.check_clean()
        p.page.close()
    finally:
        server.stop()
