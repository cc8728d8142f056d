"""The LSTM, GRU and memoryless-MLP baselines: on DeMa's tokens, recurrent steps equal the full
sequence forward, the backbones equal the LSTM and GRU equations written out, their sizes and
carried states are what models/cost.py says, checkpoints reopen in a new process, and the burn-in
masks exactly the first steps of a window."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dema_lab.models import (
    BatchPolicy,
    ModelConfig,
    Policy,
    build_model,
    carried_state_bytes,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)
from dema_lab.models.cost import parameter_count, step_macs
from dema_lab.training.objective import burn_in_mask, masked_mse, train_step

SD, AD = 5, 2


def small(arch, **kw):
    return ModelConfig(**{"arch": arch, "state_dim": SD, "act_dim": AD, "K": 4, "d_model": 16, "n_layer": 2, **kw})


def window(b=2, T=7, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return dict(
        states=torch.randn(b, T, SD, generator=g, dtype=dtype),
        actions=torch.rand(b, T, AD, generator=g, dtype=dtype) * 2 - 1,
        returns_to_go=torch.randn(b, T, 1, generator=g, dtype=dtype),
        timesteps=torch.arange(T).repeat(b, 1),
    )


def lstm_oracle(rnn, x):
    """torch.nn.LSTM's documented equations, one token and one layer at a time. x (b, L, d)."""
    for layer in range(rnn.num_layers):
        W, U = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        bias = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
        h = c = x.new_zeros(x.shape[0], rnn.hidden_size)
        out = []
        for t in range(x.shape[1]):
            i, f, g, o = (x[:, t] @ W.T + h @ U.T + bias).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        x = torch.stack(out, 1)
    return x


def gru_oracle(rnn, x):
    """torch.nn.GRU's documented equations (the reset gate inside the hidden product's n)."""
    for layer in range(rnn.num_layers):
        W, U = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        bi, bh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
        h = x.new_zeros(x.shape[0], rnn.hidden_size)
        out = []
        for t in range(x.shape[1]):
            xr, xz, xn = (x[:, t] @ W.T + bi).chunk(3, -1)
            hr, hz, hn = (h @ U.T + bh).chunk(3, -1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            out.append(h)
        x = torch.stack(out, 1)
    return x


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_backbone_is_the_written_out_recurrence(arch):
    torch.manual_seed(0)
    model = build_model(small(arch)).double().eval()
    tokens = model.embed(**window(dtype=torch.float64))
    oracle = (lstm_oracle if arch == "lstm" else gru_oracle)(model.rnn, tokens)
    torch.testing.assert_close(model.backbone(tokens), model.norm_f(oracle), atol=1e-12, rtol=0)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
@pytest.mark.parametrize("layout,order", [("B3LD", "RSA"), ("B3LD", "RAS"), ("BL3D", "RSA")])
def test_recurrent_steps_equal_the_full_sequence_forward(arch, layout, order):
    """A policy acting RNN-like over an episode chooses, at every step, the action the full-sequence
    forward over the whole episode so far predicts (the Transformer-like mode with K = the
    episode's length), to 1e-5 in float64."""
    torch.manual_seed(0)
    T = 9
    model = build_model(small(arch, K=T, layout=layout, token_order=order)).double()
    policies = {
        m: Policy(model, m, state_mean=np.full(SD, 0.1), state_std=np.full(SD, 2.0)) for m in ("rnn", "transformer")
    }
    for p in policies.values():
        p.reset(3600.0)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(T):
        obs, reward = rng.normal(size=SD), rng.normal()
        acts = {m: p.act(obs) for m, p in policies.items()}
        for p in policies.values():
            p.observe(reward)
        diffs.append(np.abs(acts["transformer"] - acts["rnn"]).max())
    assert max(diffs) < 1e-5, diffs


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_a_short_window_forgets_what_the_recurrent_state_keeps(arch):
    """The same weights acting Transformer-like on a 3-step window agree with the recurrent policy
    while t < 3 and differ after: the window restarts from a zero state, the recurrence does not."""
    torch.manual_seed(1)
    model = build_model(small(arch, K=3)).double()
    rnn, window3 = Policy(model, "rnn"), Policy(model, "transformer")
    rng = np.random.default_rng(1)
    for p in (rnn, window3):
        p.reset(1000.0)
    diffs = []
    for _ in range(8):
        obs = rng.normal(size=SD)
        a, b = rnn.act(obs), window3.act(obs)
        window3.actions[-1] = a  # one history for both
        diffs.append(np.abs(a - b).max())
        for p in (rnn, window3):
            p.observe(0.5)
    assert max(diffs[:3]) < 1e-10 and min(diffs[3:]) > 1e-6, diffs


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_batched_rnn_acting_matches_one_policy_per_episode_and_drops_rows(arch):
    torch.manual_seed(0)
    model = build_model(small(arch)).double()
    batch = BatchPolicy(model, "rnn")
    singles = [Policy(model, "rnn") for _ in range(3)]
    batch.reset([1000.0, 2000.0, 3000.0])
    for p, target in zip(singles, (1000.0, 2000.0, 3000.0)):
        p.reset(target)
    rng = np.random.default_rng(0)
    alive = [0, 1, 2]
    for t in range(6):
        obs = rng.normal(size=(3, SD))
        acts = batch.act(obs[alive])
        for row, i in enumerate(alive):
            np.testing.assert_allclose(acts[row], singles[i].act(obs[i]), atol=1e-10)
            singles[i].observe(1.0)
        batch.observe(np.ones(len(alive)))
        if t == 2:  # episode 1 ends
            batch.keep(np.array([True, False, True]))
            alive = [0, 2]


@pytest.mark.parametrize("arch", ["dema", "lstm", "gru"])
def test_carried_state_bytes_are_the_allocated_state(arch):
    model = build_model(small(arch, d_state=4))
    state = model.allocate_state(1)
    tensors = state.tensors() if arch != "dema" else [t for s in state for t in (s.conv, s.ssm)]
    assert sum(t.numel() * t.element_size() for t in tensors) == carried_state_bytes(model.cfg)
    assert carried_state_bytes(model.cfg, "transformer") == 4 * 4 * (SD + AD + 2)  # K steps of R, s, a, t


@pytest.mark.parametrize("arch", ["lstm", "gru", "mlp"])
@pytest.mark.parametrize("layout,order", [("B3LD", "RSA"), ("B3LD", "RAS"), ("B3LD", "ARS"), ("BL3D", "RSA")])
def test_parameter_counts_are_counted_and_comparable_to_dema(arch, layout, order):
    cfg = ModelConfig(arch=arch, d_model=128, n_layer=3, layout=layout, token_order=order)
    dema = ModelConfig(arch="dema", d_model=128, n_layer=3, layout=layout, token_order=order)
    assert count_parameters(cfg) == parameter_count(cfg)
    assert 0.8 < parameter_count(cfg) / parameter_count(dema) < 1.25
    if arch != "mlp":  # the recurrent step costs about DeMa's
        assert 0.7 < step_macs(cfg, "rnn") / step_macs(dema, "rnn") < 1.3


@pytest.mark.parametrize("order", ["RSA", "RAS", "ARS"])
def test_mlp_sees_only_the_current_state_and_return(order):
    """Changing every earlier step, and the current action, leaves the MLP's prediction at the last
    step unchanged; changing the current return or state changes it."""
    torch.manual_seed(0)
    model = build_model(small("mlp", token_order=order, dropout=0.0)).eval()
    x = window()
    base = model(**x)[:, -1]
    y = {k: v.clone() for k, v in x.items()}
    for k in ("states", "actions", "returns_to_go"):
        y[k][:, :-1] = torch.randn_like(y[k][:, :-1])
    y["actions"][:, -1] += 1.0
    torch.testing.assert_close(model(**y, prev_action=torch.ones(2, AD))[:, -1], base)
    for k in ("states", "returns_to_go"):
        z = {**x, k: x[k].clone()}
        z[k][:, -1] += 1.0
        assert not torch.allclose(model(**z)[:, -1], base)


@pytest.mark.parametrize("arch", ["lstm", "gru", "mlp"])
def test_no_attention_is_asked_for_and_none_recorded(arch):
    model = build_model(small(arch))
    with pytest.raises(ValueError, match="no hidden attention"):
        model.attention(**window())
    mode = "transformer" if arch == "mlp" else "rnn"
    policy = Policy(model, mode, attention="minmax")
    policy.act(np.zeros(SD))
    assert policy.attention is None
    with pytest.raises(ValueError, match="no hidden attention"):
        policy.channel_attention()
    if arch == "mlp":
        with pytest.raises(ValueError, match="can only run Transformer-like"):
            Policy(model, "rnn")


def test_checkpoint_round_trip_in_a_new_process(tmp_path):
    """LSTM, GRU and MLP checkpoints reopen in a new process as the same arch with the same outputs."""
    torch.manual_seed(0)
    expected, paths = {}, {}
    x = window(b=1, T=4)
    for arch in ("lstm", "gru", "mlp"):
        model = build_model(small(arch)).eval()
        paths[arch] = str(save_checkpoint(tmp_path / f"{arch}.safetensors", model, meta={"step": 3}))
        expected[arch] = model(**x).flatten().tolist()
        assert load_checkpoint(paths[arch]).config == model.cfg
    code = f"""
import json, torch
from dema_lab.models import load_checkpoint
out = {{}}
for arch, path in {paths!r}.items():
    ck = load_checkpoint(path, map_location='cpu')
    g = torch.Generator().manual_seed(0)
    x = dict(states=torch.randn(1, 4, {SD}, generator=g), actions=torch.rand(1, 4, {AD}, generator=g) * 2 - 1,
             returns_to_go=torch.randn(1, 4, 1, generator=g), timesteps=torch.arange(4)[None])
    out[arch] = [ck.config.arch, ck.model.eval()(**x).flatten().tolist()]
print(json.dumps(out))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for arch, (arch_back, values) in json.loads(out).items():
        assert arch_back == arch and values == pytest.approx(expected[arch], abs=1e-7)


def test_burn_in_masks_exactly_the_first_steps():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    out = burn_in_mask(mask, 2)
    assert out.tolist() == [[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]] and mask[0, 0] == 1  # a copy
    assert burn_in_mask(mask, 0) is mask


@pytest.mark.parametrize("burn_in", [0, 3])
def test_burn_in_trains_on_the_later_steps_of_predictions_that_saw_the_first(burn_in):
    """With burn_in N a training step's loss is the MSE of steps N.. only, of the predictions of the
    whole window (which did see the first N steps: they warm the state up)."""
    torch.manual_seed(0)
    model = build_model(small("lstm", K=6))
    x = window(T=6)
    pred = model(**x).detach()
    late = {k: v[:, burn_in:] for k, v in x.items()}
    if burn_in:  # without the first steps the later predictions differ: they did warm the state
        assert not torch.allclose(model(**late).detach(), pred[:, burn_in:])
    expected = masked_mse(pred[:, burn_in:], x["actions"][:, burn_in:], torch.ones(2, 6 - burn_in))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss, _ = train_step(model, {**x, "mask": torch.ones(2, 6)}, opt, sched, grad_clip=1.0, burn_in=burn_in)
    assert loss == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("arch", ["lstm", "gru", "mlp"])
def test_ablations_are_refused_in_one_line_and_none_offered(arch):
    from dema_lab.evaluation.ablation import METHODS, evaluate_ablation, methods_for
    from dema_lab.models import Checkpoint

    model = build_model(small(arch))
    assert methods_for(model) == ("none",)
    ck = Checkpoint(model=model, config=model.cfg, meta={"env": "hopper"}, extra={})
    for method in ("mixer-zeros", "alpha-random"):
        assert method in METHODS
        with pytest.raises(ValueError, match=f"a '{arch}' model has none \\(only DeMa has hidden attention"):
            evaluate_ablation(ck, method)


@pytest.mark.parametrize("arch", ["lstm", "gru", "mlp"])
def test_the_memory_estimate_counts_the_baselines_and_refuses_what_cannot_fit(arch):
    from dema_lab.training.memory import check_memory, training_bytes

    cfg = small(arch, K=20, d_model=64)
    need = training_bytes(cfg, 32)
    assert need > 4 * 4 * count_parameters(cfg)  # weights, gradients, two AdamW moments, activations
    assert training_bytes(small(arch, K=40, d_model=64), 32) > need  # longer windows, more activations
    assert check_memory(cfg, 32, torch.device("cpu"), available=need) == need
    with pytest.raises(ValueError, match="lower --batch_size"):
        check_memory(cfg, 32, torch.device("cpu"), available=need - 1)


@pytest.mark.parametrize("arch,mode", [("gru", "rnn"), ("mlp", "transformer")])
def test_a_baseline_run_trains_evaluates_and_records_without_attention(tiny_config, arch, mode):
    """A tiny run trains, is evaluated in its default mode (GRU RNN-like, MLP Transformer-like),
    records an episode without attention, and its store says what it is."""
    from dema_lab.analysis.runs import run_summary_row
    from dema_lab.models.cost import carried_state_bytes as state_bytes
    from dema_lab.training import train

    cfg = tiny_config.replace(arch=arch, run_id=f"tiny-{arch}", burn_in=1)
    run = train(cfg, progress=False, log=lambda *_: None)
    assert run.attrs["status"] == "finished"
    assert list(run.evals().mode.values) == [mode]
    names = run.rollouts()
    assert len(names) == 2  # one recorded episode per target
    for name in names:
        episode = run.open("rollout", name)
        assert episode.attrs["mode"] == mode and "attention" not in episode and episode.sizes["step"] > 0
    assert not run.decay() and not run.paper_attention()
    prov = run.attrs["provenance"]
    model_cfg = ModelConfig.from_dict(prov["model_config"])
    assert prov["carried_state_bytes"] == {mode: state_bytes(model_cfg, mode)}
    row = run_summary_row(run)
    assert row["family"] == f"{arch.upper()} B3LD" and row["score_mode"] == mode


@pytest.mark.parametrize("arch", ["lstm", "gru", "mlp"])
def test_discrete_atari_baselines_step_as_their_sequence(arch):
    """On the Atari path (Nature CNN, action indices, logits, tokens (a, R, s)): the recurrent
    baselines' steps give the sequence's logits, and every baseline's policy picks valid indices."""
    torch.manual_seed(0)
    obs = (4, 84, 84)
    cfg = ModelConfig(
        arch=arch, state_dim=4 * 84 * 84, act_dim=1, obs_shape=obs, n_actions=4, K=3, d_model=16, n_layer=1,
        token_order="ARS", embed_norm="none", dropout=0.0,
    )  # fmt: skip
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    x = dict(
        states=torch.randint(0, 256, (1, 3, *obs), generator=g, dtype=torch.uint8),
        actions=torch.randint(0, 4, (1, 3, 1), generator=g).float(),
        returns_to_go=torch.rand(1, 3, 1, generator=g) * 50,
        timesteps=torch.arange(3)[None],
    )
    seq = model(**x)  # (1, 3, n_actions) logits
    assert seq.shape == (1, 3, 4)
    if cfg.recurrent:
        state = model.allocate_state(1)
        for t in range(3):
            prev = x["actions"][:, t - 1] if t else torch.zeros(1, 1)
            s, r, ts = x["states"][:, t], x["returns_to_go"][:, t], x["timesteps"][:, t]
            tok = model.embed.step_tokens(s, prev, r, ts, first=t == 0)
            torch.testing.assert_close(model.predict_action(model.step(tok, state)), seq[:, t], atol=2e-5, rtol=1e-4)
    policy = Policy(model, "rnn" if cfg.recurrent else "transformer")
    for t in range(3):
        a = policy.act(x["states"][0, t].numpy())
        assert a.shape == (1,) and a[0] in (0, 1, 2, 3)
        policy.observe(1.0)


@pytest.mark.parametrize("arch", ["lstm", "mlp"])
def test_relevance_of_a_baseline_by_the_methods_without_attention(arch):
    """Gradient x input and occlusion explain a baseline's decision; the attention methods are
    refused in one line naming those it takes."""
    from dema_lab.analysis.explain import relevance

    torch.manual_seed(0)
    model = build_model(small(arch, dropout=0.0))
    win = window(b=1, T=4)
    for method in ("gradient", "occlusion"):
        ds = relevance(model, win, method)
        values = ds["relevance"].values[0]
        assert np.isfinite(values).all() and np.abs(values).max() > 0
        if arch == "mlp":  # memoryless: only the current return and state tokens matter (occlusion's
            # batched forward differs from batch 1 by float rounding, ~1e-8: not a dependence)
            moving = set(ds.token_label.values[np.abs(values) > 1e-5 * np.abs(values).max()])
            assert moving == {"R0", "s0"}, moving
    for method in ("alpha", "unified", "rollout", "attribution"):
        with pytest.raises(ValueError, match=f"a '{arch}' model has no hidden attention; use one of gradient"):
            relevance(model, win, method)
