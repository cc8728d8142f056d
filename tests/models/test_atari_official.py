"""Importing the official Atari DeMa (atari/models/mamba.py DMamba; a bare state_dict saved as
models/{epoch}.pkl): checked against a float64 numpy reference of the official forward (the Nature
CNN on frames / 255, tanh embeddings, tokens (a_{t-1}, R_t, s_t), MixerModel, head without bias) and
of its recurrent get_action. The mixer reference is test_official's."""

import math
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from helpers.official import RefMixer, linear, rmsnorm  # the official mamba_simple / RMSNorm reference
from numpy.lib.stride_tricks import sliding_window_view

from dema_lab.integrations import import_official
from dema_lab.models.official import OfficialCheckpointError, UnsafeCheckpointError

N_ACT, E, D = 4, 32, 16


def official_atari_sd(seed=0, n_layer=2, d_state=8, d_conv=4, expand=2):
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def lin(name, n_out, n_in, bias=True):
        sd[f"{name}.weight"] = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in)
        if bias:
            sd[f"{name}.bias"] = torch.randn(n_out, generator=g) * 0.1

    for i, (o, c, k) in zip((0, 2, 4), ((32, 4, 8), (64, 32, 4), (64, 64, 3))):
        sd[f"state_encoder.{i}.weight"] = torch.randn(o, c, k, k, generator=g) / math.sqrt(c * k * k)
        sd[f"state_encoder.{i}.bias"] = torch.randn(o, generator=g) * 0.1
    lin("state_encoder.7", E, 3136)
    lin("ret_emb.0", E, 1)
    sd["action_embeddings.0.weight"] = torch.randn(N_ACT, E, generator=g)
    lin("backbone.embedding", D, E)
    Di, R = expand * D, math.ceil(D / 16)
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
        lin(p + "mixer.in_proj", 2 * Di, D, bias=False)
        sd[p + "mixer.conv1d.weight"] = torch.randn(Di, 1, d_conv, generator=g) * 0.5
        sd[p + "mixer.conv1d.bias"] = torch.randn(Di, generator=g) * 0.1
        lin(p + "mixer.x_proj", R + 2 * d_state, Di, bias=False)
        lin(p + "mixer.dt_proj", Di, R)
        dt = torch.exp(torch.rand(Di, generator=g) * (math.log(0.5) - math.log(0.01)) + math.log(0.01))
        sd[p + "mixer.dt_proj.bias"] = dt + torch.log(-torch.expm1(-dt))
        sd[p + "mixer.A_log"] = torch.log(torch.arange(1, d_state + 1.0)).repeat(Di, 1)
        sd[p + "mixer.D"] = 1 + 0.1 * torch.randn(Di, generator=g)
        lin(p + "mixer.out_proj", D, Di, bias=False)
    sd["backbone.norm_f.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
    lin("head", N_ACT, D, bias=False)
    return sd


class RefAtari:
    """DMamba.forward(running=True) and get_action, in float64 numpy."""

    def __init__(self, sd):
        self.p = {k: v.double().numpy() for k, v in sd.items()}
        n = len({k.split(".")[2] for k in sd if k.startswith("backbone.layers.")})
        self.mixers = [RefMixer(self.p, f"backbone.layers.{i}.mixer.") for i in range(n)]

    def cnn(self, frames):
        x = frames.astype(np.float64) / 255.0  # the official env's div_(255)
        for i, s in ((0, 4), (2, 2), (4, 1)):
            w, b = self.p[f"state_encoder.{i}.weight"], self.p[f"state_encoder.{i}.bias"]
            k = w.shape[-1]
            win = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]  # (C, H', W', k, k)
            x = np.maximum(np.einsum("chwij,ocij->ohw", win, w) + b[:, None, None], 0.0)
        return np.tanh(linear(self.p, "state_encoder.7", x.reshape(-1)))

    def tokens(self, frames, prev_actions, rtgs):
        out = []
        for f, a, r in zip(frames, prev_actions, rtgs):
            out += [
                np.tanh(self.p["action_embeddings.0.weight"][int(a)]),
                np.tanh(linear(self.p, "ret_emb.0", np.array([r]))),
                self.cnn(f),
            ]
        return linear(self.p, "backbone.embedding", np.array(out))  # (3T, D)

    def forward(self, frames, prev_actions, rtgs):
        x = self.tokens(frames, prev_actions, rtgs)
        for i, m in enumerate(self.mixers):
            x = x + m.forward(rmsnorm(x, self.p[f"backbone.layers.{i}.norm.weight"]))
        return rmsnorm(x, self.p["backbone.norm_f.weight"])[2::3] @ self.p["head.weight"].T  # (T, n_actions)

    def get_action_episode(self, frames, prev_actions, rtgs):
        st = [m.new_state() for m in self.mixers]
        out = []
        for t in range(len(frames)):
            for x in self.tokens(frames[t : t + 1], prev_actions[t : t + 1], rtgs[t : t + 1]):
                for i, m in enumerate(self.mixers):
                    x = x + m.step(rmsnorm(x, self.p[f"backbone.layers.{i}.norm.weight"]), st[i])
            out.append(rmsnorm(x, self.p["backbone.norm_f.weight"]) @ self.p["head.weight"].T)
        return np.array(out)


def _episode(T=5, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T, 4, 84, 84)).astype(np.uint8)
    actions = rng.integers(0, N_ACT, T)
    prev = np.concatenate([[0], actions[:-1]])  # a_{-1} = 0, as trainer_atari.py
    rtgs = 90.0 - np.cumsum(rng.integers(0, 2, T))
    return frames, actions, prev, rtgs


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    sd = official_atari_sd()
    path = tmp_path_factory.mktemp("atari") / "models" / "5.pkl"
    path.parent.mkdir()
    torch.save(sd, path)  # trainer_atari.py: a bare state_dict
    return sd, import_official(path, env="breakout")


def test_config_is_inferred(imported):
    _, ck = imported
    cfg = ck.config
    assert (cfg.arch, cfg.token_order, cfg.obs_shape, cfg.n_actions, cfg.K, cfg.embed_dim, cfg.d_model) == (
        "dema",
        "ARS",
        (4, 84, 84),
        N_ACT,
        30,
        E,
        D,
    )
    assert (cfg.n_layer, cfg.d_state, cfg.d_conv, cfg.expand, cfg.embed_norm) == (2, 8, 4, 2, "none")
    assert ck.meta["official_class"] == "DMamba" and ck.meta["rtg_scale"] == 1.0 and ck.meta["env"] == "breakout"
    assert ck.meta["dropped"] == []


def test_logits_equal_the_official_forward_and_get_action(imported):
    sd, ck = imported
    ref = RefAtari(sd)
    frames, actions, prev, rtgs = _episode()
    T = len(frames)
    want = ref.forward(frames, prev, rtgs)
    m = ck.model.double()
    try:
        with torch.no_grad():
            got = m(
                torch.from_numpy(frames)[None],
                torch.from_numpy(actions).double()[None, :, None],
                torch.from_numpy(rtgs)[None, :, None],
                torch.arange(T)[None],
            )[0]
        np.testing.assert_allclose(got.numpy(), want, atol=1e-9)
        rec = ref.get_action_episode(frames, prev, rtgs)
        np.testing.assert_allclose(rec, want, atol=1e-9)  # the reference is consistent
        state, steps = m.allocate_state(1), []
        for t in range(T):
            tok = m.embed.step_tokens(
                torch.from_numpy(frames[t])[None].double(),
                torch.tensor([[float(prev[t])]]),
                torch.tensor([[rtgs[t]]]),
                torch.tensor([t]),
                first=t == 0,
            )
            steps.append(m.predict_action(m.step(tok, state))[0].detach().numpy())
        np.testing.assert_allclose(np.array(steps), rec, atol=1e-9)
        assert np.abs(np.diff(want, axis=0)).max() > 1e-3
    finally:
        m.float()


def test_bad_atari_checkpoints_are_clear(tmp_path):
    sd = official_atari_sd()
    sd["head.bias"] = torch.zeros(N_ACT)
    torch.save(sd, tmp_path / "1.pkl")
    with pytest.raises(OfficialCheckpointError, match="head is .* with a bias"):
        import_official(tmp_path / "1.pkl")
    sd = official_atari_sd()
    del sd["state_encoder.7.weight"]
    torch.save(sd, tmp_path / "2.pkl")
    with pytest.raises(OfficialCheckpointError, match="missing state_encoder.7.weight"):
        import_official(tmp_path / "2.pkl")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "3.pkl", "wb") as f:
        pickle.dump({"head.weight": Evil()}, f)
    with pytest.raises(UnsafeCheckpointError):
        import_official(tmp_path / "3.pkl")
