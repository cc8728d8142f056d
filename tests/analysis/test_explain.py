"""Explanations of a decision (analysis.explain): the Mamba mixer's whole implicit attention Ω
reproduces the mixer exactly and equals a brute-force Jacobian with the data-dependent factors
held fixed; relevance by every method has the window's tokens and labels, and agrees with
independent re-runs of the model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dema_lab.analysis import token_labels
from dema_lab.analysis.explain import DT_METHODS, METHODS, relevance, unified_attention
from dema_lab.models import ModelConfig, build_model
from dema_lab.ssm import Mamba, aggregate_channels, selective_scan


def tiny(arch="dema", layout="B3LD", order="RSA", d_conv=4, n_actions=0, seed=0):
    """A float64 model (d_model 16, d_state 4, 2 layers, K 5) with a nonzero conv bias and D
    different in every channel, in eval mode."""
    cfg = ModelConfig(
        arch=arch,
        state_dim=3,
        act_dim=1 if n_actions else 2,
        n_actions=n_actions,
        K=5,
        d_model=16,
        d_state=4,
        d_conv=d_conv,
        n_layer=2,
        n_head=2,
        layout=layout,
        token_order=order,
    )
    torch.manual_seed(seed)
    model = build_model(cfg).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Mamba):
                m.conv1d.bias.normal_(0.0, 0.5)
                m.D.uniform_(0.3, 1.7)
    return model


def window(model, T=5, b=2, seed=1):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    if cfg.discrete:
        actions = torch.randint(0, cfg.n_actions, (b, T, 1), generator=g).double()
    else:
        actions = torch.rand(b, T, cfg.act_dim, generator=g, dtype=torch.float64) * 2 - 1
    actions[:, -1] = 0  # the current step's action slot is empty, as Policy.window() leaves it
    return {
        "states": torch.randn(b, T, cfg.state_dim, generator=g, dtype=torch.float64),
        "actions": actions,
        "returns_to_go": torch.rand(b, T, 1, generator=g, dtype=torch.float64) * 3,
        "timesteps": torch.arange(T)[None].repeat(b, 1),
        "prev_action": torch.zeros(b, cfg.act_dim, dtype=torch.float64),
    }


def mixer_calls(model, win):
    """Each mixer with its input (b, L, d_model) and its gate output, what entered out_proj
    (b, d_inner, L), captured by hooks on one forward pass of the whole model."""
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    inputs, gated = [], []
    hooks = [m.register_forward_pre_hook(lambda _m, a: inputs.append(a[0])) for m in mixers]
    hooks += [m.out_proj.register_forward_pre_hook(lambda _m, a: gated.append(a[0].transpose(1, 2))) for m in mixers]
    try:
        with torch.no_grad():
            model(**win)
    finally:
        for h in hooks:
            h.remove()
    return list(zip(mixers, inputs, gated))


def conv_input_of(mixer, h):
    """The x half of in_proj's output, (b, d_inner, L)."""
    return mixer.in_proj(h)[..., : mixer.d_inner].transpose(1, 2)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("d_conv", [4, 2])
@pytest.mark.parametrize("layout", ["B3LD", "BL3D"])
@pytest.mark.parametrize("order", ["RSA", "RAS"])
def test_unified_attention_reproduces_the_gate_output_exactly(d_conv, layout, order):
    model = tiny(layout=layout, order=order, d_conv=d_conv)
    calls = mixer_calls(model, window(model))
    assert len(calls) == 2
    for mixer, h, gate_output in calls:
        assert mixer.conv1d.bias.abs().min() > 0 and mixer.D.abs().min() > 0
        with torch.no_grad():
            omega, beta = unified_attention(mixer, h)
            x = conv_input_of(mixer, h)
            b, d, L = x.shape
            assert omega.shape == (b, d, L, L) and beta.shape == (b, d, L) and omega.dtype == torch.float64
            assert torch.equal(omega, omega.tril())  # causal
            rebuilt = torch.einsum("bdij,bdj->bdi", omega, x) + beta
            assert (rebuilt - gate_output).abs().max() < 1e-10
            assert beta.abs().max() > 1e-3  # the conv bias's term is there and needed
            assert (torch.einsum("bdij,bdj->bdi", omega, x) - gate_output).abs().max() > 1e-3


@pytest.mark.parametrize("layout,order", [("B3LD", "RSA"), ("BL3D", "RAS")])
def test_each_factor_left_out_gives_the_identity_it_promises(layout, order):
    model = tiny(layout=layout, order=order, d_conv=3)
    for mixer, h, gate_output in mixer_calls(model, window(model)):
        with torch.no_grad():
            args = mixer.scan_arguments(h)
            x, c, u = conv_input_of(mixer, h), args["conv_output"], args["u"]
            # without the gate: the scan's output plus D u, run by the scan itself
            ungated = selective_scan(
                u, args["delta"], args["A"], args["B"], args["C"], args["D"], z=None,
                delta_bias=args["delta_bias"], delta_softplus=True,
            )  # fmt: skip
            omega, beta = unified_attention(mixer, h, gate=False)
            assert (torch.einsum("bdij,bdj->bdi", omega, x) + beta - ungated).abs().max() < 1e-10
            # without the conv: Ω maps the conv's output, no affine term
            omega, beta = unified_attention(mixer, h, conv=False)
            assert torch.equal(beta, torch.zeros_like(beta))
            assert (torch.einsum("bdij,bdj->bdi", omega, c) - gate_output).abs().max() < 1e-10
            # without the conv and the SiLU factor: Ω maps the scan's input u = silu(c)
            omega, _ = unified_attention(mixer, h, conv=False, silu=False)
            assert (torch.einsum("bdij,bdj->bdi", omega, u) - gate_output).abs().max() < 1e-10
            # without the SiLU factor alone no identity holds: the operator is another one
            omega_nz, beta_nz = unified_attention(mixer, h, silu=False)
            wrong = torch.einsum("bdij,bdj->bdi", omega_nz, x) + beta_nz
            assert (wrong - gate_output).abs().max() > 1e-3


def oracle_jacobian(mixer, h, detach: bool):
    """Brute force: the mixer's forward for one window (batch 1) rewritten here from its
    definition (torch's own conv1d, the recurrence step by step), differentiated by autograd with
    respect to the conv input, (d_inner, L) -> (d_inner, L, d_inner, L). With `detach` the
    data-dependent factors Δ, B, C, z and the SiLU's σ(c) are those of the real call, held fixed."""
    d, k = mixer.d_inner, mixer.d_conv
    xz = mixer.in_proj(h[0]).detach()  # (L, 2 d_inner)
    x0, z = xz[:, :d].T, xz[:, d:].T  # (d, L)
    L = x0.shape[1]
    # the mixer hands A, D and delta_bias to the scan as float32 values, as mamba_ssm does
    A = -torch.exp(mixer.A_log.detach().float()).double()  # (d, n)
    D = mixer.D.detach().float().double()
    dt_bias = mixer.dt_proj.bias.detach().float().double()

    def conv(x):  # (d, L) -> (d, L), causal
        return F.conv1d(x[None], mixer.conv1d.weight.detach(), mixer.conv1d.bias.detach(), padding=k - 1, groups=d)[
            0, :, :L
        ]

    def factors(u):  # (d, L) -> delta (d, L), B, C (n, L)
        dbl = mixer.x_proj(u.T)
        dt, B, C = torch.split(dbl, [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
        return F.softplus(dt @ mixer.dt_proj.weight.T + dt_bias).T, B.T, C.T

    with torch.no_grad():
        c0 = conv(x0)
        fixed = (torch.sigmoid(c0), *factors(F.silu(c0)))

    def gate_output(x):
        c = conv(x)
        sig = fixed[0] if detach else torch.sigmoid(c)
        u = sig * c
        delta, B, C = fixed[1:] if detach else factors(u)
        state = x.new_zeros(d, A.shape[1])
        ys = []
        for t in range(L):
            state = torch.exp(delta[:, t, None] * A) * state + (delta[:, t] * u[:, t])[:, None] * B[None, :, t]
            ys.append(state @ C[:, t] + D * u[:, t])
        return torch.stack(ys, -1) * F.silu(z)

    return torch.autograd.functional.jacobian(gate_output, x0)


def test_omega_is_the_jacobian_with_the_data_dependent_factors_held_fixed():
    model = tiny(layout="B3LD", order="RSA", d_conv=4)
    mixer, h, _ = mixer_calls(model, window(model, b=1))[1]
    J = oracle_jacobian(mixer, h, detach=True)  # (d, L, d, L)
    d, L = J.shape[:2]
    idx = torch.arange(d)
    per_channel = J[idx, :, idx, :]  # (d, L, L): dg[c, i] / dx[c, j]
    off = J.clone()
    off[idx, :, idx, :] = 0
    assert off.abs().max() == 0  # with the factors fixed the channels do not mix
    with torch.no_grad():
        omega, _ = unified_attention(mixer, h)
    assert (omega[0] - per_channel).abs().max() < 1e-10
    # the plain Jacobian runs through Δ, B, C and σ(c) too, and is another matrix
    plain = oracle_jacobian(mixer, h, detach=False)
    assert (plain[idx, :, idx, :] - per_channel).abs().max() > 1e-3 * per_channel.abs().max()
    assert plain[idx[:, None], :, idx[None, :], :].flatten(0, 1).abs().amax() > 0  # channels mix


# ----------------------------------------------------------------------------- relevance


def current(model, T=5):
    """The current state token's index and the labels of the tokens up to it."""
    cfg = model.cfg
    n = cfg.window_tokens(T)
    return n - 1, token_labels(cfg)["label"][-n:]


@pytest.mark.parametrize("layout,order", [("B3LD", "RSA"), ("B3LD", "RAS"), ("BL3D", "RSA")])
def test_every_method_gives_the_window_tokens_with_their_labels(layout, order):
    model = tiny(layout=layout, order=order)
    win = window(model)
    q, labels = current(model)
    options = {"recency": {"rate": 0.2}}
    for method in METHODS:
        ds = relevance(model, win, method, **options.get(method, {}))
        assert ds["relevance"].dims == ("window", "token") and ds["relevance"].shape == (2, q + 1), method
        assert list(ds["token_label"].values) == labels
        assert ds["token_label"].values[-1] in ("s0", "t0") and ds["token_lag"].values[-1] == 0
        assert np.isfinite(ds["relevance"].values).all(), method
        assert ds.attrs["method"] == method
    ds = relevance(model, win, "unified")
    assert ds["map"].dims == ("window", "layer", "query", "token") and ds["map"].shape == (2, 2, q + 1, q + 1)


def test_alpha_and_rollout_follow_the_models_own_attention():
    model = tiny()
    win = window(model)
    q, _ = current(model)
    attn = [a[..., : q + 1, : q + 1] for a in model.attention(**win, aggregate="abs")]  # forward's α
    ds = relevance(model, win, "alpha")
    for layer, a in enumerate(attn):
        assert np.allclose(ds["by_layer"].values[:, layer], a[:, q].numpy(), atol=1e-12)
    assert np.allclose(ds["relevance"].values, (attn[0][:, q] + attn[1][:, q]).numpy() / 2, atol=1e-12)
    eye = torch.eye(q + 1, dtype=torch.float64)
    hat = [(a + eye) / (a + eye).sum(-1, keepdim=True) for a in attn]
    rolled = (hat[1] @ hat[0])[:, q]
    out = relevance(model, win, "rollout")["relevance"].values
    assert np.allclose(out, rolled.numpy(), atol=1e-12)
    assert np.allclose(out.sum(-1), 1.0)
    # Ω's rollout and its rows differ from α's
    uni = relevance(model, win, "unified", aggregation="minmax", layer=1)
    with torch.no_grad():
        omega = unified_attention(model.layers[1].mixer, mixer_calls(model, win)[1][1])[0]
    expect = aggregate_channels(omega, "minmax")[:, q, : q + 1]
    assert np.allclose(uni["relevance"].values, expect.numpy(), atol=1e-12)
    assert not np.allclose(relevance(model, win, "rollout", of="unified")["relevance"].values, out)


def occluded_rerun(model, win, j):
    """The whole model re-run with token j's embedding zeroed (a hook on the embedding)."""
    hook = model.embed.register_forward_hook(lambda _m, _a, out: out.index_fill(1, torch.tensor([j]), 0.0))
    try:
        with torch.no_grad():
            return model(**win)[:, -1]
    finally:
        hook.remove()


@pytest.mark.parametrize("layout,order", [("B3LD", "RSA"), ("BL3D", "RAS")])
def test_occlusion_is_the_change_of_a_rerun_with_the_token_zeroed(layout, order):
    model = tiny(layout=layout, order=order)
    win = window(model)
    q, _ = current(model)
    with torch.no_grad():
        action = model(**win)[:, -1]
    expect = np.stack([(occluded_rerun(model, win, j) - action).norm(dim=-1).numpy() for j in range(q + 1)], -1)
    got = relevance(model, win, "occlusion")["relevance"].values
    assert np.abs(got - expect).max() < 1e-10
    assert expect.max() > 1e-4  # the tokens matter
    # a baseline tensor: zeros given explicitly are the "zero" baseline
    assert np.allclose(relevance(model, win, "occlusion", baseline=torch.zeros(16))["relevance"].values, got)


def test_discrete_decisions_use_the_chosen_actions_logit_and_the_kl_divergence():
    model = tiny(n_actions=4)
    win = window(model)
    q, _ = current(model)
    with torch.no_grad():
        logits = model(**win)[:, -1]
    p = F.log_softmax(logits, -1)
    kl = []
    for j in range(q + 1):
        pj = F.log_softmax(occluded_rerun(model, win, j), -1)
        kl.append((p.exp() * (p - pj)).sum(-1).numpy())
    got = relevance(model, win, "occlusion")["relevance"].values
    assert np.abs(got - np.stack(kl, -1)).max() < 1e-10
    # gradient x input of the argmax logit, through the whole model
    captured = {}

    def keep(_m, _a, out):
        out.retain_grad()
        captured["tokens"] = out

    hook = model.embed.register_forward_hook(keep)
    try:
        logits = model(**win)[:, -1]
    finally:
        hook.remove()
    logits.gather(-1, logits.argmax(-1, keepdim=True)).sum().backward()
    tokens = captured["tokens"]
    expect = (tokens.grad * tokens).sum(-1)[:, : q + 1].abs().detach().numpy()
    assert np.allclose(relevance(model, win, "gradient")["relevance"].values, expect, atol=1e-12)
    signed = relevance(model, win, "gradient", absolute=False)["relevance"].values
    assert np.allclose(np.abs(signed), expect, atol=1e-12) and (signed < 0).any()


def test_gradient_is_gradient_times_input_of_the_actions_norm():
    model = tiny()
    win = window(model)
    q, _ = current(model)
    captured = {}

    def keep(_m, _a, out):
        out.retain_grad()
        captured["tokens"] = out

    hook = model.embed.register_forward_hook(keep)
    try:
        model(**win)[:, -1].norm(dim=-1).sum().backward()
    finally:
        hook.remove()
    tokens = captured["tokens"]
    expect = (tokens.grad * tokens).sum(-1)[:, : q + 1].abs().detach().numpy()
    assert np.allclose(relevance(model, win, "gradient")["relevance"].values, expect, atol=1e-12)


def test_recency_falls_with_lag_at_the_given_or_fitted_rate():
    model = tiny()
    win = window(model)
    q, _ = current(model)
    ds = relevance(model, win, "recency", rate=0.3)
    rel = ds["relevance"].values
    assert np.all(np.diff(rel, axis=-1) > 0)  # later tokens (smaller lag) weigh more
    assert np.allclose(rel, np.exp(-0.3 * ds["token_lag"].values))
    mass = 0.8 * np.exp(-0.45 * np.arange(q + 1))
    fitted = relevance(model, win, "recency", mass=mass)
    assert fitted.attrs["rate"] == pytest.approx(0.45)
    own = relevance(model, win, "recency")  # fitted to this window's attention row
    assert own.attrs["rate"] > 0
    with pytest.raises(ValueError, match="does not fall with lag"):
        relevance(model, win, "recency", mass=np.exp(0.2 * np.arange(q + 1)))


def test_random_is_seeded():
    model = tiny()
    win = window(model)
    a = relevance(model, win, "random", seed=3)["relevance"].values
    assert np.array_equal(a, relevance(model, win, "random", seed=3)["relevance"].values)
    assert not np.array_equal(a, relevance(model, win, "random", seed=4)["relevance"].values)
    assert ((a >= 0) & (a < 1)).all()


def test_a_decision_transformer_refuses_the_mixers_methods_by_name():
    model = tiny(arch="dt")
    win = window(model)
    q, labels = current(model)
    for method in ("alpha", "unified"):
        with pytest.raises(ValueError, match="gradient, occlusion, recency, random") as err:
            relevance(model, win, method)
        assert "Decision Transformer" in str(err.value) and method in str(err.value)
    for method in DT_METHODS:
        ds = relevance(model, win, method, **({"rate": 0.1} if method == "recency" else {}))
        assert ds["relevance"].shape == (2, q + 1) and list(ds["token_label"].values) == labels
    # the heads' rollout
    attn = [a[..., : q + 1, : q + 1] for a in model.attention(**win, aggregate="mean")]
    eye = torch.eye(q + 1, dtype=torch.float64)
    hat = [(a + eye) / (a + eye).sum(-1, keepdim=True) for a in attn]
    assert np.allclose(relevance(model, win, "rollout")["relevance"].values, (hat[1] @ hat[0])[:, q].numpy())


def test_bad_methods_and_options_are_named():
    model = tiny()
    win = window(model)
    with pytest.raises(ValueError, match="unknown explanation method 'lrp'; choose one of alpha"):
        relevance(model, win, "lrp")
    with pytest.raises(ValueError, match="unknown option\\(s\\): sead"):
        relevance(model, win, "random", sead=1)
    with pytest.raises(ValueError, match="unknown occlusion baseline 'mean'"):
        relevance(model, win, "occlusion", baseline="mean")
    with pytest.raises(ValueError, match="layer 5 is not in the model"):
        relevance(model, win, "alpha", layer=5)
