"""Compiled CPU kernel for the hidden attention of a selective scan (numba).

    alpha[b, d, i, j] = delta_j * sum_n C_i[n] * exp(S[d, n, i, j]) * B_j[n]      (j <= i)
    S[d, n, i, j]     = sum_{k=j+1..i} delta_k * A[d, n]

The same quantity as `hidden_attention.hidden_attention`'s segment-sum reference, and the
same numerics: for each source token j, S is accumulated term by term over i = j+1, j+2, ...
(every entry a sum of its own terms, in log space, as the masked cumulative sum builds it)
and exponentiated; never exp(S_i) * exp(-S_j). What the kernel avoids is the reference's
(batch, d_inner, d_state, L, L) intermediate: it writes alpha directly, in O(L^2 d_state)
work per channel with d_state values of state. Parallel over (batch, channel).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from dema_lab.ssm.kernels.scan_cpu import FASTMATH, KERNEL_LOCK, fexp, in_disk_cache, set_threads, tell_compiling


@numba.njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _alpha(delta, A, B, C, alpha):
    # delta (b, d, L) after softplus/bias; A (d, n); B, C (b, g, L, n); alpha (b, d, L, L) out
    batch, dim, L = delta.shape
    groups = B.shape[1]
    nstate = A.shape[1]
    per_group = dim // groups
    for bd in numba.prange(batch * dim):
        b = bd // dim
        d = bd % dim
        g = d // per_group
        S = np.empty(nstate, dtype=delta.dtype)
        for j in range(L):
            dtj = delta[b, d, j]
            for n in range(nstate):
                S[n] = 0.0
            for i in range(j, L):
                if i > j:
                    dti = delta[b, d, i]
                    for n in range(nstate):
                        S[n] += dti * A[d, n]
                acc = delta.dtype.type(0.0)
                for n in range(nstate):
                    acc += C[b, g, i, n] * fexp(S[n]) * B[b, g, j, n]
                alpha[b, d, i, j] = acc * dtj
            for i in range(j):
                alpha[b, d, i, j] = 0.0


def alpha(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """alpha (b, d, L, L) for delta (b, d, L) (already through bias and softplus), A (d, n),
    grouped B, C (b, g, n, L); CPU tensors of one float dtype (float32 or float64)."""
    batch, dim, L = delta.shape
    delta = delta.contiguous()
    A = A.contiguous()
    Bt = B.transpose(-1, -2).contiguous()
    Ct = C.transpose(-1, -2).contiguous()
    out = delta.new_empty(batch, dim, L, L)
    args = (delta.numpy(), A.numpy(), Bt.numpy(), Ct.numpy(), out.numpy())
    sig = tuple(numba.typeof(a) for a in args)
    with KERNEL_LOCK:
        set_threads()
        if sig not in _alpha.overloads and not in_disk_cache(_alpha, sig):
            tell_compiling()
        _alpha(*args)
    return out


def _typeof_args(dtype) -> tuple:
    """The signature `alpha` compiles _alpha for: C-contiguous arrays of one dtype."""
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return tuple(numba.typeof(np.zeros((1,) * nd, np_dtype)) for nd in (3, 2, 4, 4, 4))


def is_cached(dtype) -> bool:
    """Whether numba's on-disk cache holds the attention kernel compiled for dtype."""
    return in_disk_cache(_alpha, _typeof_args(dtype))


def warm_up(dtypes=(torch.float32, torch.float64)):
    """Compile (or load from numba's cache) the attention kernel of each dtype."""
    for dtype in dtypes:
        alpha(
            torch.ones(1, 1, 2, dtype=dtype),
            -torch.ones(1, 1, dtype=dtype),
            *2 * (torch.zeros(1, 1, 1, 2, dtype=dtype),),
        )
