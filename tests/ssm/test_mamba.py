"""The mixer against mamba_ssm's layout and an independent implementation (mambapy)."""

import math

import pytest
import torch
from mambapy.mamba import MambaBlock, MambaConfig

from dema_lab.models import load_weights
from dema_lab.ssm import Mamba


def mamba_ssm_layout(d_model, d_state=16, d_conv=4, expand=2):
    """Names and shapes of mamba_ssm.modules.mamba_simple.Mamba's state dict (bias=False,
    conv_bias=True), written out from its source."""
    di, r = expand * d_model, math.ceil(d_model / 16)
    return {
        "A_log": (di, d_state),
        "D": (di,),
        "in_proj.weight": (2 * di, d_model),
        "conv1d.weight": (di, 1, d_conv),
        "conv1d.bias": (di,),
        "x_proj.weight": (r + 2 * d_state, di),
        "dt_proj.weight": (di, r),
        "dt_proj.bias": (di,),
        "out_proj.weight": (d_model, di),
    }


def test_state_dict_has_mamba_ssm_names_and_shapes():
    m = Mamba(48, d_state=8)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == mamba_ssm_layout(48, d_state=8)


def test_initialisation_matches_mamba_ssm():
    m = Mamba(32, d_state=8, dt_min=0.001, dt_max=0.1)
    torch.testing.assert_close(-torch.exp(m.A_log), -torch.arange(1, 9.0).repeat(64, 1))
    assert torch.equal(m.D, torch.ones(64))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6


def test_strict_load_both_ways_with_same_outputs():
    torch.manual_seed(0)
    theirs = MambaBlock(MambaConfig(d_model=32, n_layers=1, d_state=8, pscan=False))
    ours = Mamba(32, d_state=8)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 23, 32)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    back = MambaBlock(MambaConfig(d_model=32, n_layers=1, d_state=8, pscan=False))
    back.load_state_dict(Mamba(32, d_state=8).state_dict(), strict=True)


def test_step_matches_forward():
    torch.manual_seed(0)
    m = Mamba(24, d_state=6, d_conv=4).eval()
    x = torch.randn(3, 15, 24)
    state = m.allocate_state(3)
    with torch.no_grad():
        steps = torch.cat([m.step(x[:, t : t + 1], state) for t in range(15)], dim=1)
        full = m(x)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one token"):
        m.step(x[:, :2], state)


def test_foreign_state_dict_is_rejected_clearly():
    from dema_lab.models import CheckpointError, ModelConfig, build_model

    model = build_model(ModelConfig(arch="dema", d_model=32, d_state=8))
    theirs = build_model(ModelConfig(arch="dt", d_model=32)).state_dict()
    with pytest.raises(CheckpointError, match="another architecture or config"):
        load_weights(model, theirs)


@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv_is_torchs_padded_conv1d(bias):
    """Mamba.causal_conv (shifted multiply-adds on (b, L, d)) against what mamba_simple computes
    without causal_conv1d: conv1d(x (b, d, L)) with d_conv - 1 zeros of padding, first L outputs;
    values and gradients, float64."""
    torch.manual_seed(0)
    m = Mamba(d_model=8, d_state=4, conv_bias=bias).double()
    with torch.no_grad():
        m.conv1d.weight.normal_()
        if bias:
            m.conv1d.bias.normal_()
    x = torch.randn(3, 7, m.d_inner, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 7, m.d_inner, dtype=torch.float64)
    ours = m.causal_conv(x)
    (ours * w).sum().backward()
    g_ours = [x.grad.clone()] + [p.grad.clone() for p in m.conv1d.parameters()]
    x.grad = None
    m.zero_grad()
    ref = m.conv1d(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
    (ref * w).sum().backward()
    g_ref = [x.grad] + [p.grad for p in m.conv1d.parameters()]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
