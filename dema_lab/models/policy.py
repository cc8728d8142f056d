"""Acting in an environment with a trained model, in either inference mode.

    Transformer-like ("transformer"): at step t re-run the model on steps max(0, t-K+1)..t.
        window_padding "none" (dema-lab): early in the episode the window is simply shorter, so
        the first tokens start from the zero state exactly as in training (right-padded there),
        and for t < K both modes see the same tokens and act the same.
        window_padding "left" (the official DeMa's `get_action2`): the window is zero-padded on
        the left to K steps (states, actions, returns-to-go, timesteps 0) and the padded tokens go
        through the model.
        window_actions "previous" (the DeMa repository's DT evaluation, `evaluate_episode_rtg`):
        step t's action slot holds a_{t-1} instead of a_t, one step off from how DT was trained.
    RNN-like ("rnn", DeMa only): feed the step's new tokens once, carrying each layer's conv
        and SSM state through the whole episode; constant cost per step (the official `get_action`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..ssm import aggregate_channels
from .base import TrajectoryModel

MODES = ("transformer", "rnn")


class Policy:
    """A model acting step by step: act(obs) -> action, observe(reward); see the module docstring."""

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

    def window(self) -> dict:
        """The Transformer-like input for the current step, as the model's keyword arguments
        (batch 1): the last min(t+1, K) steps, left-padded with zeros to K steps when the config
        says so; the current step's action slot is zero, `prev_action` is the action before the
        window (zeros at the episode's start)."""
        cfg = self.cfg
        lo = max(0, len(self.states) - cfg.K)
        T = len(self.states) - lo
        zero = np.zeros(cfg.act_dim, np.float32)
        actions = self.actions[lo:] + [zero] * (T - len(self.actions[lo:]))
        if cfg.window_actions == "previous":        # the DeMa repository's DT loop: slot t holds a_{t-1}
            actions = [self.actions[lo - 1] if lo > 0 else zero] + self.actions[lo:]
        states, rtgs, steps = list(self.states[lo:]), list(self.rtgs[lo:]), list(range(lo, lo + T))
        pad = cfg.acting_steps(len(self.states) - 1) - T
        if pad > 0:
            states = [np.zeros(cfg.state_dim, np.float32)] * pad + states
            actions = [zero] * pad + actions
            rtgs, steps = [0.0] * pad + rtgs, [0] * pad + steps
        return {"states": self._tensor(np.stack(states))[None],                 # (1, T, state_dim)
                "actions": self._tensor(np.stack(actions))[None],               # (1, T, act_dim)
                "returns_to_go": self._tensor(rtgs)[None, :, None],             # (1, T, 1)
                "timesteps": self._tensor(steps, torch.long)[None],             # (1, T)
                "prev_action": self._tensor(self.actions[lo - 1] if lo > 0 else zero)[None]}   # (1, act_dim)

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
        if self.mode == "transformer":
            # tokens of the current window, up to and including the current state token
            n = self.cfg.window_tokens(self.cfg.acting_steps(self.t))
            if self.attention_method:
                preds, attn = self.model(**self.window(), return_attention=True)
                attn = [a[..., :n, :n] for a in attn]      # RSA: drop the placeholder a_t token
            else:
                preds, attn = self.model(**self.window()), None
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
                attn = self.model.recorded_attention(self.record, self.cfg.window_tokens(min(self.t + 1, self.cfg.K)))
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
