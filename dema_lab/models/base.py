"""What DeMa and DT share: tokens in, actions out, attention maps on request.

A model maps a window of T steps to T action predictions:
    states (b, T, state_dim), actions (b, T, act_dim), returns_to_go (b, T, 1),
    timesteps (b, T) int  [, prev_action (b, act_dim)]  ->  actions_pred (b, T, act_dim) in [-1, 1]
    Atari (cfg.n_actions > 0): states (b, T, 4, 84, 84) uint8 frames (or flattened, (b, T, 4*84*84)),
    actions (b, T, 1) action indices  ->  logits (b, T, n_actions)
Training windows are right-padded: both backbones are causal, so padding after the real steps
never changes the predictions for them. At inference a config may left-pad (window_padding).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dema_lab.models.config import ModelConfig
from dema_lab.models.embedding import TrajectoryEmbedding
from dema_lab.ssm import aggregate_channels


class TrajectoryModel(nn.Module):
    """Embedding -> backbone -> tanh action head at the state tokens; DeMa and DT fill in `backbone`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = TrajectoryEmbedding(cfg)
        if cfg.discrete:  # logits over the actions (the official Atari DeMa's `head`: no bias)
            self.predict_action = nn.Linear(cfg.d_model, cfg.n_actions, bias=False)
        else:
            self.predict_action = nn.Sequential(nn.Linear(cfg.d_model, cfg.act_dim), nn.Tanh())

    def backbone(self, tokens, return_attention=False):
        """tokens (b, L, d) -> hidden (b, L, d) [, list of per-layer attention maps]. return_attention:
        True (every layer's map), or a collection of layer indices (the other entries are None)."""
        raise NotImplementedError

    @staticmethod
    def attention_wanted(return_attention, layer: int) -> bool:
        """Whether a backbone computes `layer`'s attention map for this `return_attention`."""
        return return_attention is True or (not isinstance(return_attention, bool) and layer in return_attention)

    def forward(self, states, actions, returns_to_go, timesteps, return_attention=False, prev_action=None):
        """Action predictions (b, T, act_dim) for a window [, per-layer attention maps].
        prev_action (b, act_dim): the action before the window (token order RAS; default zeros).
        return_attention: True for every layer's map, or the layer indices whose maps are computed
        (the list then holds None for the others: the live page computes only the layer it shows)."""
        if return_attention is not False and not isinstance(return_attention, bool):
            return_attention = frozenset(int(i) for i in return_attention)
        tokens = self.embed(states, actions, returns_to_go, timesteps, prev_action)  # (b, L, d)
        out = self.backbone(tokens, return_attention)
        hidden, attn = out if return_attention is not False else (out, None)
        pred = self.predict_action(hidden[:, self.embed.action_positions(states.shape[1])])
        return (pred, attn) if return_attention is not False else pred

    @torch.no_grad()
    def attention(self, states, actions, returns_to_go, timesteps, aggregate: str | None = "minmax", prev_action=None):
        """Per-layer token-to-token attention for a window, a list of n_layer tensors:
        (b, channels, L, L) with aggregate=None, else (b, L, L) aggregated over channels
        (DeMa: the d_inner channels of the hidden attention; DT: the heads)."""
        _, attn = self(states, actions, returns_to_go, timesteps, return_attention=True, prev_action=prev_action)
        if aggregate is None:
            return attn
        return [aggregate_channels(a, aggregate) for a in attn]

    def choose_action(self, pred, sample: bool = True, generator=None):
        """The action to take from the prediction of the current step, (.., act_dim): continuous
        actions as predicted; discrete ones (pred: logits (.., n_actions)) drawn from their softmax
        (as the Atari DT and DeMa evaluate), or the argmax with sample=False, as an index (.., 1)."""
        if not self.cfg.discrete:
            return pred
        if sample:
            probs = torch.softmax(pred.float(), dim=-1)
            flat = probs.reshape(-1, probs.shape[-1])
            idx = torch.multinomial(flat, 1, generator=generator).reshape(*pred.shape[:-1], 1)
        else:
            idx = pred.argmax(-1, keepdim=True)
        return idx.to(pred.dtype)
