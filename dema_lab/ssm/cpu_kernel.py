"""Compiled CPU kernels for the selective scan's recurrence (numba, parallel over batch x channel).

    h_t[n] = exp(delta_t * A[n]) * h_{t-1}[n] + delta_t * B_t[n] * u_t      (per batch b, channel d)
    y_t    = sum_n C_t[n] * h_t[n]

Layout inside the kernels (the wrappers in scan.py transpose B and C to put d_state last,
so the inner loop over n walks contiguous memory):
    u, delta, y : (batch, d_inner, L)
    A           : (d_inner, d_state)
    B, C        : (batch, groups, L, d_state)
The forward keeps only the running state h (d_state values, in registers/L1). The backward
recomputes h_t and exp(delta_t A) for one (b, d) into a small per-thread buffer of L x d_state
and runs the reverse-time recurrence; nothing of size batch x d_inner x L x d_state is ever
allocated. Output buffers are allocated by torch and filled in place.
"""

from __future__ import annotations

import math
import os
import threading

import numba
import numpy as np
import torch

# numba's default (workqueue) threading layer must not be entered from two threads at once;
# dashboards run rollouts in several threads, so calls are serialised.
_LOCK = threading.Lock()


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward(u, delta, A, B, C, y, last):
    batch, dim, L = u.shape
    groups = B.shape[1]
    nstate = A.shape[1]
    per_group = dim // groups
    for bd in numba.prange(batch * dim):
        b = bd // dim
        d = bd % dim
        g = d // per_group
        h = np.zeros(nstate, dtype=u.dtype)
        for t in range(L):
            dt = delta[b, d, t]
            dtu = dt * u[b, d, t]
            acc = 0.0
            for n in range(nstate):
                hn = math.exp(dt * A[d, n]) * h[n] + dtu * B[b, g, t, n]
                h[n] = hn
                acc += C[b, g, t, n] * hn
            y[b, d, t] = acc
        for n in range(nstate):
            last[b, d, n] = h[n]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward(u, delta, A, B, C, dy, dlast, du, ddelta, dA_b, dB, dC):
    # dA_b: (batch, d_inner, d_state) per-batch partial sums (reduced by the caller);
    # dB, dC: (batch, groups, L, d_state), zeroed by the caller. Parallel over batch only,
    # so the sums over channels into dB/dC never race.
    batch, dim, L = u.shape
    groups = B.shape[1]
    nstate = A.shape[1]
    per_group = dim // groups
    for b in numba.prange(batch):
        hs = np.empty((L + 1, nstate), dtype=u.dtype)   # hs[t + 1] = h_t, hs[0] = 0
        ea = np.empty((L, nstate), dtype=u.dtype)       # exp(delta_t * A)
        gr = np.empty(nstate, dtype=u.dtype)            # dLoss/dh_t carried backwards
        for d in range(dim):
            g = d // per_group
            for n in range(nstate):
                hs[0, n] = 0.0
            for t in range(L):
                dt = delta[b, d, t]
                dtu = dt * u[b, d, t]
                for n in range(nstate):
                    e = math.exp(dt * A[d, n])
                    ea[t, n] = e
                    hs[t + 1, n] = e * hs[t, n] + dtu * B[b, g, t, n]
            for n in range(nstate):
                gr[n] = dlast[b, d, n]
            for t in range(L - 1, -1, -1):
                dyt = dy[b, d, t]
                dt = delta[b, d, t]
                ut = u[b, d, t]
                acc_dt = 0.0
                acc_du = 0.0
                for n in range(nstate):
                    gn = gr[n] + dyt * C[b, g, t, n]
                    dC[b, g, t, n] += dyt * hs[t + 1, n]
                    bn = B[b, g, t, n]
                    w = gn * hs[t, n] * ea[t, n]          # dL/dh_t * dh_t/d(exp term)
                    acc_dt += w * A[d, n] + gn * bn * ut
                    dA_b[b, d, n] += w * dt
                    dB[b, g, t, n] += gn * dt * ut
                    acc_du += gn * bn
                    gr[n] = gn * ea[t, n]
                ddelta[b, d, t] = acc_dt
                du[b, d, t] = acc_du * dt


def _set_threads():
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def forward(u, delta, A, B, C):
    """y (b, d, L) and the last state (b, d, n) for contiguous CPU tensors (B, C: (b, g, L, n))."""
    batch, dim, L = u.shape
    y = torch.empty_like(u)
    last = u.new_empty(batch, dim, A.shape[1])
    with _LOCK:
        _set_threads()
        _forward(_np(u), _np(delta), _np(A), _np(B), _np(C), _np(y), _np(last))
    return y, last


def backward(u, delta, A, B, C, dy, dlast=None):
    """Gradients (du, ddelta, dA, dB, dC) of sum(dy * y) + sum(dlast * last)."""
    batch, dim, L = u.shape
    du = torch.empty_like(u)
    ddelta = torch.empty_like(u)
    dA_b = u.new_zeros(batch, dim, A.shape[1])
    dB = torch.zeros_like(B)
    dC = torch.zeros_like(C)
    if dlast is None:
        dlast = u.new_zeros(batch, dim, A.shape[1])
    with _LOCK:
        _set_threads()
        _backward(_np(u), _np(delta), _np(A), _np(B), _np(C), _np(dy.contiguous()),
                  _np(dlast.contiguous().to(u.dtype)), _np(du), _np(ddelta), _np(dA_b), _np(dB), _np(dC))
    return du, ddelta, dA_b.sum(0), dB, dC


def warm_up():
    """Compile (or load from numba's cache) the float32 kernels, e.g. before timing."""
    x = torch.zeros(1, 1, 2)
    A = -torch.ones(1, 1)
    Bm = torch.zeros(1, 1, 2, 1)
    y, _ = forward(x, x, A, Bm, Bm)
    backward(x, x, A, Bm, Bm, y)


if os.environ.get("DEMA_LAB_WARM_KERNELS"):
    warm_up()
