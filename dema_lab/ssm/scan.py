"""The selective scan, with mamba_ssm's `selective_scan_fn` signature and semantics.

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[n] * u_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n]  (+ D[d] * u_t[d])  (* silu(z_t[d]))

with delta = softplus(delta + delta_bias) when asked. Layout, as in mamba_ssm:
    u, delta, z : (batch, d_inner, L)
    A           : (d_inner, d_state)          real; A = -exp(A_log) in Mamba
    B, C        : (batch, d_state, L), (batch, groups, d_state, L) or (d_inner, d_state)
    D, delta_bias: (d_inner,)

Backends (see `backend_for` / `use_backend`):
    "cuda"      mamba_ssm's fused kernels (CUDA tensors, mamba_ssm importable)
    "numba"     the project's compiled CPU kernel (dema_lab.ssm.kernels.scan_cpu): default on CPU
    "torch"     a PyTorch autograd Function with a hand-written reverse-time backward;
                runs on any device, the fallback on CUDA without mamba_ssm
    "reference" plain autograd through a per-step loop; the float64 reference for tests
    "chunked"   two loops of about sqrt(L) whole-tensor steps (selective_scan_chunked) instead of
                L small ones: what an exported (traced) graph uses; any device, only when forced

The numba kernels fuse the whole op (softplus of delta + bias, the recurrence, the D skip
and the silu gate), forward and backward. In the "torch" backend only the recurrence
(u, delta, A, B, C) -> sum_n C h is custom; softplus, D and the gate are torch ops around it.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading

import torch
import torch.nn.functional as F

BACKENDS = ("cuda", "numba", "torch", "reference", "chunked")
_ENV_VAR = "DEMA_LAB_SCAN_BACKEND"
_forced = threading.local()
last_backend: str | None = None  # the backend the most recent call used (visible for logs)


# ----------------------------------------------------------------------------- backends


def _mamba_ssm_fn():
    """mamba_ssm's selective_scan_fn, or None. Any failure (no CUDA, ABI mismatch) -> None."""
    global _MAMBA_SSM
    if _MAMBA_SSM is _UNSET:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            _MAMBA_SSM = selective_scan_fn
        except Exception:  # noqa: BLE001 - a broken CUDA build raises anything
            _MAMBA_SSM = None
    return _MAMBA_SSM


_UNSET = object()
_MAMBA_SSM = _UNSET


def mamba_ssm_available() -> bool:
    return _mamba_ssm_fn() is not None


def forced_backend() -> str | None:
    name = getattr(_forced, "name", None) or os.environ.get(_ENV_VAR) or None
    if name is not None and name not in BACKENDS:
        raise ValueError(
            f"unknown selective-scan backend {name!r} (from use_backend or "
            f"${_ENV_VAR}); choose one of {', '.join(BACKENDS)}"
        )
    return name


def backend_for(device: torch.device | str) -> str:
    """The backend `selective_scan` uses for tensors on `device`."""
    device = torch.device(device)
    name = forced_backend()
    if name is not None:
        if name == "cuda" and (device.type != "cuda" or not mamba_ssm_available()):
            raise RuntimeError(
                "scan backend 'cuda' was forced but needs CUDA tensors and an "
                "importable mamba_ssm (pip install 'dema-lab[cuda]' on a GPU host)"
            )
        if name == "numba" and device.type != "cpu":
            raise RuntimeError(f"scan backend 'numba' runs on CPU only, tensors are on {device}")
        return name
    if device.type == "cuda" and mamba_ssm_available():
        return "cuda"
    return "numba" if device.type == "cpu" else "torch"


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force a backend inside a `with` block (thread-local). None restores automatic choice."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r}; choose one of {', '.join(BACKENDS)}")
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous


# ----------------------------------------------------------------------------- public op


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Drop-in replacement for mamba_ssm's `selective_scan_fn` (same arguments, same result).

    Returns out (batch, d_inner, L) in u's dtype, and with return_last_state also the final
    state (batch, d_inner, d_state) in float32 (float64 for float64 inputs).
    """
    global last_backend
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    backend = backend_for(u.device)
    last_backend = backend
    if backend == "cuda":
        return _mamba_ssm_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "reference":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    if backend == "numba":  # softplus, D and the gate are fused into the kernels
        cast = lambda t: None if t is None else t.to(compute)  # noqa: E731
        out, last_state = NumbaScan.apply(
            cast(u),
            cast(delta),
            cast(A),
            cast(as_grouped(B, u)),
            cast(as_grouped(C, u)),
            cast(D),
            cast(z),
            cast(delta_bias),
            bool(delta_softplus),
        )
        out = out.to(dtype_in)
        return (out, last_state) if return_last_state else out
    u_c, delta_c = u.to(compute), effective_delta(delta, delta_bias, delta_softplus, compute)
    Bg, Cg = as_grouped(B, u).to(compute), as_grouped(C, u).to(compute)
    y, last_state = _TorchScan.apply(u_c, delta_c, A.to(compute), Bg, Cg)
    out = skip_and_gate(y, u_c, D, z).to(dtype_in)
    return (out, last_state) if return_last_state else out


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Autograd through a per-step loop: the slow, obviously-correct reference.

    Follows mamba_ssm's selective_scan_ref, but keeps float64 inputs in float64.
    """
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta = u.to(compute), effective_delta(delta, delta_bias, delta_softplus, compute)
    Bg, Cg = as_grouped(B, u).to(compute), as_grouped(C, u).to(compute)  # (b, g, n, L)
    batch, dim, L = u.shape
    heads = dim // Bg.shape[1]
    Bd = Bg.repeat_interleave(heads, dim=1)  # (b, d, n, L)
    Cd = Cg.repeat_interleave(heads, dim=1)
    deltaA = torch.exp(delta[:, :, None, :] * A.to(compute)[None, :, :, None])  # (b, d, n, L)
    deltaB_u = delta[:, :, None, :] * Bd * u[:, :, None, :]  # (b, d, n, L)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        h = deltaA[..., t] * h + deltaB_u[..., t]
        ys.append((h * Cd[..., t]).sum(-1))
    y = torch.stack(ys, dim=2)  # (b, d, L)
    out = skip_and_gate(y, u, D, z).to(dtype_in)
    return (out, h) if return_last_state else out


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, chunk=None
):
    """The scan as two short loops instead of one long one: a traced graph has O(sqrt L) steps of
    whole-tensor ops, not L steps of small ones (the exported Transformer-like graph's scan).

    The L tokens are cut into k chunks of c (default c = ceil(sqrt L); the last chunk is padded
    with delta = 0, no decay, and u = 0, no input). With a_t = exp(delta_t A), b_t = delta_t B_t u_t:
      1. every chunk at once, over its c positions: h_loc_i = a_i h_loc_{i-1} + b_i from a zero
         state, and P_i = a_i P_{i-1}, the decay since the chunk's start;
      2. over the k chunks: start_{m+1} = P_last[m] start_m + h_loc_last[m], the state entering each;
      3. h_i = h_loc_i + P_i start, y_i = sum_n C_i[n] h_i[n].
    Only products of the a_t (each <= 1 for A < 0) are formed, never a ratio of cumulative
    products, so it is as stable as the per-token loop. Same arguments and results as
    selective_scan, exact up to float rounding.
    """
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta = u.to(compute), effective_delta(delta, delta_bias, delta_softplus, compute)
    Bg, Cg = as_grouped(B, u).to(compute), as_grouped(C, u).to(compute)  # (b, g, n, L)
    batch, dim, L = u.shape
    if Bg.shape[1] > 1:  # else one group, broadcast over the channels
        Bg, Cg = (M.repeat_interleave(dim // M.shape[1], dim=1) for M in (Bg, Cg))  # (b, d, n, L)
    c = int(chunk) if chunk else math.ceil(math.sqrt(L))
    k = (L + c - 1) // c  # chunks
    pad = k * c - L
    x = delta * u  # (b, d, L)
    if pad:
        delta, x, Bg, Cg = (F.pad(t, (0, pad)) for t in (delta, x, Bg, Cg))
    # time-major, the position within the chunk first, the state last: each step of either loop
    # reads one contiguous block, and a and bx are built in that layout (no large transpose)
    by_position = lambda t: t.reshape(*t.shape[:-1], k, c).permute(t.dim(), t.dim() - 1, *range(t.dim() - 1))  # noqa: E731
    dl, xl = (by_position(t)[..., None] for t in (delta, x))  # (c, k, b, d, 1)
    Bl, Cl = (by_position(t) for t in (Bg, Cg))  # (c, k, b, d|g, n)
    a = torch.exp(dl * A.to(compute))  # (c, k, b, d, n)
    bx = Bl * xl  # (c, k, b, d, n)
    h, P = bx[0], a[0]  # (k, b, d, n)
    hs, Ps = [h], [P]
    for i in range(1, c):
        h, P = a[i] * h + bx[i], a[i] * P
        hs.append(h), Ps.append(P)
    state = torch.zeros_like(h[0])  # (b, d, n)
    starts = []
    for m in range(k):  # h[m], P[m]: chunk m's end state from zero, its decay
        starts.append(state)
        state = P[m] * state + h[m]  # the state at chunk m's end
    start = torch.stack(starts)  # (k, b, d, n)
    y = torch.stack([((hs[i] + Ps[i] * start) * Cl[i]).sum(-1) for i in range(c)])  # (c, k, b, d)
    y = y.permute(2, 3, 1, 0).reshape(batch, dim, k * c)[..., :L]  # (b, d, L)
    out = skip_and_gate(y, u, D, z).to(dtype_in)
    return (out, state) if return_last_state else out


# ----------------------------------------------------------------------------- helpers


def effective_delta(delta, delta_bias, delta_softplus, compute):
    """delta as the recurrence uses it: softplus(delta + delta_bias) when asked, in `compute`."""
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def skip_and_gate(y, u, D, z):
    """y + D u, gated by silu(z) (each term only when given)."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, d_inner, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (d_inner={dim}, d_state), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported by dema-lab's scan; use a real A = -exp(A_log)")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = (
            (M.dim() == 2 and tuple(M.shape) == (dim, n))
            or (M.dim() == 3 and tuple(M.shape) == (batch, n, L))
            or (M.dim() == 4 and M.shape[0] == batch and M.shape[2:] == (n, L) and dim % M.shape[1] == 0)
        )
        if not ok:
            raise ValueError(
                f"{name} must be (batch, d_state, L), (batch, groups, d_state, L) or "
                f"(d_inner, d_state) for u {tuple(u.shape)} and d_state {n}; "
                f"got {tuple(M.shape)}"
            )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"{name} must be (d_inner={dim},), got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def as_grouped(M, u):
    """B or C as (batch, groups, d_state, L). A constant (d_inner, d_state) matrix becomes
    one group per channel, broadcast over batch and time."""
    batch, dim, L = u.shape
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], L)
    if M.dim() == 3:
        return M[:, None]
    return M


# ----------------------------------------------------------------------------- the CPU kernel


class NumbaScan(torch.autograd.Function):
    """out = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus) on CPU with the
    fused compiled kernels of cpu_kernel (softplus, D skip and silu gate included).

    Forward keeps no per-step states; backward recomputes them per (batch, channel) in a
    small cache-resident buffer, then runs the reverse-time recurrence for the gradients.
    Returns (out, last_state).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        from dema_lab.ssm.kernels import scan_cpu as cpu_kernel

        # u, delta, z: (b, d, L); A: (d, n); B, C: (b, g, n, L) -> kernel layout (b, g, L, n)
        # u, delta, z are read in place when contiguous or transposed views of (b, L, d)
        # memory (Mamba's delta and z are); anything else is copied once.
        Bt = B.transpose(-1, -2).contiguous()
        Ct = C.transpose(-1, -2).contiguous()
        u, delta, z = (None if t is None else cpu_kernel.readable(t) for t in (u, delta, z))
        A = A.contiguous()
        D = D.contiguous() if D is not None else None
        delta_bias = delta_bias.contiguous() if delta_bias is not None else None
        out, last = cpu_kernel.forward(u, delta, A, Bt, Ct, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        from dema_lab.ssm.kernels import scan_cpu as cpu_kernel

        u, delta, A, Bt, Ct, D, z, delta_bias = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(u)
        du, ddelta, dA, dBt, dCt, dD, dz, ddb = cpu_kernel.backward(
            u, delta, A, Bt, Ct, D, z, delta_bias, ctx.delta_softplus, cpu_kernel.readable(dout), dlast
        )
        return (
            du,
            ddelta,
            dA,
            dBt.transpose(-1, -2),
            dCt.transpose(-1, -2),
            dD if D is not None else None,
            dz,
            ddb if delta_bias is not None else None,
            None,
        )


class _TorchScan(torch.autograd.Function):
    """y = scan(u, delta, A, B, C) with vectorised torch ops over (batch, channel, state),
    a loop over time, and a hand-written reverse-time backward. Any device."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        batch, dim, L = u.shape
        heads = dim // B.shape[1]
        Bd = B.repeat_interleave(heads, dim=1)  # (b, d, n, L)
        Cd = C.repeat_interleave(heads, dim=1)
        dA = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (b, d, n, L)
        dBu = (delta * u)[:, :, None, :] * Bd  # (b, d, n, L)
        hs = torch.empty_like(dA)  # h_t for every t
        h = u.new_zeros(batch, dim, A.shape[1])
        for t in range(L):
            h = dA[..., t] * h + dBu[..., t]
            hs[..., t] = h
        y = (hs * Cd).sum(2)  # (b, d, L)
        ctx.save_for_backward(u, delta, A, B, C, hs, dA)
        return y, h

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, hs, dA = ctx.saved_tensors
        batch, dim, L = u.shape
        groups, heads = B.shape[1], dim // B.shape[1]
        Bd = B.repeat_interleave(heads, dim=1)
        Cd = C.repeat_interleave(heads, dim=1)
        dh_all = dy[:, :, None, :] * Cd  # d y_t / d h_t, (b, d, n, L)
        g = torch.zeros_like(hs[..., 0])
        if dlast is not None:
            g = g + dlast
        dh = torch.empty_like(hs)  # total grad wrt h_t
        for t in range(L - 1, -1, -1):
            g = g + dh_all[..., t]
            dh[..., t] = g
            g = g * dA[..., t]
        h_prev = torch.cat([torch.zeros_like(hs[..., :1]), hs[..., :-1]], dim=-1)
        dh_dA = dh * h_prev * dA  # (b, d, n, L)
        ddelta = (dh_dA * A[None, :, :, None]).sum(2) + (dh * Bd).sum(2) * u
        dA_grad = (dh_dA * delta[:, :, None, :]).sum((0, 3))
        du = (dh * Bd).sum(2) * delta
        dBd = dh * (delta * u)[:, :, None, :]
        dCd = dy[:, :, None, :] * hs
        dB = dBd.view(batch, groups, heads, *dBd.shape[2:]).sum(2)
        dC = dCd.view(batch, groups, heads, *dCd.shape[2:]).sum(2)
        return du, ddelta, dA_grad, dB, dC
