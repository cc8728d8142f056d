"""Faithfulness of a run's explanations, measured on its own episodes, and its causal horizon;
published as explain/<checkpoint> and faithfulness/<checkpoint> (store.schema).

    evaluate(run, checkpoint, methods, *, episodes, steps, ...)   play Transformer-like episodes,
        explain `steps` decisions of each by every method and perturb them
        (analysis.faithfulness.faithfulness); with horizon=True also the causal horizon
    horizon_curve(checkpoint, episodes, ...)                      the normalized score with the
        window cut to its last k steps, and with α truncated beyond lag k inside the scan
    explain_table(run, checkpoint), faithfulness_table(run, checkpoint)   what was published

The perturbation maths lives in analysis.faithfulness; this module runs the episodes.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import xarray as xr

from dema_lab.analysis.explain import mean_inputs
from dema_lab.analysis.faithfulness import (
    FRACTIONS,
    causal_horizon,
    cut_window,
    faithfulness,
    stack_windows,
    verdict,
    window_change,
)
from dema_lab.evaluation.ablation import load_run_checkpoint, mixers
from dema_lab.evaluation.defaults import default_targets
from dema_lab.evaluation.rollout import evaluate as play
from dema_lab.evaluation.rollout import replay_windows
from dema_lab.ssm import apply_attention


class CutWindow(torch.nn.Module):
    """The model acting on the last k steps of every window it is given (analysis.faithfulness.
    cut_window): what a policy with context length k would see, the weights unchanged."""

    def __init__(self, model, k: int):
        super().__init__()
        self.model, self.k, self.cfg, self.embed = model, int(k), model.cfg, model.embed

    def forward(self, states, actions, returns_to_go, timesteps, return_attention=False, prev_action=None):
        """The model's predictions for the cut window (b, min(T, k), out)."""
        w = {"states": states, "actions": actions, "returns_to_go": returns_to_go, "timesteps": timesteps}
        w["prev_action"] = prev_action
        w = cut_window(w, min(self.k, states.shape[1]))
        return self.model(**w, return_attention=return_attention)

    def choose_action(self, pred, sample: bool = True, generator=None):
        """The model's own choice from a prediction (TrajectoryModel.choose_action)."""
        return self.model.choose_action(pred, sample, generator)


@contextlib.contextmanager
def alpha_truncated(model, k: int):
    """Inside the block, `model`'s mixers run with their hidden attention α set to 0 beyond a lag of
    k steps (k tokens_per_step tokens; the D skip and the gate kept): the window stays whole,
    only what the scan carries from further back is cut."""
    lag = int(k) * model.cfg.tokens_per_step

    def hook(mixer, args, kwargs, output):
        inp = mixer.attention_inputs(args[0] if args else kwargs["hidden_states"])
        L = inp["alpha"].shape[-1]
        i = torch.arange(L)
        keep = (i[:, None] - i[None, :]) < lag  # (L, L)
        y = apply_attention(inp["alpha"] * keep, inp["u"], inp["D"], inp["z"]).to(inp["u"].dtype)
        return mixer.out_proj(y.transpose(1, 2))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mixers(model)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def _setting(ck, run=None) -> dict:
    """The env, evaluation target, normalisation and rtg_scale of a loaded checkpoint."""
    meta, extra = ck.meta or {}, ck.extra or {}
    env = meta.get("env")
    if not env:
        raise ValueError("the checkpoint does not name its environment (meta['env'])")
    targets = (run.attrs.get("provenance", {}).get("eval_targets") if run is not None else None) or default_targets(env)
    mean, std = (extra[k].cpu().numpy() if k in extra else None for k in ("state_mean", "state_std"))
    return {
        "env": env,
        "target": float(targets[0]),
        "mean": mean,
        "std": std,
        "rtg": float(meta.get("rtg_scale", 1000.0)),
    }


def decision_windows(ck, episodes: int, steps: int, seed: int = 0, max_steps: int = 1000, run=None):
    """Play `episodes` Transformer-like episodes at the run's first evaluation target and take
    `steps` decisions of each, evenly spaced over the steps whose window holds K real steps.
    Returns (the windows as one batch, their (episode, step) coords, the episodes' scores)."""
    s = _setting(ck, run)
    K = ck.model.cfg.K
    _, recordings = play(
        ck.model, s["env"], [s["target"]], episodes, ("transformer",), s["rtg"], s["mean"], s["std"],
        seed=seed, record=episodes, render_size=None, attention=None, max_steps=max_steps,
    )  # fmt: skip
    windows, where = [], []
    for (_, _, e), rec in sorted(recordings.items()):
        n = int(rec.sizes["step"])
        if n < K:
            continue
        picked = np.unique(np.linspace(K - 1, n - 1, steps).round().astype(int))
        windows += replay_windows(ck.model, rec, picked, s["mean"], s["std"], s["rtg"])
        where += [(e, int(t)) for t in picked]
    if not windows:
        raise ValueError(
            f"no episode lasted K={K} steps (the longest: {max(int(r.sizes['step']) for r in recordings.values())}); "
            f"explain a checkpoint that acts longer, or raise max_steps"
        )
    return stack_windows(windows), where


def horizon_curve(ck, episodes: int = 3, ks=None, seed: int = 0, max_steps: int = 1000, run=None, window=None):
    """The causal horizon of a loaded checkpoint: the normalized score of `episodes` episodes at
    each k (default 1..K) with the window cut to its last k steps (CutWindow) and, for DeMa, with
    α truncated beyond lag k (alpha_truncated); the full window is k = K. `window`: decisions
    (one batch) on which the mean action change of the cut is measured too. Returns a Dataset
    on (k, episode) with horizon_cut / horizon_alpha (analysis.faithfulness.causal_horizon)."""
    s = _setting(ck, run)
    model = ck.model.eval()
    K = model.cfg.K
    ks = list(range(1, K + 1)) if ks is None else sorted({int(k) for k in ks} | {K})

    def scores(m):
        res, _ = play(
            m, s["env"], [s["target"]], episodes, ("transformer",), s["rtg"], s["mean"], s["std"],
            seed=seed, record=0, render_size=None, attention=None, max_steps=max_steps,
        )  # fmt: skip
        return res["normalized_score"].values.reshape(-1)

    data = {"score_cut": (("k", "episode"), np.stack([scores(CutWindow(model, k)) for k in ks]))}
    full = data["score_cut"][1][-1]
    attrs = {}
    if mixers(model):
        alpha = []
        for k in ks:
            with alpha_truncated(model, k):
                alpha.append(scores(model))
        data["score_alpha"] = (("k", "episode"), np.stack(alpha))
        h = causal_horizon(np.stack(alpha), ks, full)
        data["horizon_alpha"] = ((), float(h["horizon"]))
    h = causal_horizon(data["score_cut"][1], ks, full)
    data["horizon_cut"] = ((), float(h["horizon"]))
    for key in ("full_mean", "full_low", "full_high"):
        attrs[key] = float(h[key])
    if window is not None:
        data["change_cut"] = (("k",), window_change(model, window, ks))
    ds = xr.Dataset(data, coords={"k": ks, "episode": np.arange(episodes)}, attrs=attrs)
    ds["k"].attrs = {
        "long_name": "steps kept (window cut to its last k steps, or α kept up to lag k)",
        "units": "steps",
    }
    ds["score_cut"].attrs = {"long_name": "normalized score, window cut to its last k steps"}
    if "score_alpha" in ds:
        ds["score_alpha"].attrs = {"long_name": "normalized score, α truncated beyond lag k inside the scan"}
    ds["horizon_cut"].attrs = {
        "long_name": "causal horizon: the smallest k whose mean score reaches the full window's 95% interval",
        "units": "steps",
    }
    return ds


def half_life(run, step: int) -> float:
    """The attention half-life (env steps) of the run's decay statistics at `step`: the median
    over layers of the decision (state) token's fit; NaN when there are none."""
    from dema_lab.store.schema import checkpoint_name

    name = checkpoint_name(step)
    if name not in run.published("decay"):
        return float("nan")
    ds = run.open("decay", name).load()
    hl = ds["half_life_steps"]
    kinds = [str(k) for k in hl["query_kind"].values]
    hl = hl.sel(query_kind="s" if "s" in kinds else kinds[0])
    return float(np.nanmedian(hl.values)) if np.isfinite(hl.values).any() else float("nan")


def evaluate(
    run,
    checkpoint: int | None = None,
    methods=None,
    *,
    episodes: int = 3,
    steps: int = 10,
    fractions=FRACTIONS,
    baseline: str = "zero",
    horizon: bool = False,
    horizon_episodes: int | None = None,
    max_steps: int = 1000,
    seed: int = 0,
    publish: bool = True,
    log=None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Explain `steps` decisions of each of `episodes` Transformer-like episodes of a run's
    checkpoint (default: the last) by each method (default: every one that applies), and measure
    how faithful each is (analysis.faithfulness.faithfulness: perturbation AUCs with intervals,
    agreement with occlusion, against recency and random). baseline: the perturbation's and
    occlusion's replacement token, "zero" or "mean" (the embedding of the run's dataset's means).
    horizon: also the causal horizon (horizon_curve, horizon_episodes episodes per k; slow: 2K
    evaluations). Publishes explain/<checkpoint> (the relevance) and faithfulness/<checkpoint>
    (the rest) when `publish`. Returns (explain, faithfulness) Datasets."""
    from dema_lab.store.schema import checkpoint_name

    if episodes < 1 or steps < 1:
        raise ValueError(f"episodes and steps must be at least 1, got {episodes} and {steps}")
    start = time.perf_counter()
    ck = load_run_checkpoint(run, checkpoint)
    step = int(ck.meta["step"])
    model = ck.model.eval()
    means = None
    if baseline == "mean":
        from dema_lab.data import load_dataset

        source = run.attrs.get("provenance", {}).get("dataset") or run.config.get("dataset")
        if not source:
            raise ValueError(f"run {run.run_id} does not name its dataset: the 'mean' baseline needs its means")
        s = _setting(ck, run)
        means = mean_inputs(load_dataset(source, progress=False), s["mean"], s["std"], s["rtg"])
    window, where = decision_windows(ck, episodes, steps, seed, max_steps, run)
    with torch.no_grad():
        ds = faithfulness(model, window, methods, fractions, baseline, means, seed=seed)
    ep, st = (np.array(v) for v in zip(*where))
    ds = ds.assign_coords(episode=("decision", ep), env_step=("decision", st))
    ds["env_step"].attrs = {"long_name": "the episode's step of the decision", "units": "env steps"}
    attrs = {"checkpoint": step, "run_id": run.run_id, "arch": model.cfg.arch, "K": int(model.cfg.K)}
    explain = ds[["relevance"]].assign_attrs({**ds.attrs, **attrs})
    faith = ds.drop_vars("relevance").drop_dims("token", errors="ignore")
    faith.attrs.update(attrs, verdict=verdict(ds), half_life_steps=half_life(run, step))
    if horizon:
        curve = horizon_curve(ck, horizon_episodes or episodes, None, seed, max_steps, run, window)
        faith = faith.merge(curve.rename({"episode": "horizon_episode"}), combine_attrs="drop_conflicts")
        faith.attrs.update({f"horizon_{k}": v for k, v in curve.attrs.items()})
    faith.attrs["seconds"] = round(time.perf_counter() - start, 2)
    if publish:
        name = checkpoint_name(step)
        run.write("explain", name, explain)
        run.write("faithfulness", name, faith)
    if log:
        log(f"{run.run_id} step {step}: {len(where)} decisions explained ({faith.attrs['seconds']:.0f} s)")
    return explain, faith


def _published(run, kind: str, checkpoint: int | None) -> xr.Dataset | None:
    from dema_lab.store.schema import checkpoint_name, step_of

    names = sorted(run.published(kind), key=step_of)
    if not names:
        return None
    name = names[-1] if checkpoint is None else checkpoint_name(checkpoint)
    return run.open(kind, name).load() if name in names else None


def explain_table(run, checkpoint: int | None = None) -> xr.Dataset | None:
    """The published relevance of a run's checkpoint (default: the last explained), or None."""
    return _published(run, "explain", checkpoint)


def faithfulness_table(run, checkpoint: int | None = None) -> xr.Dataset | None:
    """The published faithfulness of a run's checkpoint (default: the last evaluated), or None."""
    return _published(run, "faithfulness", checkpoint)


__all__ = [
    "CutWindow",
    "alpha_truncated",
    "decision_windows",
    "evaluate",
    "explain_table",
    "faithfulness_table",
    "half_life",
    "horizon_curve",
]
