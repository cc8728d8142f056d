"""Trajectory tokens shared by DeMa and DT: return-to-go, state and action embeddings,
an optional timestep embedding, and the two token layouts.

B3LD: tokens (R_0, s_0, a_0, R_1, s_1, a_1, ...), (b, 3K, d); a_t is predicted from s_t's token.
BL3D: token_t = W [R_t ; s_t ; a_{t-1}], (b, K, d); a_t is predicted from token_t. The action
      slot holds the *previous* action (zeros at t = 0) so that no token ever sees the action
      it has to predict.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelConfig


class TrajectoryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_action = nn.Linear(cfg.act_dim, d)
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, d) if cfg.timestep_embedding else None
        self.embed_token = nn.Linear(3 * d, d) if cfg.layout == "BL3D" else None
        self.embed_ln = nn.LayerNorm(d)

    def check_inputs(self, states, actions, returns_to_go, timesteps):
        cfg = self.cfg
        if states.dim() != 3 or states.shape[-1] != cfg.state_dim:
            raise ValueError(f"states must be (batch, steps, state_dim={cfg.state_dim}), got "
                             f"{tuple(states.shape)}: the model was built for another environment?")
        b, T, _ = states.shape
        if actions.dim() != 3 or actions.shape[-1] != cfg.act_dim or actions.shape[:2] != (b, T):
            raise ValueError(f"actions must be (batch={b}, steps={T}, act_dim={cfg.act_dim}), got "
                             f"{tuple(actions.shape)}")
        if returns_to_go.shape not in ((b, T, 1), (b, T)):
            raise ValueError(f"returns_to_go must be ({b}, {T}, 1), got {tuple(returns_to_go.shape)}")
        if timesteps.shape != (b, T):
            raise ValueError(f"timesteps must be ({b}, {T}), got {tuple(timesteps.shape)}")

    def _embed(self, layer, x, timesteps):
        """layer(x) (b, T, d), plus the embedding of each token's own timestep when enabled."""
        e = layer(x)
        if self.embed_timestep is not None:
            e = e + self.embed_timestep(timesteps.clamp(0, self.cfg.max_ep_len - 1))
        return e

    def forward(self, states, actions, returns_to_go, timesteps):
        """Sequence of tokens (b, T * tokens_per_step, d) for a window of T steps."""
        self.check_inputs(states, actions, returns_to_go, timesteps)
        b, T, _ = states.shape
        if returns_to_go.dim() == 2:
            returns_to_go = returns_to_go[..., None]
        if self.cfg.layout == "BL3D":   # the action slot of step t holds a_{t-1}
            actions = torch.cat([actions.new_zeros(b, 1, actions.shape[-1]), actions[:, :-1]], dim=1)
        r = self._embed(self.embed_return, returns_to_go, timesteps)      # (b, T, d)
        s = self._embed(self.embed_state, states, timesteps)
        a = self._embed(self.embed_action, actions, timesteps)
        if self.cfg.layout == "B3LD":
            tokens = torch.stack([r, s, a], dim=2).reshape(b, 3 * T, -1)   # (b, 3T, d)
        else:
            tokens = self.embed_token(torch.cat([r, s, a], dim=-1))        # (b, T, d)
        return self.embed_ln(tokens)

    def action_positions(self, T: int) -> slice:
        """Indices of the tokens that predict a_0..a_{T-1}."""
        return slice(1, 3 * T, 3) if self.cfg.layout == "B3LD" else slice(0, T)

    def step_tokens(self, state, prev_action, return_to_go, timestep, first: bool):
        """The new tokens one env step adds, for recurrent (RNN-like) inference.

        state (b, state_dim), prev_action (b, act_dim), return_to_go (b, 1), timestep (b,).
        B3LD: [a_{t-1} (unless first), R_t, s_t] -> (b, 2 or 3, d); the last one predicts a_t.
        BL3D: [token_t] -> (b, 1, d).
        """
        t = timestep[:, None]                                              # (b, 1)
        r = self._embed(self.embed_return, return_to_go[:, None], t)       # (b, 1, d)
        s = self._embed(self.embed_state, state[:, None], t)
        if first:
            prev_action = torch.zeros_like(prev_action)
        if self.cfg.layout == "B3LD":
            # a_{t-1} is a token of step t-1, with that step's timestep embedding
            parts = [r, s] if first else [self._embed(self.embed_action, prev_action[:, None], t - 1), r, s]
            tokens = torch.cat(parts, dim=1)
        else:
            a = self._embed(self.embed_action, prev_action[:, None], t)
            tokens = self.embed_token(torch.cat([r, s, a], dim=-1))
        return self.embed_ln(tokens)
