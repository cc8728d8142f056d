"""Correctness of the fast paths against their references. No timing here: the
benchmarks live in benchmarks/ and are not tests."""

import pytest
import torch

from dema_lab.ssm import Mamba, hidden_attention, selective_scan, use_backend


def inputs(batch=3, dim=20, n=5, L=9, dtype=torch.float64, seed=0, groups=None, transposed=False):
    """Scan inputs; with transposed=True, delta and z are (b, d, L) views of (b, L, d) memory
    and z a chunk of a wider tensor, as Mamba's projections produce them."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    shape_bc = (batch, n, L) if groups is None else (batch, groups, n, L)
    u, delta = r(batch, dim, L), r(batch, dim, L) * 0.5 - 1
    z = r(batch, dim, L)
    if transposed:
        delta = delta.transpose(1, 2).contiguous().transpose(1, 2)
        xz = torch.cat([r(batch, dim, L), z], dim=1).transpose(1, 2).contiguous().transpose(1, 2)
        z = xz.chunk(2, dim=1)[1]
        assert delta.stride(1) == 1 and z.stride(1) == 1 and not z.is_contiguous()
    return dict(
        u=u,
        delta=delta,
        A=-(torch.rand(dim, n, generator=g, dtype=dtype) + 0.2),
        B=r(*shape_bc),
        C=r(*shape_bc),
        D=r(dim),
        z=z,
        delta_bias=r(dim) * 0.3,
    )


def grads(x, backend, dtype, softplus=True, weight_seed=1):
    args = {k: v.detach().to(dtype).requires_grad_() for k, v in x.items()}
    with use_backend(backend):
        out, last = selective_scan(**args, delta_softplus=softplus, return_last_state=True)
    g = torch.Generator().manual_seed(weight_seed)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    wl = torch.randn(last.shape, generator=g, dtype=torch.float64).to(dtype)
    ((out * w).sum() + (last * wl).sum()).backward()
    return out.detach(), last.detach(), {k: v.grad.detach() for k, v in args.items()}


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("dim", [20, 32, 7])  # full tiles of 16 channels, partial tiles
def test_fused_kernel_matches_reference_float64(transposed, groups, dim):
    x = inputs(dim=dim if groups is None or dim % 2 == 0 else dim + 1, groups=groups, transposed=transposed)
    out_r, last_r, g_r = grads(x, "reference", torch.float64)
    out_f, last_f, g_f = grads(x, "numba", torch.float64)
    torch.testing.assert_close(out_f, out_r, rtol=0, atol=1e-12)
    torch.testing.assert_close(last_f, last_r, rtol=0, atol=1e-12)
    for k in g_r:
        torch.testing.assert_close(g_f[k], g_r[k], rtol=0, atol=1e-11, msg=k)


@pytest.mark.parametrize("n", [16, 32, 40])  # the backward pads states to a multiple of 32
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_kernel_padded_states_and_uneven_chunks_float64(n, threads):
    """d_state below, at and above a multiple of the backward's padding, and more batch rows
    than work chunks (8 per thread) so that threads get unequal shares: exact in float64."""
    x = inputs(batch=19, dim=20, n=n, L=11, groups=2, transposed=True)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out_f, last_f, g_f = grads(x, "numba", torch.float64)
    finally:
        torch.set_num_threads(saved)
    out_r, last_r, g_r = grads(x, "reference", torch.float64)
    torch.testing.assert_close(out_f, out_r, rtol=0, atol=1e-12)
    torch.testing.assert_close(last_f, last_r, rtol=0, atol=1e-12)
    for k in g_r:
        torch.testing.assert_close(g_f[k], g_r[k], rtol=0, atol=1e-11, msg=k)


@pytest.mark.parametrize("softplus", [True, False])
def test_fused_kernel_options_and_gradcheck(softplus):
    x = inputs(batch=2, dim=17, n=3, L=5, transposed=True)
    if not softplus:
        x["delta"] = x["delta"].abs() + 0.1
    for drop in ([], ["D"], ["z"], ["delta_bias"], ["D", "z", "delta_bias"]):
        names = [k for k in x if k not in drop]
        args = [x[k].clone().requires_grad_() for k in names]

        def f(*a):
            with use_backend("numba"):
                return selective_scan(**dict(zip(names, a)), delta_softplus=softplus, return_last_state=True)  # noqa: B023

        assert torch.autograd.gradcheck(f, args), drop


def test_float32_full_size_gradients_match_float64_reference():
    """At the benchmark size's shape family (d_state 16, L 60) the float32 fast scan's
    gradients are within 1e-4 (relative, in norm) of the float64 reference loop."""
    x = inputs(batch=4, dim=64, n=16, L=60, transposed=True)
    x["delta"] = x["delta"] - 2  # dt around softplus(-3): Mamba's range
    _, _, g_r = grads(x, "reference", torch.float64)
    out32, last32, g_f = grads(x, "numba", torch.float32)
    out64, last64, _ = grads(x, "reference", torch.float64)
    assert ((out32.double() - out64).norm() / out64.norm()) < 1e-5
    for k in g_r:
        err = (g_f[k].double() - g_r[k]).norm() / g_r[k].norm()
        assert err < 1e-4, (k, err.item())


def test_softplus_extremes_and_long_sequences_float32():
    """Large |delta| (softplus threshold, exp underflow) and a long sequence stay finite and agree."""
    x = inputs(batch=1, dim=16, n=8, L=300, transposed=False)
    x["delta"] = torch.linspace(-40, 40, 300, dtype=torch.float64).expand(1, 16, 300).clone()
    _, _, g_r = grads(x, "reference", torch.float64)
    out_f, _, g_f = grads(x, "numba", torch.float32)
    out_r, _, _ = grads(x, "reference", torch.float64)
    assert torch.isfinite(out_f).all()
    assert ((out_f.double() - out_r).abs().max() / out_r.abs().max()) < 1e-5
    for k in g_r:
        assert torch.isfinite(g_f[k]).all(), k
        err = (g_f[k].double() - g_r[k]).norm() / g_r[k].norm()
        assert err < 1e-4, (k, err.item())


def test_vectorised_exp2_accuracy_against_float64():
    """The float32 kernels' exp is 2**x by a degree-5 polynomial after rounding x to
    the nearest integer. Against float64 2**x of the same float32 inputs, over the whole range
    the scan uses ([-126, 0]: delta * A <= 0) and beyond, its max relative error is 3.0e-7
    (float32's unit roundoff is 6e-8), and its mean error is near 0. Below 2**-126 it saturates at ~1e-38."""
    import numba
    import numpy as np

    from dema_lab.ssm.kernels.scan_cpu import FASTMATH, fexpk, kscale

    @numba.njit(fastmath=FASTMATH, error_model="numpy")
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = fexpk(x[i])

    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-126, 20, 400_001), rng.uniform(-1, 1, 100_000), np.arange(-126, 21) + 0.5]).astype(
        np.float32
    )
    got = np.empty_like(x)
    run(x, got)
    ref = np.exp2(x.astype(np.float64))
    rel = np.abs(got.astype(np.float64) / ref - 1)
    assert rel.max() < 3.0e-7, rel.max()
    # no bias: a state multiplies up to L of these factors, so a systematic error adds up along
    # the chain (the first polynomial's constant 1.000000072, rounded to 1 + 2**-23 in float32,
    # made every factor ~5e-8 too large on average, and dA 6x less accurate than the legacy kernel's)
    frac = np.linspace(-0.75, 0.25, 200_001).astype(np.float32)  # the scan's x = delta A log2(e) < 0
    frac_got = np.empty_like(frac)
    run(frac, frac_got)
    bias = np.mean(frac_got.astype(np.float64) / np.exp2(frac.astype(np.float64)) - 1)
    assert abs(bias) < 2e-8, bias
    assert kscale(np.float32) == pytest.approx(1 / np.log(2)) and kscale(np.float64) == 1.0
    tiny = np.empty(3, np.float32)
    run(np.array([-127.0, -200.0, -1e30], np.float32), tiny)
    assert np.all((tiny >= 0) & (tiny < 1.2e-38))  # underflow: ~0, never garbage or NaN
    f64 = np.empty(5)
    run(np.array([-700.0, -3.0, 0.0, 1e-3, 5.0]), f64)  # float64: libm's exp
    np.testing.assert_allclose(f64, np.exp([-700.0, -3.0, 0.0, 1e-3, 5.0]), rtol=1e-15)


def test_float32_paper_state_size_matches_float64_reference():
    """At DeMa's d_state 64 (Mamba-like A, dt around softplus(-3)) the float32 kernels'
    output, last state and gradients are within 1e-5 / 1e-4 of the float64 reference loop."""
    x = inputs(batch=3, dim=32, n=64, L=60, transposed=True)
    x["A"] = -torch.arange(1, 65, dtype=torch.float64).expand(32, 64) * (1 + 0.1 * torch.rand(32, 64))
    x["delta"] = x["delta"] - 2
    out32, last32, g_f = grads(x, "numba", torch.float32)
    out64, last64, g_r = grads(x, "reference", torch.float64)
    assert ((out32.double() - out64).norm() / out64.norm()) < 1e-5
    assert ((last32.double() - last64).norm() / last64.norm()) < 1e-5
    for k in g_r:
        err = (g_f[k].double() - g_r[k]).norm() / g_r[k].norm()
        assert err < 1e-4, (k, err.item())


def test_mixer_training_step_same_with_both_backends():
    torch.manual_seed(0)
    m = Mamba(32, d_state=16).double()
    x = torch.randn(4, 30, 32, dtype=torch.float64)
    res = {}
    for backend in ("reference", "numba"):
        m.zero_grad()
        with use_backend(backend):
            out = m(x)
        (out**2).mean().backward()
        res[backend] = (out.detach(), {k: p.grad.clone() for k, p in m.named_parameters()})
    torch.testing.assert_close(res["numba"][0], res["reference"][0], rtol=0, atol=1e-12)
    for k, g in res["reference"][1].items():
        torch.testing.assert_close(res["numba"][1][k], g, rtol=1e-9, atol=1e-12, msg=k)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("groups", [None, 2])
def test_attention_kernel_matches_segment_sum_reference(dtype, tol, groups):
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 6, 5, 37
    shape_bc = (b, n, L) if groups is None else (b, groups, n, L)
    dt = torch.randn(b, d, L, generator=g, dtype=torch.float64).to(dtype)
    A = (-torch.rand(d, n, generator=g, dtype=torch.float64) * 3).to(dtype)
    B = torch.randn(*shape_bc, generator=g, dtype=torch.float64).to(dtype)
    C = torch.randn(*shape_bc, generator=g, dtype=torch.float64).to(dtype)
    bias = torch.randn(d, generator=g, dtype=torch.float64).to(dtype)
    ref = hidden_attention(dt, A, B, C, delta_bias=bias, delta_softplus=True, impl="segsum")
    fast = hidden_attention(dt, A, B, C, delta_bias=bias, delta_softplus=True, impl="numba")
    assert fast.dtype == ref.dtype and fast.shape == (b, d, L, L)
    assert fast.triu(1).abs().max() == 0
    assert (fast - ref).abs().max() <= tol * max(1.0, ref.abs().max().item())


def test_attention_kernel_long_sequence_stays_finite():
    """Strong decay over 1024 steps (where exp(S_i) exp(-S_j) overflows): float32 kernel agrees
    with the float64 reference."""
    g = torch.Generator().manual_seed(0)
    L = 1024
    dt = torch.rand(1, 2, L, generator=g, dtype=torch.float64) * 2
    A = -torch.arange(1, 5, dtype=torch.float64).repeat(2, 1) * 2
    B, C = (
        torch.randn(1, 4, L, generator=g, dtype=torch.float64),
        torch.randn(1, 4, L, generator=g, dtype=torch.float64),
    )
    a64 = hidden_attention(dt, A, B, C, impl="segsum")
    a32 = hidden_attention(dt.float(), A.float(), B.float(), C.float(), impl="numba")
    assert torch.isfinite(a32).all()
    assert (a32.double() - a64).abs().max() < 1e-5


def test_attention_auto_dispatch():
    m = Mamba(16, d_state=4)
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        inputs = m.attention_inputs(x)
        u, z, dt, B, C, A = m._ssm_inputs(x)
        ref = hidden_attention(dt, A, B, C, delta_bias=m.dt_proj.bias, delta_softplus=True, impl="segsum")
    torch.testing.assert_close(inputs["alpha"], ref, rtol=0, atol=1e-5)
    # with gradients recorded, auto keeps the differentiable reference
    out, alpha = m(x, return_attention=True)
    assert alpha.requires_grad
    with pytest.raises(ValueError, match="unknown hidden-attention impl"):
        hidden_attention(dt, A, B, C, impl="cuda")


THREADS_CHILD = r"""
import json, torch
torch.set_num_threads(1)
import numba
from dema_lab.ssm import selective_scan, use_backend
u = torch.randn(2, 20, 9, requires_grad=True)
with use_backend("numba"):
    selective_scan(u, u, -torch.rand(20, 4) - 0.5, torch.randn(2, 4, 9), torch.randn(2, 4, 9),
                   delta_softplus=True).sum().backward()
print(json.dumps({"torch": torch.get_num_threads(), "numba": numba.get_num_threads()}))
"""


def test_scan_keeps_the_processs_torch_thread_count():
    """A fresh process on one torch thread (a sweep worker, batch-1 evaluation) stays on one
    thread after its first scan: launching numba's OpenMP pool used to reset OpenMP's thread
    count, and with it torch's, to the number of cores."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_NUM_THREADS="2")  # a pool larger than the one thread asked for
    env.pop("DEMA_LAB_WARM_KERNELS", None)
    r = subprocess.run([sys.executable, "-c", THREADS_CHILD], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"torch": 1, "numba": 1}
