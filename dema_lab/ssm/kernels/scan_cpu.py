"""Compiled CPU kernels for the whole selective scan (numba), forward and backward.

    delta_t = softplus(delta_raw_t + delta_bias)              (when asked)
    h_t[n]  = exp(delta_t * A[n]) * h_{t-1}[n] + delta_t * B_t[n] * u_t      (per batch b, channel d)
    y_t     = (sum_n C_t[n] * h_t[n] + D * u_t) * silu(z_t)

Everything that selective_scan does elementwise (softplus of delta + bias, the D skip, the
silu gate) is fused into the two kernels, so one training step makes one pass over the
(batch, d_inner, L) tensors forward and one backward, and allocates only the outputs.

Layout inside the kernels (scan.py transposes B and C so that d_state is last):
    u, delta_raw, z, out : (batch, d_inner, L)
    A                    : (d_inner, d_state)
    B, C                 : (batch, groups, L, d_state)
    D, delta_bias        : (d_inner,)
Work is split into tiles of W = 16 channels of one batch row; a tile's (L, W) slices of u, delta,
z are gathered into per-thread buffers, softplus, the D skip and the gate run on the W lanes.
The forward runs the recurrence on the W channel lanes too (B_t[n], C_t[n] broadcast; only
the running state h, d_state x W values, is kept), parallel over tiles. The backward, parallel
over batch rows (so that the sums over channels into dB and dC never race), takes two channels
at a time (so the B_t, C_t, dB_t and dC_t rows are read once for both) with the loops over
d_state innermost and unit-stride: it recomputes exp(delta_t A) and h_t into per-thread
(L, d_state) buffers (L1/L2-resident), accumulating dC, then runs the
reverse-time recurrence, accumulating dB rows and dA directly (no lane-wise partial sums);
per-thread partial sums for dA, dD and d(delta_bias). Its d_state loops run over NPAD, d_state
rounded up to a multiple of 32 (B_t, C_t, dB_t, dC_t rows copied to per-thread padded buffers
once per batch row, zero in the pad): LLVM vectorises an unknown-length loop 32 floats at a
time and leaves the rest to a scalar loop, so at d_state 16 the whole loop was scalar (2x
slower than the kernel before). Nothing of size batch x d_inner x L x
d_state is allocated, and the scratch buffers are allocated once and reused between calls.

float32 runs in float32 throughout: exp(delta A) is 2**(delta A log2 e) with A pre-scaled, by a
branch-free polynomial (_exp2_f32, relative error < 2.4e-7, unbiased) that LLVM vectorises (math.exp would
be a scalar libm call: there is no SVML here); softplus's exp and log are Cephes' polynomials.
float64 uses libm's exp/log1p, so it stays exact to ~1e-15 (the tests' reference).

The compiled kernels are cached on disk (numba cache=True: __pycache__ next to this file, or
numba's user-wide cache dir when the package is read-only); the first run prints one line to
stderr saying it is compiling, later processes load them in about a second.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

# numba's default (workqueue) threading layer must not be entered from two threads at once;
# dashboards run rollouts in several threads, so calls are serialised.
KERNEL_LOCK = threading.Lock()

_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default: x > 20 -> x


# ----------------------------------------------------------------------------- vector math


@intrinsic
def _f32_bits(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, i):
    """The float32 whose bit pattern is the low 32 bits of the integer i."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


_F = np.float32
# fast-math flags of the kernels: reassociation (to vectorise the sums over d_state) and
# contraction (FMA), but no "no-NaN/no-inf" assumptions, so NaN and inf still propagate.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _exp_f32(x):
    """expf, Cephes' polynomial after Cody-Waite reduction; branch-free, so it vectorises.
    Inputs are clamped to [-87.3, 88.7] (exp underflows to ~1e-38 instead of 0 below)."""
    x = min(max(x, _F(-87.3)), _F(88.7))
    k = np.floor(x * _F(1.44269504088896341) + _F(0.5))
    r = x - k * _F(0.693359375)
    r = r + k * _F(2.12194440e-4)
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    p = p * r * r + r + _F(1.0)
    return p * _bits_f32((np.int32(k) + 127) << 23)


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _log_f32(x):
    """logf for normal positive x (Cephes' polynomial); branch-free."""
    bits = _f32_bits(x)
    e = ((bits >> 23) & 0xFF) - 126
    m = _bits_f32((bits & 0x7FFFFF) | 0x3F000000)  # m in [0.5, 1)
    small = m < _F(0.707106781186547524)
    e = e - 1 if small else e
    f = (m + m if small else m) - _F(1.0)
    ef = _F(np.int32(e))
    z = f * f
    y = _F(7.0376836292e-2)
    y = y * f - _F(1.1514610310e-1)
    y = y * f + _F(1.1676998740e-1)
    y = y * f - _F(1.2420140846e-1)
    y = y * f + _F(1.4249322787e-1)
    y = y * f - _F(1.6668057665e-1)
    y = y * f + _F(2.0000714765e-1)
    y = y * f - _F(2.4999993993e-1)
    y = y * f + _F(3.3333331174e-1)
    y = y * f * z
    y = y - ef * _F(2.12194440e-4)
    y = y - _F(0.5) * z
    return f + y + ef * _F(0.693359375)


def fexp(x):
    return math.exp(x)


def flog1p(x):
    """log1p; the float32 version is for x in [0, 1]."""
    return math.log1p(x)


@overload(fexp, inline="always")
def _fexp_impl(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


@overload(flog1p, inline="always")
def _flog1p_impl(x):
    if x == types.float32:

        def impl(x):
            # for x in [0, 1] (the only use: softplus): log1p(x) = 2 atanh(s), s = x / (2 + x)
            # <= 1/3, by its series: no cancellation, so reassociation cannot hurt it.
            s = x / (_F(2.0) + x)
            s2 = s * s
            p = _F(1.0 / 15.0)
            p = p * s2 + _F(1.0 / 13.0)
            p = p * s2 + _F(1.0 / 11.0)
            p = p * s2 + _F(1.0 / 9.0)
            p = p * s2 + _F(1.0 / 7.0)
            p = p * s2 + _F(1.0 / 5.0)
            p = p * s2 + _F(1.0 / 3.0)
            p = p * s2 + _F(1.0)
            return _F(2.0) * s * p

        return impl
    return lambda x: math.log1p(x)


LOG2E = 1.4426950408889634  # the kernels' float32 A is pre-scaled by log2(e): exp(x) = 2**(x log2 e)


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _exp2_f32(x):
    """2**x: x = k + f with k = rint(x), f in [-1/2, 1/2]; 2**f by a degree-5 polynomial with
    p(0) = 1 exactly, fitted for relative error as evaluated in float32 (< 2.4e-7 at most, mean
    |6e-9|, see tests/test_perf_paths.py: a state multiplies up to L of these factors, so a bias
    would add up along the chain), 2**k put into the exponent bits. Branch-free, so LLVM
    vectorises it. x is clamped to [-126, 126] (2**x underflows to ~1e-38 instead of 0)."""
    x = min(max(x, _F(-126.0)), _F(126.0))
    k = np.rint(x)
    f = x - k
    p = _F(1.3287398e-3)
    p = p * f + _F(9.6724005e-3)
    p = p * f + _F(5.5506576e-2)
    p = p * f + _F(2.4022241e-1)
    p = p * f + _F(6.9314700e-1)
    p = p * f + _F(1.0)
    return p * _bits_f32((np.int32(k) + 127) << 23)


def fexpk(x):
    """exp of an exponent in the kernels' unit: 2**x for float32 (A pre-scaled by LOG2E),
    e**x for float64 (libm, exact)."""
    return math.exp(x)


@overload(fexpk, inline="always")
def _fexpk_impl(x):
    if x == types.float32:
        return lambda x: _exp2_f32(x)
    return lambda x: math.exp(x)


def kscale(dtype) -> float:
    """The factor the kernels apply to A before fexpk."""
    return LOG2E if np.dtype(dtype) == np.float32 else 1.0


# ----------------------------------------------------------------------------- kernels

NPAD = 32  # the backward's loops over states run to a multiple of this (see the module docstring)
W = 16  # channels per tile: one AVX-512 vector of float32 (pad lanes are computed and dropped)

# The per-thread scratch buffers are arguments (allocated once by the wrappers and reused),
# indexed [c, ...] with full indices: with no array views inside the parallel loop, numba
# marks the arguments noalias and LLVM vectorises the loops over the W lanes without runtime
# alias checks (with views or locally allocated buffers it gives up).


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _gather(src, b, d0, nw, c, dst):
    """dst[c, t, w] = src[b, d0 + w, t] for the nw lanes in use, 0 in the pad lanes. src may be
    (b, d, L) contiguous or a transposed view of (b, L, d) memory: the loop order follows it."""
    L = dst.shape[1]
    zero = dst.dtype.type(0.0)
    if src.strides[1] < src.strides[2]:  # channels vary fastest
        for t in range(L):
            for w in range(W):
                dst[c, t, w] = src[b, d0 + w, t] if w < nw else zero
    else:
        for w in range(W):
            if w < nw:
                for t in range(L):
                    dst[c, t, w] = src[b, d0 + w, t]
            else:
                for t in range(L):
                    dst[c, t, w] = zero


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _scatter(src, c, b, d0, nw, dst):
    """dst[b, d0 + w, t] = src[c, t, w] for the nw lanes in use (inverse of _gather)."""
    L = src.shape[1]
    if dst.strides[1] < dst.strides[2]:
        for t in range(L):
            for w in range(nw):
                dst[b, d0 + w, t] = src[c, t, w]
    else:
        for w in range(nw):
            for t in range(L):
                dst[b, d0 + w, t] = src[c, t, w]


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _load_tile(u, dr, db, A, D, z, softplus, has_z, b, d0, nw, c, uT, dtT, sgT, zT, At, Dt, Bi):
    """Channels d0..d0+nw of batch b into thread c's (L, W) tiles (time major, channels in
    the vector lanes); delta through softplus, sgT = d delta / d delta_raw. Pad lanes are 0."""
    L = u.shape[2]
    nstate = A.shape[1]
    zero = u.dtype.type(0.0)
    one = u.dtype.type(1.0)
    thr = u.dtype.type(_SOFTPLUS_THRESHOLD)
    for w in range(W):
        if w < nw:
            d = d0 + w
            Dt[c, w] = D[d]
            Bi[c, w] = db[d]
            for n in range(nstate):
                At[c, n, w] = A[d, n]
        else:
            Dt[c, w] = zero
            Bi[c, w] = zero
            for n in range(nstate):
                At[c, n, w] = zero
    _gather(u, b, d0, nw, c, uT)
    _gather(dr, b, d0, nw, c, dtT)
    if has_z:
        _gather(z, b, d0, nw, c, zT)
    for t in range(L):
        for w in range(W):
            x = dtT[c, t, w] + Bi[c, w]
            if softplus:
                # softplus(x) = max(x, 0) + log1p(exp(-|x|)) (x above torch's threshold: x);
                # its derivative sigmoid(x) from the same exp
                v = fexp(-abs(x))
                r = one / (one + v)
                big = x > thr
                dtT[c, t, w] = x if big else max(x, zero) + flog1p(v)
                sgT[c, t, w] = one if big else (r if x >= zero else v * r)
            else:
                dtT[c, t, w] = x
                sgT[c, t, w] = one


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _pair_step(dtT, uT, gy, c, t, w):
    """Step t of the backward's channel pair (w, w + 1): delta, delta * u and the output
    gradient of each (the scalars its loops over the states broadcast)."""
    dt0 = dtT[c, t, w]
    dt1 = dtT[c, t, w + 1]
    return dt0, dt1, dt0 * uT[c, t, w], dt1 * uT[c, t, w + 1], gy[c, t, w], gy[c, t, w + 1]


@numba.njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward(u, dr, db, A, B, C, D, z, softplus, has_z, out, last, uT, dtT, sgT, zT, yT, At, h, Dt, Bi, y, dtu, scale):
    # Vectorised over the W channels of a tile (the lanes): per step t and state n, B_t[n] and
    # C_t[n] are broadcast, and exp(delta A), the state update and y's sum run on W lanes with
    # no horizontal sums. (The backward vectorises over d_state instead; see _backward.)
    batch, dim, L = u.shape
    groups = B.shape[1]
    nstate = A.shape[1]
    pg = dim // groups
    tpg = (pg + W - 1) // W
    ntile = batch * groups * tpg
    nchunk = uT.shape[0]
    one = u.dtype.type(1.0)
    for c in numba.prange(nchunk):
        for k in range(c * ntile // nchunk, (c + 1) * ntile // nchunk):
            b = k // (groups * tpg)
            g = (k % (groups * tpg)) // tpg
            j = k % tpg
            d0 = g * pg + j * W
            nw = min(W, pg - j * W)
            _load_tile(u, dr, db, A, D, z, softplus, has_z, b, d0, nw, c, uT, dtT, sgT, zT, At, Dt, Bi)
            for n in range(nstate):
                for w in range(W):
                    At[c, n, w] = At[c, n, w] * scale
                    h[c, n, w] = 0.0
            for t in range(L):
                for w in range(W):
                    y[c, w] = 0.0
                    dtu[c, w] = dtT[c, t, w] * uT[c, t, w]
                for n in range(nstate):
                    bn = B[b, g, t, n]
                    cn = C[b, g, t, n]
                    for w in range(W):
                        hn = fexpk(dtT[c, t, w] * At[c, n, w]) * h[c, n, w] + dtu[c, w] * bn
                        h[c, n, w] = hn
                        y[c, w] += cn * hn
                for w in range(W):
                    yT[c, t, w] = y[c, w]
            # the D skip and the gate
            for t in range(L):
                for w in range(W):
                    v = yT[c, t, w] + Dt[c, w] * uT[c, t, w]
                    if has_z:
                        zt = zT[c, t, w]
                        v = v * (zt / (one + fexp(-zt)))
                    yT[c, t, w] = v
            _scatter(yT, c, b, d0, nw, out)
            for w in range(nw):
                for n in range(nstate):
                    last[b, d0 + w, n] = h[c, n, w]


@numba.njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward(
    u,
    dr,
    db,
    A,
    B,
    C,
    D,
    z,
    softplus,
    has_z,
    dout,
    dlast,
    has_dlast,
    du,
    ddr,
    dz,
    dB,
    dC,
    dA_p,
    dD_p,
    ddb_p,
    Bp,
    Cp,
    dBp,
    dCp,
    uT,
    dtT,
    sgT,
    zT,
    goT,
    gy,
    yT,
    duT,
    ddT,
    At,
    Ak,
    Ar,
    dAr,
    gr,
    hs,
    ea,
    Dt,
    Bi,
    scale,
):
    # dA_p (nchunk, d_inner, d_state), dD_p, ddb_p (nchunk, d_inner): per-thread partial sums,
    # written here and reduced by the caller. dB, dC (batch, groups, L, d_state) are
    # accumulated here over the channels of a group, in thread c's padded rows dBp, dCp
    # (L, npad), and written out per batch row. Parallel over batch, so nothing races.
    # Every loop over states runs to npad (a multiple of 32): pad states have A = B = C = 0,
    # so their h, dL/dh and gradients stay 0.
    batch, dim, L = u.shape
    groups = B.shape[1]
    nstate = A.shape[1]
    pg = dim // groups
    tpg = (pg + W - 1) // W
    nchunk = dA_p.shape[0]
    npad = Bp.shape[2]
    one = u.dtype.type(1.0)
    zero = u.dtype.type(0.0)
    for c in numba.prange(nchunk):
        for d in range(dim):
            dD_p[c, d] = zero
            ddb_p[c, d] = zero
            for n in range(nstate):
                dA_p[c, d, n] = zero
        for b in range(c * batch // nchunk, (c + 1) * batch // nchunk):
            for g in range(groups):
                for t in range(L):
                    for n in range(npad):
                        Bp[c, t, n] = B[b, g, t, n] if n < nstate else zero
                        Cp[c, t, n] = C[b, g, t, n] if n < nstate else zero
                        dBp[c, t, n] = zero
                        dCp[c, t, n] = zero
                for j in range(tpg):
                    d0 = g * pg + j * W
                    nw = min(W, pg - j * W)
                    _load_tile(u, dr, db, A, D, z, softplus, has_z, b, d0, nw, c, uT, dtT, sgT, zT, At, Dt, Bi)
                    # gy: the gradient reaching the scan output y (through the gate)
                    _gather(dout, b, d0, nw, c, goT)
                    for t in range(L):
                        for w in range(W):
                            go = goT[c, t, w]
                            if has_z:
                                zt = zT[c, t, w]
                                go = go * (zt / (one + fexp(-zt)))
                            gy[c, t, w] = go
                    # channels two at a time (w, w + 1): B_t, C_t and dB_t rows are read once for
                    # both; a pad lane w + 1 = nw has u = gy = 0 and A = 0, so it adds nothing
                    for w in range(0, nw, 2):
                        d = d0 + w
                        two = w + 1 < nw
                        for n in range(npad):
                            a0 = A[d, n] if n < nstate else zero
                            a1 = A[d + 1, n] if two and n < nstate else zero
                            Ar[c, 0, n] = a0
                            Ar[c, 1, n] = a1
                            Ak[c, 0, n] = a0 * scale
                            Ak[c, 1, n] = a1 * scale
                            dAr[c, 0, n] = zero
                            dAr[c, 1, n] = zero
                            hs[c, 0, 0, n] = zero
                            hs[c, 1, 0, n] = zero
                        # recompute exp(delta_t A) and the states (and y, for dz); dC on the way
                        for t in range(L):
                            dt0, dt1, dtu0, dtu1, gy0, gy1 = _pair_step(dtT, uT, gy, c, t, w)
                            acc0 = zero
                            acc1 = zero
                            for n in range(npad):
                                bn = Bp[c, t, n]
                                cn = Cp[c, t, n]
                                e0 = fexpk(dt0 * Ak[c, 0, n])
                                e1 = fexpk(dt1 * Ak[c, 1, n])
                                ea[c, 0, t, n] = e0
                                ea[c, 1, t, n] = e1
                                h0 = e0 * hs[c, 0, t, n] + dtu0 * bn
                                h1 = e1 * hs[c, 1, t, n] + dtu1 * bn
                                hs[c, 0, t + 1, n] = h0
                                hs[c, 1, t + 1, n] = h1
                                acc0 += cn * h0
                                acc1 += cn * h1
                                dCp[c, t, n] += gy0 * h0 + gy1 * h1
                            yT[c, t, w] = acc0
                            yT[c, t, w + 1] = acc1
                        # reverse-time recurrence; gr: dL/dh_t carried back
                        for n in range(npad):
                            gr[c, 0, n] = dlast[b, d, n] if has_dlast and n < nstate else zero
                            gr[c, 1, n] = dlast[b, d + 1, n] if has_dlast and two and n < nstate else zero
                        for t in range(L - 1, -1, -1):
                            dt0, dt1, dtu0, dtu1, gy0, gy1 = _pair_step(dtT, uT, gy, c, t, w)
                            aw0 = zero
                            aw1 = zero
                            ab0 = zero
                            ab1 = zero
                            for n in range(npad):
                                bn = Bp[c, t, n]
                                cn = Cp[c, t, n]
                                g0 = gr[c, 0, n] + gy0 * cn
                                g1 = gr[c, 1, n] + gy1 * cn
                                e0 = ea[c, 0, t, n]
                                e1 = ea[c, 1, t, n]
                                w0 = g0 * hs[c, 0, t, n] * e0  # dL/dh_t * d h_t / d(delta_t A)
                                w1 = g1 * hs[c, 1, t, n] * e1
                                aw0 += w0 * Ar[c, 0, n]
                                aw1 += w1 * Ar[c, 1, n]
                                dAr[c, 0, n] += w0 * dt0
                                dAr[c, 1, n] += w1 * dt1
                                dBp[c, t, n] += g0 * dtu0 + g1 * dtu1
                                ab0 += g0 * bn
                                ab1 += g1 * bn
                                gr[c, 0, n] = g0 * e0
                                gr[c, 1, n] = g1 * e1
                            ddT[c, t, w] = aw0 + ab0 * uT[c, t, w]  # d/d delta (after softplus)
                            ddT[c, t, w + 1] = aw1 + ab1 * uT[c, t, w + 1]
                            duT[c, t, w] = ab0 * dt0
                            duT[c, t, w + 1] = ab1 * dt1
                        for n in range(nstate):
                            dA_p[c, d, n] += dAr[c, 0, n]
                        if two:
                            for n in range(nstate):
                                dA_p[c, d + 1, n] += dAr[c, 1, n]
                    # the D skip, the gate and softplus, vectorised over the tile's channels
                    for t in range(L):
                        for w in range(W):
                            ut = uT[c, t, w]
                            duT[c, t, w] = duT[c, t, w] + gy[c, t, w] * Dt[c, w]
                            ddT[c, t, w] = ddT[c, t, w] * sgT[c, t, w]
                            if has_z:
                                # d out / d z = (y + D u) * s * (1 + z (1 - s)), s = sigmoid(z)
                                zt = zT[c, t, w]
                                s = one / (one + fexp(-zt))
                                yT[c, t, w] = goT[c, t, w] * (yT[c, t, w] + Dt[c, w] * ut) * s * (one + zt * (one - s))
                    for w in range(nw):
                        d = d0 + w
                        sD = zero
                        sdb = zero
                        for t in range(L):
                            sD += gy[c, t, w] * uT[c, t, w]
                            sdb += ddT[c, t, w]
                        dD_p[c, d] += sD
                        ddb_p[c, d] += sdb
                    if has_z:
                        _scatter(yT, c, b, d0, nw, dz)
                    _scatter(duT, c, b, d0, nw, du)
                    _scatter(ddT, c, b, d0, nw, ddr)
                for t in range(L):
                    for n in range(nstate):
                        dB[b, g, t, n] = dBp[c, t, n]
                        dC[b, g, t, n] = dCp[c, t, n]


# ----------------------------------------------------------------------------- signatures


def _sig(kernel: str, dtype):
    """The one signature each kernel is compiled for, per dtype: the big (b, d, L) arrays as
    any-layout ('A') arrays, so contiguous tensors and transposed views share one compiled
    kernel (instead of one per combination of layouts); everything else C-contiguous."""
    f = numba.from_dtype(np.dtype(dtype))
    A3 = types.Array(f, 3, "A")
    C = lambda nd: types.Array(f, nd, "C")  # noqa: E731
    b = types.boolean
    if kernel == "forward":
        return (
            A3,
            A3,
            C(1),
            C(2),
            C(4),
            C(4),
            C(1),
            A3,
            b,
            b,
            A3,
            A3,
            C(3),
            C(3),
            C(3),
            C(3),
            C(3),
            C(3),
            C(3),
            C(2),
            C(2),
            C(2),
            C(2),
            f,
        )
    return (
        (A3, A3, C(1), C(2), C(4), C(4), C(1), A3, b, b, A3, A3, b, A3, A3, A3, C(4), C(4), C(3), C(2), C(2))
        + (C(3),) * 14
        + (C(3), C(3), C(3), C(3), C(4), C(4), C(2), C(2), f)
    )


_ENTRY: dict = {}
COMPILE_MESSAGE = "dema-lab: compiling the CPU scan kernels (first run only, ~30 s)"
_told = False


def in_disk_cache(disp, sig) -> bool:
    """Whether numba's on-disk cache (cache=True: __pycache__ next to this file, or numba's
    user-wide cache dir when the package is read-only) holds disp compiled for sig. Reads
    numba internals; False when unsure, so the compile message shows at worst once too often."""
    try:
        cache = disp._cache
        return cache._index_key(sig, disp.targetctx.codegen()) in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - any numba-internal change: assume not cached
        return False


def tell_compiling() -> None:
    """Say once per process, on stderr, that the kernels are being compiled (not loaded)."""
    global _told
    if not _told:
        _told = True
        print(COMPILE_MESSAGE, file=sys.stderr, flush=True)


def _kernel(kernel: str, dtype):
    """The compiled kernel for dtype, as a direct entry point (no dispatch on layouts);
    loaded from numba's cache after the first run."""
    key = (kernel, np.dtype(dtype))
    if key not in _ENTRY:
        disp = _forward if kernel == "forward" else _backward
        sig = _sig(kernel, dtype)
        if not in_disk_cache(disp, sig):
            tell_compiling()
        disp.compile(sig)
        _ENTRY[key] = disp.overloads[sig].entry_point
    return _ENTRY[key]


# ----------------------------------------------------------------------------- wrappers


def set_threads() -> int:
    """Run the kernels on torch's thread count (at most numba's pool), and leave torch's alone.

    numba's OpenMP layer shares the OpenMP runtime with torch, and launching its pool (on the
    first parallel call of a process) resets OpenMP's thread count to the number of cores: a
    process that had called torch.set_num_threads(1) (a sweep worker, batch-1 evaluation) ran
    every later torch op and kernel on all cores. The count torch had is put back."""
    wanted = torch.get_num_threads()
    n = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return n


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


class _Workspace:
    """Scratch buffers of the kernels, kept between calls (callers hold KERNEL_LOCK) and grown only
    when a call needs more: a training loop allocates them once."""

    def __init__(self):
        self.bufs: dict = {}

    def get(self, name, shape, dtype):
        key = (name, np.dtype(dtype))
        buf = self.bufs.get(key)
        if buf is None or buf.shape != shape:
            buf = self.bufs[key] = np.empty(shape, dtype)
        return buf


_WS = _Workspace()


def _dummy(name, dtype, ndim=3):
    """A tiny distinct array for an absent optional argument (never read or written)."""
    return _WS.get("dummy_" + name, (1,) * ndim, dtype)


def _like(x):
    """An empty tensor shaped like x (b, d, L) whose memory follows x's: a transposed view of
    (b, L, d) memory when x is one (channels vary fastest), else contiguous."""
    if x.stride(1) == 1 and x.stride(2) != 1:
        return x.new_empty(x.shape[0], x.shape[2], x.shape[1]).transpose(1, 2)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def readable(x: torch.Tensor) -> torch.Tensor:
    """x (b, d, L) as the kernels read it well without a copy: time or channels at unit stride
    (contiguous, a slice of it, or a transposed view of (b, L, d) memory, as Mamba's delta
    and z are). Anything else is copied once."""
    return x if x.stride(2) == 1 or x.stride(1) == 1 else x.contiguous()


def _check(*tensors):
    dtypes = {t.dtype for t in tensors if t is not None}
    if len(dtypes) != 1 or dtypes.pop() not in (torch.float32, torch.float64):
        raise TypeError(f"the CPU scan kernels take float32 or float64 tensors of one dtype, got {dtypes}")


def _vec(x, dim, like):
    return like.new_zeros(dim) if x is None else x.contiguous()


def _tile_buffers(prefix, nchunk, L, nstate, dtype, lw_names, nw_names, w_names):
    lw = [_WS.get(prefix + k, (nchunk, L, W), dtype) for k in lw_names]
    nw = [_WS.get(prefix + k, (nchunk, nstate, W), dtype) for k in nw_names]
    ww = [_WS.get(prefix + k, (nchunk, W), dtype) for k in w_names]
    return lw, nw, ww


def forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """out (b, d, L), contiguous, and the last state (b, d, n) of the fused scan.

    CPU tensors of one float dtype. u, delta, z: (b, d, L), each either contiguous or a
    transposed view of (b, L, d) memory (as Mamba's projections make them; no copy needed);
    A, B, C, D, delta_bias contiguous, B, C in kernel layout (b, g, L, n). D, z, delta_bias
    may be None."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    nstate = A.shape[1]
    groups = B.shape[1]
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    last = u.new_empty(batch, dim, nstate)
    Dv, dbv = _vec(D, dim, u), _vec(delta_bias, dim, u)
    npdt = _np(u).dtype
    ntile = batch * groups * -(-(dim // groups) // W)
    with KERNEL_LOCK:
        nthreads = set_threads()
        nchunk = max(1, min(ntile, 4 * nthreads))
        lw, nw, ww = _tile_buffers(
            "f_", nchunk, L, nstate, npdt, ("uT", "dtT", "sgT", "zT", "yT"), ("At", "h"), ("Dt", "Bi", "y", "dtu")
        )
        _kernel("forward", npdt)(
            _np(u),
            _np(delta),
            _np(dbv),
            _np(A),
            _np(B),
            _np(C),
            _np(Dv),
            _np(z) if z is not None else _dummy("z", npdt),
            bool(delta_softplus),
            z is not None,
            _np(out),
            _np(last),
            *lw,
            *nw,
            *ww,
            kscale(npdt),
        )
    return out, last


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout, dlast=None):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of sum(dout * out) +
    sum(dlast * last); dz is None without z. Arguments as in `forward`; du, ddelta and dz
    have the memory layout of u, delta and z."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    nstate = A.shape[1]
    du = _like(u)
    ddelta = _like(delta)
    dz = _like(z) if z is not None else None
    dB = torch.empty_like(B)
    dC = torch.empty_like(C)
    Dv, dbv = _vec(D, dim, u), _vec(delta_bias, dim, u)
    npdt = _np(u).dtype
    dout = dout.to(u.dtype)
    with KERNEL_LOCK:
        nthreads = set_threads()
        # 8 chunks per thread: with one chunk per thread the 2-thread backward ran barely faster
        # than the 1-thread one (measured: 26.8 against 28.1 ms at b 64, d_inner 128, n 64, L 60;
        # 18.0 ms with 16 chunks)
        nchunk = max(1, min(batch, 8 * nthreads))
        npad = -(-nstate // NPAD) * NPAD
        dA_p = u.new_empty(nchunk, dim, nstate)
        dD_p = u.new_empty(nchunk, dim)
        ddb_p = u.new_empty(nchunk, dim)
        lw, (At,), (Dt, Bi) = _tile_buffers(
            "b_",
            nchunk,
            L,
            nstate,
            npdt,
            ("uT", "dtT", "sgT", "zT", "goT", "gy", "yT", "duT", "ddT"),
            ("At",),
            ("Dt", "Bi"),
        )
        # rows padded by 64 bytes: two threads' rows (written every step) never share a cache line
        Ak, Ar, dAr, gr = (_WS.get("b_" + k, (nchunk, 2, npad + 16), npdt) for k in ("Ak", "Ar", "dAr", "gr"))
        hs = _WS.get("b_hs", (nchunk, 2, L + 1, npad), npdt)
        ea = _WS.get("b_ea", (nchunk, 2, L, npad), npdt)
        rows = [_WS.get("b_" + k, (nchunk, L, npad), npdt) for k in ("Bp", "Cp", "dBp", "dCp")]
        _kernel("backward", npdt)(
            _np(u),
            _np(delta),
            _np(dbv),
            _np(A),
            _np(B),
            _np(C),
            _np(Dv),
            _np(z) if z is not None else _dummy("z", npdt),
            bool(delta_softplus),
            z is not None,
            _np(dout),
            _np(dlast.contiguous().to(u.dtype)) if dlast is not None else _dummy("dlast", npdt),
            dlast is not None,
            _np(du),
            _np(ddelta),
            _np(dz) if dz is not None else _dummy("dz", npdt),
            _np(dB),
            _np(dC),
            _np(dA_p),
            _np(dD_p),
            _np(ddb_p),
            *rows,
            *lw,
            At,
            Ak,
            Ar,
            dAr,
            gr,
            hs,
            ea,
            Dt,
            Bi,
            kscale(npdt),
        )
    return du, ddelta, dA_p.sum(0), dB, dC, dD_p.sum(0), dz, ddb_p.sum(0)


def is_cached(dtype) -> bool:
    """Whether numba's on-disk cache holds both scan kernels compiled for dtype (torch's or numpy's)."""
    if isinstance(dtype, torch.dtype):
        dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return all(
        in_disk_cache(_forward if k == "forward" else _backward, _sig(k, dtype)) for k in ("forward", "backward")
    )


def warm_up(dtypes=(torch.float32, torch.float64)):
    """Compile (or load from numba's cache) the kernels of each dtype, e.g. before timing."""
    for dtype in dtypes:
        x = torch.zeros(1, 1, 2, dtype=dtype)
        A = -torch.ones(1, 1, dtype=dtype)
        Bm = torch.zeros(1, 1, 2, 1, dtype=dtype)
        y, _ = forward(x, x, A, Bm, Bm)
        backward(x, x, A, Bm, Bm, None, None, None, False, y)


if os.environ.get("DEMA_LAB_WARM_KERNELS"):
    warm_up()
