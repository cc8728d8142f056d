import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dema_lab.models import (
    MODES,
    DecisionMamba,
    DecisionTransformer,
    ModelConfig,
    Policy,
    build_model,
    count_parameters,
    forward_macs,
    step_macs,
)

SD, AD = 11, 3


def window(b=2, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        states=torch.randn(b, T, SD, generator=g),
        actions=torch.rand(b, T, AD, generator=g) * 2 - 1,
        returns_to_go=torch.randn(b, T, 1, generator=g),
        timesteps=torch.arange(T).repeat(b, 1),
    )


@pytest.mark.parametrize("arch", ["dema", "dt"])
@pytest.mark.parametrize("layout,tokens", [("B3LD", 18), ("BL3D", 6)])
def test_layout_shapes(arch, layout, tokens):
    cfg = ModelConfig(arch=arch, state_dim=SD, act_dim=AD, K=6, d_model=32, layout=layout, d_state=8, n_head=2)
    model = build_model(cfg).eval()
    x = window()
    assert model.embed(**x).shape == (2, tokens, 32)
    pred, attn = model(**x, return_attention=True)
    assert pred.shape == (2, 6, AD) and pred.abs().max() <= 1
    channels = 64 if arch == "dema" else 2
    assert [a.shape for a in attn] == [(2, channels, tokens, tokens)] * 3
    assert [a.shape for a in model.attention(**x)] == [(2, tokens, tokens)] * 3


@pytest.mark.parametrize("arch", ["dema", "dt"])
@pytest.mark.parametrize("layout", ["B3LD", "BL3D"])
def test_predictions_are_causal_and_ignore_right_padding(arch, layout):
    """a_t's prediction depends on nothing at or after a_t: not on a_t itself, not on later steps."""
    cfg = ModelConfig(arch=arch, state_dim=SD, act_dim=AD, K=6, d_model=32, layout=layout, d_state=8)
    model = build_model(cfg).eval()
    x = window()
    base = model(**x)
    y = {k: v.clone() for k, v in x.items()}
    y["actions"][:, 3] += 1.0  # change a_3
    y["states"][:, 4:] = 0.0  # and everything after step 3
    y["returns_to_go"][:, 4:] = 0.0
    changed = model(**y)
    torch.testing.assert_close(changed[:, :4], base[:, :4])
    assert not torch.allclose(changed[:, 4], base[:, 4])  # a_3 is seen by step 4


@pytest.mark.parametrize("layout", ["B3LD", "BL3D"])
@pytest.mark.parametrize("timestep_embedding", [False, True])
def test_rnn_and_transformer_inference_agree_while_t_below_K(layout, timestep_embedding):
    torch.manual_seed(0)
    K = 6
    cfg = ModelConfig(
        arch="dema",
        state_dim=SD,
        act_dim=AD,
        K=K,
        d_model=32,
        layout=layout,
        d_state=8,
        timestep_embedding=timestep_embedding,
    )
    model = build_model(cfg)
    policies = {mode: Policy(model, mode, state_mean=np.full(SD, 0.1), state_std=np.full(SD, 2.0)) for mode in MODES}
    for p in policies.values():
        p.reset(3600.0)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(K + 4):
        obs, reward = rng.normal(size=SD), rng.normal()
        acts = {mode: p.act(obs) for mode, p in policies.items()}
        for p in policies.values():
            p.observe(reward)
        diffs.append(np.abs(acts["transformer"] - acts["rnn"]).max())
    assert max(diffs[:K]) < 1e-5, diffs
    assert max(diffs[K:]) > 1e-5, "past K the modes see different contexts and should differ"


def test_dema_quarter_size_has_at_most_a_third_of_dt_parameters():
    dema = ModelConfig(
        arch="dema",
        state_dim=SD,
        act_dim=AD,
        K=20,
        d_model=64,
        n_layer=3,
        d_state=64,
        expand=2,
        timestep_embedding=False,
    )
    dt = ModelConfig(
        arch="dt",
        state_dim=SD,
        act_dim=AD,
        K=20,
        d_model=128,
        n_layer=3,
        n_head=1,
        timestep_embedding=True,
        max_ep_len=1000,
    )
    n_dema, n_dt = count_parameters(dema), count_parameters(dt)
    assert n_dema <= n_dt / 3, (n_dema, n_dt)
    assert 100_000 < n_dema < 250_000 and 600_000 < n_dt < 850_000  # the paper: ~165k and ~728k


def _counted_macs(model, x):
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(**x)
    counts = counter.get_flop_counts()["Global"]
    sdpa = sum(v for k, v in counts.items() if "attention" in str(k))
    return (counter.get_total_flops() - sdpa) // 2


def test_dense_macs_match_torch_flop_counter():
    """The analytic count against torch's own FLOP counter, for the parts it can count
    (matmuls; not the scan, the attention kernel, or the depthwise conv, which Mamba.causal_conv
    computes as elementwise multiply-adds)."""
    x = window(b=1, T=20)
    dt_cfg = ModelConfig(arch="dt", state_dim=SD, act_dim=AD, K=20, d_model=64, n_layer=2)
    L = 60
    attn = dt_cfg.n_layer * 2 * 64 * L * (L + 1) // 2
    assert _counted_macs(build_model(dt_cfg).eval(), x) == forward_macs(dt_cfg) - attn
    dema_cfg = ModelConfig(arch="dema", state_dim=SD, act_dim=AD, K=20, d_model=32, n_layer=2, d_state=8)
    scan = dema_cfg.n_layer * L * 3 * 64 * 8
    conv = dema_cfg.n_layer * L * 64 * dema_cfg.d_conv
    assert _counted_macs(build_model(dema_cfg).eval(), x) == forward_macs(dema_cfg) - scan - conv


def test_rnn_step_is_cheaper_and_constant_in_K():
    small, big = (ModelConfig(arch="dema", K=k) for k in (5, 80))
    assert step_macs(small, "rnn") == step_macs(big, "rnn")
    assert step_macs(big, "transformer") > 10 * step_macs(big, "rnn")
    with pytest.raises(ValueError, match="no 'rnn' inference"):
        step_macs(ModelConfig(arch="dt"), "rnn")


def test_bad_configs_and_inputs_are_named():
    with pytest.raises(ValueError, match="K must be a positive integer"):
        ModelConfig(K=0)
    with pytest.raises(ValueError, match="layout 'B2LD' is unknown"):
        ModelConfig(layout="B2LD")
    with pytest.raises(ValueError, match="arch 'gpt' is unknown"):
        ModelConfig(arch="gpt")
    model = build_model(ModelConfig(state_dim=SD, act_dim=AD, d_model=16, d_state=4))
    x = window()
    with pytest.raises(ValueError, match="state_dim=11"):
        model(**{**x, "states": torch.randn(2, 6, 17)})
    with pytest.raises(ValueError, match="act_dim=3"):
        model(**{**x, "actions": torch.randn(2, 6, 6)})
    with pytest.raises(ValueError, match="expects \\(11,\\)"):
        Policy(model).act(np.zeros(17))
    with pytest.raises(ValueError, match="RNN-like inference needs"):
        Policy(build_model(ModelConfig(arch="dt", state_dim=SD, act_dim=AD, d_model=16)), "rnn")
    with pytest.raises(ValueError, match="needs arch='dt'"):
        DecisionTransformer(ModelConfig(arch="dema"))
    with pytest.raises(ValueError, match="needs arch='dema'"):
        DecisionMamba(ModelConfig(arch="dt"))


def test_models_learn_a_simple_mapping():
    """A few hundred steps of behaviour cloning on a fixed linear policy: the loss must fall by 10x."""
    torch.manual_seed(0)
    W = torch.randn(SD, AD) * 0.3
    for arch in ("dema", "dt"):
        model = build_model(ModelConfig(arch=arch, state_dim=SD, act_dim=AD, K=5, d_model=32, d_state=8, dropout=0.0))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(150):
            x = window(b=16, T=5, seed=len(losses))
            target = torch.tanh(x["states"] @ W)
            x["actions"] = target
            loss = ((model(**x) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert np.mean(losses[-10:]) < np.mean(losses[:10]) / 10, (arch, losses[:3], losses[-3:])


@pytest.mark.parametrize("arch", ["dema", "dt"])
def test_attention_of_chosen_layers_only(arch):
    # return_attention may name layers: theirs equal the all-layers maps, the others are None, and
    # the prediction is the same; a Policy given attention_layers fills the others with NaN
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, state_dim=SD, act_dim=AD, K=6, d_model=16, n_layer=3, d_state=4))
    model.eval()
    x = window()
    with torch.no_grad():
        pred, full = model(**x, return_attention=True)
        pred1, some = model(**x, return_attention=[1])
        pred0, none = model(**x, return_attention=())
    torch.testing.assert_close(pred1, pred)
    torch.testing.assert_close(pred0, pred)
    assert some[0] is None and some[2] is None and none == [None, None, None]
    torch.testing.assert_close(some[1], full[1])
    obs = np.random.default_rng(0).normal(size=(3, SD)).astype(np.float32)
    p_all, p_one = Policy(model, attention="minmax"), Policy(model, attention="minmax")
    p_one.attention_layers = (2,)
    for o in obs:
        # (DT's attention path is an explicit softmax, its other path fused attention: ~1e-7 apart)
        np.testing.assert_allclose(p_one.act(o), p_all.act(o), atol=1e-5)
        p_all.observe(1.0)
        p_one.observe(1.0)
    assert np.isnan(p_one.attention[:2]).all() and not np.isnan(p_one.attention[2]).any()
    np.testing.assert_allclose(p_one.attention[2], p_all.attention[2], rtol=1e-5, atol=1e-7)
