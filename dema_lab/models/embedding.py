"""Trajectory tokens shared by DeMa and DT: return-to-go, state and action embeddings,
an optional timestep embedding, the token order, and the two token layouts.

Token order (`cfg.token_order`), per step t:
    RSA (DT, dema-lab's DeMa): R_t, s_t, a_t      a_t is predicted from s_t's token
    RAS (official DeMa):       R_t, a_{t-1}, s_t  a_t is predicted from s_t's token, the step's last;
    ARS (official Atari DeMa): a_{t-1}, R_t, s_t  likewise (everything said of RAS below holds for it);
                               a_{-1} = 0, and the action before a window comes in as `prev_action`
Layout (`cfg.layout`):
    B3LD: the three tokens of every step in sequence, (b, 3T, d)
    BL3D: one token per step, a Linear over the three embeddings side by side, (b, T, d); the action
          slot holds the previous action (zeros at the window's start for RSA, `prev_action` for RAS)
          so that no token sees the action it has to predict.
Widths: embeddings are `cfg.token_width` wide; `embed_token` projects them to d_model when
embed_dim is set (the official DeMa's `backbone.embedding`, even at equal widths) or for BL3D. `embed_ln` normalises the tokens
unless embed_norm is "none" (the official DeMa has no norm there).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dema_lab.models.cnn import NatureCNN
from dema_lab.models.config import ModelConfig


class DiscreteActionEmbedding(nn.Sequential):
    """Action indices (.., 1), held as numbers in the act_dim-1 action slot -> tanh(Embedding), (.., w)
    (the official Atari DeMa's `action_embeddings`: indices 0 Embedding, 1 Tanh)."""

    def __init__(self, n_actions: int, width: int):
        super().__init__(nn.Embedding(n_actions, width), nn.Tanh())
        nn.init.normal_(self[0].weight, mean=0.0, std=0.02)

    def forward(self, a):
        return super().forward(a[..., 0].round().long())


class TrajectoryEmbedding(nn.Module):
    """(states, actions, returns-to-go, timesteps) of a window -> the backbone's token sequence."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.token_width
        if cfg.discrete:  # the Atari embeddings: all three end in tanh
            self.embed_return = nn.Sequential(nn.Linear(1, w), nn.Tanh())
            self.embed_action = DiscreteActionEmbedding(cfg.n_actions, w)
        else:
            self.embed_return = nn.Linear(1, w)
            self.embed_action = nn.Linear(cfg.act_dim, w)
        self.embed_state = NatureCNN(cfg.obs_shape, w, cfg.frame_norm) if cfg.obs_shape else nn.Linear(cfg.state_dim, w)
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, w) if cfg.timestep_embedding else None
        width_in = 3 * w if cfg.layout == "BL3D" else w
        self.embed_token = nn.Linear(width_in, cfg.d_model) if cfg.embed_dim or cfg.layout == "BL3D" else None
        self.embed_ln = nn.LayerNorm(cfg.d_model) if cfg.embed_norm == "layernorm" else None

    def check_inputs(self, states, actions, returns_to_go, timesteps):
        cfg = self.cfg
        image = cfg.obs_shape and states.dim() == 5 and tuple(states.shape[2:]) == tuple(cfg.obs_shape)
        if not image and (states.dim() != 3 or states.shape[-1] != cfg.state_dim):
            shape = f"state_dim={cfg.state_dim}" + (
                f" or {', '.join(map(str, cfg.obs_shape))}" if cfg.obs_shape else ""
            )
            raise ValueError(
                f"states must be (batch, steps, {shape}), got "
                f"{tuple(states.shape)}: the model was built for another environment?"
            )
        b, T = states.shape[:2]
        if actions.dim() != 3 or actions.shape[-1] != cfg.act_dim or actions.shape[:2] != (b, T):
            raise ValueError(
                f"actions must be (batch={b}, steps={T}, act_dim={cfg.act_dim}), got {tuple(actions.shape)}"
            )
        if returns_to_go.shape not in ((b, T, 1), (b, T)):
            raise ValueError(f"returns_to_go must be ({b}, {T}, 1), got {tuple(returns_to_go.shape)}")
        if timesteps.shape != (b, T):
            raise ValueError(f"timesteps must be ({b}, {T}), got {tuple(timesteps.shape)}")

    def _embed(self, layer, x, timesteps):
        """layer(x) (b, T, w), plus the embedding of each token's own timestep when enabled."""
        e = layer(x)
        if self.embed_timestep is not None:
            e = e + self.embed_timestep(timesteps.clamp(0, self.cfg.max_ep_len - 1))
        return e

    def _tokens(self, r, a_slot, s):
        """Embeddings (b, T, w) of one step's three tokens -> the token sequence (b, L, d_model)."""
        b, T, _ = r.shape
        parts = {"RAS": [r, a_slot, s], "ARS": [a_slot, r, s], "RSA": [r, s, a_slot]}[self.cfg.token_order]
        if self.cfg.layout == "B3LD":
            tokens = torch.stack(parts, dim=2).reshape(b, 3 * T, -1)  # (b, 3T, w)
        else:
            tokens = torch.cat(parts, dim=-1)  # (b, T, 3w)
        return self._finish(tokens)

    def _finish(self, tokens):
        """Token embeddings (b, L, w or 3w) -> projected to d_model and normalised, (b, L, d_model)."""
        if self.embed_token is not None:
            tokens = self.embed_token(tokens)
        return self.embed_ln(tokens) if self.embed_ln is not None else tokens

    def previous_actions(self, actions, prev_action=None):
        """(b, T, act) a_0..a_{T-1} -> the a_{t-1} slot of each step, (b, T, act). The first slot is
        `prev_action` (b, act) with RAS (the action before the window; zeros at an episode's
        start), zeros otherwise."""
        b = actions.shape[0]
        first = actions.new_zeros(b, 1, actions.shape[-1])
        if prev_action is not None and self.cfg.token_order in ("RAS", "ARS"):
            first = prev_action.reshape(b, 1, -1).to(actions.dtype)
        return torch.cat([first, actions[:, :-1]], dim=1)

    def forward(self, states, actions, returns_to_go, timesteps, prev_action=None):
        """Sequence of tokens (b, T * tokens_per_step, d_model) for a window of T steps.
        prev_action (b, act_dim): the action before the window's first step (RAS only)."""
        self.check_inputs(states, actions, returns_to_go, timesteps)
        if returns_to_go.dim() == 2:
            returns_to_go = returns_to_go[..., None]
        if self.cfg.layout == "BL3D" or self.cfg.token_order in ("RAS", "ARS"):  # the action slot holds a_{t-1}
            actions = self.previous_actions(actions, prev_action)
        r = self._embed(self.embed_return, returns_to_go, timesteps)  # (b, T, w)
        s = self._embed(self.embed_state, states, timesteps)
        a = self._embed(self.embed_action, actions, timesteps)
        return self._tokens(r, a, s)

    def action_positions(self, T: int) -> slice:
        """Indices of the tokens that predict a_0..a_{T-1}: the state tokens."""
        if self.cfg.layout == "BL3D":
            return slice(0, T)
        return slice(1, 3 * T, 3) if self.cfg.token_order == "RSA" else slice(2, 3 * T, 3)

    def step_tokens(self, state, prev_action, return_to_go, timestep, first: bool):
        """The new tokens one env step adds, for recurrent (RNN-like) inference.

        state (b, state_dim), prev_action (b, act_dim), return_to_go (b, 1), timestep (b,).
        B3LD-RSA: [a_{t-1} (unless first), R_t, s_t] -> (b, 2 or 3, d); a_{t-1} keeps step t-1's
                  timestep embedding, as in the sequence.
        B3LD-RAS: [R_t, a_{t-1}, s_t] -> (b, 3, d), a_{-1} = 0 (the official `get_action`).
        B3LD-ARS: [a_{t-1}, R_t, s_t] -> (b, 3, d), a_{-1} = 0 (action index 0 when discrete).
        BL3D:     [token_t] -> (b, 1, d).
        The last token predicts a_t.
        """
        t = timestep[:, None]  # (b, 1)
        if first:
            prev_action = torch.zeros_like(prev_action)
        r = self._embed(self.embed_return, return_to_go[:, None], t)  # (b, 1, w)
        s = self._embed(self.embed_state, state[:, None], t)
        if self.cfg.layout == "B3LD" and self.cfg.token_order == "RSA":
            parts = [r, s] if first else [self._embed(self.embed_action, prev_action[:, None], t - 1), r, s]
            return self._finish(torch.cat(parts, dim=1))
        a = self._embed(self.embed_action, prev_action[:, None], t)
        return self._tokens(r, a, s)
