import pytest
import torch

from dema_lab.ssm import Mamba, aggregate_channels, apply_attention, hidden_attention, segsum, selective_scan


def test_segsum_is_exact_and_causal():
    x = torch.randn(3, 9, dtype=torch.float64)
    S = segsum(x)
    for i in range(9):
        for j in range(9):
            if j > i:
                assert S[..., i, j].eq(float("-inf")).all()
            else:
                torch.testing.assert_close(S[..., i, j], x[..., j + 1 : i + 1].sum(-1), rtol=0, atol=1e-14)


def test_alpha_matches_its_definition():
    """alpha[d,i,j] = sum_n C_i[n] prod_{k=j+1..i} exp(dt_k A[d,n]) dt_j B_j[n], by explicit loops."""
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 1, 2, 3, 5
    dt = torch.rand(b, d, L, generator=g, dtype=torch.float64)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64)
    B, C = (
        torch.randn(b, n, L, generator=g, dtype=torch.float64),
        torch.randn(b, n, L, generator=g, dtype=torch.float64),
    )
    alpha = hidden_attention(dt, A, B, C)
    for c in range(d):
        for i in range(L):
            for j in range(L):
                expected = 0.0
                if j <= i:
                    for s in range(n):
                        prod = 1.0
                        for k in range(j + 1, i + 1):
                            prod *= torch.exp(dt[0, c, k] * A[c, s]).item()
                        expected += C[0, s, i].item() * prod * dt[0, c, j].item() * B[0, s, j].item()
                assert abs(alpha[0, c, i, j].item() - expected) < 1e-13


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_reconstruction_of_the_mixer_scan(dtype, tol):
    torch.manual_seed(0)
    m = Mamba(32, d_state=16).to(dtype)
    x = torch.randn(2, 60, 32, dtype=dtype)
    with torch.no_grad():
        u, z, dt, B, C, A = m._ssm_inputs(x)
        y = selective_scan(u, dt, A.to(dtype), B, C, m.D, z, m.dt_proj.bias, True)
        att = m.attention_inputs(x)
    assert att["alpha"].shape == (2, 64, 60, 60)
    assert att["alpha"].triu(1).abs().max() == 0
    err = (apply_attention(att["alpha"], att["u"], att["D"], att["z"]) - y).abs().max().item()
    assert err <= tol


def test_long_sequences_stay_finite_and_accurate():
    """Strong decay over 1024 steps: the naive exp(S_i) * exp(-S_j) overflows here; the
    segment sum does not, and float32 agrees with float64."""
    g = torch.Generator().manual_seed(0)
    L = 1024
    dt = torch.rand(1, 2, L, generator=g, dtype=torch.float64) * 2
    A = -torch.arange(1, 5, dtype=torch.float64).repeat(2, 1) * 2
    B, C = (
        torch.randn(1, 4, L, generator=g, dtype=torch.float64),
        torch.randn(1, 4, L, generator=g, dtype=torch.float64),
    )
    cs = torch.cumsum(dt[0, 0, :, None] * A[0], 0)
    assert torch.isinf(torch.exp(-cs)).any()  # the naive route would overflow
    a64 = hidden_attention(dt, A, B, C)
    a32 = hidden_attention(dt.float(), A.float(), B.float(), C.float())
    assert torch.isfinite(a32).all()
    assert (a32.double() - a64).abs().max() < 1e-5


def test_mixer_returns_attention_with_output():
    m = Mamba(16, d_state=4)
    x = torch.randn(1, 10, 16)
    out, alpha = m(x, return_attention=True)
    torch.testing.assert_close(out, m(x))
    assert alpha.shape == (1, 32, 10, 10)


def test_channel_aggregation():
    alpha = torch.randn(2, 5, 4, 4).tril()
    torch.testing.assert_close(aggregate_channels(alpha, "mean"), alpha.mean(1))
    torch.testing.assert_close(aggregate_channels(alpha, "abs"), alpha.abs().mean(1))
    mm = aggregate_channels(alpha, "minmax")
    a = alpha.abs()[0, 0]
    vals = a[torch.ones(4, 4).tril().bool()]
    manual = (a - vals.min()) / (vals.max() - vals.min())
    assert mm.shape == (2, 4, 4) and mm.max() <= 1 and mm.triu(1).abs().max() == 0
    single = aggregate_channels(alpha[:, :1], "minmax")[0]
    torch.testing.assert_close(single, manual.tril())
    with pytest.raises(ValueError, match="unknown channel aggregation"):
        aggregate_channels(alpha, "max")
