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
    RNN-like ("rnn", DeMa, LSTM and GRU): feed the step's new tokens once, carrying each layer's
        conv and SSM state (DeMa; the official `get_action`) or the LSTM's (h, c), the GRU's h,
        through the whole episode; constant cost per step.
Models without attention maps (LSTM, GRU, MLP: `cfg.has_attention` False) record none: a
Policy made with an `attention` method for one keeps `attention` None.
BatchPolicy: N episodes in lockstep, one model call per env step (batched evaluation, both modes);
    row for row Policy's inputs, without attention.
"""

from __future__ import annotations

import numpy as np
import torch

from dema_lab.models.base import TrajectoryModel
from dema_lab.models.config import RECURRENT_ARCHS
from dema_lab.ssm import aggregate_channels

MODES = ("transformer", "rnn")


def inference_modes(arch: str) -> tuple[str, ...]:
    """The modes a model of `arch` can act in: both for the recurrent ones (DeMa, LSTM, GRU),
    Transformer-like only for DT and the MLP."""
    return MODES if arch in RECURRENT_ARCHS else ("transformer",)


class Policy:
    """A model acting step by step: act(obs) -> action, observe(reward); see the module docstring."""

    def __init__(
        self,
        model: TrajectoryModel,
        mode: str = "transformer",
        state_mean=None,
        state_std=None,
        rtg_scale: float = 1000.0,
        device=None,
        attention: str | None = None,
    ):
        """attention: None, or a channel aggregation ("minmax", "abs", "mean"): then after each
        act() `self.attention` holds (n_layer, n, n), the aggregated attention among the n
        tokens of the current window that end with the current state token."""
        if mode not in MODES:
            raise ValueError(f"inference mode {mode!r} is unknown; choose 'transformer' or 'rnn'")
        if mode not in inference_modes(model.cfg.arch):
            raise ValueError(
                f"RNN-like inference needs a recurrent model (DeMa, LSTM or GRU); "
                f"a {model.cfg.arch!r} model can only run Transformer-like"
            )
        self.model = model.eval()
        self.cfg = model.cfg
        self.mode = mode
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype  # inputs follow the weights (float64 models for tests)
        sd = self.cfg.state_dim
        self.state_mean = np.zeros(sd, np.float32) if state_mean is None else np.asarray(state_mean, np.float32)
        self.state_std = np.ones(sd, np.float32) if state_std is None else np.asarray(state_std, np.float32)
        self.rtg_scale = float(rtg_scale)
        self.attention_method = attention if model.cfg.has_attention else None
        # Transformer-like: the layers whose attention act() computes (None: all); the others are
        # NaN in `attention`. RNN-like acting rebuilds every layer's from its record.
        self.attention_layers: tuple[int, ...] | None = None
        if attention is not None:
            aggregate_channels(torch.zeros(1, 1, 1, 1), attention)  # fail early on a bad name
        self.reset(0.0)

    def reset(self, target_return: float):
        """Start an episode aiming for `target_return` (in env reward units)."""
        self.t = 0
        self.target_return = float(target_return)
        self.rtg = float(target_return) / self.rtg_scale
        self.states: list[np.ndarray] = []  # normalised
        self.actions: list[np.ndarray] = []
        self.rtgs: list[float] = []
        self.rnn_state = self.model.allocate_state(1, device=self.device) if self.mode == "rnn" else None
        self.record = [[] for _ in range(self.cfg.n_layer)] if self.mode == "rnn" and self.attention_method else None
        self.attention: np.ndarray | None = None

    def _tensor(self, x, dtype=None):
        return torch.as_tensor(np.asarray(x), dtype=dtype or self.dtype, device=self.device)

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
        if cfg.window_actions == "previous":  # the DeMa repository's DT loop: slot t holds a_{t-1}
            actions = [self.actions[lo - 1] if lo > 0 else zero] + self.actions[lo:]
        states, rtgs, steps = list(self.states[lo:]), list(self.rtgs[lo:]), list(range(lo, lo + T))
        pad = cfg.acting_steps(len(self.states) - 1) - T
        if pad > 0:
            states = [np.zeros(cfg.state_dim, np.float32)] * pad + states
            actions = [zero] * pad + actions
            rtgs, steps = [0.0] * pad + rtgs, [0] * pad + steps
        return {
            "states": self._tensor(np.stack(states))[None],  # (1, T, state_dim)
            "actions": self._tensor(np.stack(actions))[None],  # (1, T, act_dim)
            "returns_to_go": self._tensor(rtgs)[None, :, None],  # (1, T, 1)
            "timesteps": self._tensor(steps, torch.long)[None],  # (1, T)
            "prev_action": self._tensor(self.actions[lo - 1] if lo > 0 else zero)[None],
        }  # (1, act_dim)

    @torch.no_grad()
    def act(self, obs) -> np.ndarray:
        """The action for observation `obs` at the current step (call observe() after env.step)."""
        obs = np.asarray(obs, np.float32)
        if self.cfg.obs_shape and obs.shape == tuple(self.cfg.obs_shape):  # Atari frames, kept flat here
            obs = obs.reshape(-1)
        if obs.shape != (self.cfg.state_dim,):
            raise ValueError(
                f"observation has shape {obs.shape}, the model expects "
                f"({self.cfg.state_dim},): is this the environment it was trained on?"
            )
        s = (obs - self.state_mean) / self.state_std
        self.states.append(s)
        self.rtgs.append(self.rtg)
        if self.mode == "transformer":
            # tokens of the current window, up to and including the current state token
            n = self.cfg.window_tokens(self.cfg.acting_steps(self.t))
            if self.attention_method:
                layers = True if self.attention_layers is None else self.attention_layers
                preds, attn = self.model(**self.window(), return_attention=layers)
                attn = [None if a is None else a[..., :n, :n] for a in attn]  # RSA: drop the a_t placeholder
            else:
                preds, attn = self.model(**self.window()), None
            pred = preds[0, -1]
        else:
            prev = self.actions[-1] if self.actions else np.zeros(self.cfg.act_dim, np.float32)
            tokens = self.model.embed.step_tokens(
                self._tensor(s)[None],
                self._tensor(prev)[None],
                self._tensor([[self.rtg]]),
                self._tensor([self.t], torch.long),
                first=self.t == 0,
            )
            pred = self.model.predict_action(self.model.step(tokens, self.rnn_state, self.record))[0]
            attn = None
            if self.record is not None:
                keep = 3 * self.cfg.K + self.cfg.d_conv
                self.record = [r[-keep:] for r in self.record]
                attn = self.model.recorded_attention(self.record, self.cfg.window_tokens(min(self.t + 1, self.cfg.K)))
        if attn is not None:
            sizes = [a.shape[-1] for a in attn if a is not None]  # RNN-like: every layer's
            n = sizes[0] if sizes else n
            self.attention = np.stack(
                [
                    np.full((n, n), np.nan, np.float32)
                    if a is None
                    else aggregate_channels(a, self.attention_method)[0].float().cpu().numpy()
                    for a in attn
                ]
            )
        action = self.model.choose_action(pred).float().cpu().numpy()  # discrete: a sampled index (1,)
        self.actions.append(action)
        return action

    def observe(self, reward: float):
        """Account for the reward of the last action and advance to the next step."""
        self.rtg -= float(reward) / self.rtg_scale
        self.t += 1

    # ------------------------------------------------------------------ replaying a recorded episode
    def replay_to(self, observations, actions, rewards, step: int) -> None:
        """Stand where the policy stood when it acted at `step` of a recorded episode, and act
        there again (so `attention` and `channel_attention()` describe that decision).

        observations (T, obs...), actions (T, act_dim), rewards (T,) are the record; the episode's
        target is the one given to reset(). Transformer-like: the history before `step` is rebuilt
        from the record without running the model. RNN-like: the recurrent state advances step
        by step from where the policy stands (fresh, or having acted at an earlier step of this
        episode: dashboards keep snapshots to scrub quickly); the recorded actions, not the
        recomputed ones, feed the next steps, as they did in the episode."""
        step = int(step)
        if not 0 <= step < len(observations):
            raise ValueError(f"step {step} is outside the recorded episode (0..{len(observations) - 1})")
        if self.mode == "transformer":
            self.reset(self.target_return)
            for t in range(step):
                self.states.append(
                    (np.asarray(observations[t], np.float32).reshape(-1) - self.state_mean) / self.state_std
                )
                self.rtgs.append(self.rtg)
                self.actions.append(np.asarray(actions[t], np.float32))
                self.observe(rewards[t])
            self.act(observations[step])
            self.actions[-1] = np.asarray(actions[step], np.float32)
            return
        acted = len(self.actions) - 1  # the last step this policy acted at
        if acted > step:
            raise ValueError(
                f"this RNN-like policy has already acted at step {acted}; reset() it (or use a "
                f"snapshot taken at or before step {step}) to replay step {step}"
            )
        for t in range(acted + 1, step + 1):
            if t > 0:
                self.observe(rewards[t - 1])
            self.act(observations[t])
            self.actions[-1] = np.asarray(actions[t], np.float32)

    @torch.no_grad()
    def channel_attention(self) -> list[np.ndarray]:
        """Per layer, the hidden attention of every channel, (channels, n, n) float32, among the
        n tokens of the window the policy last acted on (ending with the current state token).
        Needs a policy made with an `attention` method when RNN-like (it records the scan)."""
        cfg = self.cfg
        if not cfg.has_attention:
            raise ValueError(f"a {cfg.arch!r} model has no hidden attention: there is none to show")
        if not self.actions:
            raise ValueError("the policy has not acted yet: call act() or replay_to() first")
        if self.mode == "transformer":
            n = cfg.window_tokens(cfg.acting_steps(self.t))
            last = self.actions.pop()  # the window exactly as act() saw it
            try:
                window = self.window()
            finally:
                self.actions.append(last)
            _, attn = self.model(**window, return_attention=True)
            return [a[0, :, :n, :n].float().cpu().numpy() for a in attn]
        if self.record is None:
            raise ValueError("an RNN-like policy records its scan only when made with attention=...")
        n = cfg.window_tokens(min(self.t + 1, cfg.K))
        return [a[0].float().cpu().numpy() for a in self.model.recorded_attention(self.record, n)]


class BatchPolicy:
    """N episodes acting in lockstep with one model call per env step for all of them (batched
    evaluation): act(obs (n, state_dim)) -> (n, act_dim), observe(rewards (n,)), keep(mask) drops
    finished episodes' rows. Row for row it builds exactly Policy's inputs (the same window,
    padding, returns-to-go and recurrent tokens), so its actions equal Policy's up to the float
    rounding of a batched matrix product against a batch-1 one (torch's CPU GEMM picks other
    kernels for a few rows: ~1e-7 in float32; none in float64, see tests/test_batched_eval.py).
    No attention: recorded episodes go through Policy."""

    def __init__(
        self,
        model: TrajectoryModel,
        mode: str = "transformer",
        state_mean=None,
        state_std=None,
        rtg_scale: float = 1000.0,
        device=None,
    ):
        self._one = Policy(model, mode, state_mean, state_std, rtg_scale, device)  # validation, normalisation
        self.model, self.cfg, self.mode = self._one.model, self._one.cfg, mode
        self.device, self.dtype = self._one.device, self._one.dtype
        self.state_mean, self.state_std, self.rtg_scale = self._one.state_mean, self._one.state_std, self._one.rtg_scale
        self.reset([0.0])

    def reset(self, target_returns):
        """Start len(target_returns) episodes, row i aiming for target_returns[i] (env reward units)."""
        self.t = 0
        self.rtg = np.asarray(target_returns, np.float64).reshape(-1) / self.rtg_scale  # (n,)
        self.n = len(self.rtg)
        # the last K + 1 steps are all a window needs (the action before it included): (n, dim) each
        self.states: list[np.ndarray] = []  # normalised, float32
        self.actions: list[np.ndarray] = []
        self.rtgs: list[np.ndarray] = []
        self.rnn_state = self.model.allocate_state(self.n, device=self.device) if self.mode == "rnn" else None

    def _tensor(self, x, dtype=None):
        return torch.as_tensor(np.asarray(x), dtype=dtype or self.dtype, device=self.device)

    def window(self) -> dict:
        """Policy.window() for every row at once: the model's keyword arguments, batch n."""
        cfg, n = self.cfg, self.n
        t = self.t  # len(Policy.states) - 1
        lo = max(0, t + 1 - cfg.K)
        T = t + 1 - lo
        first = len(self.states) - T  # where step lo sits in the kept history
        zero = np.zeros((n, cfg.act_dim), np.float32)
        before = self.actions[first - 1] if lo > 0 else zero  # a_{lo-1}, (n, act_dim)
        acts = self.actions[first : first + T - 1]
        actions = acts + [zero] if cfg.window_actions == "own" else [before] + acts
        states, rtgs, steps = self.states[first:], self.rtgs[first:], list(range(lo, lo + T))
        pad = cfg.acting_steps(t) - T
        if pad > 0:
            states = [np.zeros((n, cfg.state_dim), np.float32)] * pad + states
            actions = [zero] * pad + actions
            rtgs, steps = [np.zeros(n)] * pad + rtgs, [0] * pad + steps
        return {
            "states": self._tensor(np.stack(states, 1)),  # (n, T, state_dim)
            "actions": self._tensor(np.stack(actions, 1)),  # (n, T, act_dim)
            "returns_to_go": self._tensor(np.stack(rtgs, 1))[:, :, None],  # (n, T, 1)
            "timesteps": self._tensor(np.tile(steps, (n, 1)), torch.long),  # (n, T)
            "prev_action": self._tensor(before),
        }  # (n, act_dim)

    @torch.no_grad()
    def act(self, obs) -> np.ndarray:
        """Actions (n, act_dim) for observations (n, state_dim) at the current step."""
        obs = np.asarray(obs, np.float32)
        if self.cfg.obs_shape and obs.shape == (self.n, *self.cfg.obs_shape):  # Atari frames, kept flat here
            obs = obs.reshape(self.n, -1)
        if obs.shape != (self.n, self.cfg.state_dim):
            raise ValueError(
                f"observations have shape {obs.shape}, expected ({self.n}, {self.cfg.state_dim}) "
                f"(live episodes, state_dim): is this the environment the model was trained on?"
            )
        s = (obs - self.state_mean) / self.state_std
        self.states.append(s)
        self.rtgs.append(self.rtg.copy())
        if self.mode == "transformer":
            pred = self.model(**self.window())[:, -1]  # (n, act_dim)
        else:
            prev = self.actions[-1] if self.actions else np.zeros((self.n, self.cfg.act_dim), np.float32)
            tokens = self.model.embed.step_tokens(
                self._tensor(s),
                self._tensor(prev),
                self._tensor(self.rtg[:, None]),
                self._tensor(np.full(self.n, self.t), torch.long),
                first=self.t == 0,
            )
            pred = self.model.predict_action(self.model.step(tokens, self.rnn_state))  # (n, act_dim)
        action = self.model.choose_action(pred).float().cpu().numpy()  # discrete: sampled indices (n, 1)
        self.actions.append(action)
        keep = self.cfg.K + 1
        self.states, self.actions, self.rtgs = self.states[-keep:], self.actions[-keep:], self.rtgs[-keep:]
        return action

    def observe(self, rewards):
        """Account for each row's reward of the last action (n,) and advance to the next step."""
        self.rtg = self.rtg - np.asarray(rewards, np.float64).reshape(self.n) / self.rtg_scale
        self.t += 1

    def keep(self, mask):
        """Keep only the rows where `mask` (n,) bool is set (drop the finished episodes)."""
        mask = np.asarray(mask, bool)
        self.states = [x[mask] for x in self.states]
        self.actions = [x[mask] for x in self.actions]
        self.rtgs = [x[mask] for x in self.rtgs]
        self.rtg, self.n = self.rtg[mask], int(mask.sum())
        if self.rnn_state is not None:
            self.model.keep_state_rows(self.rnn_state, torch.as_tensor(mask, device=self.device))
