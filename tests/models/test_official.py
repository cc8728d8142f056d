"""Importing checkpoints of the official DeMa code (github AndssY/dema), issue 13 items 2-4.

The official checkpoints here are built from random weights in the official names and shapes and
saved as gym/experiment.py saves them (the AdamW object included). The reference they are checked
against is written below from the official code's definitions, in float64 numpy, independent of
dema-lab's models: Mamba_mujoco.forward / get_action2 (Transformer-like, left-padded) / get_action
(RNN-like, recurrent), mamba_simple.Mamba.forward / step, MixerModel, and the DecisionTransformer of
decision_transformer.py + trajectory_gpt2.py (Conv1D weights (in, out), ReLU, attention mask -1e4).
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

from dema_lab.integrations import import_official
from dema_lab.models import Policy, load_checkpoint
from dema_lab.models.official import OfficialCheckpointError, UnsafeCheckpointError, read_official

STATE_DIM, ACT_DIM = 11, 3
EPISODE = 30


# ------------------------------------------------------------------------------------------------
# Official state dicts from random weights, saved as gym/experiment.py does
# ------------------------------------------------------------------------------------------------


def _lin(g, sd, name, n_out, n_in, bias=True, scale=1.0):
    sd[f"{name}.weight"] = torch.randn(n_out, n_in, generator=g) * scale / math.sqrt(n_in)
    if bias:
        sd[f"{name}.bias"] = torch.randn(n_out, generator=g) * 0.1


def official_dema_sd(
    seed=0, E=32, D=16, n_layer=2, d_state=8, d_conv=4, expand=2, time_embd=False, layout="B3LD", max_ep_len=64
):
    """A Mamba_mujoco state dict (ssm.py + MixerModel + mamba_simple.Mamba names and shapes)."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    Di, R = expand * D, math.ceil(D / 16)
    if time_embd:
        sd["embed_timestep.weight"] = torch.randn(max_ep_len, E, generator=g) * 0.3
    _lin(g, sd, "ret_emb", E, 1)
    _lin(g, sd, "state_encoder", E, STATE_DIM)
    _lin(g, sd, "action_embeddings", E, ACT_DIM)
    _lin(g, sd, "predict_state", STATE_DIM, D)
    _lin(g, sd, "predict_action.0", ACT_DIM, D, scale=2.0)
    _lin(g, sd, "predict_return", 1, D)
    _lin(g, sd, "backbone.embedding", D, E if layout == "B3LD" else 3 * E)
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
        _lin(g, sd, p + "mixer.in_proj", 2 * Di, D, bias=False)
        sd[p + "mixer.conv1d.weight"] = torch.randn(Di, 1, d_conv, generator=g) * 0.5
        sd[p + "mixer.conv1d.bias"] = torch.randn(Di, generator=g) * 0.1
        _lin(g, sd, p + "mixer.x_proj", R + 2 * d_state, Di, bias=False)
        _lin(g, sd, p + "mixer.dt_proj", Di, R)
        dt = torch.exp(torch.rand(Di, generator=g) * (math.log(0.5) - math.log(0.01)) + math.log(0.01))
        sd[p + "mixer.dt_proj.bias"] = dt + torch.log(-torch.expm1(-dt))  # softplus^-1
        sd[p + "mixer.A_log"] = torch.log(torch.arange(1, d_state + 1.0)).repeat(Di, 1) + 0.1 * torch.randn(
            Di, d_state, generator=g
        )
        sd[p + "mixer.D"] = 1 + 0.1 * torch.randn(Di, generator=g)
        _lin(g, sd, p + "mixer.out_proj", D, Di, bias=False)
    sd["backbone.norm_f.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
    return sd


def official_dt_sd(seed=0, H=32, n_layer=2, max_ep_len=64, n_ctx=1024):
    """A DecisionTransformer state dict (decision_transformer.py + trajectory_gpt2.py): GPT-2 Conv1D
    weights are (in, out); attn.bias / attn.masked_bias buffers; the unused wte."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def conv1d(name, n_in, n_out):
        sd[f"{name}.weight"] = torch.randn(n_in, n_out, generator=g) / math.sqrt(n_in)
        sd[f"{name}.bias"] = torch.randn(n_out, generator=g) * 0.1

    def ln(name):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(H, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(H, generator=g)

    sd["transformer.wte.weight"] = torch.randn(1, H, generator=g)
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        ln(p + "ln_1")
        sd[p + "attn.bias"] = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.uint8)).view(1, 1, n_ctx, n_ctx)
        sd[p + "attn.masked_bias"] = torch.tensor(-1e4)
        conv1d(p + "attn.c_attn", H, 3 * H)
        conv1d(p + "attn.c_proj", H, H)
        ln(p + "ln_2")
        conv1d(p + "mlp.c_fc", H, 4 * H)
        conv1d(p + "mlp.c_proj", 4 * H, H)
    ln("transformer.ln_f")
    sd["embed_timestep.weight"] = torch.randn(max_ep_len, H, generator=g) * 0.3
    _lin(g, sd, "embed_return", H, 1)
    _lin(g, sd, "embed_state", H, STATE_DIM)
    _lin(g, sd, "embed_action", H, ACT_DIM)
    ln("embed_ln")
    _lin(g, sd, "predict_state", STATE_DIM, H)
    _lin(g, sd, "predict_action.0", ACT_DIM, H, scale=2.0)
    _lin(g, sd, "predict_return", 1, H)
    return sd


def save_official(sd, path, key="model"):
    """torch.save as gym/experiment.py: {'model': state_dict, 'optimizer': <AdamW>, 'optimizer_state_dict'}
    (after a few optimiser steps, so that the pickled AdamW holds state)."""
    params = [torch.nn.Parameter(v.clone().float()) for v in sd.values() if v.is_floating_point()]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    for _ in range(3):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    torch.save({key: sd, "optimizer": opt, "optimizer_state_dict": opt.state_dict()}, path)
    return path


# ------------------------------------------------------------------------------------------------
# The independent float64 reference of the official forward and evaluation loops
# ------------------------------------------------------------------------------------------------


def _np(sd):
    return {k: v.double().numpy() for k, v in sd.items()}


def silu(x):
    return x / (1 + np.exp(-x))


def softplus(x):
    return np.logaddexp(0.0, x)


def rmsnorm(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def linear(p, name, x):
    y = x @ p[f"{name}.weight"].T
    return y + p[f"{name}.bias"] if f"{name}.bias" in p else y


class RefMixer:
    """mamba_simple.Mamba: forward (causal conv + sequential selective scan) and step (recurrent)."""

    def __init__(self, p, prefix):
        self.p = {k[len(prefix) :]: v for k, v in p.items() if k.startswith(prefix)}
        self.Di = self.p["D"].shape[0]
        self.N = self.p["A_log"].shape[1]
        self.R = self.p["dt_proj.weight"].shape[1]
        self.w = self.p["conv1d.weight"][:, 0, :]  # (Di, d_conv)
        self.A = -np.exp(self.p["A_log"])  # (Di, N)

    def inputs(self, h):
        """h (L, D) -> u (L, Di) after conv+silu, z, delta (L, Di), B, C (L, N)."""
        xz = h @ self.p["in_proj.weight"].T
        x, z = xz[:, : self.Di], xz[:, self.Di :]
        W = self.w.shape[1]
        xp = np.concatenate([np.zeros((W - 1, self.Di)), x])
        conv = np.stack([(xp[t : t + W] * self.w.T).sum(0) for t in range(len(h))]) + self.p["conv1d.bias"]
        u = silu(conv)
        dbl = u @ self.p["x_proj.weight"].T
        dt, B, C = dbl[:, : self.R], dbl[:, self.R : self.R + self.N], dbl[:, self.R + self.N :]
        delta = softplus(dt @ self.p["dt_proj.weight"].T + self.p["dt_proj.bias"])
        return u, z, delta, B, C

    def forward(self, h):
        u, z, delta, B, C = self.inputs(h)
        state, ys = np.zeros((self.Di, self.N)), []
        for t in range(len(h)):
            state = np.exp(delta[t][:, None] * self.A) * state + (delta[t][:, None] * B[t][None, :]) * u[t][:, None]
            ys.append(state @ C[t] + self.p["D"] * u[t])
        return (np.array(ys) * silu(z)) @ self.p["out_proj.weight"].T

    def new_state(self):
        return {"conv": np.zeros((self.Di, self.w.shape[1])), "ssm": np.zeros((self.Di, self.N))}

    def step(self, h, st):
        """One token h (D,) through the carried conv and SSM state (mamba_simple.Mamba.step)."""
        xz = self.p["in_proj.weight"] @ h
        x, z = xz[: self.Di], xz[self.Di :]
        st["conv"] = np.roll(st["conv"], -1, axis=1)
        st["conv"][:, -1] = x
        u = silu((st["conv"] * self.w).sum(-1) + self.p["conv1d.bias"])
        dbl = self.p["x_proj.weight"] @ u
        dt, B, C = dbl[: self.R], dbl[self.R : self.R + self.N], dbl[self.R + self.N :]
        delta = softplus(self.p["dt_proj.weight"] @ dt + self.p["dt_proj.bias"])
        st["ssm"] = st["ssm"] * np.exp(delta[:, None] * self.A) + (delta[:, None] * B[None, :]) * u[:, None]
        y = (st["ssm"] @ C + self.p["D"] * u) * silu(z)
        return self.p["out_proj.weight"] @ y


class RefDeMa:
    """Mamba_mujoco (running=True), its MixerModel backbone and its two evaluation paths."""

    def __init__(self, sd, K):
        self.p = _np(sd)
        self.K = K
        self.n_layer = len({k.split(".")[2] for k in sd if k.startswith("backbone.layers.")})
        self.mixers = [RefMixer(self.p, f"backbone.layers.{i}.mixer.") for i in range(self.n_layer)]
        E = self.p["ret_emb.weight"].shape[0]
        self.layout = "B3LD" if self.p["backbone.embedding.weight"].shape[1] == E else "BL3D"
        self.time = "embed_timestep.weight" in self.p

    def embeddings(self, states, act_slots, rtg, timesteps):
        """(T, E) each for R, a, s; with the timestep embedding added to all three."""
        r = linear(self.p, "ret_emb", rtg[:, None])
        a = linear(self.p, "action_embeddings", act_slots)
        s = linear(self.p, "state_encoder", states)
        if self.time:
            e = self.p["embed_timestep.weight"][timesteps]
            r, a, s = r + e, a + e, s + e
        return r, a, s

    def tokens(self, states, act_slots, rtg, timesteps):
        r, a, s = self.embeddings(states, act_slots, rtg, timesteps)
        if self.layout == "B3LD":
            u = np.stack([r, a, s], axis=1).reshape(-1, r.shape[1])  # (3T, E): R, a, s, R, ...
        else:
            u = np.concatenate([r, a, s], axis=-1)  # (T, 3E)
        return linear(self.p, "backbone.embedding", u)  # (L, D)

    def layer_inputs(self, x):
        """The normalised input of each layer's mixer, and the backbone's output (L, D)."""
        inputs = []
        for i, mixer in enumerate(self.mixers):
            h = rmsnorm(x, self.p[f"backbone.layers.{i}.norm.weight"])
            inputs.append(h)
            x = x + mixer.forward(h)
        return inputs, rmsnorm(x, self.p["backbone.norm_f.weight"])

    def forward_last(self, states, act_slots, rtg, timesteps):
        """The action predicted at the window's last step (from its state token)."""
        _, y = self.layer_inputs(self.tokens(states, act_slots, rtg, timesteps))
        return np.tanh(linear(self.p, "predict_action.0", y[-1]))

    def get_action2(self, states, act_slots, rtg, timesteps):
        """Transformer-like: the last K steps, zero-padded on the left to K (states, action slots,
        returns-to-go, timesteps 0); the pads go through the model."""
        K = self.K
        states, act_slots, rtg, timesteps = states[-K:], act_slots[-K:], rtg[-K:], timesteps[-K:]
        pad = K - len(states)
        states = np.concatenate([np.zeros((pad, states.shape[1])), states])
        act_slots = np.concatenate([np.zeros((pad, act_slots.shape[1])), act_slots])
        rtg = np.concatenate([np.zeros(pad), rtg])
        timesteps = np.concatenate([np.zeros(pad, np.int64), timesteps])
        return self.forward_last(states, act_slots, rtg, timesteps)

    def rnn_reset(self):
        self.st = [m.new_state() for m in self.mixers]

    def get_action(self, state, act_slot, rtg, t):
        """RNN-like: feed (R_t, a_{t-1}, s_t) (B3LD) one token at a time through the carried states."""
        u = self.tokens(state[None], act_slot[None], np.array([rtg]), np.array([t]))
        for x in u:
            for i, mixer in enumerate(self.mixers):
                x = x + mixer.step(rmsnorm(x, self.p[f"backbone.layers.{i}.norm.weight"]), self.st[i])
        return np.tanh(linear(self.p, "predict_action.0", rmsnorm(x, self.p["backbone.norm_f.weight"])))


class RefDT:
    """The DecisionTransformer's forward and get_action (left-padded to K with attention mask 0
    on the pads, which GPT2Model turns into -1e4 added to the logits; the causal mask replaces
    logits by the masked_bias -1e4)."""

    def __init__(self, sd, K, n_head=1):
        self.p = _np(sd)
        self.K, self.n_head = K, n_head
        self.n_layer = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})

    def conv1d(self, name, x):
        return x @ self.p[f"{name}.weight"] + self.p[f"{name}.bias"]  # GPT-2 Conv1D: (in, out)

    def get_action(self, states, actions, rtg, timesteps):
        K, p = self.K, self.p
        states, actions, rtg, timesteps = states[-K:], actions[-K:], rtg[-K:], timesteps[-K:]
        n = len(states)
        pad = K - n
        mask = np.concatenate([np.zeros(pad), np.ones(n)])
        states = np.concatenate([np.zeros((pad, states.shape[1])), states])
        actions = np.concatenate([np.zeros((pad, actions.shape[1])), actions])
        rtg = np.concatenate([np.zeros(pad), rtg])
        timesteps = np.concatenate([np.zeros(pad, np.int64), timesteps])
        e = p["embed_timestep.weight"][timesteps]
        r = linear(p, "embed_return", rtg[:, None]) + e
        s = linear(p, "embed_state", states) + e
        a = linear(p, "embed_action", actions) + e
        x = np.stack([r, s, a], axis=1).reshape(3 * K, -1)  # R, s, a per step
        x = layernorm(x, p["embed_ln.weight"], p["embed_ln.bias"])
        L, H = x.shape
        hd = H // self.n_head
        add_mask = (1.0 - np.repeat(mask, 3)) * -10000.0  # (L,) over keys
        causal = np.tril(np.ones((L, L), bool))
        for i in range(self.n_layer):
            q_ = f"transformer.h.{i}."
            h = layernorm(x, p[q_ + "ln_1.weight"], p[q_ + "ln_1.bias"])
            q, k, v = np.split(self.conv1d(q_ + "attn.c_attn", h), 3, axis=-1)
            heads = []
            for j in range(self.n_head):
                sl = slice(j * hd, (j + 1) * hd)
                w = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
                w = np.where(causal, w, -1e4) + add_mask[None, :]
                w = np.exp(w - w.max(-1, keepdims=True))
                heads.append((w / w.sum(-1, keepdims=True)) @ v[:, sl])
            x = x + self.conv1d(q_ + "attn.c_proj", np.concatenate(heads, axis=-1))
            h = layernorm(x, p[q_ + "ln_2.weight"], p[q_ + "ln_2.bias"])
            x = x + self.conv1d(q_ + "mlp.c_proj", np.maximum(self.conv1d(q_ + "mlp.c_fc", h), 0.0))
        x = layernorm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"])
        return np.tanh(linear(p, "predict_action.0", x[3 * K - 2]))  # the last state token


def episode_data(seed=1, n=EPISODE):
    """A fixed sequence of raw observations and rewards (no env needed), and the normalisation."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(0.5, 2.0, (n, STATE_DIM)).astype(np.float32)
    rewards = rng.uniform(0.0, 4.0, n)
    mean = rng.normal(0.3, 0.5, STATE_DIM).astype(np.float32)
    std = rng.uniform(0.5, 2.0, STATE_DIM).astype(np.float32)
    return obs, rewards, mean, std


def run_reference(ref, mode, obs, rewards, mean, std, target, scale=1000.0, dt_slots="aligned"):
    """The official evaluation loop (evaluate_episode_rtg) around a reference model, in float64.
    The action slots: DeMa (R_t, a_{t-1}, s_t) with a_{-1} = 0. DT ("aligned"): slot t holds a_t, the
    current one 0 (kzl/decision-transformer's loop, the alignment DT is trained with); DT ("official"):
    the DeMa repository's evaluate_episode_rtg, whose action list starts with a zero row, so slot t
    holds a_{t-1}."""
    s_norm = (obs.astype(np.float64) - mean.astype(np.float64)) / std.astype(np.float64)
    rtg = [target / scale]
    actions = []
    if mode == "rnn":
        ref.rnn_reset()
    for t in range(len(obs)):
        ts = np.arange(t + 1)
        if isinstance(ref, RefDT) and dt_slots == "official":  # evaluate_episode_rtg's list
            a = ref.get_action(s_norm[: t + 1], np.array([np.zeros(ACT_DIM)] + actions), np.array(rtg), ts)
        elif isinstance(ref, RefDT):
            slots = np.array(actions + [np.zeros(ACT_DIM)])
            a = ref.get_action(s_norm[: t + 1], slots, np.array(rtg), ts)
        else:
            prev = np.array([np.zeros(ACT_DIM)] + actions)  # slot t: a_{t-1}
            if mode == "transformer":
                a = ref.get_action2(s_norm[: t + 1], prev, np.array(rtg), ts)
            else:
                a = ref.get_action(s_norm[t], prev[t], rtg[-1], t)
        actions.append(a)
        rtg.append(rtg[-1] - rewards[t] / scale)
    return np.array(actions)


def run_policy(ck, mode, obs, rewards, target):
    policy = Policy(
        ck.model, mode, ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy(), rtg_scale=ck.meta["rtg_scale"]
    )
    policy.reset(target)
    out = []
    for t in range(len(obs)):
        out.append(policy.act(obs[t]))
        policy.observe(rewards[t])
    return np.array(out, np.float64)


# ------------------------------------------------------------------------------------------------
# The reference against itself: the recurrent and the sequence forms agree
# ------------------------------------------------------------------------------------------------


def test_reference_recurrent_and_sequence_forms_agree():
    ref = RefDeMa(official_dema_sd(time_embd=True), K=64)
    rng = np.random.default_rng(0)
    T = 7
    states, slots, rtg = rng.normal(size=(T, STATE_DIM)), rng.normal(size=(T, ACT_DIM)), rng.normal(size=T)
    ts = np.arange(T)
    ref.rnn_reset()
    rec = [ref.get_action(states[t], slots[t], rtg[t], t) for t in range(T)]
    seq = [ref.forward_last(states[: t + 1], slots[: t + 1], rtg[: t + 1], ts[: t + 1]) for t in range(T)]
    np.testing.assert_allclose(rec, seq, atol=1e-12)
    assert np.abs(np.diff(np.array(rec), axis=0)).max() > 1e-3  # the actions do depend on the step


# ------------------------------------------------------------------------------------------------
# Equivalence: the imported model acts like the official one
# ------------------------------------------------------------------------------------------------

K_TEST = 6


@pytest.mark.parametrize("time_embd", [False, True], ids=["no-timestep", "timestep"])
def test_dema_b3ld_acts_like_the_official_in_both_modes(tmp_path, time_embd):
    sd = official_dema_sd(time_embd=time_embd)
    path = save_official(sd, tmp_path / "model_iter4.pkl")
    obs, rewards, mean, std = episode_data()
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST)
    cfg = ck.config
    assert (cfg.arch, cfg.layout, cfg.token_order, cfg.embed_norm, cfg.window_padding) == (
        "dema",
        "B3LD",
        "RAS",
        "none",
        "left",
    )
    assert (cfg.embed_dim, cfg.d_model, cfg.n_layer, cfg.d_state, cfg.d_conv, cfg.expand) == (32, 16, 2, 8, 4, 2)
    assert cfg.timestep_embedding is time_embd and cfg.K == K_TEST
    assert ck.meta["official_class"] == "Mamba_mujoco" and ck.meta["iteration"] == 4
    assert ck.meta["source"] == "official" and ck.meta["step"] == 3  # AdamW's step count
    assert set(ck.meta["dropped"]) == {
        "predict_state.weight",
        "predict_state.bias",
        "predict_return.weight",
        "predict_return.bias",
    }
    ref = RefDeMa(sd, K_TEST)
    target = 3600.0
    for mode in ("transformer", "rnn"):
        want = run_reference(ref, mode, obs, rewards, mean, std, target)
        got = run_policy(ck, mode, obs, rewards, target)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"mode {mode}")
    # the modes differ once the window is full (and early on, by the left padding): the test tells them apart
    tr = run_reference(ref, "transformer", obs, rewards, mean, std, target)
    rnn = run_reference(ref, "rnn", obs, rewards, mean, std, target)
    assert np.abs(tr - rnn).max() > 1e-3


def test_dema_bl3d_transformer_like_acts_like_the_official(tmp_path):
    sd = official_dema_sd(layout="BL3D", time_embd=True, seed=3)
    path = save_official(sd, tmp_path / "model_iter0.pkl")
    obs, rewards, mean, std = episode_data(seed=2)
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST)
    assert ck.config.layout == "BL3D"
    want = run_reference(RefDeMa(sd, K_TEST), "transformer", obs, rewards, mean, std, 1800.0)
    np.testing.assert_allclose(run_policy(ck, "transformer", obs, rewards, 1800.0), want, atol=1e-5)


@pytest.mark.parametrize("key", ["model", "model_state_dict"])
def test_dt_acts_like_the_official(tmp_path, key):
    sd = official_dt_sd()
    path = save_official(sd, tmp_path / "model_iter2.pkl", key=key)
    obs, rewards, mean, std = episode_data(seed=4)
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST)
    cfg = ck.config
    assert (cfg.arch, cfg.activation, cfg.embed_norm, cfg.token_order, cfg.timestep_embedding) == (
        "dt",
        "relu",
        "layernorm",
        "RSA",
        True,
    )
    assert ck.meta["official_class"] == "DecisionTransformer" and ck.meta["container"] == key
    assert "transformer.wte.weight" in ck.meta["dropped"] and "transformer.h.0.attn.bias" in ck.meta["dropped"]
    assert cfg.window_actions == "previous"  # the repository's own DT evaluation, exactly
    want = run_reference(RefDT(sd, K_TEST), "transformer", obs, rewards, mean, std, 5000.0, dt_slots="official")
    np.testing.assert_allclose(run_policy(ck, "transformer", obs, rewards, 5000.0), want, atol=1e-5)
    # with the alignment DT was trained with (kzl/decision-transformer's loop)
    import dataclasses

    from dema_lab.models import build_model

    own = build_model(dataclasses.replace(cfg, window_actions="own"))
    own.load_state_dict(ck.model.state_dict())
    aligned = dataclasses.replace(ck, model=own.eval(), config=own.cfg)
    want = run_reference(RefDT(sd, K_TEST), "transformer", obs, rewards, mean, std, 5000.0)
    np.testing.assert_allclose(run_policy(aligned, "transformer", obs, rewards, 5000.0), want, atol=1e-5)
    assert np.abs(run_policy(ck, "transformer", obs, rewards, 5000.0) - want).max() > 1e-3


def test_dt_n_head_is_a_keyword(tmp_path):
    sd = official_dt_sd(seed=5)
    path = save_official(sd, tmp_path / "model_iter1.pkl")
    obs, rewards, mean, std = episode_data(seed=5, n=12)
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST, n_head=4)
    assert ck.config.n_head == 4
    want = run_reference(
        RefDT(sd, K_TEST, n_head=4), "transformer", obs, rewards, mean, std, 5000.0, dt_slots="official"
    )
    np.testing.assert_allclose(run_policy(ck, "transformer", obs, rewards, 5000.0), want, atol=1e-5)
    one = run_reference(
        RefDT(sd, K_TEST, n_head=1), "transformer", obs, rewards, mean, std, 5000.0, dt_slots="official"
    )
    assert np.abs(one - want).max() > 1e-3  # heads matter: the check bites


def test_hidden_attention_matches_the_definition(tmp_path):
    sd = official_dema_sd(time_embd=True, seed=7)
    ck = import_official(
        save_official(sd, tmp_path / "model_iter1.pkl"), state_mean=np.zeros(STATE_DIM), state_std=np.ones(STATE_DIM)
    )
    ref = RefDeMa(sd, K=20)
    rng = np.random.default_rng(7)
    T = 6
    states, actions, rtg = rng.normal(size=(T, STATE_DIM)), rng.uniform(-1, 1, (T, ACT_DIM)), rng.normal(size=T)
    ts = np.arange(3, 3 + T)
    slots = np.concatenate([np.zeros((1, ACT_DIM)), actions[:-1]])  # a_{t-1}, a_{-1} = 0
    f32 = lambda x: torch.as_tensor(x, dtype=torch.float32)[None]  # noqa: E731
    attn = ck.model.attention(f32(states), f32(actions), f32(rtg)[..., None], torch.as_tensor(ts)[None], aggregate=None)
    inputs, _ = ref.layer_inputs(ref.tokens(states, slots, rtg, ts))
    L = 3 * T
    for layer, (mixer, h) in enumerate(zip(ref.mixers, inputs)):
        u, z, delta, B, C = mixer.inputs(h)
        alpha = np.zeros((mixer.Di, L, L))
        for i in range(L):
            for j in range(i + 1):
                decay = np.ones((mixer.Di, mixer.N))
                for k in range(j + 1, i + 1):  # prod_{k=j+1..i} exp(delta_k A)
                    decay = decay * np.exp(delta[k][:, None] * mixer.A)
                alpha[:, i, j] = (decay * (delta[j][:, None] * B[j][None, :]) * C[i][None, :]).sum(-1)
        # the definition is the scan: y = (alpha u + D u) silu(z)
        y = (np.einsum("dij,jd->id", alpha, u) + mixer.p["D"] * u) * silu(z)
        np.testing.assert_allclose(y @ mixer.p["out_proj.weight"].T, mixer.forward(h), atol=1e-10)
        got = attn[layer][0].double().numpy()
        assert got.shape == alpha.shape
        np.testing.assert_allclose(got, alpha, atol=1e-5 * np.abs(alpha).max())


# ------------------------------------------------------------------------------------------------
# Safety: nothing in the pickle runs
# ------------------------------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("how", ["torch.save", "legacy torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    sd = official_dema_sd()
    payload = {"model": sd, "optimizer": _RunsCommand(os.system, (f"touch {marker}",))}
    path = tmp_path / "model_iter0.pkl"
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "legacy torch.save":  # the pre-1.6 format
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UnsafeCheckpointError, match=r"refuses global (posix|os|nt)\.system"):
        import_official(path, state_mean=np.zeros(STATE_DIM), state_std=np.ones(STATE_DIM))
    assert not marker.exists()
    # control: the same pickle, loaded unrestricted, does run the command (so the test would catch a leak)
    with open(path, "rb") as f:
        torch.load(f, weights_only=False) if how != "pickle.dump" else pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize(
    "fn, args, name",
    [
        (eval, ("__import__('os').getcwd()",), "builtins.eval"),
        (subprocess.Popen, (["true"],), "subprocess.Popen"),
        (getattr, (_RunsCommand(__import__, ("os",)), "system"), "builtins.getattr"),
    ],
)
def test_other_dangerous_globals_are_refused_by_name(tmp_path, fn, args, name):
    path = tmp_path / "model_iter0.pkl"
    torch.save({"model": official_dema_sd(), "x": _RunsCommand(fn, args)}, path)
    with pytest.raises(UnsafeCheckpointError, match=f"refuses global {name}"):
        read_official(path)


def test_a_pickled_model_object_is_refused_with_how_to_fix(tmp_path):
    path = tmp_path / "model_iter0.pkl"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module, not a state_dict
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict"):
        read_official(path)


@pytest.mark.parametrize("how", ["legacy torch.save", "pickle.dump", "bare state_dict"])
def test_other_pickle_formats_are_read(tmp_path, how):
    sd = official_dema_sd()
    path = tmp_path / "model_iter0.pkl"
    if how == "legacy torch.save":
        torch.save({"model": sd}, path, _use_new_zipfile_serialization=False)
    elif how == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump({"model": sd}, f)
    else:
        torch.save(sd, path)
    ck = import_official(path, state_mean=np.zeros(STATE_DIM), state_std=np.ones(STATE_DIM))
    got = ck.model.state_dict()
    for name, theirs in (
        ("embed.embed_token.weight", "backbone.embedding.weight"),
        ("layers.1.mixer.A_log", "backbone.layers.1.mixer.A_log"),
    ):
        torch.testing.assert_close(got[name], sd[theirs], rtol=0, atol=0)


def test_the_pickled_adamw_is_an_inert_stub(tmp_path):
    path = save_official(official_dema_sd(), tmp_path / "model_iter0.pkl")
    obj = read_official(path)
    opt = obj["optimizer"]
    assert not isinstance(opt, torch.optim.Optimizer) and "AdamW" in repr(opt)
    assert set(opt.state) == {"defaults", "state", "param_groups"}  # kept, never run


# ------------------------------------------------------------------------------------------------
# Clear errors
# ------------------------------------------------------------------------------------------------


def test_unknown_layouts_list_what_was_found(tmp_path):
    path = tmp_path / "model_iter0.pkl"
    torch.save({"model": {"encoder.weight": torch.zeros(4, 3), "encoder.bias": torch.zeros(4)}}, path)
    with pytest.raises(
        OfficialCheckpointError,
        match=r"not a layout of the official DeMa code.*"
        r"encoder\.weight \(4, 3\).*encoder\.bias \(4,\)",
    ):
        import_official(path, state_mean=np.zeros(3), state_std=np.ones(3))
    atari = {
        "state_encoder.0.weight": torch.zeros(32, 4, 8, 8),
        "ret_emb.0.weight": torch.zeros(128, 1),
        "head.weight": torch.zeros(4, 128),
        "backbone.layers.0.mixer.A_log": torch.zeros(256, 128),
    }
    torch.save(atari, tmp_path / "5.pkl")  # atari/: a bare state_dict
    with pytest.raises(
        OfficialCheckpointError, match=r"missing state_encoder\.2\.weight.*state_encoder\.\{i\}\.weight"
    ):
        import_official(tmp_path / "5.pkl", state_mean=np.zeros(3), state_std=np.ones(3))


def test_clear_errors_for_files_and_inputs(tmp_path):
    with pytest.raises(OfficialCheckpointError, match="does not exist"):
        import_official(tmp_path / "nope.pkl", state_mean=np.zeros(3), state_std=np.ones(3))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(OfficialCheckpointError, match="not a torch checkpoint"):
        import_official(tmp_path / "notes.txt", state_mean=np.zeros(3), state_std=np.ones(3))
    path = save_official(official_dema_sd(), tmp_path / "model_iter0.pkl")
    with pytest.raises(OfficialCheckpointError, match="give the dataset"):
        import_official(path)
    with pytest.raises(OfficialCheckpointError, match="takes 11-dim states"):
        import_official(path, state_mean=np.zeros(4), state_std=np.ones(4))
    bad = official_dema_sd(D=40)  # dt_rank ceil(40/16) = 3 ...
    bad["backbone.layers.0.mixer.dt_proj.weight"] = torch.zeros(80, 2)  # ... but stored as 2
    torch.save({"model": bad}, tmp_path / "model_iter1.pkl")
    with pytest.raises(OfficialCheckpointError, match=r"dt_rank is 2.*ceil\(d_model / 16\) = 3"):
        import_official(tmp_path / "model_iter1.pkl", state_mean=np.zeros(STATE_DIM), state_std=np.ones(STATE_DIM))


# ------------------------------------------------------------------------------------------------
# Normalisation from the dataset, and the command
# ------------------------------------------------------------------------------------------------


def test_normalisation_comes_from_the_dataset_as_the_official_code(tmp_path, hopper_small):
    from dema_lab.data import load_dataset

    path = save_official(official_dema_sd(), tmp_path / "model_iter0.pkl")
    ck = import_official(path, dataset=str(hopper_small))
    obs = np.concatenate([t.observations for t in load_dataset(str(hopper_small), progress=False)])
    np.testing.assert_allclose(ck.extra["state_mean"].numpy(), np.mean(obs, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ck.extra["state_std"].numpy(), np.std(obs, axis=0) + 1e-6, rtol=1e-5)
    assert ck.extra["state_std"].dtype == torch.float32
    assert ck.meta["env"] == "hopper"


IMPORTED_RUN = "official-dema-hopper-medium-iter7"


@pytest.fixture(scope="module")
def imported(tmp_path_factory, hopper_small):
    """An official DeMa (B3LD, timestep embedding) imported with the command, to a file and to a store."""
    from dema_lab.cli.main import main

    tmp = tmp_path_factory.mktemp("official")
    sd = official_dema_sd(time_embd=True, max_ep_len=1000)
    src = save_official(sd, tmp / "model_iter7.pkl")
    out, store = tmp / "official.safetensors", tmp / "store"
    assert main(["import", str(src), "--dataset", str(hopper_small), "--K", str(K_TEST), "--out", str(out)]) == 0
    args = [
        "import",
        str(src),
        "--dataset",
        str(hopper_small),
        "--K",
        str(K_TEST),
        "--store",
        str(store),
        "--eval-episodes",
        "1",
        "--eval-max-steps",
        "12",
        "--render-size",
        "32",
        "--targets",
        "3600",
        "--quiet",
    ]
    assert main(args) == 0
    return {"sd": sd, "src": src, "out": out, "store": store, "args": args}


def test_cli_imports_to_a_file(imported):
    ck = load_checkpoint(imported["out"])
    assert ck.config.token_order == "RAS" and ck.meta["source"] == "official" and ck.meta["iteration"] == 7
    obs, rewards, _, _ = episode_data(seed=9, n=10)
    mean, std = ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy()
    want = run_reference(RefDeMa(imported["sd"], K_TEST), "transformer", obs, rewards, mean, std, 3600.0)
    np.testing.assert_allclose(run_policy(ck, "transformer", obs, rewards, 3600.0), want, atol=1e-5)


def test_cli_imports_to_a_store_as_a_finished_run(imported, capsys):
    import json

    from dema_lab.cli.main import main

    assert main(imported["args"]) == 2  # the run id exists now
    assert "already exists" in capsys.readouterr().err
    code = (
        "import dema_lab, json; t = dema_lab.open_run(%r, %r); "
        "print(json.dumps([t.attrs['status'], t.attrs['provenance']['source'], t.attrs['config']['token_order'], "
        "sorted(t['rollout'].children), float(t['eval'].ds['return'].sum())]))" % (str(imported["store"]), IMPORTED_RUN)
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status, source, order, rollouts, ret = json.loads(done.stdout.strip().splitlines()[-1])
    assert (status, source, order) == ("finished", "official", "RAS")
    assert rollouts == ["step_00000003-rnn-t0-e0", "step_00000003-transformer-t0-e0"]
    assert ret != 0.0


def test_the_dashboards_open_the_imported_run(imported):
    import holoviews as hv

    from dema_lab.dashboard import AttentionExplorer, RolloutWorker, SequenceComparison, StoreIndex

    store = str(imported["store"])
    ex = AttentionExplorer(store, run=IMPORTED_RUN)
    ex.run = IMPORTED_RUN
    ex.episode = "step_00000003-transformer-t0-e0"
    assert isinstance(ex.heatmap(), hv.Image)
    ex.step = min(5, ex.state.param.step.bounds[1])
    ex.aggregation = "abs"  # recomputed from the checkpoint
    assert np.isfinite(ex.matrix()).any() and "Cannot recompute" not in ex.message
    # the logged attention is what the imported checkpoint gives when the episode is replayed
    from dema_lab.analysis import right_align
    from dema_lab.evaluation.rollout import replay_attention

    ck = StoreIndex(store).checkpoint(IMPORTED_RUN, 3)
    ro = ex._ep.dataset.load()
    want = replay_attention(
        ck.model,
        ro,
        ex.step,
        "minmax",
        ck.extra["state_mean"].numpy(),
        ck.extra["state_std"].numpy(),
        ck.meta["rtg_scale"],
    )
    np.testing.assert_allclose(
        ro.attention.values[ex.step], right_align(want, ck.config.window_tokens()), rtol=1e-5, atol=1e-6, equal_nan=True
    )
    table = SequenceComparison(store).table
    assert list(table["run"]) == [IMPORTED_RUN] and table["parameters"].iloc[0] > 0
    w = RolloutWorker(ck, "hopper", 3600.0, "rnn", "minmax", render_size=32, max_steps=5, fps=0)
    w.start()
    w.join(60)
    assert w.done and not w.error and len(w.records) == 5


def test_cli_errors_are_clear(tmp_path, hopper_small, capsys):
    from dema_lab.cli.main import main

    src = save_official(official_dema_sd(), tmp_path / "model_iter0.pkl")
    assert (
        main(
            [
                "import",
                str(tmp_path / "missing.pkl"),
                "--dataset",
                str(hopper_small),
                "--out",
                str(tmp_path / "a.safetensors"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["import", str(src), "--dataset", "nosuch-dataset", "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert (
        main(
            [
                "import",
                str(src),
                "--dataset",
                str(hopper_small),
                "--env",
                "tetris",
                "--out",
                str(tmp_path / "a.safetensors"),
            ]
        )
        == 2
    )
    assert "unknown env" in capsys.readouterr().err
    assert main(["import", str(src), "--dataset", str(hopper_small)]) == 2
    assert "either --out" in capsys.readouterr().err


def test_dema_with_embeddings_as_wide_as_the_backbone_keeps_its_projection(tmp_path):
    """embedding_dim == d_model: the official model still has backbone.embedding, and so does the import."""
    sd = official_dema_sd(E=16, D=16, seed=5)
    path = save_official(sd, tmp_path / "model_iter1.pkl")
    obs, rewards, mean, std = episode_data(seed=6)
    ck = import_official(path, state_mean=mean, state_std=std, K=K_TEST)
    assert ck.config.embed_dim == ck.config.d_model == 16 and ck.model.embed.embed_token is not None
    for mode in ("transformer", "rnn"):
        want = run_reference(RefDeMa(sd, K_TEST), mode, obs, rewards, mean, std, 3600.0)
        np.testing.assert_allclose(run_policy(ck, mode, obs, rewards, 3600.0), want, atol=1e-5)


@pytest.mark.parametrize("name", ["has_cuda", "_dynamo", "onnx"])
def test_a_torch_attribute_that_is_not_a_dtype_is_refused_without_being_touched(tmp_path, name, monkeypatch):
    """`ctorch\\n<name>\\n.` must not reach torch's module __getattr__ (which calls functions or
    imports submodules); only real dtypes found in torch's namespace are allowed."""
    touched = []
    real = vars(torch).get("__getattr__")

    def spy(attr):
        touched.append(attr)
        return real(attr)

    monkeypatch.setattr(torch, "__getattr__", spy, raising=False)
    if name not in vars(torch):
        getattr(torch, name, None)  # the spy bites: a plain lookup reaches it
        assert name in touched
        touched.clear()
    path = tmp_path / "model_iter0.pkl"
    path.write_bytes(b"ctorch\n" + name.encode() + b"\n.")
    with pytest.raises((UnsafeCheckpointError, OfficialCheckpointError), match=f"torch.{name}"):
        read_official(path)
    assert touched == []
