"""A store written by the previous release (630b7f7, tests/data/legacy_store; its README says how
it was made and what it holds) is read by today's code: the library, the CLI, the dashboards'
states and the served pages. The committed store is copied first and never written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dema_lab.cli.main import main

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_store"
DEMA = "legacy-hopper-medium-dema-B3LD-ts0-K5-s0"
DT = "legacy-hopper-medium-dt-B3LD-ts1-K5-s0"
ABLATIONS = [
    f"step_00000100-{m}-all-s0" for m in ("none", "mixer-zeros", "mixer-random", "alpha-zeros", "alpha-random")
]
# what tests/data/README.md says each run holds: the independent reference for what must be read
PUBLISHED = {
    DEMA: {
        "train": {"steps_00000001_00000050", "steps_00000051_00000100"},
        "eval": {"step_00000100"},
        "rollout": {
            "step_00000100-transformer-t0-e0",
            "step_00000100-rnn-t0-e0",
            "step_00000100-transformer-t0-e0-live20261207T124213",
        },
        "decay": {"step_00000100"},
        "paper_attention": {"step_00000100"},
        "ablation": {*ABLATIONS, "step_00000100-mixer-zeros-layer0-s0"},
        "checkpoint": {"step_00000100"},
        "resume": {"step_00000100"},
    },
    DT: {
        "train": {"steps_00000001_00000050", "steps_00000051_00000100"},
        "eval": {"step_00000100"},
        "rollout": {"step_00000100-transformer-t0-e0"},
        "decay": {"step_00000100"},
        "paper_attention": set(),
        "ablation": {"step_00000100-none-all-s0", "step_00000100-no_timestep-all-s0"},
        "checkpoint": {"step_00000100"},
        "resume": {"step_00000100"},
    },
}
ROLLOUT_STEPS = {
    (DEMA, "step_00000100-transformer-t0-e0"): 29,
    (DEMA, "step_00000100-rnn-t0-e0"): 29,
    (DT, "step_00000100-transformer-t0-e0"): 17,
}
PARAMETERS = {DEMA: 5603, DT: 22963}


def _copy(tmp_path_factory) -> str:
    assert (LEGACY / "zarr.json").exists(), f"{LEGACY} is missing (tests/data/make_legacy_store.sh makes it)"
    dest = tmp_path_factory.mktemp("legacy") / "store"
    shutil.copytree(LEGACY, dest)
    return str(dest)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> str:
    """A copy of the legacy store that the module's tests only read."""
    return _copy(tmp_path_factory)


def _tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the library
def test_the_runs_table_and_each_run_as_a_tree(legacy):
    import dema_lab

    table = dema_lab.open_store(legacy)
    assert sorted(str(r) for r in table.run.values) == sorted([DEMA, DT])
    rows = {str(r): table.sel(run=r) for r in table.run.values}
    for run_id, arch in ((DEMA, "dema"), (DT, "dt")):
        row = rows[run_id]
        assert str(row.arch.item()) == arch and str(row.status.item()) == "finished"
        assert str(row.dataset.item()).endswith("hopper-medium.hdf5") or str(row.dataset.item()) == "hopper-medium"
        assert int(row.K.item()) == 5 and int(row.steps_done.item()) == 100
        assert int(row.parameters.item()) == PARAMETERS[run_id]
        assert np.isfinite(float(row.last_score.item())) and np.isfinite(float(row.best_score.item()))

    for run_id in (DEMA, DT):
        tree = dema_lab.open_run(legacy, run_id)
        assert tree.attrs["run_id"] == run_id and tree.attrs["status"] == "finished"
        assert tree["train"].ds.step.values.tolist() == list(range(1, 101))
        assert np.isfinite(tree["train"].ds["loss"].values).all()
        assert tree["eval"].ds.checkpoint.values.tolist() == [100]
        assert set(tree["rollout"].children) == PUBLISHED[run_id]["rollout"]
    assert dema_lab.open_run(legacy).attrs["run_id"] in (DEMA, DT)  # the newest, without an id


def test_every_published_group_opens(legacy):
    from dema_lab.models import load_checkpoint
    from dema_lab.store.schema import KINDS
    from dema_lab.store.zarr_store import RunStore

    store = RunStore(legacy, mode="r")
    assert sorted(store.run_ids()) == sorted([DEMA, DT]) and store.unreadable == {}
    assert store.stale_runs() == []
    for run_id, expected in PUBLISHED.items():
        run = store.run(run_id)
        assert {k: set(run.published(k)) for k in expected} == expected
        assert set(KINDS) >= set(expected)
        for kind in ("train", "eval", "rollout", "decay", "paper_attention", "ablation"):
            for name in run.published(kind):
                ds = run.open(kind, name).load()
                assert ds.data_vars, (run_id, kind, name)
        for (rid, name), steps in ROLLOUT_STEPS.items():
            if rid == run_id:
                episode = run.open("rollout", name)
                assert episode.sizes["step"] == steps
                assert episode["frames"].shape[1:] == (32, 32, 3)
        evals = run.evals()
        assert evals.checkpoint.values.tolist() == [100] and "normalized_score" in evals
        assert run.decay().checkpoint.values.tolist() == [100]
        assert run.rollouts() == run.published("rollout")
        assert run.checkpoints() == [100]
        ck = load_checkpoint(run.checkpoint_bytes(100), map_location="cpu")  # the SHA-256 is checked
        assert sum(p.numel() for p in ck.model.parameters()) == PARAMETERS[run_id]
        assert run.blob_attrs("resume", "step_00000100") and run.read_bytes("resume", "step_00000100")
    live = store.run(DEMA).open("rollout", "step_00000100-transformer-t0-e0-live20261207T124213")
    assert live.attrs.get("source") == "live"
    assert store.run(DEMA).paper_attention().checkpoint.values.tolist() == [100]


# ---------------------------------------------------------------- the CLI
def test_cli_lists_and_reports_the_legacy_sweep(legacy, capsys):
    assert main(["runs", "--store", legacy]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("legacy-")}
    assert set(rows) == {DEMA, DT} and all("finished" in row for row in rows.values())
    assert main(["report", "--store", legacy, "--sweep", "legacy", "--no-latency"]) == 0
    report = capsys.readouterr().out
    assert "2 runs" in report and "hopper-medium" in report
    assert "DeMa matches or beats DT" in report
    # DeMa/DT parameters from the README's counts
    assert f"DeMa/DT parameters: {PARAMETERS[DEMA] / PARAMETERS[DT]:.2f}" in report


def test_cli_delete_removes_a_legacy_run(tmp_path_factory, capsys):
    path = _copy(tmp_path_factory)
    assert main(["delete", DT, "--store", path, "--yes"]) == 0
    from dema_lab.store.zarr_store import RunStore

    assert RunStore(path, mode="r").run_ids() == [DEMA] and not (Path(path) / "runs" / DT).exists()


# ---------------------------------------------------------------- the dashboards' states
def test_dashboard_states_open_every_legacy_run(legacy):
    from dema_lab.dashboard import SequenceComparison, StudyReport
    from dema_lab.dashboard.explorer.state import ExplorerState

    state = ExplorerState(legacy)
    assert not state.run_errors and set(state.param.run.objects) == {DEMA, DT}
    for run_id in (DEMA, DT):
        state.run = run_id
        assert state.checkpoint == 100 and state.episode in PUBLISHED[run_id]["rollout"]
        for episode in state.param.episode.objects:
            state.episode = episode
            state.step = state.param.step.bounds[1]
            attention = state.attention
            assert attention is not None and attention.ndim == 2 and np.isfinite(attention).all()
            assert state.frame is not None and state.frame.shape == (32, 32, 3)
            assert len(state.window_labels) == attention.shape[0]

    comparison = SequenceComparison(legacy)
    assert sorted(comparison.table["run"]) == sorted([DEMA, DT])
    assert np.isfinite(comparison.table["last_score"]).all()

    study = StudyReport(legacy, latency=False)
    assert "legacy" in study.param.sweep.objects
    study.sweep = "legacy"
    assert sorted(study.report().runs.run) == sorted([DEMA, DT])


# ---------------------------------------------------------------- writing to a legacy run
@pytest.mark.slow
def test_ablate_a_legacy_run(tmp_path_factory, capsys):
    """A new ablation of the old DeMa checkpoint is evaluated and published beside the old ones."""
    from dema_lab.store.zarr_store import RunStore

    path = _copy(tmp_path_factory)
    argv = ["ablate", DEMA, "--store", path, "--method", "alpha-zeros", "--layers", "1"]
    assert main([*argv, "--episodes", "1", "--max-steps", "20"]) == 0, capsys.readouterr().err
    names = RunStore(path, mode="r").run(DEMA).published("ablation")
    assert "step_00000100-alpha-zeros-layer1-s0" in names
    assert set(names) >= PUBLISHED[DEMA]["ablation"]  # the old ones are kept


def test_the_committed_legacy_store_is_never_written(legacy):
    """Every test here works on a copy: the committed store equals its copy byte for byte."""
    assert _tree_bytes(LEGACY) == _tree_bytes(Path(legacy))


# ---------------------------------------------------------------- the served pages
@pytest.fixture(scope="module")
def legacy_server(tmp_path_factory):
    from helpers.browser import ARTIFACTS, Server

    ARTIFACTS.mkdir(exist_ok=True)
    server = Server(_copy(tmp_path_factory), ARTIFACTS / "legacy-store-server.log")
    yield server
    server.stop()


def _clean(page, server):
    page.page.wait_for_timeout(1500)  # errors of the first render's late callbacks
    page.check_clean()
    assert "Traceback" not in server.log_text()
    page.page.close()


def test_browser_attention_shows_a_legacy_episode(legacy_server, browser):
    from helpers.browser import EXPLORER_PLOTS, Page, assert_drawn, page_figures, wait_probe

    page = Page(browser, legacy_server.url("attention") + f"?run={DEMA}")
    probe = wait_probe(page.page, lambda s: s["heatmap"] not in (None, "none"), timeout=90)
    assert probe["frame"] not in (None, "none")
    assert_drawn(page.page, page_figures(page.page, EXPLORER_PLOTS))
    _clean(page, legacy_server)


def test_browser_compare_lists_the_legacy_runs(legacy_server, browser):
    from helpers.browser import Page

    page = Page(browser, legacy_server.url("compare"))
    for run_id in (DEMA, DT):
        page.page.get_by_text(run_id).first.wait_for(timeout=90_000)  # the runs table
    _clean(page, legacy_server)


def test_browser_compare_lays_out_every_plot_for_the_legacy_runs(legacy_server, browser):
    from helpers.browser import COMPARISON_PLOTS, Page, assert_drawn, page_figures

    page = Page(browser, legacy_server.url("compare"))
    try:
        page.page.get_by_text(DT).first.wait_for(timeout=90_000)
        page.page.wait_for_timeout(1000)
        assert_drawn(page.page, page_figures(page.page, COMPARISON_PLOTS))
    finally:
        page.page.close()


def test_browser_live_plays_a_legacy_checkpoint(legacy_server, browser):
    from helpers.browser import Page, stop_live, wait_probe

    page = Page(browser, legacy_server.url("live") + "?fps=8")
    page.page.locator(".dema-live-start button").click(timeout=90_000)
    css = ".dema-live-probe span"
    first = wait_probe(page.page, lambda s: s["step"] is not None and int(s["step"]) >= 1, css=css, timeout=60)
    later = wait_probe(page.page, lambda s: int(s["step"]) >= int(first["step"]) + 2, css=css, timeout=60)
    assert later["frame"] != first["frame"]
    stop_live(page.page)
    _clean(page, legacy_server)


def test_browser_study_reports_the_legacy_sweep(legacy_server, browser):
    from helpers.browser import Page

    page = Page(browser, legacy_server.url("study") + "?sweep=legacy")
    page.page.get_by_text("Which of the paper's findings hold").wait_for(timeout=90_000)
    page.page.locator(".dema-study-findings").get_by_text("DeMa matches or beats DT").first.wait_for(timeout=30_000)
    page.page.locator(".dema-study-table table").first.wait_for(timeout=30_000)
    _clean(page, legacy_server)
