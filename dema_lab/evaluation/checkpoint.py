"""Evaluate a checkpoint as a run's evaluation: eval/, rollout/, decay/ and paper_attention/.

The trainer calls it at each evaluation and `dema-lab import` for an imported checkpoint; both
publish the same groups under the checkpoint's name (dema_lab.store.schema.checkpoint_name).
"""

from __future__ import annotations

import time

import numpy as np

from dema_lab.analysis import decay_statistics
from dema_lab.evaluation.paper import publish_paper_attention
from dema_lab.evaluation.rollout import evaluate, rollout_encoding
from dema_lab.store.schema import checkpoint_name, rollout_name


def full_windows(sampler, n: int, seed: int = 0) -> dict:
    """n windows of exactly K real steps (no padding), the same ones for a given seed, so that
    statistics at different checkpoints are computed on the same data."""
    K = sampler.K
    starts = np.concatenate(
        [np.arange(s, e - K + 1) for s, e in zip(sampler.starts, sampler.ends) if e - s >= K] or [np.zeros(0, np.int64)]
    )
    if not len(starts):
        raise ValueError(f"no episode in the dataset is at least K={K} steps long; use a smaller K")
    pick = np.random.default_rng(seed).choice(starts, size=min(n, len(starts)), replace=False)
    return sampler.windows(np.sort(pick))


def evaluate_checkpoint(
    run,
    model,
    step: int,
    evaluation,
    env: str,
    targets,
    modes,
    sampler,
    scorer,
    *,
    rtg_scale: float,
    seed: int,
    device=None,
    log=print,
    attrs: dict | None = None,
):
    """Evaluate a model as the run's checkpoint `step` and publish what the trainer publishes at each
    evaluation: eval/ (returns and normalized scores by mode, target, episode), rollout/ (the
    recorded episodes), decay/ (dema-lab's decay statistics on `sampler`'s dataset windows) and
    paper_attention/ (the paper's display, from a recorded Transformer-like episode of 20+ steps);
    the last two only for models with attention (not the LSTM, GRU or MLP baselines).

    `evaluation` holds the settings (a TrainConfig's evaluation section: eval_episodes,
    record_episodes, render_size, attention, eval_max_steps, decay_windows). Returns the eval Dataset."""
    name = checkpoint_name(step)
    start = time.perf_counter()
    results, recordings = evaluate(
        model,
        env,
        targets,
        evaluation.eval_episodes,
        modes,
        rtg_scale,
        sampler.state_mean,
        sampler.state_std,
        seed=seed,
        record=evaluation.record_episodes,
        render_size=evaluation.render_size or None,
        attention=evaluation.attention,
        max_steps=evaluation.eval_max_steps,
        scorer=scorer,
    )
    for (mode, target_index, episode), ds in recordings.items():
        ds.attrs.update(checkpoint=step, run_id=run.run_id)
        run.write("rollout", rollout_name(step, mode, target_index, episode), ds, encoding=rollout_encoding(ds))
    results.attrs.update(seconds=round(time.perf_counter() - start, 2), **(attrs or {}))
    run.write("eval", name, results.expand_dims(checkpoint=[step]))
    if not model.cfg.has_attention:  # LSTM, GRU, MLP: no attention to measure or display
        log(f"{run.run_id}: a {model.cfg.arch!r} model has no hidden attention: no decay statistics or paper display")
    elif evaluation.decay_windows:
        try:
            batch = full_windows(sampler, evaluation.decay_windows, seed)
        except ValueError as e:  # no episode as long as K: no windows to measure on
            log(f"no decay statistics: {e}")
        else:
            batch = {k: v.to(device) if device is not None else v for k, v in batch.items()}
            run.write("decay", name, decay_statistics(model, batch, checkpoint=step))
    if model.cfg.has_attention:
        publish_paper_attention(
            run, step, model, sampler.state_mean, sampler.state_std, rtg_scale, if_short="skip", log=log
        )
    score = results["normalized_score"].mean("episode")
    summary = ", ".join(
        f"{m}@{t:g}: {float(score.sel(mode=m, target=t)):.1f}"
        for m in results.mode.values
        for t in results.target.values
    )
    log(f"{run.run_id} step {step}: normalized score {summary} ({time.perf_counter() - start:.0f} s)")
    return results
