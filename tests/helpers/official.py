"""The official DeMa code's checkpoints built from random weights, and an independent float64
reference of its forward passes, written from the official definitions (github AndssY/dema):
Mamba_mujoco.forward / get_action2 (Transformer-like, left-padded) / get_action (RNN-like,
recurrent), mamba_simple.Mamba.forward / step, MixerModel, and the DecisionTransformer of
decision_transformer.py + trajectory_gpt2.py (Conv1D weights (in, out), ReLU, attention mask -1e4).
Nothing here imports dema_lab: it is the reference dema-lab is checked against."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch

STATE_DIM, ACT_DIM = 11, 3  # hopper's


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
