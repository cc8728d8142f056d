"""Evaluation-time ablations of DeMa's hidden attention, by two methods, and of the timestep
embedding; measured as normalized scores against the unablated model ("none").

The paper's method (`gym/merge_exp.py` of the official code: change_model_params,
swap_two_model_params) edits the *parameters* of the Mamba mixers: every mixer parameter except
in_proj and out_proj (conv1d.weight, conv1d.bias, x_proj.weight, dt_proj.weight, dt_proj.bias,
A_log, D) is replaced, in one layer or in all of them:

    mixer-zeros     zeros: each ablated mixer then outputs exactly 0 (the layer is a pure residual)
    mixer-random    U[0,1) (torch.rand) from a torch.Generator seeded by `seed`
    swap            taken from another run whose mixers have the same shapes

dema-lab's method leaves the weights alone and replaces the hidden attention alpha inside the
scan (the D skip and the z gate stay), through a forward hook on each ablated mixer:

    alpha-zeros     alpha = 0
    alpha-random    causal Gaussian weights at each channel's root-mean-square scale

and `no_timestep` evaluates a model trained with a timestep embedding without it.

    methods_for(model)                     the methods that apply to a model (swap aside: it needs a source)
    ablate(model, method, layers, ...)     a context yielding an ablated *copy* of the model
    ablated_state_dict(model, ...)         the weights of a parameter-level ablation (a new dict)
    evaluate_ablation(checkpoint, ...)     scores of one (method, layers, seed) on a loaded Checkpoint
    evaluate_ablations(run, methods, ...)  the same for a run's checkpoint, published in the run
    complete_ablations(run, ...)           evaluate what a run's published ablations lack (`dema-lab sweep`)
    ablation_table(run), score_drop(ds)    what was published, by (checkpoint, ablation, layers, seed,
                                           mode, target, episode); old stores are read too

Store layout: one group per (checkpoint, method, layers, seed), ablation/<step>-<method>-<layers>-s<seed>
(e.g. ablation/step_00002000-mixer-zeros-all-s0), dims (checkpoint, ablation, layers, seed, mode,
target, episode), each of the first four of length one; `ablation` holds the method's name (a dim
named "method" would clash with xarray's `.sel(method=...)`), `layers` "all" or a layer index as
text. Groups written before these methods (ablation/<step>, no `layers` dim, `ablation` none /
zeros / random / no_timestep) are read as none / alpha-zeros / alpha-random / no_timestep, at
layers "all" and the run's seed.

The seed also seeds the episodes (as in `rollout.evaluate`), so an ablation and the unablated
model with the same seed face the same initial states: their differences are paired. α-level
ablations act on the sequence (Transformer-like) path only; parameter-level ones act in both
inference modes.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import xarray as xr

from dema_lab.evaluation.defaults import default_targets
from dema_lab.ssm import Mamba, apply_attention

PAPER = "paper: parameter-level (merge_exp.py)"
DEMA_LAB = "dema-lab: α-level"
METHODS = ("none", "mixer-zeros", "mixer-random", "swap", "alpha-zeros", "alpha-random", "no_timestep")
FAMILY = {
    "none": "unablated",
    "mixer-zeros": PAPER,
    "mixer-random": PAPER,
    "swap": PAPER,
    "alpha-zeros": DEMA_LAB,
    "alpha-random": DEMA_LAB,
    "no_timestep": "dema-lab: timestep embedding removed",
}
DESCRIPTION = {
    "none": "the unablated model",
    "mixer-zeros": "mixer parameters except in_proj and out_proj (conv1d, x_proj, dt_proj, A_log, D) set to zeros",
    "mixer-random": "mixer parameters except in_proj and out_proj (conv1d, x_proj, dt_proj, A_log, D) set to "
    "U[0,1) from torch.Generator().manual_seed(seed)",
    "swap": "mixer parameters except in_proj and out_proj (conv1d, x_proj, dt_proj, A_log, D) taken from "
    "another run's checkpoint (swap_from)",
    "alpha-zeros": "hidden attention alpha replaced by zeros inside the scan (D skip and gate kept)",
    "alpha-random": "hidden attention alpha replaced by causal Gaussian weights at each channel's "
    "root-mean-square scale (D skip and gate kept)",
    "no_timestep": "the timestep embedding removed at evaluation",
}
PARAMETER_METHODS = ("mixer-zeros", "mixer-random", "swap")
ALPHA_METHODS = ("alpha-zeros", "alpha-random")
LAYERED = PARAMETER_METHODS + ALPHA_METHODS  # the methods that take `layers`
KEPT = ("in_proj", "out_proj")  # mixer parameters no method touches
OLD_KINDS = {"none": "none", "zeros": "alpha-zeros", "random": "alpha-random", "no_timestep": "no_timestep"}
_LAYERS_ORDER = {"all": -1}


# ---------------------------------------------------------------------------- what applies
def mixers(model) -> list[Mamba]:
    """The model's Mamba mixers in layer order (none for DT)."""
    return [m for m in model.modules() if isinstance(m, Mamba)]


def methods_for(model) -> tuple[str, ...]:
    """'none'; the hidden-attention methods for a model with Mamba mixers (swap aside: it needs a
    source run); 'no_timestep' for a model with a timestep embedding."""
    out = ["none"]
    if mixers(model):
        out += ["mixer-zeros", "mixer-random", "alpha-zeros", "alpha-random"]
    if getattr(model.embed, "embed_timestep", None) is not None:
        out.append("no_timestep")
    return tuple(out)


def layers_label(layers, n_layer: int) -> str:
    """'all', or one layer index as text ('0', '1', ...), validated against the model's layers."""
    if isinstance(layers, str) and layers.strip().lower() == "all":
        return "all"
    try:
        index = int(layers)
        if isinstance(layers, float) and index != layers:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"layers must be 'all' or a layer index, got {layers!r}") from None
    if not 0 <= index < n_layer:
        raise ValueError(
            f"layer {index} does not exist: the model has {n_layer} layer(s), 0..{n_layer - 1}; "
            f"use 'all' or an index in that range"
        )
    return str(index)


def _check(model, method: str, layers, modes=("transformer",)) -> str:
    """Validate (method, layers, modes) for `model`; returns the layers label."""
    if method not in METHODS:
        raise ValueError(f"unknown ablation method {method!r}; choose one of {', '.join(METHODS)}")
    arch = getattr(getattr(model, "cfg", None), "arch", type(model).__name__)
    if method in LAYERED and not getattr(getattr(model, "cfg", None), "has_attention", True):
        raise ValueError(
            f"ablation {method!r} removes hidden attention, and a {arch!r} model has none "
            f"(only DeMa has hidden attention to ablate); this model takes: {', '.join(methods_for(model))}"
        )
    if method in LAYERED and not mixers(model):
        raise ValueError(
            f"ablation {method!r} needs a DeMa model (Mamba mixers); this is a {arch!r} model, "
            f"which has: {', '.join(methods_for(model))}"
        )
    if method == "no_timestep" and getattr(model.embed, "embed_timestep", None) is None:
        raise ValueError(
            "the 'no_timestep' ablation needs a model trained with a timestep embedding (this one has none)"
        )
    if method in ALPHA_METHODS and "rnn" in modes:
        raise ValueError(
            f"{method!r} replaces the hidden attention of the sequence (Transformer-like) path; "
            f"RNN-like inference has none to replace: evaluate it with modes=('transformer',), "
            f"or use a parameter-level method (mixer-zeros, mixer-random, swap)"
        )
    label = layers_label(layers, len(mixers(model)) or 1)
    if method not in LAYERED and label != "all":
        raise ValueError(f"{method!r} acts on the whole model; use layers='all'")
    return label


# ---------------------------------------------------------------------------- parameter level
def _selected(model, label: str) -> list[tuple[str, Mamba]]:
    """(state-dict prefix, mixer) of the mixers that `label` selects."""
    names = {id(m): name for name, m in model.named_modules() if isinstance(m, Mamba)}
    chosen = mixers(model) if label == "all" else [mixers(model)[int(label)]]
    return [(names[id(m)] + ".", m) for m in chosen]


def _source_state(swap_from) -> tuple[dict, str]:
    """The swap source's state dict and a name for messages."""
    if swap_from is None:
        raise ValueError(
            "the 'swap' ablation needs swap_from: another run's Checkpoint (or model, or state dict) "
            "whose mixers have the same shapes (`dema-lab ablate RUN --method swap --swap-from OTHER`)"
        )
    if isinstance(swap_from, dict):
        return swap_from, "the source state dict"
    model = getattr(swap_from, "model", swap_from)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"swap_from must be a Checkpoint, a model or a state dict, got {type(swap_from).__name__}")
    meta = getattr(swap_from, "meta", {}) or {}
    return model.state_dict(), f"run {meta['run_id']}" if meta.get("run_id") else "the source model"


def ablated_state_dict(model, method: str, layers="all", seed: int = 0, swap_from=None) -> dict:
    """The model's weights with a parameter-level ablation applied (mixer-zeros, mixer-random,
    swap), as a new state dict: the replaced tensors are new, `model` is not touched. Every
    parameter of the selected mixers except in_proj and out_proj is replaced, as merge_exp.py
    does; mixer-random draws U[0,1) layer by layer in parameter order from one generator seeded
    by `seed`."""
    if method not in PARAMETER_METHODS:
        raise ValueError(f"{method!r} is not a parameter-level ablation; those are {', '.join(PARAMETER_METHODS)}")
    label = _check(model, method, layers)
    state = dict(model.state_dict())
    source, source_name = _source_state(swap_from) if method == "swap" else ({}, "")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for prefix, mixer in _selected(model, label):
        for name, p in mixer.named_parameters():
            if name.split(".")[0] in KEPT:
                continue
            key = prefix + name
            if method == "mixer-zeros":
                state[key] = torch.zeros_like(p)
            elif method == "mixer-random":
                state[key] = torch.rand(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype)
            else:
                if key not in source:
                    raise ValueError(
                        f"swap: {source_name} has no {key} (fewer layers, or not a DeMa model); "
                        f"swap needs a run whose mixers have the same shapes"
                    )
                if tuple(source[key].shape) != tuple(p.shape):
                    raise ValueError(
                        f"swap: {key} is {tuple(source[key].shape)} in {source_name} but "
                        f"{tuple(p.shape)} here; swap needs runs whose mixers have the same shapes "
                        f"(d_model, d_state, d_conv, expand)"
                    )
                state[key] = source[key].detach().clone().to(p.device, p.dtype)
    return state


# ---------------------------------------------------------------------------- α level
def ablated_attention(alpha, kind: str, seed: int = 0, layer: int = 0):
    """alpha (b, d_inner, L, L) replaced for an α-level ablation: "zeros", or "random": causal
    Gaussian weights at each channel's scale (the root mean square of its causal alphas: defined
    for every L, including a window of one token), from a generator seeded by (seed, layer, L)
    so that repeated calls agree; every row of a batch gets the same noise, the noise it would get
    alone (batched evaluation scores each episode as a batch of one would)."""
    if kind == "zeros":
        return torch.zeros_like(alpha)
    if kind != "random":
        raise ValueError(f"unknown hidden-attention ablation {kind!r}; use 'zeros' or 'random'")
    L = alpha.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=alpha.device).tril()
    scale = alpha.masked_select(causal).view(*alpha.shape[:2], -1).pow(2).mean(-1).sqrt()  # (b, d_inner)
    gen = torch.Generator(device="cpu").manual_seed(hash((seed, layer, L)) % (2**63))
    noise = torch.randn(alpha.shape[1:], generator=gen, dtype=alpha.dtype).to(alpha.device)  # (d_inner, L, L)
    return (noise * scale[..., None, None]).masked_fill(~causal, 0.0)


def _alpha_hook(kind: str, seed: int, layer: int):
    """A forward hook for a Mamba mixer: its output recomputed from its hidden attention with
    alpha replaced (the D skip and the z gate stay). With return_attention the original alpha is
    still returned (the model's own attention, for the logs)."""

    def hook(mixer, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]  # (b, L, d_model)
        inp = mixer.attention_inputs(hidden)  # u, z (b, d_inner, L); alpha (b, d_inner, L, L)
        alpha = ablated_attention(inp["alpha"], kind, seed, layer)
        y = apply_attention(alpha, inp["u"], inp["D"], inp["z"]).to(inp["u"].dtype)  # (b, d_inner, L)
        out = mixer.out_proj(y.transpose(1, 2))  # (b, L, d_model)
        return (out, output[1]) if isinstance(output, tuple) else out

    return hook


@contextlib.contextmanager
def ablate(model, method: str, layers="all", seed: int = 0, swap_from=None):
    """Inside the block, an ablated copy of `model` (in eval mode); `model` itself is never
    changed. Parameter-level methods edit the copy's weights (see ablated_state_dict); α-level
    ones hook the selected mixers of the copy (Transformer-like inference only: RNN-like steps
    do not go through the hook; for evaluation: no gradient flows through a hooked mixer);
    no_timestep drops the copy's timestep embedding."""
    label = _check(model, method, layers)
    ablated = copy.deepcopy(model).eval()
    ablated.ablation = (method, label)  # what was done to it (an exporter refuses an ablated copy)
    handles = []
    try:
        if method in PARAMETER_METHODS:
            ablated.load_state_dict(ablated_state_dict(model, method, label, seed, swap_from), strict=True)
        elif method in ALPHA_METHODS:
            for i, (_, mixer) in enumerate(_selected(ablated, label)):
                layer = mixer.layer_idx if mixer.layer_idx is not None else (i if label == "all" else int(label))
                handles.append(
                    mixer.register_forward_hook(_alpha_hook(method.split("-")[1], seed, layer), with_kwargs=True)
                )
        elif method == "no_timestep":
            ablated.embed.embed_timestep = None
        yield ablated
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- evaluation
def _coord_attrs(ds: xr.Dataset) -> xr.Dataset:
    attrs = {
        "ablation": {"long_name": "ablation method", "families": {m: FAMILY[m] for m in METHODS}},
        "layers": {"long_name": "ablated layers: 'all', or one layer index"},
        "seed": {"long_name": "seed of the random weights and of the episodes' initial states"},
        "checkpoint": {"long_name": "checkpoint (training step)", "units": "steps"},
        "family": {
            "long_name": "which method family: the paper's parameter-level ablation "
            "(merge_exp.py) or dema-lab's α-level one"
        },
        "mode": {"long_name": "inference mode"},
    }
    for name, a in attrs.items():
        if name in ds.coords:
            ds[name].attrs.update(a)
    return ds


def evaluate_ablation(
    checkpoint,
    method: str,
    layers="all",
    episodes: int = 5,
    seed: int = 0,
    targets=None,
    max_steps: int = 1000,
    modes=("transformer",),
    swap_from=None,
    env: str | None = None,
    scorer=None,
) -> xr.Dataset:
    """Scores of a loaded Checkpoint with one ablation: `episodes` episodes per (mode, target),
    episode seeds from `seed` (as rollout.evaluate), the random weights seeded by `seed` too.
    The env, the state normalisation and rtg_scale come from the checkpoint; targets default to
    the paper's for the env. Returns `return`, `length` and `normalized_score` by (mode, target,
    episode), with scalar coords ablation (the method), layers, seed, family and checkpoint (its
    step), and the same in attrs (method, layers, seed, family, description)."""
    from dema_lab.evaluation.rollout import evaluate

    model = checkpoint.model
    label = _check(model, method, layers, tuple(modes))
    meta = checkpoint.meta or {}
    env = env or meta.get("env")
    if not env:
        raise ValueError("the checkpoint does not name its environment (meta['env']); pass env=")
    if targets is None:
        targets = default_targets(env)
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    extra = checkpoint.extra or {}
    mean, std = (extra[k].cpu().numpy() if k in extra else None for k in ("state_mean", "state_std"))
    with ablate(model, method, label, seed, swap_from) as ablated:
        res, _ = evaluate(
            ablated,
            env,
            targets,
            episodes,
            tuple(modes),
            float(meta.get("rtg_scale", 1000.0)),
            mean,
            std,
            seed=seed,
            record=0,
            render_size=None,
            attention=None,
            max_steps=max_steps,
            scorer=scorer,
        )
    source = ""
    if method == "swap":
        source = _source_state(swap_from)[1].removeprefix("run ")
    ds = res.assign_coords(
        ablation=method, layers=label, seed=int(seed), family=FAMILY[method], checkpoint=int(meta.get("step", -1))
    )
    ds.attrs.update(
        method=method,
        layers=label,
        seed=int(seed),
        family=FAMILY[method],
        description=DESCRIPTION[method],
        run_id=meta.get("run_id", ""),
        swap_from=source,
    )
    return _coord_attrs(ds)


def ablation_name(step: int, method: str, layers: str, seed: int) -> str:
    """The store name of one (checkpoint, method, layers, seed) group."""
    from dema_lab.store.schema import checkpoint_name

    return f"{checkpoint_name(step)}-{method}-{'all' if layers == 'all' else 'layer' + str(layers)}-s{int(seed)}"


def publish_ablation(run, ds: xr.Dataset) -> str:
    """Write one evaluate_ablation result into the run's ablation group; returns its name.
    The run must not be training at the same time (one writer per run)."""
    step, method, layers, seed = (ds[c].item() for c in ("checkpoint", "ablation", "layers", "seed"))
    name = ablation_name(step, method, layers, seed)
    group = ds.drop_vars("family").expand_dims(["checkpoint", "ablation", "layers", "seed"])
    group = group.transpose("checkpoint", "ablation", "layers", "seed", "mode", "target", "episode")
    run.write("ablation", name, _coord_attrs(group))
    return name


def load_run_checkpoint(run, checkpoint: int | None):
    """A run's checkpoint at step `checkpoint` (default: the last), loaded, with meta step, run_id and env."""
    from dema_lab.models import load_checkpoint
    from dema_lab.store.errors import StoreError

    steps = run.checkpoints()
    if not steps:
        raise StoreError(f"run {run.run_id} has no checkpoint yet")
    step = steps[-1] if checkpoint is None else int(checkpoint)
    if step not in steps:
        raise StoreError(
            f"run {run.run_id} has no checkpoint at step {step} (its checkpoints: {', '.join(map(str, steps))})"
        )
    ck = load_checkpoint(run.checkpoint_bytes(step))
    ck.meta.setdefault("step", step)
    ck.meta.setdefault("run_id", run.run_id)
    ck.meta.setdefault("env", run.attrs.get("provenance", {}).get("env"))
    return ck


def evaluate_ablations(
    run,
    methods=None,
    layers="all",
    checkpoint: int | None = None,
    episodes: int = 5,
    targets=None,
    max_steps: int = 1000,
    seed: int = 0,
    swap_from=None,
    publish: bool = True,
) -> xr.Dataset:
    """Scores of a run's checkpoint (default: the last) with each of `methods` (default: every one
    that applies to the model), at `layers` for the methods that take them ('all' for the others),
    Transformer-like, on the run's evaluation targets. swap_from: a Checkpoint, or a Run (its last
    checkpoint). Each (method, layers) is published as its own group when `publish`. Returns the
    results in ablation_table's form."""
    ck = load_run_checkpoint(run, checkpoint)
    methods = methods_for(ck.model) if methods is None else tuple(methods)
    if hasattr(swap_from, "checkpoints"):  # a Run
        swap_from = load_run_checkpoint(swap_from, None)
    for method in methods:  # every error before the first evaluation
        _check(ck.model, method, layers if method in LAYERED else "all")
    targets = targets or run.attrs.get("provenance", {}).get("eval_targets")
    parts = []
    for method in methods:
        ds = evaluate_ablation(
            ck,
            method,
            layers if method in LAYERED else "all",
            episodes,
            seed,
            targets,
            max_steps,
            swap_from=swap_from if method == "swap" else None,
        )
        if publish:
            publish_ablation(run, ds)
        parts.append(ds)
    return _combine([_as_group(p) for p in parts])


def complete_ablations(
    run,
    checkpoint: int | None = None,
    episodes: int = 5,
    max_steps: int = 1000,
    seed: int = 0,
    layers=("all",),
    methods=None,
) -> tuple[xr.Dataset | None, tuple[str, ...]]:
    """Make the published ablations of a run's checkpoint complete (what a rerun of `dema-lab
    sweep` does): for a DeMa run the paper's method (mixer-zeros, mixer-random) and dema-lab's
    (alpha-zeros, alpha-random), 'none', and no_timestep for a model trained with a timestep
    embedding (`methods`: only those of them named); at every layer set of `layers` ('all',
    'each' = every layer on its own, or indices) for the hidden-attention methods. Only the
    missing ones are evaluated, with as many episodes as those already published. Returns the
    run's ablation_table (None for a model with no ablation) and labels of what was evaluated now
    ("mixer-zeros", "alpha-random layer 1")."""
    ck = load_run_checkpoint(run, checkpoint)
    step = int(ck.meta["step"])
    possible = methods_for(ck.model)
    if possible == ("none",):
        return None, ()
    if methods is not None:
        unknown = [m for m in methods if m not in possible]
        if unknown:
            raise ValueError(
                f"run {run.run_id} cannot be ablated by {', '.join(unknown)}; its model takes {', '.join(possible)}"
            )
        possible = tuple(m for m in possible if m in methods)
    n_layer = len(mixers(ck.model))
    wanted_layers = []
    for item in (layers,) if isinstance(layers, (str, int)) else layers:
        if str(item).lower() == "each":
            wanted_layers += [str(i) for i in range(n_layer)]
        else:
            wanted_layers.append(layers_label(item, max(n_layer, 1)))
    wanted_layers = list(dict.fromkeys(wanted_layers)) or ["all"]
    wanted = [(m, lay) for m in possible for lay in (wanted_layers if m in LAYERED else ["all"])]
    table = ablation_table(run)
    have = {key for key in wanted if episodes_published(table, step, seed, *key)}
    if have:  # the new ones line up with those published
        episodes = max(episodes_published(table, step, seed, *key) for key in have)
    missing = [key for key in wanted if key not in have]
    if not missing:
        return table, ()
    targets = run.attrs.get("provenance", {}).get("eval_targets")
    for method, lay in missing:
        publish_ablation(run, evaluate_ablation(ck, method, lay, episodes, seed, targets, max_steps))
    return ablation_table(run), tuple(m if lay == "all" else f"{m} layer {lay}" for m, lay in missing)


# ---------------------------------------------------------------------------- reading
def _as_group(ds: xr.Dataset) -> xr.Dataset:
    """An evaluate_ablation result (scalar coords) or a stored group, in the stored form."""
    if "layers" in ds.dims:
        return ds
    return ds.drop_vars("family", errors="ignore").expand_dims(["checkpoint", "ablation", "layers", "seed"])


def _from_old(ds: xr.Dataset, seed: int) -> list[xr.Dataset]:
    """A group written before the two methods (dim `ablation`: none / zeros / random /
    no_timestep, all layers, Transformer-like) in the current form. A 'random' made by the older
    std-scaled method (no random_scale='rms') is not alpha-random and is left out."""
    out = []
    for kind in ds.ablation.values:
        kind = str(kind)
        if kind not in OLD_KINDS or (kind == "random" and ds.attrs.get("random_scale") != "rms"):
            continue
        part = ds.sel(ablation=kind, drop=True)
        part = part.expand_dims(
            mode=[ds.attrs.get("mode", "transformer")], seed=[int(seed)], layers=["all"], ablation=[OLD_KINDS[kind]]
        )
        part.attrs = {"method": OLD_KINDS[kind], "layers": "all", "seed": int(seed), "swap_from": ""}
        out.append(part)
    return out


def _combine(parts: list[xr.Dataset]) -> xr.Dataset:
    """Groups of single (checkpoint, method, layers, seed) merged into one Dataset (NaN where a
    combination was not evaluated), sorted, with the `family` of each method as a coordinate."""
    if not parts:
        return xr.Dataset()
    order = ("checkpoint", "ablation", "layers", "seed", "mode", "target", "episode")
    parts = [p.transpose(*order) for p in parts]
    ds = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop")
    methods = sorted(ds.ablation.values, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS))
    layers = sorted(ds.layers.values, key=lambda x: _LAYERS_ORDER.get(str(x), int(x) if str(x).isdigit() else 10**6))
    ds = ds.sel(ablation=methods, layers=layers).sortby(["checkpoint", "seed"])
    ds = ds.assign_coords(family=("ablation", [FAMILY.get(str(m), "") for m in ds.ablation.values]))
    sources = {str(p.ablation.values[0]): p.attrs.get("swap_from", "") for p in parts}
    ds = ds.assign_coords(swap_from=("ablation", [sources.get(str(m), "") for m in ds.ablation.values]))
    ds["swap_from"].attrs["long_name"] = "the run whose mixer parameters 'swap' took (last written)"
    for name, long_name, units in (
        ("normalized_score", "D4RL normalized score", "0-100"),
        ("return", "episode return", "env reward"),
        ("length", "episode length", "env steps"),
    ):
        if name in ds:
            ds[name].attrs = {"long_name": long_name, "units": units}
    ds.attrs = {
        "description": "normalized scores under each ablation method; family says whose method: "
        f"'{PAPER}' edits the mixer parameters, '{DEMA_LAB}' replaces the hidden "
        "attention inside the scan; 'none' is the unablated model with the same seed",
        "methods": {m: DESCRIPTION[m] for m in ds.ablation.values if m in DESCRIPTION},
    }
    return _coord_attrs(ds)


def ablation_table(run) -> xr.Dataset:
    """The published ablations of a run by (checkpoint, ablation, layers, seed, mode, target,
    episode), NaN where a combination was not evaluated; coords `family` and `swap_from` on
    `ablation` (the method). Groups of older stores are converted (see the module doc); where an old and a new
    group give the same (checkpoint, method, layers, seed), the new one is used."""
    old, new = {}, {}
    seed = int(run.config.get("seed", 0) or 0)
    for name in run.published("ablation"):
        ds = run.open("ablation", name).load()
        if "layers" not in ds.dims:  # written before the two methods
            groups, into = _from_old(ds, seed), old
        else:
            groups, into = [ds], new
        for g in groups:
            for c in g.checkpoint.values:
                one = g.sel(checkpoint=[c])
                key = (int(c), str(one.ablation.values[0]), str(one.layers.values[0]), int(one.seed.values[0]))
                into[key] = one
    return _combine(list({**old, **new}.values()))


def episodes_published(table: xr.Dataset, checkpoint: int, seed: int, method: str, layers: str = "all") -> int:
    """How many episodes (per target) ablation_table's `table` holds for one (checkpoint, seed,
    method, layers); 0 when it was not evaluated."""
    if "normalized_score" not in table:
        return 0
    want = {"checkpoint": checkpoint, "seed": seed, "ablation": method, "layers": str(layers)}
    if any(v not in table[k].values for k, v in want.items()):
        return 0
    score = table["normalized_score"].sel(want)  # (mode, target, episode)
    return int(score.notnull().any([d for d in score.dims if d != "episode"]).sum())


def score_drop(ds: xr.Dataset) -> xr.DataArray:
    """Mean normalized score (over targets and episodes) of each (ablation, layers) minus the
    unablated one with the same checkpoint, seed and mode."""
    mean = ds["normalized_score"].mean(("target", "episode"))
    return mean - mean.sel(ablation="none", layers="all")


__all__ = [
    "ALPHA_METHODS",
    "DEMA_LAB",
    "FAMILY",
    "METHODS",
    "PAPER",
    "PARAMETER_METHODS",
    "ablate",
    "ablated_attention",
    "ablated_state_dict",
    "ablation_name",
    "ablation_table",
    "complete_ablations",
    "episodes_published",
    "evaluate_ablation",
    "evaluate_ablations",
    "layers_label",
    "load_run_checkpoint",
    "methods_for",
    "mixers",
    "publish_ablation",
    "score_drop",
]
