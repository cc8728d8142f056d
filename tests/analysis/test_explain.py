"""Explanations of a decision (analysis.explain): the Mamba mixer's whole implicit attention Ω
reproduces the mixer exactly and equals a brute-force Jacobian with the data-dependent factors
held fixed; relevance by every method has the window's tokens and labels, and agrees with
independent re-runs of the model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.explain import tiny, window

from dema_lab.analysis import token_labels
from dema_lab.analysis.explain import (
    DT_METHODS,
    METHODS,
    attention_gradients,
    mean_inputs,
    relevance,
    unified_attention,
)
from dema_lab.ssm import Mamba, aggregate_channels, apply_attention, selective_scan


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
    with pytest.raises(ValueError, match="unknown occlusion baseline 'median'"):
        relevance(model, win, "occlusion", baseline="median")
    with pytest.raises(ValueError, match="'mean' needs means=mean_inputs"):
        relevance(model, win, "occlusion", baseline="mean")
    with pytest.raises(ValueError, match="layer 5 is not in the model"):
        relevance(model, win, "alpha", layer=5)


# ----------------------------------------------------------------------------- attribution


def leaf_gradient(model, win, layer):
    """The oracle: layer `layer`'s attention map (b, channels, n, n) made a leaf of autograd by a
    hook that recomputes only that layer from it (DeMa: out_proj of α u + D u gated; DT: the
    heads' softmax times v), every other layer running its own forward (DeMa: the selective
    scan); the gradient of the current decision's output (action norm / argmax logit)."""
    holder = {}
    if model.cfg.arch == "dt":
        attn = model.layers[layer].attn

        def hook(mod, args, output):
            x = args[0]
            b, L, d = x.shape
            q, k, v = (t.view(b, L, mod.n_head, -1).transpose(1, 2) for t in mod.c_attn(x).split(d, dim=2))
            att = (q @ k.transpose(-2, -1)) / k.shape[-1] ** 0.5
            att = F.softmax(att.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf")), -1)
            leaf = att.detach().requires_grad_(True)
            holder["leaf"] = leaf
            y = (leaf @ v).transpose(1, 2).reshape(b, L, d)
            return mod.c_proj(y)

        handle = attn.register_forward_hook(hook)
    else:
        mixer = model.layers[layer].mixer

        def hook(mod, args, output):
            inp = mod.attention_inputs(args[0])
            leaf = inp["alpha"].detach().requires_grad_(True)
            holder["leaf"] = leaf
            return mod.out_proj(apply_attention(leaf, inp["u"], inp["D"], inp["z"]).transpose(1, 2))

        handle = mixer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            pred = model(**win)[:, -1]
            out = pred.gather(-1, pred.argmax(-1, keepdim=True))[:, 0] if model.cfg.discrete else pred.norm(dim=-1)
            (grad,) = torch.autograd.grad(out.sum(), holder["leaf"])
    finally:
        handle.remove()
    return holder["leaf"].detach(), grad


@pytest.mark.parametrize("arch,n_actions", [("dema", 0), ("dema", 4), ("dt", 0)])
def test_attention_gradients_match_a_leaf_oracle_and_finite_differences(arch, n_actions):
    model = tiny(arch=arch, n_actions=n_actions)
    win = window(model)
    maps, grads = attention_gradients(model, win)
    assert len(maps) == len(grads) == 2
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient accumulated
    for layer in range(2):
        leaf, expect = leaf_gradient(model, win, layer)
        assert (maps[layer] - leaf).abs().max() < 1e-10
        assert (grads[layer] - expect).abs().max() < 1e-9 * max(1.0, expect.abs().max().item())
        assert expect.abs().max() > 1e-6
    # the oracle itself, by a central difference along a random causal direction in layer 0
    if arch == "dema" and not n_actions:
        leaf, grad = leaf_gradient(model, win, 0)
        V = torch.randn(leaf.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tril()
        mixer = model.layers[0].mixer

        def out(eps):
            def hook(mod, args, output):
                inp = mod.attention_inputs(args[0])
                return mod.out_proj(
                    apply_attention(inp["alpha"] + eps * V, inp["u"], inp["D"], inp["z"]).transpose(1, 2)
                )

            h = mixer.register_forward_hook(hook)
            try:
                with torch.no_grad():
                    return model(**win)[:, -1].norm(dim=-1).sum().item()
            finally:
                h.remove()

        eps = 1e-6
        assert (out(eps) - out(-eps)) / (2 * eps) == pytest.approx((grad * V).sum().item(), rel=1e-5)


def test_unified_attention_gradients_match_a_leaf_oracle():
    model = tiny()
    win = window(model)
    maps, grads = attention_gradients(model, win, of="unified")
    for layer, (mixer, h, _) in enumerate(mixer_calls(model, win)):
        holder = {}

        def hook(mod, args, output, holder=holder):  # the mixer's output from a leaf Ω: out_proj(Ω x + β)
            omega, beta = unified_attention(mod, args[0])
            leaf = omega.detach().requires_grad_(True)
            holder["leaf"] = leaf
            y = torch.einsum("bdij,bdj->bdi", leaf, conv_input_of(mod, args[0])) + beta
            return mod.out_proj(y.transpose(1, 2))

        handle = mixer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                (expect,) = torch.autograd.grad(model(**win)[:, -1].norm(dim=-1).sum(), holder["leaf"])
        finally:
            handle.remove()
        with torch.no_grad():
            assert (maps[layer] - unified_attention(mixer, h)[0]).abs().max() < 1e-12
        assert (grads[layer] - expect).abs().max() < 1e-9 * max(1.0, expect.abs().max().item())
    _, a_grads = attention_gradients(model, win, of="alpha")
    assert not torch.allclose(a_grads[0], grads[0])  # α's gradient is another tensor


@pytest.mark.parametrize("arch,n_actions", [("dema", 0), ("dt", 4)])
def test_attribution_is_the_rollout_of_attention_times_positive_gradient(arch, n_actions):
    model = tiny(arch=arch, n_actions=n_actions)
    win = window(model)
    q, labels = current(model)
    cams = []
    for layer in range(2):
        leaf, grad = leaf_gradient(model, win, layer)
        cams.append((leaf * grad.clamp(min=0)).mean(1).clamp(min=0)[:, : q + 1, : q + 1])
    eye = torch.eye(q + 1, dtype=torch.float64)
    hat = [(c + eye) / (c + eye).sum(-1, keepdim=True) for c in cams]
    expect = (hat[1] @ hat[0])[:, q].numpy()
    ds = relevance(model, win, "attribution")
    assert np.allclose(ds["relevance"].values, expect, atol=1e-10)
    assert list(ds["token_label"].values) == labels and ds["map"].shape == (2, 2, q + 1, q + 1)
    assert not np.allclose(expect, relevance(model, win, "rollout")["relevance"].values)  # the gradient matters
    if arch == "dema":
        uni = relevance(model, win, "attribution", of="unified")
        assert uni.attrs["of"] == "unified" and not np.allclose(uni["relevance"].values, expect)


# ----------------------------------------------------------------------------- the mean baseline


def hand_baseline(model, means, kind):
    """The oracle's baseline token of one kind (R, s, a), built from the embedding's own layers
    (B3LD, no timestep embedding): LayerNorm(layer(mean)); a discrete action's is the
    frequency-weighted mean over actions of LayerNorm(tanh(E[a]))."""
    e = model.embed
    with torch.no_grad():
        if kind == "s":
            return e.embed_ln(e.embed_state(torch.as_tensor(means["state"])))
        if kind == "R":
            return e.embed_ln(e.embed_return(torch.as_tensor(means["return_to_go"])))
        if model.cfg.discrete:
            toks = e.embed_ln(torch.tanh(e.embed_action[0].weight))  # (n_actions, d)
            return (torch.as_tensor(means["action"])[:, None] * toks).sum(0)
        return e.embed_ln(e.embed_action(torch.as_tensor(means["action"])))


@pytest.mark.parametrize("n_actions", [0, 3])
def test_mean_occlusion_replaces_a_token_by_the_embedding_of_the_mean_inputs(n_actions):
    model = tiny(n_actions=n_actions)
    win = window(model)
    q, labels = current(model)
    cfg = model.cfg
    means = {
        "state": np.array([0.3, -0.2, 0.5]),
        "action": np.array([0.2, 0.5, 0.3]) if n_actions else np.array([0.1, -0.4]),
        "return_to_go": np.array([1.2]),
    }
    with torch.no_grad():
        action = model(**win)[:, -1]
    expect = []
    for j in range(q + 1):
        base = hand_baseline(model, means, labels[j][0])
        hook = model.embed.register_forward_hook(lambda _m, _a, out, j=j, base=base: out.index_copy(
            1, torch.tensor([j]), base.expand(out.shape[0], 1, -1).to(out.dtype)))  # fmt: skip
        try:
            with torch.no_grad():
                moved = model(**win)[:, -1]
        finally:
            hook.remove()
        if cfg.discrete:
            p, pj = F.log_softmax(action, -1), F.log_softmax(moved, -1)
            expect.append((p.exp() * (p - pj)).sum(-1).numpy())
        else:
            expect.append((moved - action).norm(dim=-1).numpy())
    got = relevance(model, win, "occlusion", baseline="mean", means=means)
    assert np.abs(got["relevance"].values - np.stack(expect, -1)).max() < 1e-10
    assert not np.allclose(got["relevance"].values, relevance(model, win, "occlusion")["relevance"].values)


def test_mean_inputs_are_the_datasets_means_in_the_models_units(hopper_small):
    from dema_lab.data import load_dataset

    ds = load_dataset(str(hopper_small), progress=False)
    obs = np.concatenate([t.observations for t in ds.trajectories]).astype(np.float64)
    act = np.concatenate([t.actions for t in ds.trajectories]).astype(np.float64)
    rtg = np.concatenate([np.cumsum(t.rewards[::-1])[::-1] for t in ds.trajectories]).astype(np.float64)
    m = mean_inputs(ds, ds.state_mean, ds.state_std, rtg_scale=1000.0)
    assert np.abs(m["state"]).max() < 1e-4  # the dataset's own normalisation centres it
    raw = mean_inputs(ds)
    assert np.allclose(raw["state"], obs.mean(0)) and np.allclose(raw["action"], act.mean(0))
    assert raw["return_to_go"][0] == pytest.approx(rtg.mean() / 1000.0)
