"""The dashboards' param-only states: ExplorerState and LiveState on small real runs,
without a browser and without rendering, checked against what dema_lab.analysis and
dema_lab.evaluation.rollout compute from the stored checkpoint and episode; the live page opens on the
explorer's featured run; a run trained without frames says how to get some."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import numpy as np
import pytest


def _checkpoint_and_episode(store: str, run_id: str, step: int, episode: str):
    """The checkpoint and the recorded episode, read straight from the store (not through the dashboards)."""
    from dema_lab.models import load_checkpoint
    from dema_lab.store.zarr_store import RunStore

    run = RunStore(store, mode="r").run(run_id)
    ck = load_checkpoint(run.checkpoint_bytes(step), map_location="cpu")
    return ck, run.open("rollout", episode).load()


def test_the_states_import_neither_panel_nor_holoviews():
    code = (
        "import sys\n"
        "from dema_lab.dashboard.explorer.state import ExplorerState\n"
        "from dema_lab.dashboard.live.state import LiveState\n"
        "print(sorted(m for m in ('panel', 'holoviews', 'bokeh') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("mode", ["transformer", "rnn"])
def test_explorer_state_shows_the_stored_steps_attention_labels_and_frame(dash_store, mode):
    from dema_lab.analysis import lag_profile, opening_step, right_align, token_labels
    from dema_lab.dashboard import ExplorerState
    from dema_lab.evaluation.rollout import replay_attention

    state = ExplorerState(store=dash_store)
    # it opens where the explorer opens: the featured run, mid-episode (dema_lab.analysis.opening_step)
    assert state.run == "tiny-K5" and state.episode_data is not None
    assert state.step == opening_step(state.episode_data.n_steps, 5)
    name = f"step_00000020-{mode}-t0-e0"
    state.run = "tiny-K3"
    state.episode = name
    ck, ro = _checkpoint_and_episode(dash_store, "tiny-K3", 20, name)
    L = ck.config.window_tokens()
    labels = token_labels(ck.config)["label"]
    mean, std = ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy()
    for step in (7, 1, 15):
        state.step = step
        assert state.window_labels == labels and state.query_labels == labels
        assert state.attention.shape == (L, L) and state.layer == 0
        # the episode replayed through the checkpoint gives the row the state shows
        want = right_align(replay_attention(ck.model, ro, step, "minmax", mean, std, ck.meta["rtg_scale"]), L)[0]
        np.testing.assert_allclose(state.attention, want, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert state.query == labels[-1] == "s0"
        np.testing.assert_allclose(state.lag_profile, lag_profile(want), rtol=1e-5, atol=1e-6, equal_nan=True)
        if step < ck.config.K - 1:  # the window is not full yet: its oldest tokens are NaN
            assert np.isnan(state.attention[0]).all()
        np.testing.assert_array_equal(state.frame, ro.frames.values[step])
        assert state.frame.shape == (96, 96, 3) and state.frame_note == ""
    # another aggregation is recomputed from the checkpoint
    state.aggregation = "abs"
    want = right_align(replay_attention(ck.model, ro, 15, "abs", mean, std, ck.meta["rtg_scale"]), L)[0]
    np.testing.assert_allclose(state.attention, want, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert state.snapshot()["step"] == 15 and "Cannot recompute" not in state.message


def test_the_explorer_view_renders_a_given_state(dash_store):
    from dema_lab.dashboard import AttentionExplorer, ExplorerState

    state = ExplorerState(dash_store, run="tiny-K3")
    view = AttentionExplorer(state, presentation=True)
    assert view.state is state and view.presentation
    view.views()
    state.step = 4  # the view follows its state
    assert view.snapshot() == state.snapshot() and 'data-step="4"' in view._probe_div.text
    state.step = 6
    assert "step <b>6</b>" in view._info_div.text and view._panes["frame"].object.title.text == "step 6"


def _copy_store_with_main_run(store: str, to: Path) -> str:
    """The store with a copy of tiny-K3 as the demo's main run (created with tiny-K3: listed first)."""
    from dema_lab.analysis.runs import MAIN_RUN

    out = to / "store"
    shutil.copytree(store, out)
    shutil.copytree(out / "runs" / "tiny-K3", out / "runs" / MAIN_RUN)
    shutil.rmtree(out / "runs" / "broken")
    return str(out)


def test_live_opens_on_the_explorers_featured_run(dash_store, tmp_path):
    from dema_lab.analysis.runs import MAIN_RUN
    from dema_lab.dashboard import ExplorerState, LiveRollout, LiveState

    # the test store: both open on tiny-K5, its newest checkpoint
    assert ExplorerState(dash_store).run == "tiny-K5" and LiveState(dash_store).checkpoint == "tiny-K5@20"
    # a store whose newest checkpoint is not the featured run's: the demo's main run comes first
    store = _copy_store_with_main_run(dash_store, tmp_path)
    live = LiveState(store)
    assert live.param.checkpoint.objects[-1] == "tiny-K5@20"  # the newest: what /live opened on before
    assert ExplorerState(store).run == MAIN_RUN
    assert live.checkpoint == f"{MAIN_RUN}@20"
    assert LiveRollout(store, render_size=32).state.checkpoint == f"{MAIN_RUN}@20"
    # a checkpoint asked for (the page's URL) is kept
    assert LiveState(store, checkpoint="tiny-K3@10").checkpoint == "tiny-K3@10"


def test_live_state_plays_a_checkpoint_without_a_page(dash_store):
    from dema_lab.analysis import token_labels
    from dema_lab.dashboard import LiveState

    live = LiveState(dash_store, render_size=32, checkpoint="tiny-K5@20", fps=240.0)
    live.start()
    assert live.worker is not None and live.status == "running" and live.rollout == 1
    ck, _ = _checkpoint_and_episode(dash_store, "tiny-K5", 20, "step_00000020-transformer-t0-e0")
    assert live.window_labels == token_labels(ck.config)["label"]
    records, deadline = [], time.time() + 120
    while not live.drained and time.time() < deadline:
        new, before = live.poll()
        assert before == pytest.approx(sum(r.reward for r in records))
        records += new
        time.sleep(0.05)
    records += live.poll()[0]
    assert live.status.startswith("finished"), (live.status, live.message)
    assert records and len(records) == len(live.worker.records) and live.worker.env_closed
    assert all(a is b for a, b in zip(records, live.worker.records))  # each once, in order
    assert [r.t for r in records] == list(range(len(records)))
    assert live.return_so_far == pytest.approx(sum(r.reward for r in records))
    assert records[0].frame.shape == (32, 32, 3) and not live.saved  # `save` is off


# ---------------------------------------------------------------------------- a run without frames
@pytest.fixture(scope="module")
def no_frames_store(hopper_small, tiny_run, tmp_path_factory):
    """A store with one tiny run trained with render_size=0: its episodes have no frames."""
    from dema_lab.training import TrainConfig, train

    store = str(tmp_path_factory.mktemp("no-frames") / "store")
    cfg = TrainConfig.from_flat(dataset=str(hopper_small), store=store, steps=10, run_id="no-frames", **tiny_run)
    train(cfg.replace(eval_modes=["transformer"], render_size=0), progress=False, log=lambda *_: None)
    return store


def test_a_run_without_frames_says_how_to_get_them_and_that_works(no_frames_store):
    from dema_lab.dashboard import AttentionExplorer, LiveState
    from dema_lab.dashboard.common.url import from_url

    ex = AttentionExplorer(no_frames_store)
    state = ex.state
    assert state.run == "no-frames" and state.episode_data is not None and state.frame is None
    note = state.frame_note
    assert "No frames recorded" in note and "render_size=0" in note, note
    assert state.attention is not None  # the attention is there
    # the page shows the note where the frame goes, not a blank frame
    import panel as pn
    from bokeh.document import Document

    pn.panel(ex).get_root(Document())
    [row] = ex._frame_rows
    assert row[0] is ex._panes["frame_note"] and ex._panes["frame_note"].object == note
    assert ex._panes["frame"] not in row
    # the note's link opens the live page on the run's checkpoint; saving is the visitor's own
    # tick there (a link never pre-arms a write: common.url.URL_SKIP)
    link = note.split("](", 1)[1].split(")", 1)[0]
    assert urlparse(link).path == "live"
    live = LiveState(no_frames_store, render_size=32, fps=240.0)
    settings = {k: from_url(live.param[k], k, v) for k, v in parse_qsl(urlparse(link).query)}
    assert settings == {"checkpoint": "no-frames@10"}
    # and what it says to do gives an episode with frames, which the explorer shows
    live.param.update(**settings, save=True)
    assert live.checkpoint == "no-frames@10" and live.save
    live.start()
    live.worker.join(120)
    live.poll()
    assert live.status.startswith("finished") and live.saved, (live.status, live.message)
    state.refresh()
    state.episode = live.saved
    assert state.frame is not None and state.frame.shape == (32, 32, 3) and state.frame_note == ""
    assert row[0] is ex._panes["frame"] and ex._panes["frame_note"] not in row
    assert ex._panes["frame"].object.title.text == f"step {state.step}"


def test_live_worker_computes_only_the_shown_layers_attention():
    # at display speed, Transformer-like: the records' attention is the shown layer's (the others
    # NaN), and after the layer changes, the next detailed step has the new one's; every_step
    # (a saved rollout): every layer's
    import torch

    from dema_lab.dashboard.live.state import RolloutWorker
    from dema_lab.models import ModelConfig, build_model
    from dema_lab.models.checkpoint import Checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(arch="dema", state_dim=11, act_dim=3, K=3, d_model=16, n_layer=2, d_state=4)
    ck = Checkpoint(build_model(cfg).eval(), cfg, extra={"state_mean": torch.zeros(11), "state_std": torch.ones(11)})
    w = RolloutWorker(ck, "hopper", 3600.0, "transformer", "abs", render_size=32, max_steps=6, fps=0, display_fps=1e6)
    w.layer = 1
    w.taken = 10**9  # a page that has taken every step: each step is detailed
    w.run()
    assert not w.error and len(w.records) == 6
    for r in w.records:
        assert np.isnan(r.attention[0]).all() and np.isfinite(r.attention[1]).all()
    w = RolloutWorker(ck, "hopper", 3600.0, "transformer", "abs", render_size=32, max_steps=3, fps=0)
    w.layer = 1  # ignored: every step, every layer
    w.run()
    assert all(np.isfinite(r.attention).all() for r in w.records)
