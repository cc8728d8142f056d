"""The study report's faithfulness finding and causal-horizon table (study.report), from a
faithfulness group built by analysis.faithfulness on a tiny model and from hand-made run rows."""

import numpy as np
import pandas as pd
from helpers.explain import tiny, window

from dema_lab.analysis.faithfulness import faithfulness
from dema_lab.study.report import faithfulness_scores, faithfulness_verdict, findings, horizon_table


def test_a_runs_row_carries_each_methods_paired_difference_against_recency():
    model = tiny()
    faith = faithfulness(model, window(model, b=5), methods=["alpha", "gradient"], fractions=(0.5, 1.0))
    faith = faith.assign(horizon_cut=2.0).assign_attrs(half_life_steps=1.5)
    row = faithfulness_scores(faith)
    v = faith.sel(explanation="alpha", baseline="recency")
    assert row["faith_alpha"] == float(v["versus_mean"]) and row["faith_alpha_low"] == float(v["versus_low"])
    assert row["faith_gradient_random"] == float(faith["versus_mean"].sel(explanation="gradient", baseline="random"))
    assert "faith_recency" not in row and "faith_random" not in row and "faith_occlusion" in row
    assert row["horizon_cut"] == 2.0 and row["explain_half_life_steps"] == 1.5


def rows(**cols):
    base = {"run": ["a", "b", "c"], "dataset": ["d"] * 3, "arch": ["dema"] * 3, "layout": ["B3LD"] * 3}
    base.update({"timestep_embedding": [False] * 3, "K": [5, 10, 20], "seed": [0, 0, 0]})
    return pd.DataFrame({**base, **cols})


def test_the_finding_holds_only_when_every_runs_interval_lies_above_zero():
    df = rows(
        faith_alpha=[0.02, 0.03, 0.01],
        faith_alpha_low=[0.01, 0.02, 0.001],
        faith_alpha_high=[0.03, 0.04, 0.02],
        faith_gradient=[0.02, -0.01, 0.0],
        faith_gradient_low=[0.01, -0.02, -0.01],
        faith_gradient_high=[0.03, -0.001, 0.01],
        faith_unified=[-0.02, -0.03, -0.01],
        faith_unified_low=[-0.03, -0.04, -0.02],
        faith_unified_high=[-0.01, -0.02, -0.001],
        horizon_cut=[3.0, 4.0, 20.0],
        explain_half_life_steps=[1.0, 1.5, 2.0],
    )
    assert faithfulness_verdict(df, "alpha")[0] == "holds"
    verdict, evidence = faithfulness_verdict(df, "gradient")
    assert verdict == "inconclusive" and "beats recency in 1 of 3 run(s), worse in 1" in evidence
    assert faithfulness_verdict(df, "unified")[0] == "does not hold"
    assert faithfulness_verdict(df, "rollout")[0] == "not measured"
    out = {f: v for f, v, _ in findings(df)}
    assert out["Hidden attention is a faithful explanation: alpha beats recency"] == "holds"
    assert out["A short window is enough, causally: the causal horizon is shorter than K"] == "inconclusive"
    table = horizon_table(df)
    assert list(table.index) == [("d", 5), ("d", 10), ("d", 20)]
    assert table.loc[("d", 10), "causal horizon, window cut (steps)"] == "4.0"
    assert np.all(table["attention half-life (steps)"].values == ["1.0", "1.5", "2.0"])
