"""Evaluation-time ablations, as in the paper: replace DeMa's hidden attention of every layer
with zeros or with random weights ("zeros", "random"), or remove the timestep embedding from a
model trained with one ("no_timestep", DeMa or DT); measure the score against "none".

    ablations_for(model)              the kinds that apply to a model
    ablate(model, kind)               a context in which the model runs ablated
    evaluate_ablations(run, ...)      scores of a run's checkpoint per kind, published in the run
    complete_ablations(run, ...)      evaluate only the kinds a run's published ablations lack
                                      (what a rerun of `dema-lab sweep` does)
    ablation_table(run), score_drop   what was published

The hidden-attention ablations act on the sequence (Transformer-like) path; RNN-like inference
has no explicit attention matrix to replace, so ablations are evaluated Transformer-like.
"""

from __future__ import annotations

import contextlib

import xarray as xr

from .ssm import Mamba

ABLATIONS = ("none", "zeros", "random")          # hidden attention
NO_TIMESTEP = "no_timestep"                      # the timestep embedding removed at evaluation


def ablations_for(model) -> tuple[str, ...]:
    """'none', the hidden-attention kinds for a model with Mamba mixers, and 'no_timestep' for a
    model with a timestep embedding."""
    kinds = ["none"]
    if any(isinstance(m, Mamba) for m in model.modules()):
        kinds += ["zeros", "random"]
    if getattr(model.embed, "embed_timestep", None) is not None:
        kinds.append(NO_TIMESTEP)
    return tuple(kinds)


@contextlib.contextmanager
def ablate(model, kind: str, seed: int = 0):
    """Inside the block, `model` runs with ablation `kind` (one of ablations_for(model))."""
    if kind != NO_TIMESTEP:
        with ablate_hidden_attention(model, kind, seed):
            yield model
        return
    saved = getattr(model.embed, "embed_timestep", None)
    if saved is None:
        raise ValueError("the 'no_timestep' ablation needs a model trained with a timestep embedding "
                         "(this one has none)")
    model.embed.embed_timestep = None
    try:
        yield model
    finally:
        model.embed.embed_timestep = saved


@contextlib.contextmanager
def ablate_hidden_attention(model, kind: str, seed: int = 0):
    """Inside the block, every Mamba mixer of `model` uses the ablated hidden attention."""
    if kind not in ABLATIONS:
        raise ValueError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}")
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    if kind != "none" and not mixers:
        raise ValueError("hidden-attention ablations need a DeMa model (this one has no Mamba mixer)")
    saved = [m.ablation for m in mixers]
    for m in mixers:
        m.ablation = None if kind == "none" else (kind, seed)
    try:
        yield model
    finally:
        for m, a in zip(mixers, saved):
            m.ablation = a


def evaluate_ablations(run, checkpoint: int | None = None, kinds=None, episodes: int = 5,
                       targets=None, max_steps: int = 1000, seed: int = 0, publish: bool = True) -> xr.Dataset:
    """Scores of a run's checkpoint with each ablation (Transformer-like inference; default: every
    kind that applies to the model). Returns dims (checkpoint, ablation, target, episode);
    published as ablation/<checkpoint> when `publish` (the run must not be training at the same time)."""
    from .models import load_checkpoint
    from .rollout import evaluate
    from .store import checkpoint_name

    steps = run.checkpoints()
    checkpoint = steps[-1] if checkpoint is None else checkpoint
    ck = load_checkpoint(run.checkpoint_bytes(checkpoint))
    possible = ablations_for(ck.model)
    kinds = possible if kinds is None else tuple(kinds)
    wrong = [k for k in kinds if k not in possible]
    if wrong:
        raise ValueError(f"ablation {', '.join(wrong)} does not apply to run {run.run_id} (a {ck.config.arch} "
                         f"model{' with' if NO_TIMESTEP in possible else ' without'} a timestep embedding); "
                         f"it has: {', '.join(possible)}")
    prov = run.attrs.get("provenance", {})
    targets = targets or prov.get("eval_targets")
    parts = []
    for kind in kinds:
        with ablate(ck.model, kind, seed):
            res, _ = evaluate(ck.model, prov["env"], targets, episodes, ("transformer",), ck.meta["rtg_scale"],
                              ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy(), seed=seed, record=0,
                              render_size=None, attention=None, max_steps=max_steps)
        parts.append(res.sel(mode="transformer", drop=True).expand_dims(ablation=[kind]))
    ds = xr.concat(parts, dim="ablation").expand_dims(checkpoint=[checkpoint])
    ds.attrs.update(mode="transformer", random_scale="rms",
                    description="hidden attention replaced by zeros or by random causal weights at each "
                                "channel's root-mean-square scale, or the timestep embedding removed "
                                "(no_timestep); 'none' is the unablated model")
    if publish:
        run.write("ablation", checkpoint_name(checkpoint), ds)
    return ds


def complete_ablations(run, checkpoint: int | None = None, episodes: int = 5, max_steps: int = 1000,
                       seed: int = 0) -> tuple[xr.Dataset | None, tuple[str, ...]]:
    """Make the published ablations of a run's checkpoint complete: evaluate the kinds that apply
    to the model and are missing (or were computed by an older method: "random" scaled by the
    std instead of the RMS), keep the others, publish the merged group. Returns it (None for a
    model with no ablation) and the kinds evaluated now."""
    from .models import load_checkpoint
    from .store import checkpoint_name

    steps = run.checkpoints()
    checkpoint = steps[-1] if checkpoint is None else checkpoint
    possible = ablations_for(load_checkpoint(run.checkpoint_bytes(checkpoint)).model)
    if possible == ("none",):
        return None, ()
    name = checkpoint_name(checkpoint)
    old = run.open("ablation", name).load() if name in run.published("ablation") else None
    have = set() if old is None else {str(k) for k in old.ablation.values}
    if old is not None and old.attrs.get("random_scale") != "rms":
        have.discard("random")
    missing = tuple(k for k in possible if k not in have)
    if not missing:
        return old, ()
    if old is not None:
        episodes = old.sizes["episode"]                 # the new kinds line up with the old ones
    new = evaluate_ablations(run, checkpoint, kinds=missing, episodes=episodes, max_steps=max_steps, seed=seed,
                             publish=False)
    if old is not None:
        kept = [k for k in old.ablation.values if str(k) in have]
        new = xr.concat([old.sel(ablation=kept), new], dim="ablation").assign_attrs(new.attrs)
    run.write("ablation", name, new)
    return new, missing


def ablation_table(run) -> xr.Dataset:
    """The published ablations of a run, by (checkpoint, ablation, target, episode)."""
    parts = [run.open("ablation", n).load() for n in run.published("ablation")]
    return xr.concat(parts, dim="checkpoint") if parts else xr.Dataset()


def score_drop(ds: xr.Dataset) -> xr.DataArray:
    """Mean normalized score of each ablation minus the unablated one, per checkpoint."""
    mean = ds["normalized_score"].mean(("target", "episode"))
    return mean - mean.sel(ablation="none")

