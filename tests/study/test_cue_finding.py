""" "Does the hidden attention find the cue?": on hand-made recorded episodes whose attention is put on
the cue's step at the decision (or not), the finding holds (or does not); too few decisions, or a cue
beyond the window, give inconclusive and not measured; on a tiny real MiniGrid run, each decision's
share equals a recomputation by token label from the stored episode."""

import types

import numpy as np
import pytest
import xarray as xr

from dema_lab.analysis import token_coords
from dema_lab.analysis.cue import cue_attention, cue_keys
from dema_lab.study.report import cue_decisions, cue_finding, cue_table

K = 4  # steps in the window; B3LD, RSA: L = 12 tokens, the last one s0
CFG = types.SimpleNamespace(layout="B3LD", token_order="RSA", window_tokens=lambda: 3 * K)


def episode(T: int, cue_steps, on_cue: float, rng) -> xr.Dataset:
    """A recorded episode of T steps, the cue seen at `cue_steps`: every step's current-token row is
    random positive mass over its window; the last step (the decision) adds `on_cue` to each cue key."""
    L = 3 * K
    coords = {"step": np.arange(T), "layer": [0], **token_coords(CFG, "query"), **token_coords(CFG, "key")}
    key_step = np.asarray(coords["key_step"][1])
    att = np.full((T, 1, L, L), np.nan, np.float32)
    for t in range(T):
        valid = key_step + t >= 0  # right-aligned: keys before step 0 are padding
        att[t, 0, -1, valid] = rng.uniform(0.5, 1.5, valid.sum())
    cue = np.isin(np.arange(T), cue_steps)
    for k in cue_keys(cue, T - 1, key_step, coords["key_kind"][1]):
        att[T - 1, 0, -1, k] += on_cue
    return xr.Dataset(
        {"attention": (("step", "layer", "query", "key"), att), "cue_visible": ("step", cue)}, coords=coords
    )


def test_cue_keys_are_the_state_tokens_of_the_cue_steps():
    labels = token_coords(CFG, "key")
    key_step, key_kind, key_label = (np.asarray(labels[f"key_{x}"][1]) for x in ("step", "kind", "label"))
    cue = np.array([True, True, False, False, False, False])
    for t in range(6):
        got = [str(key_label[k]) for k in cue_keys(cue, t, key_step, key_kind)]
        # brute force: every step c <= t with the cue in view, within the window, named by its label
        want = [f"s{c - t}" if c != t else "s0" for c in range(t + 1) if cue[c] and t - c < K]
        assert got == want, t


@pytest.mark.parametrize("on_cue, verdict", [(6.0, "holds"), (0.0, "inconclusive"), (-0.45, "does not hold")])
def test_the_finding_follows_where_the_decisions_attention_goes(on_cue, verdict):
    rng = np.random.default_rng(0)
    eps = {f"e{i}": episode(4 + i % 2, [0, 1], on_cue, rng) for i in range(8)}  # the cue 2-4 steps back
    d = cue_attention(eps)
    assert d.sizes["decision"] == 8 and d.in_window.all()
    labels = dict(run=("decision", ["r"] * 8), dataset=("decision", ["m"] * 8), mode=("decision", ["transformer"] * 8))
    claim, v, evidence = cue_finding(d.assign_coords(**labels))
    assert v == verdict, evidence  # no extra mass: the decision is like any other step, the interval holds 0
    assert "lag-matched" in evidence and "8 decision(s)" in evidence and "IQM" in evidence


def test_too_few_decisions_or_a_cue_beyond_the_window_say_so():
    rng = np.random.default_rng(1)
    two = cue_attention({f"e{i}": episode(4, [0], 6.0, rng) for i in range(2)})
    assert cue_finding(two.assign_coords(run=("decision", ["r", "r"])))[1] == "inconclusive"
    far = cue_attention({f"e{i}": episode(12, [0], 6.0, rng) for i in range(3)})  # cue 11 steps back, K 4
    assert not far.in_window.any() and (far.cue_back_steps == 11).all()
    v, evidence = cue_finding(far.assign_coords(run=("decision", ["r"] * 3)))[1:]
    assert v == "not measured" and "of 3 decisions, 3 had the cue beyond the window and 0 never saw it" in evidence
    assert cue_finding(xr.Dataset(coords={"decision": []}))[1] == "not measured"


def test_a_tiny_minigrid_run_measures_every_recorded_decision(tmp_path, tiny_run):
    pytest.importorskip("minigrid")
    from dema_lab.data import build_dataset
    from dema_lab.store.zarr_store import RunStore
    from dema_lab.training import TrainConfig, train

    data = build_dataset("minigrid-memory-s7", "mixed", tmp_path / "m7.hdf5", transitions=600, progress=False)
    run_cfg = {**tiny_run, "K": 12, "steps": 10, "eval_max_steps": 60, "rtg_scale": 1.0}
    run_cfg.update(eval_episodes=3, record_episodes=3, decay_windows=0)
    cfg = TrainConfig.from_flat(dataset=str(data), store=str(tmp_path / "store"), run_id="m", **run_cfg)
    train(cfg, progress=False, log=lambda *_: None)
    d = cue_decisions(tmp_path / "store")
    run = RunStore(tmp_path / "store", mode="r").run("m")
    names = [n for n in run.rollouts() if n.startswith(f"step_{10:08d}")]  # both modes' episodes
    chose = [n for n in names if run.open("rollout", n).sizes["step"] < 60]  # not cut at the step limit
    assert len(names) == 6 and d.attrs["cut_episodes"] == 6 - len(chose) and chose
    assert sorted(d.episode.values) == sorted(chose)
    for i in range(d.sizes["decision"]):
        row = d.isel(decision=i)
        ep = run.open("rollout", str(row.episode.values)).load()
        T = ep.sizes["step"]
        r = np.abs(ep.attention.values[T - 1, :, -1, :]).mean(0)  # (L,) one layer in the tiny run
        seen = {f"s{c - (T - 1)}" for c in np.flatnonzero(ep.cue_visible.values[: T - 1])}  # before the decision
        on = [k for k, lab in enumerate(ep.key_label.values) if str(lab) in seen]
        assert bool(row.in_window) == bool(on) and int(row.cue_tokens) == len(on)
        if on:
            assert float(row.cue_share) == pytest.approx(100 * np.nansum(r[on]) / np.nansum(r), rel=1e-5)
    claim, verdict, evidence = cue_finding(d)
    assert verdict in ("holds", "does not hold", "inconclusive", "not measured") and "1 run(s)" in evidence
    assert cue_table(d).empty == (not d.sizes["decision"])


def test_cue_plot_draws_one_point_per_decision_with_the_cue_in_view():
    import holoviews as hv

    from dema_lab.study.render import cue_plot

    rng = np.random.default_rng(2)
    eps = {f"e{i}": episode(4 if i < 3 else 12, [0], 6.0, rng) for i in range(5)}  # 3 in view, 2 beyond
    d = cue_attention(eps).assign_coords(dataset=("decision", ["m"] * 5), mode=("decision", ["rnn"] * 5))
    plot = cue_plot(d)
    points = [el for el in plot if isinstance(el, hv.Scatter)]
    assert len(points) == 1 and len(points[0].data) == 3 and points[0].label == "m · rnn-like"
    np.testing.assert_allclose(points[0].data["cue_share"], d.cue_share.values[:3])
    hv.render(plot, backend="bokeh")
    assert "no decision" in cue_plot(d.isel(decision=[3, 4])).opts.get().kwargs["title"]


def test_an_episode_cut_at_the_step_limit_is_no_decision():
    rng = np.random.default_rng(3)
    eps = {"chose": episode(4, [0], 6.0, rng), "cut": episode(5, [0, 1], 6.0, rng)}
    d = cue_attention(eps, max_steps=5)
    assert list(d.episode.values) == ["chose"] and d.attrs["cut_episodes"] == 1
    assert "1 episode(s) cut at the step limit" in cue_finding(d.assign_coords(run=("decision", ["r"])))[2]
