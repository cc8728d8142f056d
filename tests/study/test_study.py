"""The paper's study: the resumable sweep (with its ablations) and the report. The ablations
themselves: tests/test_ablation.py."""

import dataclasses
import os

import numpy as np
import pytest
import xarray as xr

from dema_lab.evaluation.ablation import ablation_table, score_drop
from dema_lab.study.render import score_plot, to_markdown
from dema_lab.study.report import build_report
from dema_lab.study.sweep import SweepConfig, grid, run_sweep


def test_grid_run_ids_are_stable_and_cover_the_grid(tiny_config):
    sweep = SweepConfig(
        name="g",
        datasets=["hopper-medium"],
        K=[5, 10],
        layouts=["B3LD", "BL3D"],
        timestep_embedding=[False, True],
        archs=["dema", "dt"],
        seeds=[0, 1],
        base=tiny_config,
    )
    configs = grid(sweep)
    assert len(configs) == 2 * 2 * 2 * 2 + 2 * 2 * 2  # DeMa: ts off and on; DT: always with its embedding
    assert all(c.model.timestep_embedding for c in configs if c.model.arch == "dt")
    assert len({c.run.run_id for c in configs}) == len(configs)
    assert configs[0].run.run_id == "g-hopper-medium-dema-B3LD-ts0-K5-s0"
    assert all(c.evaluation.eval_modes == ["transformer"] for c in configs if c.model.arch == "dt")
    assert [c.run.run_id for c in grid(sweep)] == [c.run.run_id for c in configs]
    with pytest.raises(ValueError, match="sweep dimension K is empty"):
        SweepConfig(K=[])
    # a dataset that cannot be read fails the sweep before any run starts, and writes no store
    from dema_lab.data import DatasetError

    bad = dataclasses.replace(sweep, datasets=[tiny_config.data.dataset, tiny_config.data.dataset + ".missing.hdf5"])
    with pytest.raises(DatasetError, match="no such file"):
        run_sweep(bad, log=lambda *_: None)
    assert not os.path.exists(tiny_config.run.store)
    from dema_lab.store.errors import StoreError

    a_file = os.path.join(os.path.dirname(tiny_config.run.store), "a-file")
    open(a_file, "w").close()
    with pytest.raises(StoreError, match="is a file"):  # before any dataset is loaded
        run_sweep(dataclasses.replace(bad, base=tiny_config.replace(store=a_file)), log=lambda *_: None)


def test_sweep_runs_resumes_skips_and_reports(tiny_config):
    base = tiny_config.replace(run_id="", steps=12, checkpoint_every=6)
    base = base.replace(eval_max_steps=15, eval_targets=[3600.0], render_size=0)
    sweep = SweepConfig(
        name="t", datasets=[base.data.dataset], K=[2], archs=["dema", "dt"], workers=1, ablation_episodes=1, base=base
    )
    first = run_sweep(sweep, log=lambda *_: None)
    assert sorted(r["what"] for r in first) == ["trained"] * 2
    again = run_sweep(sweep, log=lambda *_: None)
    assert [r["what"] for r in again] == ["skipped"] * 2
    # a rerun completes ablations that are missing, keeping the rest; it reads groups written before the
    # paper's parameter-level methods (dim `ablation`: none / zeros / random), and redoes a 'random' made by the
    # older std-scaled method
    from dema_lab.store.zarr_store import RunStore

    rs = RunStore(base.run.store, mode="a")
    dema_run, dt_run = (
        rs.run("t-hopper-medium-small-dema-B3LD-ts0-K2-s0"),
        rs.run("t-hopper-medium-small-dt-B3LD-ts1-K2-s0"),
    )
    names = dema_run.published("ablation")
    assert sorted(names) == sorted(
        f"step_00000012-{m}-all-s0" for m in ("none", "mixer-zeros", "mixer-random", "alpha-zeros", "alpha-random")
    )
    before = ablation_table(dema_run)
    old = before.sel(ablation=["none", "alpha-zeros", "alpha-random"], layers="all", seed=0, mode="transformer")
    old = old.drop_vars(["family", "swap_from", "layers", "seed", "mode"])
    old = old.assign_coords(ablation=["none", "zeros", "random"]).assign_attrs(mode="transformer")
    old["normalized_score"].loc[{"ablation": "random"}] = -99.0  # the older method: no random_scale attr
    dema_run.unpublish("ablation", [n for n in names if "-none-" in n or "-alpha-" in n])
    dema_run.write("ablation", "step_00000012", old)
    dt_run.unpublish("ablation", dt_run.published("ablation"))
    added = {r["run_id"]: r["what"] for r in run_sweep(sweep, log=lambda *_: None)}
    assert added == {
        dema_run.run_id: "ablations added (alpha-random)",
        dt_run.run_id: "ablations added (none, no_timestep)",
    }
    after = ablation_table(dema_run)
    xr.testing.assert_identical(after["normalized_score"], before["normalized_score"])  # same seed, same scores
    assert list(ablation_table(dt_run).ablation.values) == ["none", "no_timestep"]
    # extending the sweep's steps resumes every run from its last checkpoint
    longer = dataclasses.replace(sweep, base=base.replace(steps=18))
    assert [r["what"] for r in run_sweep(longer, log=lambda *_: None)] == ["resumed"] * 2

    rep = build_report(base.run.store, "t", latency=True)
    assert len(rep.runs) == 2 and set(rep.runs.arch) == {"dema", "dt"}
    assert (rep.runs.latency_ms_transformer > 0).all()
    for method in ("mixer-zeros", "mixer-random", "alpha-zeros", "alpha-random"):
        assert rep.runs.loc[rep.runs.arch == "dema", f"ablation_{method}"].notna().all()
    assert rep.runs.loc[rep.runs.arch == "dt", "ablation_no_timestep"].notna().all()  # DT has one
    assert rep.runs.loc[rep.runs.arch == "dema", "ablation_no_timestep"].isna().all()  # this DeMa has none
    titles = " ".join(rep.tables)
    for part in (
        "DeMa against DT",
        "ablations",
        "RNN-like against Transformer-like",
        "Decay statistics",
        "Timestep embedding removed at evaluation",
        "Aggregate over datasets: IQM [95% bootstrap CI]",
    ):
        assert part in titles
    # against the random policy: one row per (run, mode), episode counts from the evaluations themselves
    vs_random = next(t for title, t in rep.tables.items() if title.startswith("Against the random policy"))
    vs_random = vs_random.reset_index()
    assert sorted(zip(vs_random.model, vs_random.inference)) == [
        ("DT B3LD +t-emb", "transformer-like"),
        ("DeMa B3LD", "rnn-like"),
        ("DeMa B3LD", "transformer-like"),
    ]
    assert set(vs_random.verdict) <= {"beats random", "below random", "not shown"}
    ev = dema_run.evals()["normalized_score"].sortby("checkpoint").isel(checkpoint=-1).sel(mode="rnn").values
    row = vs_random[(vs_random.model == "DeMa B3LD") & (vs_random.inference == "rnn-like")].iloc[0]
    assert row["episodes above random"] == f"{int((ev > 0).sum())} of {ev.size}"
    # every score table says which checkpoint it shows; the score against K has both, side by side
    for title in rep.tables:
        if "score" in title and "ablation" not in title.lower() and "removed" not in title:
            assert "checkpoint" in title, title
    by_k = next(t for title, t in rep.tables.items() if title.startswith("Normalized score against K"))
    assert [c[-1] for c in by_k.columns] == ["last", "best"] * (len(by_k.columns) // 2)
    dema = rep.runs[rep.runs.arch == "dema"].iloc[0]
    assert dema.best_score_transformer >= dema.score_transformer
    verdicts = {f: v for f, v, _ in rep.findings}
    assert set(verdicts.values()) <= {
        "holds",
        "does not hold",
        "inconclusive",
        "not measured",
        "holds (no significant difference)",
    }
    for claim in ("Transformer-like DeMa beats RNN-like DeMa", "DeMa matches or beats DT"):
        # judged by both scorings, side by side
        assert {f for f in verdicts if f.startswith(claim)} == {
            f"{claim} · best checkpoint (the paper's scoring)",
            f"{claim} · last checkpoint (dema-lab's)",
        }
    # a finding these runs cannot decide says which runs would
    evidence = {f: e for f, _, e in rep.findings}
    te = "No timestep embedding is needed (without scores at least as well) · last checkpoint (dema-lab's)"
    assert verdicts[te] == "not measured"
    assert (
        evidence[te] == "needs no-timestep-embedding runs and timestep-embedding runs on the same dataset, K and seed"
    )
    md = to_markdown(rep)
    assert md.startswith("# Sweep report (2 runs)") and "| paper's finding |" in md
    assert "last: the final checkpoint" in md and "Student-t interval" in md
    assert "| dataset | 2 / last | 2 / best |" in md
    assert f"Made by `dema-lab report --store {base.run.store} --sweep t`" in md
    assert "training steps: 18;" in md and "d_model: dema 16 / dt 16;" in md and "episodes per ablation: 1;" in md
    drop = score_drop(ablation_table(RunStore(base.run.store).run("t-hopper-medium-small-dema-B3LD-ts0-K2-s0")))
    assert float(drop.sel(ablation="none", layers="all").max()) == 0.0
    abl = [t for t in rep.tables if "method × layers" in t]
    assert len(abl) == 1, list(rep.tables)
    table = rep.tables[abl[0]].reset_index()
    assert set(table.method) == {"none", "mixer-zeros", "mixer-random", "alpha-zeros", "alpha-random"}
    assert set(table.family) == {"unablated", "paper: parameter-level (merge_exp.py)", "dema-lab: α-level"}
    claims = [f for f in verdicts if f.startswith("Hidden attention matters")]
    assert len(claims) == 4 and any("merge_exp.py" in c for c in claims) and any("α-level" in c for c in claims)


def test_findings_put_the_papers_method_beside_dema_labs():
    """Score findings are judged by the best checkpoint (the paper's scoring) and by the last one
    (dema-lab's), each with its own verdict; the decay finding by the paper's display and by
    dema-lab's decay statistics."""
    import pandas as pd

    from dema_lab.study.report import findings

    rows = []
    for i, ds in enumerate(("a", "b", "c", "d")):
        for K in (5, 20, 40):
            rows.append(
                dict(
                    dataset=ds,
                    K=K,
                    seed=0,
                    arch="dema",
                    layout="B3LD",
                    timestep_embedding=False,
                    parameters=1e5,
                    score_transformer=50.0 + i,
                    score_rnn=40.0 + i + 0.1 * K,
                    # best: the RNN-like mode peaked earlier and higher (by more at longer K: a
                    # spread, without which there is no verdict)
                    best_score_transformer=55.0 + i,
                    best_score_rnn=70.0 + i + 0.1 * K,
                    paper_r2=0.95,
                    paper_half_life_steps=2.0,
                    paper_state_r2=0.97,
                    paper_state_half_life_steps=1.5,
                    r2_layer0=0.5,
                    half_life_steps_layer0=3.0,
                )
            )
    got = {f: v for f, v, _ in findings(pd.DataFrame(rows))}
    assert got["Transformer-like DeMa beats RNN-like DeMa · last checkpoint (dema-lab's)"] == "holds"
    assert got["Transformer-like DeMa beats RNN-like DeMa · best checkpoint (the paper's scoring)"] == "does not hold"
    decay = {f: v for f, v in got.items() if f.startswith("Hidden attention decays")}
    assert len(decay) == 3
    assert [v for f, v in decay.items() if "paper's display (" in f] == ["holds"]
    assert [v for f, v in decay.items() if "dema-lab's decay statistics" in f] == ["does not hold"]
    short = [f for f in got if f.startswith("A short K")]
    assert len(short) == 2 and any("best checkpoint" in f for f in short)


def test_score_plot_over_three_k_values_renders_with_a_log_axis():
    """Three K values spanning 4x or more get a log K axis; the flag must be a Python bool (a
    numpy bool made HoloViews refuse the plot, and /study on the study's store was a blank page)."""
    import holoviews as hv
    import pandas as pd

    from dema_lab.study.report import Report

    hv.extension("bokeh")
    runs = pd.DataFrame(
        [
            dict(
                dataset="hopper-medium",
                K=np.int64(K),
                seed=0,
                arch="dema",
                layout="B3LD",
                timestep_embedding=np.bool_(False),
                score_transformer=50.0 + K,
                best_score_transformer=55.0 + K,
            )
            for K in (5, 20, 40)
        ]
    )
    plot = score_plot(Report(runs=runs), "transformer")
    fig = hv.render(plot, backend="bokeh")
    assert type(fig.x_scale).__name__ == "LogScale"
    assert [int(t) for t in fig.xaxis[0].ticker.ticks] == [5, 20, 40]


# ------------------------------------------------------------------------ verdicts need evidence
def test_paired_verdict_needs_three_pairs_that_are_not_all_equal():
    """Two pairs with identical differences gave a zero-width t-interval and so a verdict ("holds,
    +2.8, 95% t-interval [+2.8, +2.8] over 2 pairs"); a verdict now needs MIN_PAIRS (3) pairs and
    a spread, and the evidence says which is missing."""
    from dema_lab.study.report import paired_verdict

    assert paired_verdict([2.8, 2.8]) == (
        "inconclusive",
        "3 pairs needed, 2 measured; all 2 differences are equal: add seeds or episodes; "
        "mean paired difference +2.8 over 2 pairs",
    )
    assert paired_verdict([2.8, 2.8, 2.8]) == (
        "inconclusive",
        "all 3 differences are equal: add seeds or episodes; mean paired difference +2.8 over 3 pairs",
    )
    # equal up to rounding (scores differenced in floating point) is equal
    assert paired_verdict([-1e-12, -1e-12 * (1 + 1e-15)])[0] == "inconclusive"
    # two different pairs are still too few, however far from 0: t(0.975, 1 dof) rests on one deviation
    verdict, evidence = paired_verdict([10.0, 11.0])
    assert verdict == "inconclusive" and evidence.startswith("3 pairs needed, 2 measured;")
    # with the evidence there, the t-interval decides as before: t(0.975, 2 dof) = 4.302653 from a table
    d = np.array([2.0, 3.0, 4.0])
    half = 4.302652730 * d.std(ddof=1) / np.sqrt(3)
    assert paired_verdict(d) == (
        "holds",
        f"mean paired difference +3.0, 95% t-interval [{3 - half:+.1f}, {3 + half:+.1f}] over 3 pairs",
    )
    assert paired_verdict(-d)[0] == "does not hold"
    assert paired_verdict([1.0, -1.0, 0.5])[0] == "inconclusive"
    # "at least as good" holds with no significant difference only on the same evidence
    assert paired_verdict([1.0, -1.0, 0.5], at_least=True)[0] == "holds (no significant difference)"
    assert paired_verdict([1.0, -1.0], at_least=True)[0] == "inconclusive"
    assert paired_verdict([0.0, 0.0, 0.0], at_least=True)[0] == "inconclusive"


def _runs(n_seeds, diff, dt_diff):
    """DeMa B3LD runs at K 10, seeds 0..n-1, with Transformer-like minus RNN-like scores `diff`,
    and a DT run per seed scoring `dt_diff` below the DeMa run."""
    import pandas as pd

    rows = []
    for seed in range(n_seeds):
        common = dict(dataset="hopper-medium", K=10, seed=seed, layout="B3LD", parameters=1e5)
        t = 50.0 + 7.0 * seed  # scores differ between seeds; the differences need not
        rows.append(
            dict(
                common,
                arch="dema",
                timestep_embedding=False,
                score_transformer=t,
                score_rnn=t - diff[seed],
                best_score_transformer=t,
                best_score_rnn=t - diff[seed],
            )
        )
        rows.append(
            dict(
                common,
                arch="dt",
                timestep_embedding=True,
                parameters=4e5,
                score_transformer=t - dt_diff[seed],
                best_score_transformer=t - dt_diff[seed],
            )
        )
    return pd.DataFrame(rows)


def test_findings_without_evidence_are_inconclusive_and_say_what_is_missing():
    """The report's findings on two reported cases: DeMa against DT with two pairs of equal
    differences (+2.8) was "holds", Transformer-like against RNN-like with equal differences of
    -0.0 was "does not hold"; both are inconclusive now, and the method paragraph states the rule."""
    from dema_lab.study.report import Report, findings

    def by_claim(df):
        return {f.split(" · ")[0]: (v, e) for f, v, e in findings(df) if "last checkpoint" in f}

    tiny = -1e-12  # -0.0 on the page, below 0 for the interval
    got = by_claim(_runs(2, diff=[tiny, tiny], dt_diff=[2.8, 2.8]))
    verdict, evidence = got["DeMa matches or beats DT"]
    assert verdict == "inconclusive"
    assert evidence.startswith("3 pairs needed, 2 measured; all 2 differences are equal: add seeds or episodes")
    verdict, evidence = got["Transformer-like DeMa beats RNN-like DeMa"]
    assert verdict == "inconclusive" and "all 2 differences are equal" in evidence
    # three pairs with a spread decide; equal differences over three still do not
    got = by_claim(_runs(3, diff=[4.0, 5.0, 6.5], dt_diff=[2.8, 2.8, 2.8]))
    assert got["Transformer-like DeMa beats RNN-like DeMa"][0] == "holds"
    assert got["DeMa matches or beats DT"] == (
        "inconclusive",
        "all 3 differences are equal: add seeds or episodes; mean paired difference +2.8 over 3 pairs; "
        f"DeMa {np.mean([50, 57, 64]):.1f} vs DT {np.mean([50, 57, 64]) - 2.8:.1f}",
    )
    got = by_claim(_runs(3, diff=[4.0, 5.0, 6.5], dt_diff=[0.5, -0.7, 0.1]))
    assert got["DeMa matches or beats DT"][0] == "holds (no significant difference)"
    methods = Report.methods()
    assert "A verdict needs at least 3 pairs whose differences are not all equal" in methods
    assert "its evidence says what is missing" in methods


def test_random_verdict_needs_three_episodes_with_a_spread():
    """The verdict against the random policy is a t-interval over a run's episodes: two episodes,
    or episodes that all score the same, give none ("not shown"), however far above 0."""
    import pandas as pd
    import xarray as xr

    from dema_lab.analysis.scoring import against_random
    from dema_lab.study.report import random_table

    def evals(scores):
        ns = np.asarray(scores, float).reshape(1, 1, 1, -1)
        coords = dict(checkpoint=[100], mode=["transformer"], target=[3600.0], episode=range(ns.shape[-1]))
        return xr.Dataset({"normalized_score": (("checkpoint", "mode", "target", "episode"), ns)}, coords=coords)

    rows = []
    for seed, scores in enumerate(([40.0, 41.0], [40.0, 40.0, 40.0], [40.0, 41.0, 43.0])):
        vs = against_random(evals(scores), "transformer")
        rows.append(
            dict(
                dataset="hopper-medium",
                arch="dema",
                layout="B3LD",
                timestep_embedding=False,
                K=10,
                seed=seed,
                score_transformer=vs["mean"],
                random_low_transformer=vs["low"],
                random_high_transformer=vs["high"],
                episodes_transformer=vs["episodes"],
                above_random_transformer=vs["above"],
                random_gap_transformer=vs["gap"],
            )
        )
    table = random_table(pd.DataFrame(rows)).reset_index()
    assert list(table.verdict) == ["not shown", "not shown", "beats random"]
    assert rows[0]["random_gap_transformer"] == "3 episodes needed, 2 measured"
    assert rows[1]["random_gap_transformer"] == "all 3 episodes are equal: add seeds or episodes"


# ------------------------------------------------------------------------------------ the demo
def test_demo_trains_a_dt_beside_the_main_run_and_ablates_every_dema_run():
    """The newcomer's study page: the demo's runs are one sweep ("demo") with a DT beside the main
    DeMa run (the papers' DT tokens; otherwise the same config, so the two pair up on dataset, K and
    seed), and the paper's two ablations on each of the three DeMa runs: three pairs, the fewest a
    verdict takes. The main run alone (--no-sweep) gets no ablation: one pair decides nothing."""
    from dema_lab.analysis.runs import MAIN_RUN
    from dema_lab.analysis.scoring import MIN_PAIRS
    from dema_lab.evaluation.ablation import FAMILY, PAPER
    from dema_lab.study.demo import DT_RUN, PAPER_ABLATIONS, ablation_plan, demo_runs

    runs = demo_runs("a-store")
    by_id = {c.run.run_id: c for c in runs}
    assert list(by_id) == [MAIN_RUN, "demo-dema-K5", "demo-dema-K20", DT_RUN]
    assert {c.run.sweep for c in runs} == {"demo"} and {c.run.store for c in runs} == {"a-store"}
    main, dt = by_id[MAIN_RUN].to_flat(), by_id[DT_RUN].to_flat()
    # DT as its papers ran it (kzl/decision-transformer): tokens (R_t, s_t, a_t), the current
    # return-to-go, a timestep embedding; the rest is the main run's
    assert (dt["arch"], dt["token_order"], dt["rtg_form"], dt["timestep_embedding"]) == ("dt", "RSA", "current", True)
    assert {k for k in main if main[k] != dt[k]} <= {"arch", "token_order", "rtg_form", "timestep_embedding", "run_id"}
    assert main["K"] == dt["K"] == 10 and main["steps"] == dt["steps"] and main["eval_targets"] == dt["eval_targets"]
    plan = ablation_plan(runs)
    assert plan == {run_id: PAPER_ABLATIONS for run_id in (MAIN_RUN, "demo-dema-K5", "demo-dema-K20")}
    assert len(plan) >= MIN_PAIRS
    # the paper's parameter-level methods (merge_exp.py), swap aside (it needs a second run), and
    # the unablated reference they are compared with
    assert set(PAPER_ABLATIONS) == {"none"} | {m for m, f in FAMILY.items() if f == PAPER and m != "swap"}
    assert [c.run.run_id for c in demo_runs("a-store", sweep=False)] == [MAIN_RUN]
    assert ablation_plan(demo_runs("a-store", sweep=False)) == {}


@pytest.mark.slow
def test_demo_store_has_a_dt_the_ablations_and_three_pairs_per_ablation_finding(hopper_small, tmp_path, monkeypatch):
    """run_demo end to end at a tiny size: the four runs form the sweep "demo", each DeMa run
    carries the paper's two ablations (and only those), and the report's hidden-attention findings
    on them rest on three pairs, so they are decided by the t-interval, not by missing pairs. A
    rerun evaluates nothing again."""
    import dema_lab.data
    from dema_lab.study import demo
    from dema_lab.study.report import build_report, sweep_names

    small = dict(steps=10, eval_every=0, eval_episodes=2, eval_max_steps=30, record_episodes=0, decay_windows=8)
    small.update(d_model=16, n_layer=2, batch_size=8, checkpoint_every=10, log_every=10)
    monkeypatch.setattr(demo, "DEMO_CONFIG", demo.DEMO_CONFIG.replace(dataset=str(hopper_small), **small))
    monkeypatch.setattr(dema_lab.data, "ensure_embedded", lambda *a, **k: None)  # the tiny dataset is built
    store = str(tmp_path / "demo-store")
    messages = []
    ids = demo.run_demo(store, on_progress=lambda m, f: messages.append(m), progress=False)
    assert ids == ["demo-dema-K10", "demo-dema-K5", "demo-dema-K20", "demo-dt-K10"]
    assert sweep_names(store) == ["demo"]
    rep = build_report(store, "demo", latency=False)
    runs = rep.runs.set_index("run")
    assert sorted(runs.index) == sorted(ids)
    dema = runs[runs.arch == "dema"]
    assert dema[["ablation_none", "ablation_mixer-zeros", "ablation_mixer-random"]].notna().all().all()
    assert "ablation_alpha-zeros" not in runs or runs["ablation_alpha-zeros"].isna().all()
    found = {f: (v, e) for f, v, e in rep.findings}
    for what in ("set to zeros", "set to U[0,1)"):
        ((verdict, evidence),) = [
            ve for f, ve in found.items() if f.startswith("Hidden attention matters: mixer") and what in f
        ]
        assert "pairs needed" not in evidence and ("over 3 pairs" in evidence), evidence
    dt = [ve for f, ve in found.items() if f.startswith("DeMa matches or beats DT")]
    assert len(dt) == 2 and all(e.startswith("3 pairs needed, 1 measured") for _, e in dt)  # one DT run: one pair
    assert found["DeMa needs far fewer parameters than DT"][0] in ("holds", "does not hold")
    assert any("ablated (none, mixer-zeros, mixer-random)" in m for m in messages), messages
    again = []
    demo.run_demo(store, on_progress=lambda m, f: again.append(m), progress=False)
    assert not any("ablated" in m for m in again) and any("skipped" in m for m in again), again
