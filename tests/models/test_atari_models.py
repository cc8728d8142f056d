"""Discrete-action DeMa and DT with the Nature-DQN CNN (Atari): shapes, token order (a, R, s),
causality, both inference modes, hidden attention, ablations, decay statistics, the loss, presets."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dema_lab.analysis import decay_statistics, token_labels
from dema_lab.evaluation.ablation import ablate
from dema_lab.models import ModelConfig, build_model, count_parameters
from dema_lab.models.cnn import NatureCNN
from dema_lab.ssm import apply_attention
from dema_lab.training import PRESETS, TrainConfig
from dema_lab.training.objective import lr_factor, make_optimizer, masked_cross_entropy

OBS = (4, 84, 84)


def _model(arch="dema", token_order="ARS", n_layer=2, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch=arch,
        state_dim=4 * 84 * 84,
        act_dim=1,
        obs_shape=OBS,
        n_actions=4,
        K=3,
        d_model=16,
        d_state=4,
        n_layer=n_layer,
        token_order=token_order,
        embed_norm="none",
        **kw,
    )
    return build_model(cfg).eval()


def _inputs(T=3, b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        states=torch.randint(0, 256, (b, T, *OBS), generator=g, dtype=torch.uint8),
        actions=torch.randint(0, 4, (b, T, 1), generator=g).float(),
        returns_to_go=torch.rand(b, T, 1, generator=g) * 50,
        timesteps=torch.arange(T).repeat(b, 1),
    )


def test_nature_cnn_is_the_dqn_encoder():
    torch.manual_seed(0)
    cnn = NatureCNN(OBS, 32)
    x = torch.randint(0, 256, (5, *OBS), dtype=torch.uint8)
    h = x.float() / 255
    for i, s in ((0, 4), (2, 2), (4, 1)):
        h = F.relu(F.conv2d(h, cnn[i].weight, cnn[i].bias, stride=s))
    assert h.shape == (5, 64, 7, 7)  # 3136 features
    ref = torch.tanh(h.flatten(1) @ cnn[7].weight.T + cnn[7].bias)
    torch.testing.assert_close(cnn(x), ref)
    torch.testing.assert_close(cnn(x.reshape(5, -1).float()), ref)  # flat states too
    assert cnn[7].in_features == 3136


def test_centred_frames_subtract_the_data_mean_frame():
    torch.manual_seed(0)
    cnn = NatureCNN(OBS, 32, norm="center")
    mean = torch.rand(84, 84) * 255
    cnn.set_frame_stats(mean.numpy(), 47.0)
    x = torch.randint(0, 256, (3, *OBS), dtype=torch.uint8)
    ref = NatureCNN(OBS, 32)  # the official x / 255, with the same weights
    ref.load_state_dict({k: v for k, v in cnn.state_dict().items() if not k.startswith("frame_")})
    # (x - mean) / std = ((x - mean) * 255 / std) / 255
    torch.testing.assert_close(cnn(x), ref((x.float() - mean) * (255.0 / 47.0)))
    assert set(cnn.state_dict()) - set(ref.state_dict()) == {"frame_mean", "frame_std"}  # saved with it
    with pytest.raises(ValueError, match="mean frame of shape"):
        cnn.set_frame_stats(np.zeros((4, 84, 84)), 1.0)
    with pytest.raises(ValueError, match="norm 'center' only"):
        ref.set_frame_stats(mean, 1.0)
    with pytest.raises(ValueError, match="choose"):
        ModelConfig(state_dim=4 * 84 * 84, act_dim=1, obs_shape=OBS, n_actions=4, frame_norm="mean")


def test_ars_tokens_are_previous_action_return_state():
    m = _model()
    x = _inputs()
    e = m.embed
    tok = e(**x, prev_action=torch.tensor([[2.0], [1.0]]))  # (b, 3T, d)
    a_emb = lambda a: torch.tanh(e.embed_action[0].weight[a.long()[..., 0]])  # noqa: E731
    r_emb = lambda r: torch.tanh(r @ e.embed_return[0].weight.T + e.embed_return[0].bias)  # noqa: E731
    torch.testing.assert_close(tok[:, 0], a_emb(torch.tensor([[2.0], [1.0]])))  # a_{-1} = prev_action
    torch.testing.assert_close(tok[:, 1], r_emb(x["returns_to_go"][:, 0]))
    torch.testing.assert_close(tok[:, 2], e.embed_state(x["states"][:, 0]))
    torch.testing.assert_close(tok[:, 3], a_emb(x["actions"][:, 0]))  # step 1's slot holds a_0
    assert token_labels(m.cfg)["label"][-6:] == ["a-2", "R-1", "s-1", "a-1", "R0", "s0"]


@pytest.mark.parametrize("arch,order", [("dema", "ARS"), ("dema", "RSA"), ("dt", "RSA"), ("dt", "ARS")])
def test_logits_never_see_the_action_they_predict(arch, order):
    m = _model(arch, order)
    x = _inputs()
    logits = m(**x)
    assert logits.shape == (2, 3, 4)
    y = dict(x, actions=x["actions"].clone())
    y["actions"][:, 1] = (y["actions"][:, 1] + 1) % 4
    changed = m(**y)
    torch.testing.assert_close(changed[:, :2], logits[:, :2])  # steps 0, 1 do not see a_1
    assert not torch.allclose(changed[:, 2], logits[:, 2])  # step 2 does


def test_rnn_steps_equal_the_sequence():
    m = _model()
    x = _inputs(T=3, b=1)
    seq = m(**x)  # (1, 3, n_actions)
    state = m.allocate_state(1)
    for t in range(3):
        prev = x["actions"][:, t - 1] if t else torch.zeros(1, 1)
        tok = m.embed.step_tokens(x["states"][:, t], prev, x["returns_to_go"][:, t], x["timesteps"][:, t], first=t == 0)
        out = m.predict_action(m.step(tok, state))
        torch.testing.assert_close(out, seq[:, t], atol=2e-5, rtol=1e-4)


def test_hidden_attention_rebuilds_each_mixer_exactly():
    m = _model().double()
    x = _inputs()
    x["returns_to_go"] = x["returns_to_go"].double()
    seen = {}
    hooks = [
        blk.mixer.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, (inp[0], out)))
        for i, blk in enumerate(m.layers)
    ]
    m(**x)
    for h in hooks:
        h.remove()
    for i, blk in enumerate(m.layers):
        inp, out = seen[i]
        a = blk.mixer.attention_inputs(inp)
        y = apply_attention(a["alpha"], a["u"], a["D"], a["z"])  # (b, d_inner, L)
        torch.testing.assert_close(blk.mixer.out_proj(y.transpose(1, 2)), out, atol=1e-10, rtol=1e-8)
    attn = m.attention(**x, aggregate="abs")
    assert len(attn) == 2 and attn[0].shape == (2, 9, 9)


def test_decay_statistics_and_ablations_work_on_atari_models():
    m = _model()
    x = _inputs(b=3)
    batch = dict(x, mask=torch.ones(3, 3, dtype=torch.bool), prev_action=torch.zeros(3, 1))
    ds = decay_statistics(m, batch)
    assert ds.sizes["layer"] == 2 and list(ds.query_kind.values) == ["R", "s", "a"]
    assert np.isfinite(ds["half_life"].values).all() and np.isfinite(ds["mass"].values[:, :, :7]).all()
    assert ds["mass_by_kind"].attrs["query_kind"] == "s"  # the acting token of (a, R, s)
    with ablate(m, "mixer-zeros") as ab:
        ablated = ab(**x)
        # every mixer outputs 0: the model is embeddings -> norm_f -> head
        tokens = m.embed(**x)
        ref = m.predict_action(m.norm_f(tokens))[:, 2::3]
        torch.testing.assert_close(ablated, ref)


def test_masked_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, generator=g)
    target = torch.randint(0, 4, (2, 3, 1), generator=g).float()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    want = F.cross_entropy(logits[mask], target[mask][:, 0].long())
    torch.testing.assert_close(masked_cross_entropy(logits, target, mask), want)


def test_training_steps_fit_a_tiny_batch():
    from dema_lab.training.objective import make_optimizer, train_step

    m = _model(n_layer=1).train()
    cfg = TrainConfig.from_flat(lr=3e-3, warmup_steps=1, grad_clip=1.0)
    opt, sched = make_optimizer(m, cfg.optim)
    x = _inputs(b=4)
    batch = dict(x, mask=torch.ones(4, 3, dtype=torch.bool), prev_action=torch.zeros(4, 1))
    losses = [train_step(m, batch, opt, sched, 1.0)[0] for _ in range(30)]
    assert losses[0] > 1.0 and losses[-1] < 0.3 * losses[0]


def test_policy_acts_in_breakout_in_both_modes():
    pytest.importorskip("ale_py")
    from dema_lab.envs.make import make_env
    from dema_lab.models import Policy

    m = _model()
    env = make_env("breakout", seed=0)
    try:
        for mode in ("transformer", "rnn"):
            p = Policy(m, mode, rtg_scale=1.0, attention="minmax")
            p.reset(90.0)
            obs, _ = env.reset(seed=0)
            for _ in range(5):
                a = p.act(obs)
                assert a.shape == (1,) and a[0] in (0, 1, 2, 3)
                obs, r, *_ = env.step(a)
                p.observe(r)
            assert p.attention.shape == (2, 9, 9)
    finally:
        env.close()


def test_atari_presets():
    off = TrainConfig.from_preset("atari-official")
    cfg = off.model_config(4 * 84 * 84, 1, OBS, 4)
    assert (cfg.K, cfg.n_layer, cfg.d_model, cfg.d_state, cfg.token_order, cfg.dropout) == (30, 6, 128, 128, "ARS", 0.1)
    n = count_parameters(cfg)
    cnn = (4 * 32 * 64 + 32) + (32 * 64 * 16 + 64) + (64 * 64 * 9 + 64) + (3136 * 128 + 128)
    embeds = (128 + 128) + 4 * 128 + (128 * 128 + 128)  # ret_emb, action_embeddings, backbone.embedding
    d, di, N, r = 128, 256, 128, 8
    layer = d * 2 * di + (di * 4 + di) + di * (r + 2 * N) + (r * di + di) + di * N + di + di * d + d
    assert n == cnn + embeds + 6 * layer + d + d * 4  # + norm_f + head (no bias)
    small = TrainConfig.from_preset("atari-small")
    assert count_parameters(small.model_config(4 * 84 * 84, 1, OBS, 4)) < n / 4
    assert (off.model.frame_norm, small.model.frame_norm) == ("scale", "center")  # official x / 255; dema-lab's
    assert {"atari-official", "atari-small"} <= set(PRESETS)


def _official_atari_lr_mult(step, batch, K, warmup_tokens, final_tokens):
    """atari/mingpt/trainer_atari.py's lr_mult, in tokens: (y >= 0).sum() = batch * K action
    labels are added before each step's lr is computed."""
    tokens = (step + 1) * batch * K
    if tokens < warmup_tokens:
        return tokens / max(1, warmup_tokens)
    progress = (tokens - warmup_tokens) / max(1, final_tokens - warmup_tokens)
    return max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))


def test_atari_official_lr_follows_the_official_cosine_in_tokens():
    cfg = TrainConfig.from_preset("atari-official")
    b, K = cfg.optim.batch_size, cfg.model.K
    warmup_tokens, final_tokens = 3000 * 32, 2 * 500_000 * K * 3  # run_atari.py, 500k transitions
    for step in [0, 1, 198, 398, 399, 400, 1000, 100_000, 187_000, 374_999, 375_000, 450_000, 624_999]:
        want = _official_atari_lr_mult(step, b, K, warmup_tokens, final_tokens)
        assert lr_factor(cfg.optim, step) == pytest.approx(want, rel=1e-9, abs=1e-12), step
    # the floor, and the official rise past final_tokens (10 epochs end at progress ~1.67)
    assert lr_factor(cfg.optim, 374_999) == pytest.approx(0.1)
    assert lr_factor(cfg.optim, 624_999) > 0.7
    # constant after the warm-up otherwise, and the optimiser follows the factor
    small = TrainConfig.from_preset("atari-small")
    assert [lr_factor(small.optim, s) for s in (0, 49, 50, 1499)] == [1 / 50, 1.0, 1.0, 1.0]
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model, cfg.replace(warmup_steps=2, lr_decay_steps=6, steps=6).optim)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [cfg.optim.lr * _official_atari_lr_mult(s, 1, 1, 2, 6) for s in range(6)]
    assert seen == pytest.approx(want)
