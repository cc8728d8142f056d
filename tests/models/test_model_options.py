"""The official DeMa's model options (token order RAS, projected embeddings, no embedding norm,
left padding), the official training form and the 'official' preset."""

import numpy as np
import pytest
import torch

from dema_lab.analysis import token_labels
from dema_lab.models import ModelConfig, Policy, build_model, cost_summary
from dema_lab.training import PRESETS, TrainConfig
from dema_lab.training.objective import training_form

OFFICIAL = dict(token_order="RAS", embed_dim=24, d_model=16, embed_norm="none", window_padding="left")


def _window(b=2, T=5, sd=4, ad=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        states=torch.randn(b, T, sd, generator=g),
        actions=torch.rand(b, T, ad, generator=g) * 2 - 1,
        returns_to_go=torch.randn(b, T, 1, generator=g),
        timesteps=torch.arange(T).repeat(b, 1),
    )


@pytest.mark.parametrize("layout", ["B3LD", "BL3D"])
def test_ras_action_never_sees_its_own_action(layout):
    """a_t is predicted from s_t's token: changing a_t (or later steps) leaves prediction t unchanged,
    changing a_{t-1} changes it."""
    torch.manual_seed(0)
    cfg = ModelConfig(state_dim=4, act_dim=2, K=5, d_state=8, layout=layout, **OFFICIAL)
    model = build_model(cfg).eval()
    x = _window()
    base = model(**x)
    t = 2
    later = {**x, "actions": x["actions"].clone()}
    later["actions"][:, t:] += 1.0
    assert torch.allclose(model(**later)[:, t], base[:, t], atol=1e-6)
    earlier = {**x, "actions": x["actions"].clone()}
    earlier["actions"][:, t - 1] += 1.0
    assert not torch.allclose(model(**earlier)[:, t], base[:, t], atol=1e-4)
    # the action before the window is the first step's a_{t-1} slot
    moved = model(**x, prev_action=torch.ones(2, 2))
    assert not torch.allclose(moved[:, 0], base[:, 0], atol=1e-4)


def test_ras_tokens_are_r_a_s_with_the_previous_action():
    """The B3LD-RAS sequence is (R_t, a_{t-1}, s_t) per step, each from its own embedding, projected."""
    torch.manual_seed(1)
    cfg = ModelConfig(state_dim=4, act_dim=2, K=5, d_state=8, timestep_embedding=True, **OFFICIAL)
    model = build_model(cfg).eval()
    e = model.embed
    assert e.embed_ln is None and e.embed_token.in_features == 24 and e.embed_token.out_features == 16
    x = _window(b=1, T=3)
    prev = torch.full((1, 2), 0.5)
    tok = e(x["states"], x["actions"], x["returns_to_go"], x["timesteps"], prev)  # (1, 9, 16)
    W = e.embed_token
    for t in range(3):
        time = e.embed_timestep.weight[t]
        a_prev = prev[0] if t == 0 else x["actions"][0, t - 1]
        want = [
            W(e.embed_return(x["returns_to_go"][0, t]) + time),
            W(e.embed_action(a_prev) + time),
            W(e.embed_state(x["states"][0, t]) + time),
        ]
        for k in range(3):
            torch.testing.assert_close(tok[0, 3 * t + k], want[k])


def test_left_padded_window_and_token_count():
    torch.manual_seed(2)
    cfg = ModelConfig(state_dim=4, act_dim=2, K=6, d_state=8, **OFFICIAL)
    policy = Policy(build_model(cfg), "transformer", attention="abs")
    policy.reset(1000.0)
    a0 = policy.act(np.ones(4, np.float32))
    policy.observe(1.0)
    policy.act(np.full(4, 2.0, np.float32))
    w = policy.window()
    assert w["states"].shape == (1, 6, 4)  # padded to K steps
    assert torch.all(w["states"][0, :4] == 0) and torch.all(w["timesteps"][0, :4] == 0)
    assert torch.all(w["returns_to_go"][0, :4] == 0)
    torch.testing.assert_close(w["actions"][0, 4], torch.as_tensor(a0))  # a_0 in step 0's slot (shifted by the model)
    assert policy.attention.shape == (cfg.n_layer, 18, 18)  # 3K tokens, the pads included
    assert cfg.window_tokens(6) == 18 and ModelConfig(K=6).window_tokens(6) == 17


def test_ras_labels_name_each_tokens_own_step():
    lab = token_labels(ModelConfig(K=2, token_order="RAS"))
    assert lab["label"] == ["R-1", "a-2", "s-1", "R0", "a-1", "s0"]
    assert token_labels(ModelConfig(K=2))["label"] == ["R-1", "s-1", "a-1", "R0", "s0"]


def test_previous_rtg_training_form_is_the_official_del_r():
    """rtg_form 'previous': step t is (R_{t-1}, a_{t-1}, s_t) with t-1's timestep, targets a_1..a_{K-1}."""
    x = _window(b=2, T=5)
    x["mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    y = training_form(x, "previous")
    torch.testing.assert_close(y["states"], x["states"][:, 1:])
    torch.testing.assert_close(y["returns_to_go"], x["returns_to_go"][:, :-1])
    torch.testing.assert_close(y["timesteps"], x["timesteps"][:, :-1])
    torch.testing.assert_close(y["prev_action"], x["actions"][:, 0])
    assert y["mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # through the RAS embedding, step t's action slot is a_{t-1}: the official actions[:, :-1]
    cfg = ModelConfig(state_dim=4, act_dim=2, K=5, **OFFICIAL)
    slots = build_model(cfg).embed.previous_actions(y["actions"], y["prev_action"])
    torch.testing.assert_close(slots, x["actions"][:, :-1])
    assert training_form(x, "current") is x
    with pytest.raises(ValueError, match="needs token_order RAS"):
        TrainConfig.from_flat(rtg_form="previous")


def test_official_preset_is_the_papers_model():
    cfg = TrainConfig.from_preset("official", dataset="hopper-medium")
    assert (
        cfg.optim.lr,
        cfg.optim.weight_decay,
        cfg.optim.warmup_steps,
        cfg.optim.grad_clip,
        cfg.optim.batch_size,
        cfg.model.K,
        cfg.optim.steps,
    ) == (
        1e-4,
        1e-4,
        10_000,
        0.25,
        64,
        20,
        100_000,
    )
    assert cfg.optim.decay_all and cfg.data.rtg_form == "previous"
    mc = cfg.model_config(11, 3)  # Hopper
    n = cost_summary(mc)["parameters"]
    # reference.md: the official DeMa has about 165k parameters on hopper; its two unused heads
    # (predict_state 64x11+11, predict_return 64+1) are not built here
    assert n + (64 * 11 + 11) + 65 == pytest.approx(165_000, rel=0.01)
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.from_preset("nope")
    assert set(PRESETS) >= {"official"}


def test_decay_all_puts_weight_decay_on_every_parameter():
    from dema_lab.training.objective import make_optimizer

    cfg = TrainConfig.from_flat(
        arch="dema", d_model=16, d_state=4, n_layer=1, K=3, **{k: v for k, v in OFFICIAL.items() if k != "d_model"}
    )
    model = build_model(cfg.model_config(4, 2))
    opt, _ = make_optimizer(model, cfg.optim)
    assert sum(p.numel() for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]) > 0
    opt, _ = make_optimizer(model, cfg.replace(decay_all=True).optim)
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups if g["params"])
    assert sum(p.numel() for g in opt.param_groups if g["weight_decay"] for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(token_order="SAR"), "token_order"),
        (dict(embed_dim=-1), "embed_dim"),
        (dict(window_padding="right"), "window_padding"),
        (dict(activation="tanh"), "activation"),
        (dict(embed_norm="rms"), "embed_norm"),
    ],
)
def test_bad_options_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**bad)


def test_train_with_the_official_preset_from_the_cli(hopper_small, tmp_path):
    """`dema-lab train --preset official` trains the official model; flags override the preset; the
    run records its RAS labels and the stored attention equals the attention recomputed from its
    checkpoint through the left-padded window."""
    import dema_lab
    from dema_lab.cli.main import main
    from dema_lab.evaluation.rollout import replay_attention
    from dema_lab.models import load_checkpoint

    store = tmp_path / "store"
    rc = main(
        [
            "train",
            "--preset",
            "official",
            "--dataset",
            str(hopper_small),
            "--store",
            str(store),
            "--run_id",
            "off",
            "--steps",
            "4",
            "--K",
            "4",
            "--batch_size",
            "8",
            "--eval_every",
            "0",
            "--eval_episodes",
            "1",
            "--eval_max_steps",
            "8",
            "--render_size",
            "0",
            "--decay_windows",
            "4",
            "--checkpoint_every",
            "4",
            "--quiet",
        ]
    )
    assert rc == 0
    run = dema_lab.store.zarr_store.RunStore(str(store), mode="r").run("off")
    assert run.config["token_order"] == "RAS" and run.config["decay_all"] and run.config["K"] == 4
    assert run.config["lr"] == 1e-4 and run.config["embed_dim"] == 128
    names = run.published("rollout")
    ep = run.open("rollout", names[0]).load()
    assert list(ep.query_label.values[-3:]) == ["R0", "a-1", "s0"]
    ck = load_checkpoint(run.checkpoint_bytes(run.checkpoints()[-1]))
    step = 6
    want = replay_attention(ck.model, ep, step, "minmax", ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy())
    np.testing.assert_allclose(ep.attention.isel(step=step).values, want, atol=1e-5)


def test_left_padded_training_windows_are_the_official_get_batch(hopper_small):
    """padding='left' puts a short window's real steps last, with the official pad values: raw zero
    states (normalised: -mean/std), actions -10, returns-to-go and timesteps 0."""
    from dema_lab.data import WindowSampler, load_dataset

    ds = load_dataset(str(hopper_small), progress=False)
    K = 6
    left = WindowSampler(ds, K, padding="left")
    right = WindowSampler(ds, K)
    end = int(left.ends[0])
    starts = np.array([end - 2, 0])  # 2 real steps at the first episode's end; a full window
    L, R = left.windows(starts), right.windows(starts)
    assert L["mask"][0].tolist() == [False] * 4 + [True] * 2 and L["mask"][1].all()
    torch.testing.assert_close(L["states"][0, 4:], R["states"][0, :2])
    torch.testing.assert_close(L["actions"][0, 4:], R["actions"][0, :2])
    torch.testing.assert_close(L["returns_to_go"][0, 4:], R["returns_to_go"][0, :2])
    assert L["timesteps"][0].tolist() == [0, 0, 0, 0] + R["timesteps"][0, :2].tolist()
    pad_state = torch.as_tensor((0 - left.state_mean) / left.state_std)
    torch.testing.assert_close(L["states"][0, 0], pad_state)
    assert torch.all(L["actions"][0, :4] == -10) and torch.all(L["returns_to_go"][0, :4] == 0)
    for k in ("states", "actions", "returns_to_go", "timesteps", "mask"):
        torch.testing.assert_close(L[k][1], R[k][1])  # a full window is the same either way
    with pytest.raises(ValueError, match="padding"):
        WindowSampler(ds, K, padding="middle")


def test_official_init_is_mamba_ssms_init_weights():
    """Linear biases zero except dt_proj's, embeddings N(0, 0.02), each mixer's out_proj
    kaiming-uniform / sqrt(n_layer): bounded by sqrt(6 / ((1 + 5) * fan_in)) / sqrt(n_layer)."""
    import math

    from dema_lab.models import official_init

    torch.manual_seed(0)
    cfg = ModelConfig(state_dim=4, act_dim=2, K=3, d_state=8, n_layer=4, timestep_embedding=True, **OFFICIAL)
    model = build_model(cfg)
    dt_bias = [b.mixer.dt_proj.bias.clone() for b in model.layers]
    official_init(model)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and m.bias is not None and not name.endswith("dt_proj"):
            assert torch.all(m.bias == 0), name
    for b, before in zip(model.layers, dt_bias):
        torch.testing.assert_close(b.mixer.dt_proj.bias, before)
        w = b.mixer.out_proj.weight
        bound = math.sqrt(6 / (6 * w.shape[1])) / math.sqrt(cfg.n_layer)
        assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.8 * bound
    assert abs(float(model.embed.embed_timestep.weight.detach().std()) - 0.02) < 0.002
    assert TrainConfig.from_preset("official").optim.init == "official" and TrainConfig().optim.init == "torch"


@pytest.mark.parametrize(
    "bad,match",
    [(dict(K=1), "K >= 2"), (dict(rtg_form="current"), "needs its rtg_form"), (dict(init="xavier"), "init")],
)
def test_official_preset_combinations_that_cannot_work_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_preset("official", **bad)
