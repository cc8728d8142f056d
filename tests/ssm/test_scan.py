"""The selective scan against a naive float64 loop written here, independently of the library."""

import itertools
import math

import pytest
import torch

from dema_lab.ssm import scan as scan_mod
from dema_lab.ssm import selective_scan, selective_scan_ref, use_backend


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Triple loop over batch, channel and time; state as a Python list. float64 throughout.
    B, C: (batch, d_state, L)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, L = u.shape
    out = torch.zeros(batch, dim, L, dtype=torch.float64)
    last = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            h = [0.0] * A.shape[1]
            for t in range(L):
                dt = delta[b, d, t].item() + (delta_bias[d].item() if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = math.log1p(math.exp(dt))
                y = 0.0
                for n in range(A.shape[1]):
                    h[n] = math.exp(dt * A[d, n].item()) * h[n] + dt * B[b, n, t].item() * u[b, d, t].item()
                    y += C[b, n, t].item() * h[n]
                if D is not None:
                    y += D[d].item() * u[b, d, t].item()
                if z is not None:
                    zz = z[b, d, t].item()
                    y *= zz / (1.0 + math.exp(-zz))
                out[b, d, t] = y
            last[b, d] = torch.tensor(h, dtype=torch.float64)
    return out, last


def make_inputs(batch=2, dim=3, n=4, L=7, dtype=torch.float64, seed=0, groups=None):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    shape_bc = (batch, n, L) if groups is None else (batch, groups, n, L)
    return dict(
        u=r(batch, dim, L),
        delta=r(batch, dim, L) * 0.5,
        A=-(torch.rand(dim, n, generator=g, dtype=dtype) + 0.2),
        B=r(*shape_bc),
        C=r(*shape_bc),
        D=r(dim),
        z=r(batch, dim, L),
        delta_bias=r(dim) * 0.3,
    )


OPTIONS = list(itertools.product([False, True], repeat=4))  # D, z, delta_bias, softplus


@pytest.mark.parametrize("backend", ["numba", "torch", "reference", "chunked"])
@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", OPTIONS)
def test_scan_matches_naive_loop(backend, use_D, use_z, use_bias, softplus):
    x = make_inputs()
    kw = dict(
        D=x["D"] if use_D else None,
        z=x["z"] if use_z else None,
        delta_bias=x["delta_bias"] if use_bias else None,
        delta_softplus=softplus,
    )
    delta = x["delta"] if softplus or use_bias else x["delta"].abs()  # keep dt > 0 without softplus
    expected, expected_last = naive_scan(x["u"], delta, x["A"], x["B"], x["C"], **kw)
    with use_backend(backend):
        out, last = selective_scan(x["u"], delta, x["A"], x["B"], x["C"], return_last_state=True, **kw)
    assert scan_mod.last_backend == backend
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(last, expected_last, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 12, 13, 20])
def test_chunked_scan_matches_naive_loop_at_every_chunk_size(chunk):
    """Chunks that divide L or not (a padded last chunk), one chunk, one token per chunk;
    grouped B and C; the last state too."""
    from dema_lab.ssm.scan import selective_scan_chunked

    x = make_inputs(dim=4, L=13, groups=2)
    kw = dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True)
    B, C = (x[k].repeat_interleave(2, dim=1) for k in ("B", "C"))  # (b, 4, n, L): each channel's own
    want = [
        naive_scan(x["u"][:, i : i + 1], x["delta"][:, i : i + 1], x["A"][i : i + 1], B[:, i], C[:, i],
                   D=x["D"][i : i + 1], z=x["z"][:, i : i + 1], delta_bias=x["delta_bias"][i : i + 1],
                   delta_softplus=True)
        for i in range(4)
    ]  # fmt: skip
    out, last = selective_scan_chunked(
        x["u"], x["delta"], x["A"], x["B"], x["C"], return_last_state=True, chunk=chunk, **kw
    )
    torch.testing.assert_close(out, torch.cat([w[0] for w in want], 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(last, torch.cat([w[1] for w in want], 1), rtol=0, atol=1e-12)


def test_chunked_scan_is_stable_under_strong_decay_in_float32():
    """L = 512 with exp(delta A) down to about e^-30 per token: float32 stays finite and within 1e-5
    of the float64 loop (no ratio of cumulative products, which would overflow here)."""
    from dema_lab.ssm.scan import selective_scan_chunked

    x = make_inputs(batch=1, dim=4, n=8, L=512, seed=3)
    A = x["A"] * 20.0
    want = selective_scan_ref(x["u"], x["delta"], A, x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    f32 = {k: v.float() for k, v in x.items()}
    got = selective_scan_chunked(
        f32["u"], f32["delta"], A.float(), f32["B"], f32["C"], f32["D"], f32["z"], f32["delta_bias"], True
    )
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize(
    "use_D,use_z,use_bias,softplus",
    [(True, True, True, True), (False, False, False, False), (True, False, True, False), (False, True, False, True)],
)
def test_scan_gradcheck_float64(backend, use_D, use_z, use_bias, softplus):
    x = make_inputs(batch=2, dim=3, n=3, L=5)
    names = ["u", "delta", "A", "B", "C"] + [
        k for k, on in (("D", use_D), ("z", use_z), ("delta_bias", use_bias)) if on
    ]
    if not (softplus or use_bias):
        x["delta"] = x["delta"].abs() + 0.1
    args = [x[k].clone().requires_grad_() for k in names]

    def f(*a):
        kw = dict(zip(names, a))
        with use_backend(backend):
            out, last = selective_scan(**kw, delta_softplus=softplus, return_last_state=True)
        return out, last

    assert torch.autograd.gradcheck(f, args)


def test_grouped_and_constant_B_C_match_reference():
    x = make_inputs(dim=4, groups=2)
    ref = selective_scan_ref(**x, delta_softplus=True)
    for backend in ("numba", "torch"):
        with use_backend(backend):
            torch.testing.assert_close(selective_scan(**x, delta_softplus=True), ref, rtol=0, atol=1e-12)
    const = make_inputs(dim=4)
    g = torch.Generator().manual_seed(1)
    Bc, Cc = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g, dtype=torch.float64)
    ref = selective_scan_ref(const["u"], const["delta"], const["A"], Bc, Cc, delta_softplus=True)
    with use_backend("numba"):
        torch.testing.assert_close(
            selective_scan(const["u"], const["delta"], const["A"], Bc, Cc, delta_softplus=True), ref, rtol=0, atol=1e-12
        )


def test_bad_shapes_are_named():
    x = make_inputs()
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(x["u"], x["delta"], x["A"][:2], x["B"], x["C"])
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"][:, :2], x["C"])
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        with use_backend("tpu"):
            pass


def test_backend_choice_is_visible_and_forcible(monkeypatch):
    from dema_lab.ssm import backend_for

    assert backend_for("cpu") == "numba"
    monkeypatch.setenv("DEMA_LAB_SCAN_BACKEND", "torch")
    assert backend_for("cpu") == "torch"
    with use_backend("reference"):
        assert backend_for("cpu") == "reference"
    monkeypatch.setenv("DEMA_LAB_SCAN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        backend_for("cpu")
