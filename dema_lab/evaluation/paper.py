"""The paper's attention display computed on a run's recorded episodes and stored in the run
(paper_attention/<checkpoint>): paper_attention replays the windows the policy acted on,
publish_paper_attention adds the group to a run (also one recorded before the group existed)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from dema_lab.analysis.paper import PAPER_START, last_token_attention, paper_statistics

# ---------------------------------------------------------------------------------------------
# The paper's attention display (official code, branch `attention`: evaluate_episodes.py
# `evaluate_episode_rtg(attention="step")` with experiment.py's --start_time 20 --end_time 800,
# and plot_attn.py). At each Transformer-like decision step t >= 20 of one rollout it keeps the
# last token's row of |alpha| (per layer and channel; the window is whatever the policy acted on,
# left-padded to K steps there), averages it over channels, plots decision step x position per
# layer, then averages over steps and layers. No row normalisation, no fit.


def paper_attention(
    model,
    episode: xr.Dataset,
    state_mean=None,
    state_std=None,
    rtg_scale: float = 1000.0,
    start: int = PAPER_START,
    end: int | None = None,
    checkpoint: int | None = None,
    max_batch: int = 16,
) -> xr.Dataset:
    """The paper's attention display on a recorded Transformer-like episode (a rollout/<name>
    group), recomputed with its checkpoint's model: at every decision step from `start` (the
    official 20) to `end` (exclusive; None: the episode's end; the official code stops at 800)
    the window the policy acted on is replayed (rollout.replay_windows) and the current token's
    row of |α| averaged over channels (last_token_attention); then paper_statistics. Not row
    normalised, unlike decay_statistics (DEMA_LAB_METHOD): the two are different methods.
    state_mean, state_std, rtg_scale: the checkpoint's (its extras and meta)."""
    from dema_lab.evaluation.rollout import replay_windows

    n = int(episode.sizes["step"])
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be a step >= 0, got {start!r}")
    stop = n if end is None else min(int(end), n)
    if stop <= start:
        raise ValueError(
            f"the episode has {n} steps, so none from step {start} on (the paper's display "
            f"averages decision steps {start}..{(n if end is None else end) - 1}); use a longer "
            f"episode (a better checkpoint, or eval_max_steps) or a smaller start"
        )
    steps = np.arange(int(start), stop)
    windows = replay_windows(model, episode, steps, state_mean, state_std, rtg_scale)
    surface = last_token_attention(model, windows, max_batch).transpose(1, 0, 2)  # (layer, step, lag)
    cfg = model.cfg
    attrs = {
        "start": int(start),
        "end": int(stop),
        "episode_length": n,
        "target": float(episode.attrs["target"]),
        "episode_return": float(episode.attrs.get("return", np.nan)),
        "window_padding": getattr(cfg, "window_padding", "none"),
        "token_order": getattr(cfg, "token_order", "RSA"),
        "layout": cfg.layout,
        "K": cfg.K,
    }
    return paper_statistics(surface, steps, cfg, checkpoint=checkpoint, attrs=attrs)


def publish_paper_attention(
    run,
    checkpoint: int | None = None,
    model=None,
    state_mean=None,
    state_std=None,
    rtg_scale: float | None = None,
    start: int = PAPER_START,
    end: int | None = None,
    if_short: str = "raise",
    log=None,
) -> xr.Dataset | None:
    """Compute the paper's attention display for a checkpoint of a run and publish it as the
    run's paper_attention/<checkpoint> group (next to decay/<checkpoint>); returns it.

    The episode is the longest Transformer-like episode recorded at that checkpoint (the first
    target's on ties). model, state_mean, state_std, rtg_scale: the checkpoint's, loaded from
    the run when model is None (so stores written before this existed can get it). When no
    recorded episode reaches step `start`: if_short "raise" raises ValueError, "skip" calls
    log(reason) and returns None (the trainer's choice: early checkpoints fall over quickly).
    """
    from dema_lab.store.errors import StoreError
    from dema_lab.store.schema import checkpoint_name

    if if_short not in ("raise", "skip"):
        raise ValueError(f"if_short must be 'raise' or 'skip', got {if_short!r}")
    ckpts = run.checkpoints()
    if checkpoint is None:
        if not ckpts:
            raise StoreError(f"run {run.run_id} has no checkpoint yet")
        checkpoint = ckpts[-1]
    checkpoint = int(checkpoint)
    if model is None and checkpoint not in ckpts:
        raise StoreError(
            f"run {run.run_id} has no checkpoint {checkpoint} (checkpoints: {', '.join(map(str, ckpts)) or 'none'})"
        )
    name = checkpoint_name(checkpoint)
    found = []
    for ep_name in run.rollouts():
        if not ep_name.startswith(name + "-"):
            continue
        ep = run.open("rollout", ep_name)
        if ep.attrs.get("mode", "transformer") == "transformer":
            found.append((int(ep.sizes["step"]), ep_name, ep))
    problem = None
    if not found:
        problem = f"run {run.run_id} has no Transformer-like episode recorded at checkpoint {checkpoint}"
    else:
        length, ep_name, ep = max(found, key=lambda x: x[0])  # max keeps the first of equals
        if length <= start:
            problem = (
                f"the longest Transformer-like episode recorded at checkpoint {checkpoint} of run "
                f"{run.run_id} ({ep_name}) has {length} steps, none from step {start} on"
            )
    if problem:
        if if_short == "skip":
            if log:
                log(f"{problem}: no paper's attention display for this checkpoint")
            return None
        raise ValueError(
            f"{problem}; the paper's attention display needs one (record longer episodes, or pass a smaller start)"
        )
    if model is None:
        from dema_lab.models import load_checkpoint

        ck = load_checkpoint(run.checkpoint_bytes(checkpoint), map_location="cpu")
        model, state_mean, state_std = ck.model, ck.extra["state_mean"].numpy(), ck.extra["state_std"].numpy()
        rtg_scale = float(ck.meta.get("rtg_scale", 1000.0)) if rtg_scale is None else rtg_scale
    if rtg_scale is None:
        rtg_scale = float(run.config.get("rtg_scale", 1000.0))
    ds = paper_attention(
        model,
        ep,
        state_mean,
        state_std,
        rtg_scale,
        start=start,
        end=end,  # ep lazy: no frames read
        checkpoint=checkpoint,
    )
    ds.attrs.update(episode=ep_name, run_id=run.run_id)
    run.write("paper_attention", name, ds)
    return ds
