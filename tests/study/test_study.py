"""The paper's study: the resumable sweep (with its ablations) and the report. The ablations
themselves: tests/test_ablation.py."""

import dataclasses
import os

import numpy as np
import pytest
import xarray as xr

from dema_lab.evaluation.ablation import ablation_table, score_drop
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
    assert all(c.timestep_embedding for c in configs if c.arch == "dt")
    assert len({c.run_id for c in configs}) == len(configs)
    assert configs[0].run_id == "g-hopper-medium-dema-B3LD-ts0-K5-s0"
    assert all(c.eval_modes == ["transformer"] for c in configs if c.arch == "dt")
    assert [c.run_id for c in grid(sweep)] == [c.run_id for c in configs]
    with pytest.raises(ValueError, match="sweep dimension K is empty"):
        SweepConfig(K=[])
    # a dataset that cannot be read fails the sweep before any run starts, and writes no store
    from dema_lab.data import DatasetError

    bad = dataclasses.replace(sweep, datasets=[tiny_config.dataset, tiny_config.dataset + ".missing.hdf5"])
    with pytest.raises(DatasetError, match="no such file"):
        run_sweep(bad, log=lambda *_: None)
    assert not os.path.exists(tiny_config.store)
    from dema_lab.store.errors import StoreError

    a_file = os.path.join(os.path.dirname(tiny_config.store), "a-file")
    open(a_file, "w").close()
    with pytest.raises(StoreError, match="is a file"):  # before any dataset is loaded
        run_sweep(dataclasses.replace(bad, base=dataclasses.replace(tiny_config, store=a_file)), log=lambda *_: None)


def test_sweep_runs_resumes_skips_and_reports(tiny_config):
    base = dataclasses.replace(tiny_config, run_id="", steps=12, checkpoint_every=6)
    base = dataclasses.replace(base, eval_max_steps=15, eval_targets=[3600.0], render_size=0)
    sweep = SweepConfig(
        name="t", datasets=[base.dataset], K=[2], archs=["dema", "dt"], workers=1, ablation_episodes=1, base=base
    )
    first = run_sweep(sweep, log=lambda *_: None)
    assert sorted(r["what"] for r in first) == ["trained"] * 2
    again = run_sweep(sweep, log=lambda *_: None)
    assert [r["what"] for r in again] == ["skipped"] * 2
    # a rerun completes ablations that are missing, keeping the rest; it reads groups written before the
    # paper's parameter-level methods (dim `ablation`: none / zeros / random), and redoes a 'random' made by the
    # older std-scaled method
    from dema_lab.store.zarr_store import RunStore

    rs = RunStore(base.store, mode="a")
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
    longer = dataclasses.replace(sweep, base=dataclasses.replace(base, steps=18))
    assert [r["what"] for r in run_sweep(longer, log=lambda *_: None)] == ["resumed"] * 2

    rep = build_report(base.store, "t", latency=True)
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
    md = rep.to_markdown()
    assert md.startswith("# Sweep report (2 runs)") and "| paper's finding |" in md
    assert "last: the final checkpoint" in md and "Student-t interval" in md
    assert "| dataset | 2 / last | 2 / best |" in md
    assert f"Made by `dema-lab report --store {base.store} --sweep t`" in md
    assert "training steps: 18;" in md and "d_model: dema 16 / dt 16;" in md and "episodes per ablation: 1;" in md
    drop = score_drop(ablation_table(RunStore(base.store).run("t-hopper-medium-small-dema-B3LD-ts0-K2-s0")))
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
                    # best: the RNN-like mode peaked earlier and higher
                    best_score_transformer=55.0 + i,
                    best_score_rnn=70.0 + i,
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
    plot = Report(runs=runs).score_plot("transformer")
    fig = hv.render(plot, backend="bokeh")
    assert type(fig.x_scale).__name__ == "LogScale"
    assert [int(t) for t in fig.xaxis[0].ticker.ticks] == [5, 20, 40]
