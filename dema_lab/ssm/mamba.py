"""The Mamba mixer, with mamba_ssm's `Mamba` (mamba_simple.py) parameter names, shapes and
initialisation, so state dicts move between the two with strict=True.

    x, z  = in_proj(h).chunk(2)                 (b, L, d_model) -> 2 x (b, d_inner, L)
    x     = silu(causal depthwise conv1d(x))
    dt, B, C = x_proj(x).split(dt_rank, d_state, d_state)
    dt    = dt_proj.weight @ dt                 (bias goes in as delta_bias, with softplus)
    y     = selective_scan(x, dt, -exp(A_log), B, C, D, z, dt_proj.bias, softplus)
    out   = out_proj(y)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dema_lab.ssm.hidden_attention import hidden_attention, hidden_attention_row
from dema_lab.ssm.scan import selective_scan


@dataclass
class MambaState:
    """Recurrent state of one mixer: the last d_conv inputs of the conv and the SSM state."""

    conv: torch.Tensor  # (b, d_inner, d_conv)
    ssm: torch.Tensor  # (b, d_inner, d_state), float32


class Mamba(nn.Module):
    """One Mamba mixer (mamba_ssm's `Mamba`, same parameter names and shapes): in_proj to x and z,
    a causal depthwise conv1d on x, x_proj to (dt, B, C), dt_proj, the selective scan with A_log
    and D, gated by silu(z), then out_proj. forward(u (b, L, d_model)) -> (b, L, d_model); `step`
    advances one token from a MambaState (the RNN-like mode); with return_attention the hidden
    attention α (b, d_inner, L, L) of the scan is returned too (dema_lab.ssm.hidden_attention)."""

    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=4,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init="random",
        dt_scale=1.0,
        dt_init_floor=1e-4,
        conv_bias=True,
        bias=False,
        layer_idx=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj: weights keep the variance at init; bias so that softplus(bias) is
        # log-uniform in [dt_min, dt_max] (inverse of softplus).
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'constant' or 'random', got {dt_init!r}")
        dt = torch.exp(
            torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation: A[d, n] = -(n + 1)
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, d_state)
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # (d_inner,)
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # ------------------------------------------------------------------ sequence mode
    def causal_conv(self, x):
        """The causal depthwise conv1d, x (b, L, d_inner) -> (b, L, d_inner): what
        conv1d(x.transpose(1, 2))[..., :L] computes (mamba_simple's path without causal_conv1d),
        with conv1d's own weight and bias, as d_conv shifted multiply-adds in the (b, L, d)
        layout in_proj gives. torch's CPU depthwise conv needed a (b, d, L) copy and spent
        ~5 ms per layer in its backward at the paper size (b 64, d_inner 128, L 60)."""
        L, k = x.shape[1], self.d_conv
        w = self.conv1d.weight[:, 0, :]  # (d_inner, d_conv)
        xp = F.pad(x, (0, 0, k - 1, 0))  # (b, L + d_conv - 1, d_inner), zeros before the start
        y = xp[:, k - 1 :] * w[:, k - 1]
        for j in range(k - 1):
            y = y + xp[:, j : j + L] * w[:, j]
        return y if self.conv1d.bias is None else y + self.conv1d.bias

    def _ssm_inputs(self, hidden_states):
        """(b, L, d_model) -> x, z, dt (b, d_inner, L); B, C (b, d_state, L); A (d_inner, d_state)."""
        batch, L, _ = hidden_states.shape
        xz = self.in_proj(hidden_states)  # (b, L, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)
        z = z.transpose(1, 2)  # (b, d_inner, L), a view
        x = F.silu(self.causal_conv(x))  # (b, L, d_inner)
        x_dbl = self.x_proj(x)  # (b, L, dt_rank + 2 n)
        x = x.transpose(1, 2)  # (b, d_inner, L), a view
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (b, d_inner, L)
        B = B.transpose(1, 2).contiguous()  # (b, d_state, L)
        C = C.transpose(1, 2).contiguous()
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        return x, z, dt, B, C, A

    def forward(self, hidden_states, return_attention=False):
        """hidden_states (b, L, d_model) -> (b, L, d_model); with return_attention also the
        hidden attention alpha (b, d_inner, L, L) of this call."""
        x, z, dt, B, C, A = self._ssm_inputs(hidden_states)
        y = selective_scan(
            x, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True
        )
        out = self.out_proj(y.transpose(1, 2))
        if not return_attention:
            return out
        alpha = hidden_attention(dt, A, B, C, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return out, alpha

    @torch.no_grad()
    def attention_inputs(self, hidden_states):
        """Everything needed to rebuild the scan from alpha: u=x, z, alpha, D."""
        x, z, dt, B, C, A = self._ssm_inputs(hidden_states)
        alpha = hidden_attention(dt, A, B, C, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return {"u": x, "z": z, "alpha": alpha, "D": self.D}

    @torch.no_grad()
    def attention_row(self, hidden_states, row: int = -1):
        """Row `row` of this call's hidden attention, alpha[:, :, row, :] (b, d_inner, L), without
        building the (L, L) matrices (hidden_attention_row)."""
        x, z, dt, B, C, A = self._ssm_inputs(hidden_states)
        return hidden_attention_row(dt, A, B, C, row, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)

    def scan_arguments(self, hidden_states) -> dict:
        """Every factor of this call as forward() computes and passes it: conv_input (the x half
        of in_proj) and conv_output (its causal conv, before the SiLU), (b, d_inner, L); the
        scan's u = silu(conv_output), z, delta (before delta_bias and softplus), B, C, A, and D
        and delta_bias as forward() hands them to the scan (float32, as mamba_ssm does). What an
        explanation of the whole mixer builds on (dema_lab.analysis.explain.unified_attention)."""
        x_in = self.in_proj(hidden_states).chunk(2, dim=-1)[0]  # (b, L, d_inner)
        u, z, dt, B, C, A = self._ssm_inputs(hidden_states)
        return {
            "conv_input": x_in.transpose(1, 2),
            "conv_output": self.causal_conv(x_in).transpose(1, 2),
            "u": u,
            "z": z,
            "delta": dt,
            "B": B,
            "C": C,
            "A": A,
            "D": self.D.float(),
            "delta_bias": self.dt_proj.bias.float(),
        }

    # ------------------------------------------------------------------ recurrent mode
    def allocate_state(self, batch_size, device=None, dtype=None) -> MambaState:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return MambaState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(
                batch_size,
                self.d_inner,
                self.d_state,
                device=device,
                dtype=torch.float32 if dtype != torch.float64 else dtype,
            ),
        )

    def step(self, hidden_states, state: MambaState):
        """One token: hidden_states (b, 1, d_model) -> (b, 1, d_model); updates `state` in place."""
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise ValueError(f"step() takes one token, (batch, 1, d_model); got {tuple(hidden_states.shape)}")
        dtype = hidden_states.dtype
        xz = self.in_proj(hidden_states[:, 0])  # (b, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)  # (b, d_inner)
        state.conv.copy_(torch.roll(state.conv, shifts=-1, dims=-1))
        state.conv[:, :, -1] = x
        x = (state.conv * self.conv1d.weight[:, 0, :]).sum(-1)  # (b, d_inner)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt @ self.dt_proj.weight.t() + self.dt_proj.bias)  # (b, d_inner)
        A = -torch.exp(self.A_log.float())
        dA = torch.exp(dt[:, :, None] * A)  # (b, d_inner, d_state)
        dBx = (dt * x)[:, :, None] * B[:, None, :]  # (b, d_inner, d_state)
        state.ssm.copy_(state.ssm * dA + dBx)
        y = (state.ssm.to(dtype) * C[:, None, :]).sum(-1) + self.D.to(dtype) * x
        y = y * F.silu(z)
        return self.out_proj(y)[:, None, :]
