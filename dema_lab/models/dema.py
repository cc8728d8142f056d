"""Decision Mamba: DT's trajectory tokens through pre-norm residual Mamba blocks.

    tokens -> [x + Mamba(RMSNorm(x))] x n_layer -> RMSNorm -> tanh(Linear) at the state tokens

Two ways to act in an environment (see dema_lab.models.policy):
    Transformer-like: re-run forward() on the last K steps at every env step;
    RNN-like: feed each new token once through step(), carrying every layer's conv and SSM state.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dema_lab.models.base import TrajectoryModel
from dema_lab.models.config import ModelConfig
from dema_lab.ssm import Mamba, MambaState


class Block(nn.Module):
    """Pre-norm residual block with mamba_ssm's Block names: `norm`, `mixer`."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.mixer = Mamba(cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, layer_idx=layer_idx)

    def forward(self, x, return_attention=False):
        if return_attention:
            y, alpha = self.mixer(self.norm(x), return_attention=True)
            return x + y, alpha
        return x + self.mixer(self.norm(x))

    def step(self, x, state: MambaState, record: list | None = None):
        h = self.norm(x)
        if record is not None:
            record.append(h)  # the mixer's input, to rebuild hidden attention later
        return x + self.mixer.step(h, state)


class DecisionMamba(TrajectoryModel):
    """DeMa: trajectory tokens through pre-norm residual Mamba blocks and a final RMSNorm.
    The official DeMa (AndssY/dema `Mamba_mujoco`) is this class with token_order "RAS",
    embed_dim 128 projected to d_model, embed_norm "none" and window_padding "left"."""

    def __init__(self, cfg: ModelConfig):
        if cfg.arch != "dema":
            raise ValueError(f"DecisionMamba needs arch='dema', got {cfg.arch!r}")
        super().__init__(cfg)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=1e-5)

    def backbone(self, tokens, return_attention=False):
        x, attn = tokens, []
        for i, block in enumerate(self.layers):
            if self.attention_wanted(return_attention, i):
                x, alpha = block(x, return_attention=True)  # alpha (b, d_inner, L, L)
                attn.append(alpha)
            else:
                x = block(x)
                attn.append(None)
        x = self.norm_f(x)
        return (x, attn) if return_attention is not False else x

    # ------------------------------------------------------------ recurrent inference
    def allocate_state(self, batch_size: int, device=None) -> list[MambaState]:
        return [block.mixer.allocate_state(batch_size, device=device) for block in self.layers]

    @staticmethod
    def keep_state_rows(state: list[MambaState], rows) -> list[MambaState]:
        """Keep the episodes (batch rows) `rows` (bool (b,)) of every layer's state, in place."""
        for s in state:
            s.conv, s.ssm = s.conv[rows], s.ssm[rows]
        return state

    @torch.no_grad()
    def step(self, tokens, state: list[MambaState], record: list[list] | None = None):
        """Feed tokens (b, n, d) one at a time; returns the hidden output of the last, (b, d).
        With `record` (one list per layer), each layer's mixer input per token is appended."""
        for i in range(tokens.shape[1]):
            x = tokens[:, i : i + 1]
            for layer, (block, s) in enumerate(zip(self.layers, state)):
                x = block.step(x, s, None if record is None else record[layer])
        return self.norm_f(x)[:, 0]

    @torch.no_grad()
    def recorded_attention(self, record: list[list], n: int) -> list[torch.Tensor]:
        """Exact hidden attention among the last n tokens fed through step(), from the recorded
        mixer inputs: alpha[i, j] depends only on tokens j..i (and the conv's d_conv - 1
        inputs before them), so the rest of the episode is not needed. n_layer x (b, d_inner, n, n)."""
        out = []
        for block, inputs in zip(self.layers, record):
            seq = torch.cat(inputs[-(n + block.mixer.d_conv - 1) :], dim=1)  # (b, n + d_conv - 1, d)
            alpha = block.mixer.attention_inputs(seq)["alpha"]
            out.append(alpha[..., -n:, -n:])
        return out
