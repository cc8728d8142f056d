"""The paper's study: ablations, the resumable sweep, and the report."""

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from dema_lab.ablation import ablate, ablate_hidden_attention, ablations_for, score_drop
from dema_lab.models import ModelConfig, build_model
from dema_lab.report import build_report
from dema_lab.ssm import Mamba, hidden_attention
from dema_lab.sweep import SweepConfig, grid, run_sweep


def test_zero_ablation_leaves_only_the_skip_and_gate():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4).eval()
    h = torch.randn(2, 7, 16)
    x, z, dt, B, C, A = m._ssm_inputs(h)
    expected = m.out_proj((x * m.D[:, None] * F.silu(z)).transpose(1, 2))
    m.ablation = ("zeros", 0)
    torch.testing.assert_close(m(h), expected)


def test_random_ablation_matches_each_channels_scale_and_is_reproducible():
    from dema_lab.ssm.mamba import ablated_attention

    torch.manual_seed(0)
    m = Mamba(16, d_state=4).eval()
    h = torch.randn(1, 40, 16)
    x, z, dt, B, C, A = m._ssm_inputs(h)
    alpha = hidden_attention(dt, A, B, C, m.dt_proj.bias, True)
    rand = ablated_attention(alpha, "random", seed=3, layer=0)
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    assert rand.masked_select(~causal).abs().max() == 0
    real_rms = alpha.masked_select(causal).view(32, -1).pow(2).mean(-1).sqrt()
    rand_rms = rand.masked_select(causal).view(32, -1).pow(2).mean(-1).sqrt()
    assert torch.allclose(rand_rms, real_rms, rtol=0.15)          # 820 samples per channel
    # a window of one token (BL3D at an episode's first step): finite, at that token's scale
    one = ablated_attention(alpha[..., :1, :1], "random", seed=3, layer=0)
    assert torch.isfinite(one).all() and (one != 0).any()
    assert torch.allclose(one.abs().mean(), alpha[..., :1, :1].abs().mean(), rtol=1.0)
    assert torch.equal(rand, ablated_attention(alpha, "random", seed=3, layer=0))
    assert not torch.equal(rand, ablated_attention(alpha, "random", seed=4, layer=0))
    m.ablation = ("random", 3)
    out1, out2 = m(h), m(h)
    torch.testing.assert_close(out1, out2)
    m.ablation = None
    assert not torch.allclose(out1, m(h))


def test_ablation_context_restores_the_model():
    model = build_model(ModelConfig(state_dim=5, act_dim=2, K=3, d_model=16, d_state=4)).eval()
    x = dict(states=torch.randn(1, 3, 5), actions=torch.zeros(1, 3, 2), returns_to_go=torch.ones(1, 3, 1),
             timesteps=torch.arange(3)[None])
    base = model(**x)
    with ablate_hidden_attention(model, "zeros"):
        assert not torch.allclose(model(**x), base)
    torch.testing.assert_close(model(**x), base)
    with pytest.raises(ValueError, match="unknown ablation"):
        with ablate_hidden_attention(model, "ones"):
            pass
    with pytest.raises(ValueError, match="need a DeMa model"):
        with ablate_hidden_attention(build_model(ModelConfig(arch="dt", state_dim=5, act_dim=2, d_model=16)), "zeros"):
            pass


def test_timestep_embedding_ablation_removes_it_and_restores_it():
    x = dict(states=torch.randn(1, 3, 5), actions=torch.zeros(1, 3, 2), returns_to_go=torch.ones(1, 3, 1),
             timesteps=torch.tensor([[400, 401, 402]]))
    dt = build_model(ModelConfig(arch="dt", state_dim=5, act_dim=2, K=3, d_model=16)).eval()
    dema_te = build_model(ModelConfig(state_dim=5, act_dim=2, K=3, d_model=16, d_state=4,
                                      timestep_embedding=True)).eval()
    dema = build_model(ModelConfig(state_dim=5, act_dim=2, K=3, d_model=16, d_state=4)).eval()
    assert ablations_for(dt) == ("none", "no_timestep")
    assert ablations_for(dema_te) == ("none", "zeros", "random", "no_timestep")
    assert ablations_for(dema) == ("none", "zeros", "random")
    for model in (dt, dema_te):
        base = model(**x)
        with ablate(model, "no_timestep"):
            ablated = model(**x)
            # without the embedding the timesteps no longer matter
            torch.testing.assert_close(model(**{**x, "timesteps": torch.tensor([[0, 1, 2]])}), ablated)
        assert not torch.allclose(ablated, base)
        torch.testing.assert_close(model(**x), base)
    with pytest.raises(ValueError, match="needs a model trained with a timestep embedding"):
        with ablate(dema, "no_timestep"):
            pass


def test_paired_verdicts():
    from dema_lab.report import paired_verdict
    assert paired_verdict([5.0, 6.0, 4.0, 5.5])[0] == "holds"
    assert paired_verdict([-5.0, -6.0, -4.0])[0] == "does not hold"
    assert paired_verdict([5.0, -6.0, 4.0, -3.0])[0] == "inconclusive"
    assert paired_verdict([0.5])[0] == "inconclusive" and paired_verdict([2.0])[0] == "holds"
    assert paired_verdict([np.nan])[0] == "not measured"
    assert "+5.1" in paired_verdict([5.0, 6.0, 4.0, 5.5])[1]


def test_short_k_finding_compares_k_over_the_same_datasets():
    import pandas as pd
    from dema_lab.report import short_k_finding
    rows = [("easy", k, 0, 30.0 + k / 10) for k in (5, 10, 20, 40)]           # K=40 a little better
    rows += [("easy2", k, 0, 40.0 - abs(k - 20) / 10) for k in (5, 10, 20, 40)]
    rows += [("hard", k, 0, 1.0) for k in (5, 20)]                           # swept at fewer K
    rows += [("easy", 20, 1, 90.0)]                                          # a second seed at one K only
    df = pd.DataFrame(rows, columns=["dataset", "K", "seed", "score_transformer"])
    claim, verdict, evidence = short_k_finding(df)
    # an unpaired mean by K would read K=10: 35, K=20: 40.2 against K=40: 36 (or K=5: 23 with "hard");
    # over easy and easy2 only, K=20 (36.0) against K=40 (36.0): no difference
    assert verdict == "holds (no significant difference)", evidence
    assert "2 dataset(s) run at every K (easy, easy2)" in evidence
    assert "K=20: 36.0" in evidence and "K=40: 36.0" in evidence and "K=20 against K=40" in evidence
    worse = df.assign(score_transformer=df.score_transformer + (df.K == 40) * np.where(df.dataset == "easy", 8.0, 9.0))
    assert short_k_finding(worse)[1] == "does not hold"
    assert short_k_finding(df[df.K <= 20])[1] == "not measured"
    # the pairs are every (dataset, seed) run at both chosen K, not only those run at every K
    seeds = pd.DataFrame([("d", k, sd, 30.0 + sd) for k in (10, 40) for sd in (0, 1, 2)] + [("d", 5, 0, 1.0)],
                         columns=df.columns)
    assert "K=10 against K=40: mean paired difference +0.0 ± 0.0 (s.e.) over 3 pairs" in short_k_finding(seeds)[2]
    # no dataset run at every K: the K values every dataset has (here K=10 only: nothing to compare)
    disjoint = pd.DataFrame([("a", 10, 0, 1.0), ("a", 40, 0, 1.0), ("b", 10, 0, 2.0), ("b", 60, 0, 0.0)],
                            columns=df.columns)
    _, verdict, evidence = short_k_finding(disjoint)
    assert verdict == "not measured" and "over the K values every dataset has: K=10: 1.5;" in evidence


def test_grid_run_ids_are_stable_and_cover_the_grid(tiny_config):
    sweep = SweepConfig(name="g", datasets=["hopper-medium"], K=[5, 10], layouts=["B3LD", "BL3D"],
                        timestep_embedding=[False, True], archs=["dema", "dt"], seeds=[0, 1], base=tiny_config)
    configs = grid(sweep)
    assert len(configs) == 2 * 2 * 2 * 2 + 2 * 2 * 2          # DeMa: ts off and on; DT: always with its embedding
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
    from dema_lab.store import StoreError
    a_file = os.path.join(os.path.dirname(tiny_config.store), "a-file")
    open(a_file, "w").close()
    with pytest.raises(StoreError, match="is a file"):                    # before any dataset is loaded
        run_sweep(dataclasses.replace(bad, base=dataclasses.replace(tiny_config, store=a_file)), log=lambda *_: None)


def test_sweep_runs_resumes_skips_and_reports(tiny_config):
    base = dataclasses.replace(tiny_config, run_id="", steps=12, checkpoint_every=6)
    base = dataclasses.replace(base, eval_max_steps=15, eval_targets=[3600.0], render_size=0)
    sweep = SweepConfig(name="t", datasets=[base.dataset], K=[2], archs=["dema", "dt"], workers=1,
                        ablation_episodes=1, base=base)
    first = run_sweep(sweep, log=lambda *_: None)
    assert sorted(r["what"] for r in first) == ["trained"] * 2
    again = run_sweep(sweep, log=lambda *_: None)
    assert [r["what"] for r in again] == ["skipped"] * 2
    # a rerun completes ablations that are missing or were made by an older method, keeping the rest
    from dema_lab.store import RunStore
    rs = RunStore(base.store, mode="a")
    dema_run, dt_run = rs.run("t-hopper-medium-small-dema-B3LD-ts0-K2-s0"), rs.run("t-hopper-medium-small-dt-B3LD-ts1-K2-s0")
    name = dema_run.published("ablation")[-1]
    before = dema_run.open("ablation", name).load()
    old_method = before.copy(deep=True)
    old_method.attrs.pop("random_scale")
    old_method["normalized_score"].loc[{"ablation": "random"}] = -99.0
    dema_run.write("ablation", name, old_method)
    dt_run.unpublish("ablation", dt_run.published("ablation"))
    added = {r["run_id"]: r["what"] for r in run_sweep(sweep, log=lambda *_: None)}
    assert added == {dema_run.run_id: "ablations added (random)", dt_run.run_id: "ablations added (none, no_timestep)"}
    after = dema_run.open("ablation", name).load()
    xr.testing.assert_identical(after["normalized_score"], before["normalized_score"])      # same seed, same scores
    assert list(dt_run.open("ablation", dt_run.published("ablation")[-1]).ablation.values) == ["none", "no_timestep"]
    # extending the sweep's steps resumes every run from its last checkpoint
    longer = dataclasses.replace(sweep, base=dataclasses.replace(base, steps=18))
    assert [r["what"] for r in run_sweep(longer, log=lambda *_: None)] == ["resumed"] * 2

    rep = build_report(base.store, "t", latency=True)
    assert len(rep.runs) == 2 and set(rep.runs.arch) == {"dema", "dt"}
    assert (rep.runs.latency_ms_transformer > 0).all()
    assert rep.runs.loc[rep.runs.arch == "dema", "ablation_zeros"].notna().all()
    assert rep.runs.loc[rep.runs.arch == "dt", "ablation_no_timestep"].notna().all()     # DT has one
    assert rep.runs.loc[rep.runs.arch == "dema", "ablation_no_timestep"].isna().all()    # this DeMa has none
    titles = " ".join(rep.tables)
    for part in ("DeMa against DT", "ablations", "RNN-like against Transformer-like", "Decay statistics",
                 "Timestep embedding removed at evaluation"):
        assert part in titles
    verdicts = {f: v for f, v, _ in rep.findings}
    assert set(verdicts.values()) <= {"holds", "does not hold", "inconclusive", "not measured",
                                      "holds (no significant difference)"}
    assert "Transformer-like DeMa beats RNN-like DeMa" in verdicts and "DeMa matches or beats DT" in verdicts
    md = rep.to_markdown()
    assert md.startswith("# Sweep report (2 runs)") and "| paper's finding |" in md
    assert f"Made by `dema-lab report --store {base.store} --sweep t`" in md
    assert "training steps: 18;" in md and "d_model: dema 16 / dt 16;" in md and "episodes per ablation: 1;" in md
    from dema_lab.ablation import ablation_table
    drop = score_drop(ablation_table(RunStore(base.store).run("t-hopper-medium-small-dema-B3LD-ts0-K2-s0")))
    assert float(drop.sel(ablation="none").max()) == 0.0
