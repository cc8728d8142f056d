"""Hidden attention of a selective scan (Ali, Zimerman & Wolf, 2024).

The scan is a causal linear operator on u, one matrix per channel:

    y_i[d] = sum_{j<=i} alpha[d, i, j] * u_j[d]  +  D[d] * u_i[d]

    alpha[d, i, j] = sum_n C_i[n] * prod_{k=j+1..i} exp(delta_k[d] A[d, n]) * delta_j[d] B_j[n]

The product over k is exp(S[d, n, i, j]) with S the segment sum of log(Abar) = delta * A,
S[i, j] = sum_{k=j+1..i} delta_k A (j <= i), -inf above the diagonal. It is computed as a
masked cumulative sum, never as exp(cumsum_i) * exp(-cumsum_j), which overflows.
"""

from __future__ import annotations

import torch

from dema_lab.ssm.scan import as_grouped, effective_delta, skip_and_gate

AGGREGATIONS = ("minmax", "abs", "mean")


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sum. x (..., L) -> S (..., L, L), S[i, j] = sum_{k=j+1..i} x_k for j <= i,
    -inf for j > i. Every entry is a sum of its own terms: no difference of large cumsums."""
    L = x.shape[-1]
    xx = x[..., None, :].expand(*x.shape, L).transpose(-1, -2)  # xx[..., i, j] = x_i
    strict = torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-1)
    xx = xx.masked_fill(~strict, 0.0)  # keep x_i for i > j
    S = torch.cumsum(xx, dim=-2)  # S[i, j] = sum_{j<k<=i} x_k
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril(0)
    return S.masked_fill(~causal, float("-inf"))


IMPLS = ("auto", "segsum", "numba")


def hidden_attention(delta, A, B, C, delta_bias=None, delta_softplus=False, chunk_channels=None, impl="auto"):
    """Exact hidden-attention matrices alpha, (batch, d_inner, L, L), zero above the diagonal.

    Arguments have selective_scan's layout: delta (batch, d_inner, L), A (d_inner, d_state),
    B, C (batch, d_state, L) or grouped (batch, groups, d_state, L).
    With u the scan input, (alpha @ u[..., None])[..., 0] + D u, gated by silu(z), equals
    selective_scan(u, delta, A, B, C, D, z, ...). Computed in float32 (float64 for float64).
    `chunk_channels` bounds memory: the (d_inner, d_state, L, L) intermediate is built that
    many channels at a time.

    impl: "segsum" is the reference (torch, differentiable, any device); "numba" the compiled
    CPU kernel of dema_lab.ssm.kernels.attention_cpu (same segment sums, accumulated per source
    token, without the (b, d, n, L, L) intermediate; not differentiable); "auto" (default)
    takes the kernel for CPU tensors when no gradient is being recorded, else the reference.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown hidden-attention impl {impl!r}; choose one of {', '.join(IMPLS)}")
    compute = torch.float64 if delta.dtype == torch.float64 else torch.float32
    delta = effective_delta(delta, delta_bias, delta_softplus, compute)
    batch, dim, L = delta.shape
    A = A.to(compute)
    Bg = as_grouped(B, delta).to(compute)  # (b, g, n, L)
    Cg = as_grouped(C, delta).to(compute)
    if impl == "auto":
        recording = torch.is_grad_enabled() and any(t.requires_grad for t in (delta, A, Bg, Cg))
        impl = "numba" if delta.device.type == "cpu" and not recording else "segsum"
    if impl == "numba":
        if delta.device.type != "cpu":
            raise RuntimeError(f"hidden-attention impl 'numba' runs on CPU only, tensors are on {delta.device}")
        from dema_lab.ssm.kernels import attention_cpu as attention_kernel

        with torch.no_grad():
            return attention_kernel.alpha(delta, A, Bg, Cg)
    heads = dim // Bg.shape[1]
    chunk = chunk_channels or dim
    alpha = delta.new_empty(batch, dim, L, L)
    for d0 in range(0, dim, chunk):
        d1 = min(dim, d0 + chunk)
        g_idx = torch.arange(d0, d1, device=delta.device) // heads
        Bc, Cc = Bg[:, g_idx], Cg[:, g_idx]  # (b, dc, n, L)
        logA = delta[:, d0:d1, None, :] * A[None, d0:d1, :, None]  # (b, dc, n, L)
        decay = torch.exp(segsum(logA))  # (b, dc, n, L, L), 0 above diag
        # alpha[i, j] = sum_n C_i[n] decay[n, i, j] B_j[n] delta_j
        a = torch.einsum("bdni,bdnij,bdnj->bdij", Cc, decay, Bc)
        alpha[:, d0:d1] = a * delta[:, d0:d1, None, :]
    return alpha


def hidden_attention_row(delta, A, B, C, row: int = -1, delta_bias=None, delta_softplus=False):
    """One query row of the hidden attention: alpha[:, :, row, :], (batch, d_inner, L), zero
    after `row` (causal). Same arguments and definition as hidden_attention, at O(L) instead of
    O(L^2) per channel and state: the segment sum S[row, j] = A * sum_{k=j+1..row} delta_k is a
    suffix sum of delta, accumulated from `row` backwards (each entry a sum of its own terms)."""
    compute = torch.float64 if delta.dtype == torch.float64 else torch.float32
    delta = effective_delta(delta, delta_bias, delta_softplus, compute)
    batch, dim, L = delta.shape
    i = row % L
    A = A.to(compute)
    Bg = as_grouped(B, delta).to(compute)  # (b, g, n, L)
    Cg = as_grouped(C, delta).to(compute)
    g_idx = torch.arange(dim, device=delta.device) // (dim // Bg.shape[1])
    d = delta[..., : i + 1]  # (b, dim, i+1)
    # suffix[j] = sum_{k=j+1..i} delta_k: reverse cumulative sum of delta_{1..i}, then 0 at j = i
    suffix = torch.cat([d[..., 1:].flip(-1).cumsum(-1).flip(-1), d.new_zeros(batch, dim, 1)], dim=-1)
    decay = torch.exp(A[None, :, :, None] * suffix[:, :, None, :])  # (b, dim, n, i+1)
    decay.mul_(Bg[:, g_idx, :, : i + 1]).mul_(Cg[:, g_idx, :, i, None])  # C_i[n] decay[n, j] B_j[n]
    row_ = decay.sum(2) * d  # (b, dim, i+1)
    out = delta.new_zeros(batch, dim, L)
    out[..., : i + 1] = row_
    return out


def apply_attention(alpha, u, D=None, z=None):
    """y = alpha @ u + D u, gated by silu(z): selective_scan's output rebuilt from alpha.
    alpha (b, d, L, L); u, z (b, d, L); D (d,)."""
    y = torch.einsum("bdij,bdj->bdi", alpha, u.to(alpha.dtype))
    return skip_and_gate(y, u.to(alpha.dtype), D, z)


def aggregate_channels(alpha: torch.Tensor, method: str = "minmax") -> torch.Tensor:
    """Collapse the channel dim of alpha (..., d_inner, L, L) -> (..., L, L).

    "minmax": |alpha| min-max normalised per channel over its causal entries, then averaged
              (the reference display of Ali et al.);
    "abs":    mean of |alpha| over channels;
    "mean":   signed mean over channels.
    """
    if method == "mean":
        return alpha.mean(-3)
    if method == "abs":
        return alpha.abs().mean(-3)
    if method == "minmax":
        L = alpha.shape[-1]
        causal = torch.ones(L, L, dtype=torch.bool, device=alpha.device).tril()
        a = alpha.abs()
        lo = a.masked_fill(~causal, float("inf")).amin((-2, -1), keepdim=True)
        hi = a.masked_fill(~causal, float("-inf")).amax((-2, -1), keepdim=True)
        norm = ((a - lo) / (hi - lo).clamp_min(torch.finfo(a.dtype).tiny)).masked_fill(~causal, 0.0)
        return norm.mean(-3)
    raise ValueError(f"unknown channel aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")
