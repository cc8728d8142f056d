"""Explanations of one decision: which earlier tokens of a Transformer-like window the current
action depends on, by several methods behind one interface (`relevance`), and the Mamba mixer's
whole implicit attention (`unified_attention`).

The mixer as one data-dependent linear operator (Zimerman, Ali & Wolf, "Explaining Modern
Gated-Linear RNNs via a Unified Implicit Attention Formulation"). Per channel, with x the conv's
input (the x half of in_proj), c = M x + b the causal depthwise conv's output (M its Toeplitz
matrix, b its bias), u = silu(c) = σ(c) c the scan's input, y = α u + D u the scan with its skip
(α the hidden attention) and z the gate's half of in_proj:

    gate_output = silu(z) * y = Ω x + β,   Ω = G (α + diag(D)) Z M,   β = G (α + diag(D)) Z b 1
    G = diag(silu(z)),  Z = diag(σ(c))

Ω holds the data-dependent factors (Δ, B, C, z and σ(c)) fixed: it is the Jacobian of the gate
output with respect to x with those detached, not the plain Jacobian.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from dema_lab.analysis.decay import fit_decay
from dema_lab.analysis.tokens import current_token, token_labels
from dema_lab.models.config import ATTENTION_ARCHS
from dema_lab.ssm import AGGREGATIONS, Mamba, aggregate_channels, hidden_attention

METHODS = ("alpha", "unified", "rollout", "attribution", "gradient", "occlusion", "recency", "random")
DT_METHODS = ("rollout", "attribution", "gradient", "occlusion", "recency", "random")
# the methods that read no attention map: all a model without attention (LSTM, GRU, MLP) can take
ATTENTION_FREE_METHODS = ("gradient", "occlusion", "recency", "random")
ROLLOUT_SOURCES = ("alpha", "unified")
OCCLUSION_BASELINES = ("zero", "mean")

# the options each method takes, with their defaults
UNIFIED_OPTIONS = {"conv": True, "silu": True, "gate": True}
OPTIONS = {
    "alpha": {"aggregation": "abs", "layer": None},
    "unified": {"aggregation": "abs", "layer": None, **UNIFIED_OPTIONS},
    "rollout": {"of": "alpha", "aggregation": "abs", **UNIFIED_OPTIONS},
    "attribution": {"of": "alpha"},
    "gradient": {"absolute": True},
    "occlusion": {"baseline": "zero", "means": None},
    "recency": {"rate": None, "mass": None},
    "random": {"seed": 0},
}


# ----------------------------------------------------------------------------- the mixer's operator


def conv_matrix(mixer: Mamba, L: int) -> torch.Tensor:
    """The causal depthwise conv1d as one lower-triangular Toeplitz matrix per channel,
    (d_inner, L, L): M[d, i, i - m] = w[d, d_conv - 1 - m] for 0 <= m < d_conv (the conv is
    zero-padded before the first token, as Mamba.causal_conv is), without its bias."""
    w = mixer.conv1d.weight[:, 0, :]  # (d_inner, d_conv)
    k = w.shape[-1]
    M = w.new_zeros(w.shape[0], L, L)
    for m in range(min(k, L)):
        M = M + torch.diag_embed(w[:, k - 1 - m, None].expand(-1, L - m), offset=-m)
    return M


def unified_attention(
    mixer: Mamba, hidden_states: torch.Tensor, *, conv: bool = True, silu: bool = True, gate: bool = True
):
    """The mixer's whole implicit attention for one call: omega (b, d_inner, L, L), beta (b, d_inner, L).

    hidden_states (b, L, d_model) is the mixer's input (in DeMa, the block's RMSNorm output).
    With every factor kept, gate_output = einsum("bdij,bdj->bdi", omega, conv_input) + beta,
    with conv_input the x half of in_proj (b, d_inner, L) and gate_output what goes into out_proj.
    Computed in float64 for float64 models (float32 otherwise); α comes from the stable
    log-space segment sum of dema_lab.ssm.hidden_attention.

    The options leave one factor out (replace it by the identity), as the paper's ablations do.
    σ(c), z, Δ, B and C are always the ones of the real call; only the product changes:
      conv=False  M left out: Ω = G (α + D) Z maps the conv's output c (pre-SiLU, bias
                  included) and β = 0; gate_output = Ω c holds exactly.
      silu=False  Z left out: Ω = G (α + D) M, β = G (α + D) b. No identity of the mixer holds
                  (each token's SiLU factor σ(c) is ignored). With conv=False as well,
                  Ω = G (α + D) maps the scan's input u = silu(c): gate_output = Ω u exactly.
      gate=False  G left out: Ω = (α + D) Z M, β = (α + D) Z b; the output is then the ungated
                  scan, y = scan output + D u, and y = Ω conv_input + β holds exactly.
    """
    args = mixer.scan_arguments(hidden_states)
    alpha = hidden_attention(
        args["delta"], args["A"], args["B"], args["C"], delta_bias=args["delta_bias"], delta_softplus=True
    )
    dtype, L = alpha.dtype, alpha.shape[-1]
    D = args["D"].to(dtype)
    omega = alpha + torch.diag_embed(D[:, None].expand(-1, L))  # α + diag(D), (b, d, L, L)
    if silu:
        omega = omega * torch.sigmoid(args["conv_output"].to(dtype))[..., None, :]  # (α + D) Z
    bias = mixer.conv1d.bias
    if conv:
        beta = omega.sum(-1) * bias.to(dtype)[:, None] if bias is not None else omega.new_zeros(omega.shape[:-1])
        omega = omega @ conv_matrix(mixer, L).to(dtype)
    else:
        beta = omega.new_zeros(omega.shape[:-1])
    if gate:
        g = F.silu(args["z"].to(dtype))  # (b, d, L)
        omega = omega * g[..., None]
        beta = beta * g
    return omega, beta


# ----------------------------------------------------------------------------- one decision's relevance


def _check_options(method: str, arch: str, n_layer: int, options: dict) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if arch not in ATTENTION_ARCHS and method not in ATTENTION_FREE_METHODS:
        raise ValueError(
            f"method {method!r} reads attention, and a {arch!r} model has no hidden attention; "
            f"use one of {', '.join(ATTENTION_FREE_METHODS)} (recency with rate= or mass=)"
        )
    if arch == "dt" and method not in DT_METHODS:
        raise ValueError(
            f"method {method!r} is defined for Decision Mamba's mixer only; for a Decision Transformer "
            f"use one of {', '.join(DT_METHODS)}"
        )
    known = OPTIONS[method]
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) or "no options"
        raise ValueError(f"method {method!r} takes {takes}; unknown option(s): {', '.join(unknown)}")
    opts = {**known, **options}
    if "aggregation" in opts and opts["aggregation"] not in AGGREGATIONS:
        raise ValueError(
            f"unknown channel aggregation {opts['aggregation']!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    if opts.get("layer") is not None and not -n_layer <= opts["layer"] < n_layer:
        raise ValueError(f"layer {opts['layer']} is not in the model (layers 0..{n_layer - 1}, or None for their mean)")
    if method in ("rollout", "attribution") and arch == "dema" and opts["of"] not in ROLLOUT_SOURCES:
        raise ValueError(f"rollout of {opts['of']!r} is unknown; roll out one of {', '.join(ROLLOUT_SOURCES)}")
    return opts


def _inputs(window: dict) -> dict:
    keys = ("states", "actions", "returns_to_go", "timesteps", "prev_action")
    return {k: window[k] for k in keys if window.get(k) is not None}


def _mixer_inputs(model, window: dict) -> list[torch.Tensor]:
    """Each Mamba mixer's input (b, n_tokens, d_model) for this window, in layer order."""
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for m in mixers]
    try:
        model(**_inputs(window))
    finally:
        for h in hooks:
            h.remove()
    return list(zip(mixers, inputs))


def _token_maps(model, window: dict, source: str, aggregation: str, unified: dict) -> torch.Tensor:
    """Every layer's token-to-token map aggregated over channels, (b, n_layer, n, n): DeMa's α or
    Ω (source "alpha" or "unified"), DT's attention probabilities over heads."""
    if model.cfg.arch == "dt":
        _, attn = model(**_inputs(window), return_attention=True)
        return torch.stack([aggregate_channels(a.double(), aggregation) for a in attn], 1)
    maps = []
    for mixer, x in _mixer_inputs(model, window):
        if source == "alpha":
            a = mixer.attention_inputs(x)["alpha"]
        else:
            a = unified_attention(mixer, x, **unified)[0]
        maps.append(aggregate_channels(a.double(), aggregation))
    return torch.stack(maps, 1)


def rollout(maps: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema): each layer's map (..., n_layer, n, n), made
    non-negative (|.|), plus the identity (the residual stream), rows normalised to sum 1, then
    multiplied over layers. Returns (..., n_layer, n, n): entry l is the rollout through layer l."""
    n = maps.shape[-1]
    eye = torch.eye(n, dtype=maps.dtype, device=maps.device)
    a = maps.abs() + eye
    a = a / a.sum(-1, keepdim=True)
    out, acc = [], eye.expand_as(a[..., 0, :, :])
    for layer in range(a.shape[-3]):
        acc = a[..., layer, :, :] @ acc
        out.append(acc)
    return torch.stack(out, -3)


def embed_window(model, window: dict) -> torch.Tensor:
    """The window's token embeddings (b, n, d): what the backbone takes."""
    return model.embed(**_inputs(window))


def decision(model, tokens: torch.Tensor, T: int):
    """The current decision from token embeddings (b, n, d): continuous actions -> the action
    (b, act_dim); discrete -> the logits (b, n_actions). The same path as model.forward."""
    hidden = model.backbone(tokens)
    return model.predict_action(hidden[:, model.embed.action_positions(T)])[:, -1]


def decision_output(model, pred: torch.Tensor) -> torch.Tensor:
    """The scalar a gradient explains, per window (b,): the L2 norm of the action (continuous,
    pred (b, act_dim)), the chosen (argmax) action's logit (discrete, pred the logits)."""
    if model.cfg.discrete:
        return pred.gather(-1, pred.argmax(-1, keepdim=True))[:, 0]
    return pred.norm(dim=-1)


def _gradient(model, window: dict, T: int, q: int, absolute: bool) -> torch.Tensor:
    """Gradient x input of decision_output per token, summed over the embedding."""
    with torch.enable_grad():
        tokens = embed_window(model, window).detach().requires_grad_(True)
        out = decision_output(model, decision(model, tokens, T))
        (grad,) = torch.autograd.grad(out.sum(), tokens)
    rel = (grad * tokens).sum(-1)[:, : q + 1].detach()
    return rel.abs() if absolute else rel


def attention_gradients(model, window: dict, of: str = "alpha") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every layer's attention map as the decision's forward pass uses it, (b, channels, n, n),
    and the gradient of decision_output with respect to it (the total derivative, through the
    later layers): DeMa's α or Ω (of "alpha" / "unified"), DT's attention probabilities
    (channels = heads). Returns (maps, grads).

    DeMa's gradient is an outer product, so no (L, L) map enters the graph: the mixer's gate
    output is g = silu(z) (α u + D u) = Ω x + β per channel, hence
        dout/dα[c, i, j] = dout/dg[c, i] silu(z)[c, i] u[c, j],   dout/dΩ[c, i, j] = dout/dg[c, i] x[c, j],
    with dout/dg taken at out_proj's input in one backward pass of the model's own forward."""
    T = window["states"].shape[1]
    with torch.enable_grad():
        tokens = embed_window(model, window).detach()
        if model.cfg.arch == "dt":
            hidden, maps = model.backbone(tokens, return_attention=True)
            pred = model.predict_action(hidden[:, model.embed.action_positions(T)])[:, -1]
            grads = torch.autograd.grad(decision_output(model, pred).sum(), maps)  # no parameter's .grad is touched
            return [m.detach() for m in maps], [g.detach() for g in grads]
        mixers = [m for m in model.modules() if isinstance(m, Mamba)]
        inputs, gated = [], []
        hooks = [m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for m in mixers]
        hooks += [m.out_proj.register_forward_pre_hook(lambda _m, args: gated.append(args[0])) for m in mixers]
        try:
            hidden = model.backbone(tokens)
        finally:
            for h in hooks:
                h.remove()
        pred = model.predict_action(hidden[:, model.embed.action_positions(T)])[:, -1]
        d_gate = torch.autograd.grad(decision_output(model, pred).sum(), gated)  # each (b, L, d_inner)
    maps, grads = [], []
    with torch.no_grad():
        for mixer, h, dg in zip(mixers, inputs, d_gate):
            dg = dg.transpose(1, 2)  # (b, d_inner, L)
            if of == "alpha":
                a = mixer.attention_inputs(h.detach())
                m = a["alpha"]
                dg = dg.to(m.dtype) * F.silu(a["z"].to(m.dtype))  # dout/dy, y = α u + D u
                source = a["u"]
            else:
                m = unified_attention(mixer, h.detach())[0]
                source = mixer.scan_arguments(h.detach())["conv_input"]
            maps.append(m)
            grads.append(dg.to(m.dtype)[..., :, None] * source.to(m.dtype)[..., None, :])
    return maps, grads


def attribution_maps(maps: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Attention x the positive part of its gradient, averaged over channels (heads), kept
    non-negative: (b, n_layer, n, n), what `rollout` then rolls out (the HiddenMambaAttn /
    Chefer et al. attribution)."""
    cams = [(m.double() * g.double().clamp(min=0)).mean(1).clamp(min=0) for m, g in zip(maps, grads)]
    return torch.stack(cams, 1)


def change_ofdecision(model, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """How far a decision moved: the L2 distance of the actions (continuous, (..., act_dim)), the
    KL divergence KL(p_before || p_after) of the action distributions (discrete, logits)."""
    if not model.cfg.discrete:
        return (after - before).double().norm(dim=-1)
    logp, logq = F.log_softmax(before.double(), -1), F.log_softmax(after.double(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def mean_inputs(dataset, state_mean=None, state_std=None, rtg_scale: float = 1000.0, max_steps: int = 20_000) -> dict:
    """The dataset's mean state, action and return-to-go in the model's input units, the `means`
    of the occlusion baseline "mean": state (obs_dim,) normalised by (state_mean, state_std)
    (the training normalisation; 0 when it is the dataset's own), or the mean stacked frame
    (frames, H, W) for images; action (act_dim,), or for discrete actions each action's
    frequency (n_actions,); return_to_go (1,) divided by rtg_scale. Every n-th step, at most
    max_steps of them."""
    every = max(1, -(-dataset.num_transitions // max_steps))
    obs = np.concatenate([t.observations for t in dataset.trajectories])[::every].astype(np.float64)
    act = np.concatenate([t.actions for t in dataset.trajectories])[::every].astype(np.float64)
    rtg = np.concatenate([t.returns_to_go() for t in dataset.trajectories])[::every].astype(np.float64)
    state = obs.mean(0)
    if not dataset.is_image:
        mean = np.zeros_like(state) if state_mean is None else np.asarray(state_mean, np.float64)
        std = np.ones_like(state) if state_std is None else np.asarray(state_std, np.float64)
        state = (state - mean) / std
    if dataset.n_actions:
        action = np.bincount(act.reshape(-1).round().astype(int), minlength=dataset.n_actions) / act.shape[0]
    else:
        action = act.reshape(len(act), -1).mean(0)
    return {"state": state, "action": action, "return_to_go": np.array([rtg.mean() / rtg_scale])}


def baseline_tokens(model, window: dict, means: dict) -> torch.Tensor:
    """The embeddings (b, n, d) of the window with every state, action (prev_action too) and
    return-to-go replaced by `means` (mean_inputs), at the tokens' own timesteps and positions.
    Discrete actions: the frequency-weighted mean of the tokens with every action set to each
    action in turn (the embedding of the mean action, as far as a lookup table has one)."""
    inp = _inputs(window)
    states, actions = inp["states"], inp["actions"]
    like = {"dtype": states.dtype, "device": states.device}
    missing = sorted({"state", "action", "return_to_go"} - set(means))
    if missing:
        raise ValueError(
            f"the occlusion baseline's means lack {', '.join(missing)}: build them with mean_inputs(dataset)"
        )
    state = torch.as_tensor(np.asarray(means["state"]), **like)
    if state.shape != states.shape[2:]:
        raise ValueError(
            f"the mean state is {tuple(state.shape)} but the window's states are {tuple(states.shape[2:])}"
        )
    base = {**inp, "states": state.expand_as(states).clone()}
    base["returns_to_go"] = torch.full_like(inp["returns_to_go"], float(np.asarray(means["return_to_go"]).ravel()[0]))
    act = torch.as_tensor(np.asarray(means["action"]), dtype=actions.dtype, device=actions.device)
    if not model.cfg.discrete:
        base["actions"] = act.expand_as(actions).clone()
        if "prev_action" in base:
            base["prev_action"] = act.expand_as(base["prev_action"]).clone()
        return model.embed(**base)
    if act.shape != (model.cfg.n_actions,):
        raise ValueError(f"the mean action of a discrete model is each action's frequency, ({model.cfg.n_actions},)")
    out = 0.0
    for a, p in enumerate(act.tolist()):
        if p > 0:
            one = {**base, "actions": torch.full_like(actions, float(a))}
            if "prev_action" in one:
                one["prev_action"] = torch.full_like(one["prev_action"], float(a))
            out = out + p * model.embed(**one)
    return out


def occlusion_baseline(model, window: dict, baseline="zero", means: dict | None = None) -> torch.Tensor:
    """The baseline token embeddings (b, n, d) that replace occluded tokens: "zero" (embedding 0),
    "mean" (baseline_tokens of `means`), or a tensor of embeddings, (d_model,) or (n, d_model)."""
    tokens = embed_window(model, window)  # (b, n, d)
    b, n, d = tokens.shape
    if isinstance(baseline, str):
        if baseline not in OCCLUSION_BASELINES:
            raise ValueError(
                f"unknown occlusion baseline {baseline!r}; choose one of {', '.join(OCCLUSION_BASELINES)} "
                f"or pass the baseline token embeddings as a tensor (d_model,) or (n_tokens, d_model)"
            )
        if baseline == "zero":
            return tokens.new_zeros(b, n, d)
        if means is None:
            raise ValueError(
                "the occlusion baseline 'mean' needs means=mean_inputs(dataset, state_mean, state_std, rtg_scale)"
            )
        return baseline_tokens(model, window, means).to(tokens.dtype)
    base = torch.as_tensor(baseline, dtype=tokens.dtype, device=tokens.device)
    if base.shape not in ((d,), (n, d)):
        raise ValueError(f"an occlusion baseline tensor must be ({d},) or ({n}, {d}), got {tuple(base.shape)}")
    return base.expand(b, n, d)


def _occlusion(model, window: dict, T: int, q: int, baseline, means) -> torch.Tensor:
    """The change of the decision when token j's embedding is replaced by the baseline's, for
    each j <= q, all in one batch through the backbone."""
    tokens = embed_window(model, window)  # (b, n, d)
    b, n, d = tokens.shape
    base = occlusion_baseline(model, window, baseline, means)  # (b, n, d)
    occluded = tokens[:, None].repeat(1, q + 1, 1, 1)  # (b, q+1, n, d)
    j = torch.arange(q + 1, device=tokens.device)
    occluded[:, j, j] = base[:, j]
    pred = decision(model, tokens, T)  # (b, out)
    moved = decision(model, occluded.reshape(b * (q + 1), n, d), T).reshape(b, q + 1, -1)
    return change_ofdecision(model, pred[:, None], moved)


def _recency(model, window: dict, q: int, b: int, rate, mass) -> tuple[torch.Tensor, float]:
    """exp(-rate * lag) over the tokens, lag in tokens from the current one. The rate is `rate`,
    else fitted (fit_decay) to `mass` (attention mass by lag), else to this window's own attention
    row (mean |α| over channels and layers; DT: over heads)."""
    if rate is None:
        if mass is None:
            maps = _token_maps(model, window, "alpha", "abs", UNIFIED_OPTIONS)  # (b, layer, n, n)
            mass = maps[:, :, q, : q + 1].mean((0, 1)).flip(-1).cpu().numpy()  # lag 0 first
        rate = fit_decay(np.asarray(mass))["rate"]
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(
                f"recency: the attention mass does not fall with lag (fitted rate {rate}); pass rate=<per token>"
            )
    lag = torch.arange(q, -1, -1, dtype=torch.float64)
    return torch.exp(-float(rate) * lag).expand(b, q + 1), float(rate)


@torch.no_grad()
def relevance(model, window: dict, method: str, **options) -> xr.Dataset:
    """The relevance of every token of a Transformer-like window for the current decision (the
    window's last action, predicted at the current state token, analysis.tokens.current_token).

    window: the model's keyword arguments for one window (what Policy.window() builds, e.g. from
    evaluation.rollout.replay_windows), batch b. Returns a Dataset with
      relevance (window, token): float64, over the tokens up to the current one;
      by_layer  (window, layer, token): alpha and unified, each layer's row of the current token;
      map       (window, layer, query, token): the token-to-token map where the method has one
                (alpha, unified: aggregated over channels; rollout: the rollout through layer l);
    and the tokens' coordinates: label, kind (R/s/a; t for BL3D), step relative to now and lag
    (tokens back from the current one), right-aligned as analysis.tokens.token_labels.

    Methods (and options, with defaults):
      alpha      hidden attention α, aggregated over channels (aggregation "abs", or "minmax",
                 "mean"), the current token's row; relevance is the mean over layers, or
                 `layer`'s row.
      unified    the mixer's whole attention Ω (unified_attention; conv, silu, gate), likewise.
      rollout    attention rollout (identity added, rows normalised, multiplied over layers) of
                 α or Ω (of "alpha" / "unified"; DT: its heads' mean), the current token's row.
      attribution  attention x the positive part of the gradient of the decision's output with
                 respect to it (attention_gradients; α or Ω: of "alpha" / "unified"; DT: its
                 heads), averaged over channels, then rolled out (attribution_maps, rollout).
      gradient   gradient x input, summed over the embedding, of the decision's output: the L2
                 norm of the action (continuous), the chosen (argmax) action's logit (discrete);
                 absolute (default True) takes |.|.
      occlusion  the change of the decision when one token's embedding is replaced by the
                 baseline: "zero" (a zero embedding), "mean" (the embedding of the dataset's mean
                 state, action and return-to-go at the token's own position: means=mean_inputs(..))
                 or a tensor of embeddings, (d_model,) or (n_tokens, d_model); L2 of the action
                 change (continuous), KL(p || p') (discrete).
      recency    exp(-rate * lag): `rate` per token, or fitted to `mass` (attention mass by lag,
                 lag 0 first) or to this window's own attention row (analysis.decay.fit_decay).
      random     uniform [0, 1) from numpy's generator seeded with `seed`.
    A Decision Transformer has no mixer: alpha and unified raise; rollout rolls out its heads.
    The LSTM, GRU and MLP baselines have no attention: gradient, occlusion, random and recency
    (with rate or mass) only.
    """
    cfg = model.cfg
    opts = _check_options(method, cfg.arch, cfg.n_layer, options)
    model.eval()
    T = window["states"].shape[1]
    n = cfg.window_tokens(T) + (cfg.layout == "B3LD" and cfg.token_order == "RSA")  # RSA feeds a_t's slot
    q = current_token(model, T, n)
    b = window["states"].shape[0]
    data, attrs = {}, {"method": method}
    unified = {k: opts[k] for k in UNIFIED_OPTIONS if k in opts}
    if method in ("alpha", "unified"):
        maps = _token_maps(model, window, method, opts["aggregation"], unified)[..., : q + 1, : q + 1]
        rows = maps[:, :, q]  # (b, layer, q+1)
        rel = rows.mean(1) if opts["layer"] is None else rows[:, opts["layer"]]
        data["by_layer"] = (("window", "layer", "token"), rows.cpu().numpy())
        data["map"] = (("window", "layer", "query", "token"), maps.cpu().numpy())
    elif method == "rollout":
        source = opts["of"] if cfg.arch == "dema" else "heads"
        maps = _token_maps(model, window, source, opts["aggregation"], unified)[..., : q + 1, : q + 1]
        rolled = rollout(maps)
        rel = rolled[:, -1, q]
        data["map"] = (("window", "layer", "query", "token"), rolled.cpu().numpy())
        attrs["of"] = source
    elif method == "attribution":
        source = opts["of"] if cfg.arch == "dema" else "heads"
        cams = attribution_maps(*attention_gradients(model, window, opts["of"]))[..., : q + 1, : q + 1]
        rolled = rollout(cams)
        rel = rolled[:, -1, q]
        data["map"] = (("window", "layer", "query", "token"), rolled.cpu().numpy())
        attrs["of"] = source
    elif method == "gradient":
        rel = _gradient(model, window, T, q, opts["absolute"])
    elif method == "occlusion":
        rel = _occlusion(model, window, T, q, opts["baseline"], opts["means"])
        if isinstance(opts["baseline"], str):
            attrs["baseline"] = opts["baseline"]
    elif method == "recency":
        rel, attrs["rate"] = _recency(model, window, q, b, opts["rate"], opts["mass"])
    else:
        rel = torch.as_tensor(np.random.default_rng(opts["seed"]).random((b, q + 1)))
        attrs["seed"] = int(opts["seed"])
    for k, v in opts.items():  # the scalar options, for the record (bools as 0/1: netCDF/Zarr attributes)
        if isinstance(v, bool | int | float | str) and k not in attrs:
            attrs[k] = int(v) if isinstance(v, bool) else v
    data["relevance"] = (("window", "token"), rel.double().cpu().numpy())
    lab = token_labels(cfg)
    coords = {
        "token": np.arange(q + 1),
        "token_label": ("token", lab["label"][-(q + 1) :]),
        "token_kind": ("token", lab["kind"][-(q + 1) :]),
        "token_step": ("token", np.asarray(lab["step"][-(q + 1) :])),
        "token_lag": ("token", np.arange(q, -1, -1)),
    }
    if "map" in data:
        coords.update({"query": np.arange(q + 1), "query_label": ("query", lab["label"][-(q + 1) :])})
    if "by_layer" in data or "map" in data:
        coords["layer"] = np.arange(cfg.n_layer)
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    ds["relevance"].attrs = {"long_name": f"relevance of each token for the current decision ({method})"}
    ds["token_lag"].attrs = {"long_name": "lag from the current token", "units": "tokens"}
    return ds
