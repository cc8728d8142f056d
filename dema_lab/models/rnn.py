"""Recurrent baselines: DeMa's trajectory tokens through a torch nn.LSTM or nn.GRU.

    tokens -> nn.LSTM / nn.GRU (hidden d_model, n_layer layers) -> RMSNorm -> the action head

The same embeddings, token order, layout and action head as DeMa (models/base.py); only the
backbone differs. Sizes map one to one: hidden size d_model, n_layer stacked layers. An LSTM layer
has 8 d^2 + 8 d parameters, a GRU layer 6 d^2 + 6 d, a Mamba layer (expand 2, d_state 16) about
6.6 d^2 + 70 d; at d_model 128, n_layer 3 the whole models have 399k (LSTM), 300k (GRU) and 353k
(DeMa) parameters (models/cost.py counts them), within 15% of DeMa either way.

Two ways to act, as DeMa (see dema_lab.models.policy):
    RNN-like: feed each new token once through step(), carrying (h, c) through the whole episode;
    Transformer-like: re-run forward() on the last K steps from a zero state at every env step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dema_lab.models.base import TrajectoryModel
from dema_lab.models.config import ModelConfig

RNN_ARCHS = ("lstm", "gru")


@dataclass
class RecurrentState:
    """What an LSTM or a GRU carries between tokens: h (n_layer, b, d_model), and the LSTM's
    cell c (n_layer, b, d_model) (None for a GRU)."""

    h: torch.Tensor
    c: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        """The carried tensors: [h] or [h, c]."""
        return [self.h] if self.c is None else [self.h, self.c]


class RecurrentBaseline(TrajectoryModel):
    """An LSTM or a GRU on the trajectory tokens (arch "lstm" or "gru"); no attention maps."""

    def __init__(self, cfg: ModelConfig):
        if cfg.arch not in RNN_ARCHS:
            raise ValueError(f"RecurrentBaseline needs arch 'lstm' or 'gru', got {cfg.arch!r}")
        super().__init__(cfg)
        cell = nn.LSTM if cfg.arch == "lstm" else nn.GRU
        self.rnn = cell(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True)
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=1e-5)

    def backbone(self, tokens, return_attention=False):
        """tokens (b, L, d) -> hidden (b, L, d), from a zero state."""
        if return_attention is not False:
            raise ValueError(f"an {self.cfg.arch.upper()} model has no hidden attention to return")
        y, _ = self.rnn(tokens)
        return self.norm_f(y)

    # ------------------------------------------------------------ recurrent inference
    def allocate_state(self, batch_size: int, device=None) -> RecurrentState:
        """The zero state of `batch_size` episodes, in the weights' dtype."""
        like = dict(dtype=next(self.parameters()).dtype, device=device)
        shape = (self.cfg.n_layer, batch_size, self.cfg.d_model)
        return RecurrentState(
            torch.zeros(shape, **like), torch.zeros(shape, **like) if self.cfg.arch == "lstm" else None
        )

    @staticmethod
    def keep_state_rows(state: RecurrentState, rows) -> RecurrentState:
        """Keep the episodes (batch rows) `rows` (bool (b,)) of a state, in place."""
        state.h = state.h[:, rows]
        if state.c is not None:
            state.c = state.c[:, rows]
        return state

    @torch.no_grad()
    def step(self, tokens, state: RecurrentState, record=None):
        """Feed tokens (b, n, d) on from `state` (updated in place); the hidden output of the
        last, (b, d). `record` is DeMa's (hidden attention) and must be None here."""
        if record is not None:
            raise ValueError(f"an {self.cfg.arch.upper()} model has no hidden attention to record")
        hx = (state.h, state.c) if state.c is not None else state.h
        y, hx = self.rnn(tokens, hx)
        if state.c is not None:
            state.h, state.c = hx
        else:
            state.h = hx
        return self.norm_f(y[:, -1])
