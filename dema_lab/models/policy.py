"""Acting in an environment with a trained model, in either inference mode.

    Transformer-like ("transformer"): at step t re-run the model on steps max(0, t-K+1)..t.
        Early in the episode the window is simply shorter: no padding, so the first tokens
        start from the zero state exactly as in training (windows are right-padded there).
    RNN-like ("rnn", DeMa only): feed the step's new tokens once, carrying each layer's conv
        and SSM state through the whole episode; constant cost per step.

For t < K both modes see the same tokens from the same zero state, so they act the same.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ssm import aggregate_channels
from .base import TrajectoryModel

MODES = ("transformer", "rnn")


class Policy:
    def __init__(self, model: TrajectoryModel, mode: str = "transformer", state_mean=None,
                 state_std=None, rtg_scale: float = 1000.0, device=None, attention: str | None = None):
        """attention: None, or a channel aggregation ("minmax", "abs", "mean"): then after each
        act() `self.attention` holds (n_layer, n, n), the aggregated attention among the n
        tokens of the current window that end with the current state token."""
        if mode not in MODES:
            raise ValueError(f"inference mode {mode!r} is unknown; choose 'transformer' or 'rnn'")
        if mode == "rnn" and model.cfg.arch != "dema":
            raise ValueError("RNN-like inference needs a recurrent model (DeMa); "
                             "a Decision Transformer can only run Transformer-like")
        self.model = model.eval()
        self.cfg = model.cfg
        self.mode = mode
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        sd = self.cfg.state_dim
        self.state_mean = np.zeros(sd, np.float32) if state_mean is None else np.asarray(state_mean, np.float32)
        self.state_std = np.ones(sd, np.float32) if state_std is None else np.asarray(state_std, np.float32)
        self.rtg_scale = float(rtg_scale)
        self.attention_method = attention
        if attention is not None:
            aggregate_channels(torch.zeros(1, 1, 1, 1), attention)   # fail early on a bad name
        self.reset(0.0)

    def reset(self, target_return: float):
        """Start an episode aiming for `target_return` (in env reward units)."""
        self.t = 0
        self.rtg = float(target_return) / self.rtg_scale
        self.states: list[np.ndarray] = []     # normalised
        self.actions: list[np.ndarray] = []
        self.rtgs: list[float] = []
        self.rnn_state = self.model.allocate_state(1, device=self.device) if self.mode == "rnn" else None
        self.record = [[] for _ in range(self.cfg.n_layer)] if self.mode == "rnn" and self.attention_method else None
        self.attention: np.ndarray | None = None

    def _tensor(self, x, dtype=torch.float32):
        return torch.as_tensor(np.asarray(x), dtype=dtype, device=self.device)

    def window(self):
        """The Transformer-like input for the current step: the last min(t+1, K) steps, as
        tensors of batch 1 (the current step's action slot is zero)."""
        lo = max(0, len(self.states) - self.cfg.K)
        T = len(self.states) - lo
        actions = self.actions[lo:] + [np.zeros(self.cfg.act_dim, np.float32)] * (T - len(self.actions[lo:]))
        return (self._tensor(np.stack(self.states[lo:]))[None],
                self._tensor(np.stack(actions))[None],
                self._tensor(self.rtgs[lo:])[None, :, None],
                self._tensor(np.arange(lo, lo + T), torch.long)[None])

    @torch.no_grad()
    def act(self, obs) -> np.ndarray:
        """The action for observation `obs` at the current step (call observe() after env.step)."""
        obs = np.asarray(obs, np.float32)
        if obs.shape != (self.cfg.state_dim,):
            raise ValueError(f"observation has shape {obs.shape}, the model expects "
                             f"({self.cfg.state_dim},): is this the environment it was trained on?")
        s = (obs - self.state_mean) / self.state_std
        self.states.append(s)
        self.rtgs.append(self.rtg)
        # tokens of the current window, up to and including the current state token
        T = min(len(self.states), self.cfg.K)
        n = 3 * T - 1 if self.cfg.layout == "B3LD" else T
        if self.mode == "transformer":
            if self.attention_method:
                preds, attn = self.model(*self.window(), return_attention=True)
                attn = [a[..., :n, :n] for a in attn]      # drop the placeholder a_t token
            else:
                preds, attn = self.model(*self.window()), None
            pred = preds[0, -1]
        else:
            prev = self.actions[-1] if self.actions else np.zeros(self.cfg.act_dim, np.float32)
            tokens = self.model.embed.step_tokens(self._tensor(s)[None], self._tensor(prev)[None],
                                                  self._tensor([[self.rtg]]), self._tensor([self.t], torch.long),
                                                  first=self.t == 0)
            pred = self.model.predict_action(self.model.step(tokens, self.rnn_state, self.record))[0]
            attn = None
            if self.record is not None:
                keep = 3 * self.cfg.K + self.cfg.d_conv
                self.record = [r[-keep:] for r in self.record]
                attn = self.model.recorded_attention(self.record, n)
        if attn is not None:
            self.attention = np.stack([aggregate_channels(a, self.attention_method)[0].float().cpu().numpy()
                                       for a in attn])
        action = pred.float().cpu().numpy()
        self.actions.append(action)
        return action

    def observe(self, reward: float):
        """Account for the reward of the last action and advance to the next step."""
        self.rtg -= float(reward) / self.rtg_scale
        self.t += 1
