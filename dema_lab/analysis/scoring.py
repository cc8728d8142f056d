"""What a run's score is (one definition for the store summary, `dema-lab runs`, the dashboards
and the report), and the statistics that aggregate and compare scores.

Definitions:

    checkpoint score    for (mode, target): the mean D4RL normalized score over the checkpoint's
                        evaluation episodes
    last                the final (latest evaluated) checkpoint's score
    best                the best checkpoint's score, per (mode, target): the maximum over the
                        checkpoints, each target on its own, as the official code does
                        (gym/experiment.py keeps `best_result[i]` per target over the iterations
                        and prints each target's best), so two targets may peak at different
                        checkpoints
    a run's headline    one number per method (last, best): the Transformer-like mode (the
                        paper's default; the first evaluated mode for a run without it), the
                        mean over the evaluated targets (every target counts, none is picked)

    checkpoint_scores(evals)     (checkpoint, mode, target) checkpoint scores
    last_and_best(evals)         last, best and the best checkpoint per (mode, target)
    run_scores(evals)            last and best per mode, mean over targets
    headline(evals)              the run's headline: mode, last, best, last checkpoint

Statistics (scipy.stats):

    iqm(x)                       interquartile mean, trim_mean(x, 0.25) (rliable's IQM)
    iqm_interval(x)              the IQM with its 95% percentile-bootstrap interval
    t_interval(diffs)            mean paired difference with its 95% Student-t interval
    evidence_gap(x)              what a verdict from these values lacks ('' when enough):
                                 MIN_PAIRS values, and values that are not all equal
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

__all__ = [
    "HEADLINE_MODE",
    "METHODS",
    "METHOD_TEXT",
    "against_random",
    "SCORE_TEXT",
    "checkpoint_scores",
    "last_and_best",
    "run_scores",
    "headline",
    "headline_mode",
    "iqm",
    "iqm_interval",
    "t_interval",
    "MIN_PAIRS",
    "evidence_gap",
    "format_interval",
]

HEADLINE_MODE = "transformer"
METHODS = ("last", "best")
METHOD_TEXT = {
    "last": "last: the final checkpoint",
    "best": "best: each target's best checkpoint over training (as the official code reports)",
}
SCORE_TEXT = (
    "a checkpoint's score is the mean normalized score over its evaluation episodes, "
    "a run's the mean over its target returns"
)


def checkpoint_scores(evals: xr.Dataset) -> xr.DataArray:
    """The mean normalized score over the evaluation episodes, by (checkpoint, mode, target),
    checkpoints in step order. `evals` is `Run.evals()`: normalized_score by (checkpoint, mode,
    target, episode)."""
    if "normalized_score" not in evals:
        raise ValueError(
            "these evaluations have no normalized_score; pass Run.evals() of a run that has "
            "evaluated at least one checkpoint"
        )
    ns = evals["normalized_score"]
    missing = [d for d in ("checkpoint", "mode", "target", "episode") if d not in ns.dims]
    if missing:
        raise ValueError(
            f"normalized_score needs the dims (checkpoint, mode, target, episode); it lacks "
            f"{', '.join(missing)} (a single evaluation: expand_dims(checkpoint=[step]))"
        )
    out = ns.sortby("checkpoint").mean("episode")  # (checkpoint, mode, target)
    out.attrs = {
        "long_name": "mean normalized score over the evaluation episodes",
        "units": ns.attrs.get("units", "0-100"),
    }
    return out.rename("score")


def last_and_best(evals: xr.Dataset) -> xr.Dataset:
    """Per (mode, target): `last` (the final checkpoint's score), `best` (the maximum over the
    checkpoints, per target) and `best_checkpoint` (its step; the earliest on a tie), with the
    final checkpoint's step in `last_checkpoint`. An empty `evals` (nothing evaluated yet) gives
    NaN scores."""
    if not evals.sizes.get("checkpoint"):
        empty = xr.DataArray(np.full((0, 0), np.nan), dims=("mode", "target"))
        return xr.Dataset(
            {"last": empty, "best": empty, "best_checkpoint": empty.copy()}, attrs={"last_checkpoint": -1}
        )
    s = checkpoint_scores(evals)
    last = s.isel(checkpoint=-1, drop=True)
    best = s.max("checkpoint", skipna=True)
    found = s.notnull().any("checkpoint")
    steps = s["checkpoint"].values
    at = s.fillna(-np.inf).argmax("checkpoint")  # first maximum = earliest
    best_ck = xr.DataArray(np.where(found.values, steps[at.values], -1), dims=at.dims, coords=at.coords)
    units = s.attrs["units"]
    last.attrs = {"long_name": "normalized score, last checkpoint", "units": units, "method": METHOD_TEXT["last"]}
    best.attrs = {"long_name": "normalized score, best checkpoint", "units": units, "method": METHOD_TEXT["best"]}
    best_ck.attrs = {"long_name": "step of the best checkpoint (-1: none evaluated)", "units": "training steps"}
    return xr.Dataset(
        {"last": last, "best": best, "best_checkpoint": best_ck},
        attrs={"last_checkpoint": int(steps[-1]), "score": SCORE_TEXT},
    )


def run_scores(evals: xr.Dataset) -> xr.Dataset:
    """`last` and `best` by mode: last_and_best's scores averaged over the targets."""
    lb = last_and_best(evals)
    out = xr.Dataset({m: lb[m].mean("target", skipna=True, keep_attrs=True) for m in METHODS}, attrs=lb.attrs)
    for m in METHODS:
        out[m].attrs.update(long_name=f"normalized score, {m} checkpoint, mean over targets", method=METHOD_TEXT[m])
    return out


def headline_mode(modes) -> str | None:
    """The mode a run's headline score is taken in: Transformer-like when evaluated, else the first."""
    modes = [str(m) for m in modes]
    return HEADLINE_MODE if HEADLINE_MODE in modes else (modes[0] if modes else None)


def headline(evals: xr.Dataset, mode: str | None = None) -> dict:
    """A run's headline score: {"mode", "last", "best", "last_checkpoint"} (NaN scores, mode None
    and last_checkpoint -1 before the first evaluation). In `mode` when the run was evaluated in
    it, else in its headline mode (headline_mode)."""
    if "normalized_score" not in evals or not evals.sizes.get("checkpoint"):
        return {"mode": None, "last": np.nan, "best": np.nan, "last_checkpoint": -1}
    rs = run_scores(evals)
    modes = [str(m) for m in rs["mode"].values] if "mode" in rs.coords else []
    mode = mode if mode in modes else headline_mode(modes)
    if mode is None:
        return {"mode": None, "last": np.nan, "best": np.nan, "last_checkpoint": -1}
    return {
        "mode": mode,
        "last": float(rs["last"].sel(mode=mode)),
        "best": float(rs["best"].sel(mode=mode)),
        "last_checkpoint": rs.attrs["last_checkpoint"],
    }


# ---------------------------------------------------------------------------------- statistics
def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return x[np.isfinite(x)]


def iqm(x) -> float:
    """Interquartile mean of the finite values: the mean of the middle 50%
    (scipy.stats.trim_mean(x, 0.25), rliable's IQM); NaN when there are none."""
    from scipy.stats import trim_mean

    x = _finite(x)
    return float(trim_mean(x, 0.25)) if len(x) else np.nan


def bootstrap_interval(
    x, statistic=None, confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """(statistic, low, high) of the finite values with the statistic's percentile-bootstrap
    confidence interval (scipy.stats.bootstrap, resampling the values with replacement).
    statistic(sample, axis) defaults to the mean. Fewer than two values: no interval (NaN
    bounds); none: NaN throughout."""
    from scipy.stats import bootstrap

    stat = statistic or (lambda s, axis=-1: np.mean(s, axis=axis))
    x = _finite(x)
    if not len(x):
        return np.nan, np.nan, np.nan
    centre = float(stat(x, axis=-1))
    if len(x) < 2:
        return centre, np.nan, np.nan
    if np.ptp(x) == 0:  # every resample is the same value
        return centre, centre, centre
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(
            (x,),
            stat,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    return centre, float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm_interval(x, confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """(IQM, low, high): the IQM of the finite values with its percentile-bootstrap confidence
    interval (bootstrap_interval of trim_mean(x, 0.25), as rliable does within a task). Fewer
    than two values: no interval (NaN bounds)."""
    from scipy.stats import trim_mean

    x = _finite(x)
    if not len(x):
        return iqm(x), np.nan, np.nan
    return bootstrap_interval(x, lambda s, axis=-1: trim_mean(s, 0.25, axis=axis), confidence, n_resamples, seed)


def t_interval(diffs, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite paired differences: the Student-t confidence interval
    mean ± t(1 - (1 - confidence) / 2, n - 1) · s / √n. One difference: no interval (NaN bounds);
    none: NaN mean too."""
    from scipy.stats import t

    d = _finite(diffs)
    n = len(d)
    if not n:
        return np.nan, np.nan, np.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, np.nan, np.nan, 1
    half = float(t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


# A verdict from a Student-t interval needs at least this many values. With two, the interval rests
# on one degree of freedom (t = 12.7 at 95%) and on a spread estimated from a single deviation,
# which is exactly 0 whenever the two are equal (MuJoCo evaluation is deterministic per seed);
# three is the fewest with which the spread itself is estimated from more than one deviation.
MIN_PAIRS = 3


def evidence_gap(x, unit: str = "pairs", minimum: int = MIN_PAIRS) -> str:
    """What a verdict from the finite values `x` (paired differences, or episode scores) lacks,
    "" when they are enough: "3 pairs needed, 2 measured" with fewer than `minimum`, and "all 3
    differences are equal: add seeds or episodes" when two or more have no spread (a sample std of
    0, up to rounding: their Student-t interval would have zero width, a certainty no measurement
    gives); both, joined by "; ", when both apply."""
    d = _finite(x)
    gaps = []
    if len(d) < minimum:
        gaps.append(f"{minimum} {unit} needed, {len(d)} measured")
    if len(d) >= 2 and np.ptp(d) <= 1e-9 * max(1.0, float(np.abs(d).max())):
        gaps.append(f"all {len(d)} {'differences' if unit == 'pairs' else unit} are equal: add seeds or episodes")
    return "; ".join(gaps)


def against_random(evals: xr.Dataset, mode: str, confidence: float = 0.95) -> dict:
    """The last checkpoint's episodes in `mode` against the random policy, which scores 0 by the
    normalization (D4RL's random return, or Atari's random-play reference): {"mean", "low", "high",
    "episodes", "above", "gap"}: the mean normalized score over every (target, episode) with its
    Student-t interval, the episode count, how many scored above 0, and what a verdict on them
    lacks (evidence_gap; "" when they are enough). NaNs (and 0 episodes) when the run has no
    evaluation in `mode`."""
    none = {"mean": np.nan, "low": np.nan, "high": np.nan, "episodes": 0, "above": 0, "gap": "no episodes"}
    if "normalized_score" not in evals or not evals.sizes.get("checkpoint"):
        return none
    ns = evals["normalized_score"].sortby("checkpoint").isel(checkpoint=-1)
    if "mode" not in ns.coords or mode not in [str(m) for m in ns["mode"].values]:
        return none
    x = _finite(ns.sel(mode=mode).values.ravel())
    mean, low, high, n = t_interval(x, confidence)
    gap = evidence_gap(x, "episodes")
    return {"mean": mean, "low": low, "high": high, "episodes": n, "above": int((x > 0).sum()), "gap": gap}


def format_interval(low: float, high: float, signed: bool = False) -> str:
    """An interval as "[low, high]" to one decimal ("+" signs with `signed`), "[–]" when unknown."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "[–]"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"[{f.format(low)}, {f.format(high)}]"
