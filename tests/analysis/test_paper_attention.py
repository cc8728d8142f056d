"""The paper's attention display (analysis.paper_attention): the current token's row of |α|,
mean over channels, at every decision step from 20 of a recorded Transformer-like episode;
its fits, its per-key-kind fits, the store round trip and the explorer's views of it."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dema_lab.analysis import (
    PAPER_START,
    by_key_kind,
    paper_selection,
    paper_statistics,
)
from dema_lab.evaluation.paper import paper_attention, publish_paper_attention
from dema_lab.evaluation.rollout import record_episode
from dema_lab.models import ModelConfig, Policy, build_model
from dema_lab.ssm import Mamba, hidden_attention_row


class FakeEnv:
    """Observations and rewards from a seeded generator, whatever the actions: a recorded
    episode of exactly `length` steps (no MuJoCo)."""

    spec = None

    def __init__(self, obs_dim: int, length: int):
        self.obs_dim, self.length = obs_dim, length

    def reset(self, seed=0):
        self.rng, self.t = np.random.default_rng(seed), 0
        return self.rng.normal(size=self.obs_dim).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        return (
            self.rng.normal(size=self.obs_dim).astype(np.float32),
            float(self.rng.uniform(0, 3)),
            False,
            self.t >= self.length,
            {},
        )


def recorded(cfg: ModelConfig, length: int, seed: int = 0):
    """A tiny model and an episode it acted in, recorded with attention aggregated "abs" (mean
    |α| over channels): the rollout's attention_by_lag is then, at every step, the current token's
    row of the full hidden attention of the window the policy acted on."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(seed)
    mean, std = rng.normal(size=cfg.state_dim).astype(np.float32), rng.uniform(0.5, 2, cfg.state_dim).astype(np.float32)
    policy = Policy(model, "transformer", mean, std, rtg_scale=100.0, attention="abs")
    ep = record_episode(policy, FakeEnv(cfg.state_dim, length), target=250.0, seed=seed, max_steps=length)
    return model, ep, dict(state_mean=mean, state_std=std, rtg_scale=100.0)


CONFIGS = {
    "dema RSA": dict(arch="dema"),
    "dema official (RAS, left-padded)": dict(arch="dema", token_order="RAS", window_padding="left"),
    "dt": dict(arch="dt"),
    "dema BL3D": dict(arch="dema", layout="BL3D"),
}


def small(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(state_dim=5, act_dim=2, K=4, d_model=16, n_layer=2, d_state=4, n_head=2), **kw})


def test_hidden_attention_row_is_the_definition():
    """alpha[d, i, j] = sum_n C_i[n] prod_{k=j+1..i} exp(delta_k A[d, n]) delta_j B_j[n], by loops."""
    g = torch.Generator().manual_seed(1)
    b, d, n, L = 2, 3, 4, 9
    dt, bias = torch.randn(b, d, L, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 2
    B = torch.randn(b, n, L, generator=g, dtype=torch.float64)
    C = torch.randn(b, n, L, generator=g, dtype=torch.float64)
    delta = F.softplus(dt + bias[:, None])
    for i in (L - 1, 4, 0):
        want = torch.zeros(b, d, L, dtype=torch.float64)
        for bb in range(b):
            for c in range(d):
                for j in range(i + 1):
                    prod = torch.ones(n, dtype=torch.float64)
                    for k in range(j + 1, i + 1):
                        prod = prod * torch.exp(delta[bb, c, k] * A[c])
                    want[bb, c, j] = (C[bb, :, i] * prod * delta[bb, c, j] * B[bb, :, j]).sum()
        got = hidden_attention_row(dt, A, B, C, i, delta_bias=bias, delta_softplus=True)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    mixer = Mamba(16, d_state=4)
    h = torch.randn(3, 11, 16, generator=g)
    torch.testing.assert_close(
        mixer.attention_row(h), mixer.attention_inputs(h)["alpha"][:, :, -1], rtol=1e-4, atol=1e-7
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_surface_is_the_current_tokens_mean_abs_row_at_every_step_from_20(name):
    cfg = small(**CONFIGS[name])
    model, ep, kw = recorded(cfg, length=26)
    ds = paper_attention(model, ep, **kw, checkpoint=5).isel(checkpoint=0)
    # the steps: 20 .. the episode's last, as the official --start_time 20
    assert PAPER_START == 20
    np.testing.assert_array_equal(ds.decision_step.values, np.arange(20, 26))
    L = cfg.window_tokens()
    assert ds.sizes["lag"] == L and ds.sizes["layer"] == cfg.n_layer
    # independent reference: the attention the policy recorded while acting (full hidden attention
    # of its window through the model's forward, channels aggregated "abs"), current token's row
    ref = ep.attention_by_lag.values[20:].transpose(1, 0, 2)  # (layer, step, lag)
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(ds.surface.values, ref, rtol=2e-4, atol=1e-7 * np.abs(ref).max())
    # means: over decision steps, then over layers; never normalised
    np.testing.assert_allclose(ds.mass.values, ref.mean(1), rtol=2e-4, atol=1e-7 * np.abs(ref).max())
    np.testing.assert_allclose(ds.curve.values, ref.mean(1).mean(0), rtol=2e-4, atol=1e-7 * np.abs(ref).max())
    if cfg.arch == "dema":  # (DT's softmax rows sum to 1 by themselves)
        assert not np.allclose(ds.mass.sum("lag").values, 1.0)
    assert ds.attrs["method"].startswith("paper:") and ds.attrs["other_method"].startswith("dema-lab:")
    for var in ds.data_vars.values():
        assert var.attrs.get("long_name")


def test_short_windows_and_the_step_range():
    """Without padding, windows before step K-1 are shorter: their missing lags are NaN and the
    means skip them. start/end choose the steps; an episode without step 20 is a clear error."""
    cfg = small()
    model, ep, kw = recorded(cfg, length=23)
    ds = paper_attention(model, ep, **kw, start=1, end=6)
    np.testing.assert_array_equal(ds.decision_step.values, [1, 2, 3, 4, 5])
    ref = ep.attention_by_lag.values[1:6].transpose(1, 0, 2)
    np.testing.assert_array_equal(np.isnan(ds.surface.values), np.isnan(ref))
    assert np.isnan(ds.surface.values[:, 0, cfg.window_tokens(2) :]).all()  # step 1: 2 steps of tokens
    np.testing.assert_allclose(ds.surface.values, ref, rtol=2e-4, atol=1e-7 * np.nanmax(np.abs(ref)))
    np.testing.assert_allclose(ds.mass.values, np.nanmean(ref, axis=1), rtol=2e-4, atol=1e-9)
    with pytest.raises(ValueError, match="has 23 steps, so none from step 30"):
        paper_attention(model, ep, **kw, start=30)
    with pytest.raises(ValueError, match="start must be a step >= 0"):
        paper_attention(model, ep, **kw, start=-1)
    rnn = ep.assign_attrs(mode="rnn")
    with pytest.raises(ValueError, match="RNN-like"):
        paper_attention(model, rnn, **kw)


def test_key_kinds_by_env_step_lag():
    """RSA window ... R-1 s-1 a-1 R0 s0 and RAS ... R-1 a-2 s-1 R0 a-1 s0: by lag in tokens."""
    lags = np.arange(11, dtype=float)
    kinds, out = by_key_kind(lags, small())
    assert kinds == ["R", "s", "a"]
    R, s, a = out  # [kind, step lag] = token lag
    np.testing.assert_array_equal(s[:4], [0, 3, 6, 9])
    np.testing.assert_array_equal(R[:4], [1, 4, 7, 10])
    assert np.isnan(a[0]) and list(a[1:4]) == [2, 5, 8]
    kinds, out = by_key_kind(np.arange(12, dtype=float), small(token_order="RAS"))
    R, s, a = out
    np.testing.assert_array_equal(s[:4], [0, 3, 6, 9])
    np.testing.assert_array_equal(R[:4], [2, 5, 8, 11])
    assert np.isnan(a[0]) and list(a[1:5]) == [1, 4, 7, 10]


def test_fits_recover_an_exponential_and_the_per_kind_fits_remove_the_sawtooth():
    cfg = small(K=6)
    L = cfg.window_tokens()
    kinds, _ = by_key_kind(np.zeros(L), cfg)
    # an exact exponential in token lag, different amplitudes per layer, same rate
    rate = 0.3
    surface = np.stack([a * np.exp(-rate * np.arange(L))[None].repeat(4, 0) for a in (1.0, 2.0)])
    ds = paper_statistics(surface, np.arange(20, 24), cfg)
    assert float(ds.curve_rate) == pytest.approx(rate) and float(ds.curve_r2) == pytest.approx(1.0)
    assert float(ds.curve_half_life) == pytest.approx(math.log(2) / rate)
    assert float(ds.curve_half_life_steps) == pytest.approx(math.log(2) / rate / 3)
    assert float(ds.curve_amplitude) == pytest.approx(1.5)
    np.testing.assert_allclose(ds.rate.values, [rate, rate])
    np.testing.assert_allclose(ds.curve_kind_rate.values, 3 * rate)  # 3 tokens per env step
    # a sawtooth: each kind decays at 0.5 per env step, at its own level (s high, a low)
    level = {"s": 1.0, "R": 0.2, "a": 0.02}
    _, idx = by_key_kind(np.arange(L, dtype=float), cfg)  # token lag of [kind, step lag]
    row = np.full(L, np.nan)
    for k, kind in enumerate(kinds):
        for step_lag, lag in enumerate(idx[k]):
            if np.isfinite(lag):
                row[int(lag)] = level[kind] * np.exp(-0.5 * step_lag)
    ds = paper_statistics(np.tile(row, (1, 3, 1)), [20, 21, 22], cfg)
    assert float(ds.curve_r2) < 0.9  # the token-lag fit is spoiled
    np.testing.assert_allclose(ds.curve_kind_rate.values, 0.5)
    np.testing.assert_allclose(ds.curve_kind_r2.values, 1.0)
    np.testing.assert_allclose(ds.curve_kind_half_life.values, math.log(2) / 0.5)
    np.testing.assert_allclose(ds.curve_kind_amplitude.values, [level[k] for k in kinds], rtol=1e-9)


def test_trainer_publishes_it_and_it_reopens_in_a_new_process(tiny_config):
    from dema_lab.dashboard.common.data import StoreIndex
    from dema_lab.dashboard.explorer.view import AttentionExplorer
    from dema_lab.training import train

    run = train(tiny_config, progress=False, log=lambda *_: None)
    assert run.published("paper_attention") == ["step_00000020"]
    stored = run.open("paper_attention", "step_00000020").load()
    assert stored.attrs["episode"].startswith("step_00000020-transformer-")
    ep = run.open("rollout", stored.attrs["episode"]).load()
    n = ep.sizes["step"]
    np.testing.assert_array_equal(stored.decision_step.values, np.arange(20, n))
    code = f"""
import json, dema_lab
tree = dema_lab.open_run({tiny_config.run.store!r}, "tiny")
ds = tree["paper_attention"].ds
print(json.dumps({{"sizes": dict(ds.sizes), "curve": ds.curve.values.tolist(), "r2": ds.curve_r2.values.tolist(),
                  "method": ds.attrs["method"]}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["sizes"]["checkpoint"] == 1 and out["sizes"]["decision_step"] == n - 20
    np.testing.assert_allclose(out["curve"], stored.curve.values, rtol=1e-12)
    assert out["method"].startswith("paper:")
    # a store written before it existed: computed again from the stored checkpoint and episode
    run.unpublish("paper_attention", ["step_00000020"])
    again = publish_paper_attention(run, 20)
    np.testing.assert_allclose(again.surface.values, stored.surface.values, rtol=1e-5, atol=1e-9)
    assert run.published("paper_attention") == ["step_00000020"]
    assert publish_paper_attention(run, 20, start=400, if_short="skip", log=lambda *_: None) is None
    with pytest.raises(ValueError, match="none from step 400"):
        publish_paper_attention(run, 20, start=400)

    # the explorer draws the surface (decision step x lag) and the curve with its stored fit
    view = AttentionExplorer(store=StoreIndex(tiny_config.run.store))
    ex = view.state
    assert ex.checkpoint == 20
    ex.layer = 0
    img = view.paper_surface()
    ds0 = stored.isel(checkpoint=0)
    grid = img.dimension_values("mean |α|", flat=False)  # (lag, decision step)
    np.testing.assert_allclose(grid.T, ds0.surface.sel(layer=0).values, rtol=1e-12)
    np.testing.assert_array_equal(img.dimension_values("decision step", expanded=False), np.arange(20, n))
    assert img.opts.get().kwargs["title"] == "Paper's method · layer 0"
    curve = view.paper_curve()
    np.testing.assert_allclose(curve.get(0).dimension_values(1), ds0.mass.sel(layer=0).values, rtol=1e-12)
    fit = curve.get(2)
    lag = fit.dimension_values(0)
    np.testing.assert_allclose(
        fit.dimension_values(1),
        float(ds0.amplitude.sel(layer=0)) * np.exp(-float(ds0.rate.sel(layer=0)) * lag),
        rtol=1e-12,
    )
    sel = paper_selection(ds0, None)  # the paper's own: mean of layers
    np.testing.assert_allclose(sel["surface"], ds0.surface.mean("layer").values, rtol=1e-12)
    kinds = view.paper_kinds()
    assert len(kinds) == 2 * ds0.sizes["key_kind"]
    view.views()  # the served layout builds
    assert "paper_surface" in view._panes and "not normalised" in view._panes["paper_note"].object


def test_decay_statistics_split_the_current_tokens_row_by_key_kind():
    """dema-lab's own method (row-normalised, dataset windows) gets the per-key-kind fits too:
    for RSA, s keys sit at token lags 0, 3, 6 .., R keys at 1, 4, .., a keys at 2, 5, .. (step lag 1 on)."""
    from dema_lab.analysis import DEMA_LAB_METHOD, attention_by_lag, decay_statistics, fit_decay

    cfg = small(K=5)
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    batch = {
        "states": torch.randn(6, 5, 5, generator=g),
        "actions": torch.rand(6, 5, 2, generator=g) * 2 - 1,
        "returns_to_go": torch.rand(6, 5, 1, generator=g),
        "timesteps": torch.arange(5).repeat(6, 1),
    }
    ds = decay_statistics(model, batch)
    assert ds.attrs["method"] == DEMA_LAB_METHOD and ds.mass_by_kind.attrs["query_kind"] == "s"
    s_row = ds.mass.sel(query_kind="s").values  # (layer, lag)
    by = ds.mass_by_kind
    np.testing.assert_array_equal(by.sel(key_kind="s").values, s_row[:, [0, 3, 6, 9, 12]])
    np.testing.assert_array_equal(by.sel(key_kind="R").values, s_row[:, [1, 4, 7, 10, 13]])
    np.testing.assert_array_equal(by.sel(key_kind="a").values[:, 1:], s_row[:, [2, 5, 8, 11]])
    assert np.isnan(by.sel(key_kind="a").values[:, 0]).all()
    want = fit_decay(s_row[1, [0, 3, 6, 9, 12]])
    assert float(ds.kind_half_life.sel(layer=1, key_kind="s")) == pytest.approx(want["half_life"])
    assert float(ds.kind_r2.sel(layer=1, key_kind="s")) == pytest.approx(want["r2"])
    # the official order (R_t, a_{t-1}, s_t): the s queries are positions 2, 5, ..; a keys at lags 1, 4, ..
    cfg = small(K=5, token_order="RAS")
    torch.manual_seed(0)
    model = build_model(cfg)
    ds = decay_statistics(model, batch)
    att = model.attention(**batch, aggregate="abs")[1].abs()
    s_query = torch.tensor([p % 3 == 2 for p in range(15)])
    np.testing.assert_allclose(
        ds.mass.sel(layer=1, query_kind="s").values, attention_by_lag(att, s_query).numpy(), rtol=1e-6
    )
    s_row = ds.mass.sel(query_kind="s").values
    np.testing.assert_array_equal(ds.mass_by_kind.sel(key_kind="a").values[:, 1:], s_row[:, [1, 4, 7, 10, 13]])
    np.testing.assert_array_equal(ds.mass_by_kind.sel(key_kind="R").values[:, :5], s_row[:, [2, 5, 8, 11, 14]])
