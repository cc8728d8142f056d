"""One definition of a run's score (last and best checkpoint), and the statistics the report uses."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dema_lab.analysis.scoring import (
    checkpoint_scores,
    headline,
    iqm,
    iqm_interval,
    last_and_best,
    run_scores,
    t_interval,
)

STEPS = [3000, 1000, 2000]  # stored out of order: "last" is the latest step, not the last row


def _evals(modes=("transformer", "rnn")) -> tuple[xr.Dataset, np.ndarray]:
    """A hand-built Run.evals(): normalized_score by (checkpoint, mode, target, episode), and the
    same scores as a plain array in step order (checkpoint 1000, 2000, 3000)."""
    # [step][target][episode] for the Transformer-like mode: target 3600 peaks at 2000, target
    # 1800 at 1000, so "each target's best" (official) differs from "the best checkpoint's mean"
    t = np.array(
        [
            [[10.0, 20.0], [60.0, 80.0]],  # 1000: means 15, 70
            [[50.0, 70.0], [30.0, 30.0]],  # 2000: means 60, 30
            [[40.0, 44.0], [20.0, 40.0]],
        ]
    )  # 3000: means 42, 30
    by_step = np.stack([t, t / 2][: len(modes)], axis=1)  # (checkpoint, mode, target, episode)
    order = [2, 0, 1]  # rows for STEPS
    ds = xr.Dataset(
        {"normalized_score": (("checkpoint", "mode", "target", "episode"), by_step[order])},
        coords={"checkpoint": STEPS, "mode": list(modes), "target": [3600.0, 1800.0], "episode": [0, 1]},
    )
    ds["normalized_score"].attrs = {"long_name": "D4RL normalized score", "units": "0-100"}
    return ds, by_step


def test_last_and_best_follow_the_official_per_target_best():
    ds, raw = _evals()
    means = raw.mean(-1)  # (checkpoint, mode, target), step order
    s = checkpoint_scores(ds)
    assert list(s.checkpoint.values) == [1000, 2000, 3000] and s.attrs["units"] == "0-100"
    np.testing.assert_allclose(s.transpose("checkpoint", "mode", "target").values, means)
    lb = last_and_best(ds)
    assert lb.attrs["last_checkpoint"] == 3000
    np.testing.assert_allclose(lb["last"].sel(mode="transformer").values, [42.0, 30.0])
    np.testing.assert_allclose(lb["best"].sel(mode="transformer").values, [60.0, 70.0])  # per target
    assert lb["best_checkpoint"].sel(mode="transformer").values.tolist() == [2000, 1000]
    np.testing.assert_allclose(lb["best"].sel(mode="rnn").values, [30.0, 35.0])
    for name in ("last", "best", "best_checkpoint"):
        assert lb[name].attrs["long_name"] and lb[name].attrs["units"]
    rs = run_scores(ds)
    np.testing.assert_allclose(rs["last"].values, [36.0, 18.0])
    # mean over targets of each target's best: (60 + 70) / 2, not the best checkpoint's mean (45 at 2000)
    np.testing.assert_allclose(rs["best"].values, [65.0, 32.5])
    assert headline(ds) == {"mode": "transformer", "last": 36.0, "best": 65.0, "last_checkpoint": 3000}


def test_headline_mode_and_the_cases_without_scores():
    rnn_only, _ = _evals(modes=("rnn",))  # the scores of the first mode above
    got = headline(rnn_only)
    assert got["mode"] == "rnn" and got["last"] == pytest.approx(36.0) and got["best"] == pytest.approx(65.0)
    empty = headline(xr.Dataset())
    assert empty["mode"] is None and np.isnan(empty["last"]) and np.isnan(empty["best"])
    # a target first evaluated after a resume: NaN at the earlier checkpoints, its best where it was evaluated
    ds, _ = _evals()
    ds["normalized_score"].loc[{"checkpoint": [1000, 2000], "target": 1800.0}] = np.nan
    lb = last_and_best(ds)
    assert lb["best"].sel(mode="transformer", target=1800.0) == 30.0
    assert lb["best_checkpoint"].sel(mode="transformer", target=1800.0) == 3000
    with pytest.raises(ValueError, match="no normalized_score"):
        checkpoint_scores(xr.Dataset({"return": ("episode", [1.0])}))
    with pytest.raises(ValueError, match="lacks checkpoint"):
        checkpoint_scores(ds.isel(checkpoint=0, drop=True))


def test_iqm_and_its_bootstrap_interval_against_numpy():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(50, 10, 18), [500.0, -300.0]])  # two outliers the IQM ignores
    # the interquartile mean by hand: sorted, a quarter cut from each end
    srt = np.sort(x)
    cut = int(0.25 * len(x))
    assert iqm(x) == pytest.approx(srt[cut : len(x) - cut].mean())
    assert iqm(np.append(x, np.nan)) == pytest.approx(iqm(x)) and np.isnan(iqm([]))
    centre, low, high = iqm_interval(x)
    assert centre == pytest.approx(iqm(x)) and low < centre < high
    # a plain numpy percentile bootstrap of the same statistic
    idx = rng.integers(0, len(x), size=(20000, len(x)))
    boot = np.sort(x[idx], axis=1)[:, cut : len(x) - cut].mean(1)
    want = np.percentile(boot, [2.5, 97.5])
    np.testing.assert_allclose([low, high], want, atol=0.4)  # Monte-Carlo error about 0.1
    wider = iqm_interval(x, confidence=0.99)
    assert wider[1] < low and wider[2] > high
    assert np.isnan(iqm_interval([3.0])[1]) and iqm_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_t_interval_against_a_hand_computation():
    d = [5.0, 6.0, 4.0, 5.5]
    # mean 5.125, sample std sqrt(2.1875 / 3), t(0.975, 3 dof) = 3.182446 from the table
    half = 3.182446305 * np.sqrt(2.1875 / 3) / 2
    mean, low, high, n = t_interval(d + [np.nan])
    assert n == 4 and mean == pytest.approx(5.125)
    assert (low, high) == (pytest.approx(5.125 - half), pytest.approx(5.125 + half))
    # 90%: t(0.95, 3 dof) = 2.353363
    _, low90, _, _ = t_interval(d, confidence=0.90)
    assert low90 == pytest.approx(5.125 - 2.353363435 * np.sqrt(2.1875 / 3) / 2)
    one = t_interval([2.0])
    assert one[0] == 2.0 and np.isnan(one[1]) and one[3] == 1
    assert t_interval([np.nan])[3] == 0


def test_paired_verdict_uses_the_t_interval():
    from dema_lab.study.report import paired_verdict

    assert paired_verdict([5.0, 6.0, 4.0, 5.5]) == (
        "holds",
        "mean paired difference +5.1, 95% t-interval [+3.8, +6.5] over 4 pairs",
    )
    assert paired_verdict([-5.0, -6.0, -4.0])[0] == "does not hold"
    assert paired_verdict([5.0, -6.0, 4.0, -3.0])[0] == "inconclusive"
    # two pairs are too few for a verdict, however they fall (tests/study/test_study.py: the rule)
    assert paired_verdict([1.2, 3.0]) == (
        "inconclusive",
        "3 pairs needed, 2 measured; mean paired difference +2.1 over 2 pairs",
    )
    assert paired_verdict([2.0]) == (
        "inconclusive",
        "3 pairs needed, 1 measured; mean paired difference +2.0 over 1 pair",
    )
    assert paired_verdict([np.nan])[0] == "not measured"


def _k_table(shift40=0.0):
    """Datasets a, b, c x seeds 0, 1 at K 5, 10, 20, 40; K 10 scores best of all (a best-K pick
    would choose it); d runs at K 5 and 20 only."""
    rows = []
    for i, ds in enumerate("abc"):
        for seed in (0, 1):
            base = 30.0 + 10 * i + seed
            jitter = 0.5 * (i - 1) + 0.3 * seed
            rows += [
                (ds, 5, seed, base - 6 + jitter),
                (ds, 10, seed, base + 20),
                (ds, 20, seed, base),
                (ds, 40, seed, base - 2 - jitter + shift40),
            ]
    rows += [("d", 5, 0, 10.0), ("d", 20, 0, 12.0)]
    return pd.DataFrame(rows, columns=["dataset", "K", "seed", "score_transformer"])


def test_short_k_finding_uses_the_fixed_comparisons():
    from dema_lab.study.report import short_k_finding

    df = _k_table()
    claim, verdict, evidence = short_k_finding(df)
    assert claim == "A short K (8–20) is enough" and verdict == "holds", evidence
    assert "K=10" not in evidence  # no K chosen by its score
    g = df.pivot_table(index=["dataset", "seed"], columns="K", values="score_transformer")
    d = (g[20] - g[40]).dropna().values
    half = 2.570582 * d.std(ddof=1) / np.sqrt(6)  # t(0.975, 5 dof) from the table
    mean, low, high = d.mean(), d.mean() - half, d.mean() + half
    assert (
        f"K=20 against K=40 (decides; 6 pair(s) on a, b, c): {g[20].loc[['a', 'b', 'c']].mean():.1f} vs "
        f"{g[40].mean():.1f}, mean paired difference {mean:+.1f}, 95% t-interval [{low:+.1f}, {high:+.1f}]" in evidence
    )
    # K 5 against K 20 takes d too (7 pairs), and is reported: here K 5 scores lower
    assert "K=5 against K=20 (reported; 7 pair(s) on a, b, c, d)" in evidence
    k5 = evidence.split("K=5 against K=20")[1]
    assert "mean paired difference -" in k5 and "over 7 pairs" in k5
    assert short_k_finding(_k_table(shift40=6.0))[1] == "does not hold"  # K 40 better
    assert short_k_finding(_k_table(shift40=2.0))[1] == "holds (no significant difference)"
    no40 = short_k_finding(df[df.K != 40])
    assert no40[1] == "not measured" and "K=20 against K=40 (decides): no (dataset, seed) run at both" in no40[2]
    one = df[(df.dataset == "a") & (df.seed == 0)]
    assert short_k_finding(one)[1] == "inconclusive"  # one pair: no interval


def test_aggregate_table_is_the_iqm_with_its_interval():
    from dema_lab.study.report import aggregate_table

    rng = np.random.default_rng(0)
    rows = [("dema", 20, ds, s, rng.normal(40, 10), rng.normal(50, 10)) for ds in "abc" for s in range(3)]
    rows += [("dt", 20, "a", 0, 30.0, 35.0)]
    df = pd.DataFrame(rows, columns=["arch", "K", "dataset", "seed", "score_transformer", "best_score_transformer"])
    out = aggregate_table(df)
    assert list(out.index) == [("DT", 20), ("DeMa", 20)] and list(out.columns) == ["last", "best", "runs", "datasets"]
    x = df[df.arch == "dema"].score_transformer.values
    want = np.sort(x)[2:7].mean()  # 9 runs: 2 cut from each end
    _, low, high = iqm_interval(x)
    assert out.loc[("DeMa", 20), "last"] == f"{want:.1f} [{low:.1f}, {high:.1f}]"
    assert out.loc[("DeMa", 20), "runs"] == 9 and out.loc[("DeMa", 20), "datasets"] == 3
    assert out.loc[("DT", 20), "best"] == "35.0 [–]"  # one run: no interval


def test_against_random_uses_the_last_checkpoints_episodes():
    from dema_lab.analysis.scoring import against_random

    ds, raw = _evals()
    # the last checkpoint (step 3000, stored first) of the Transformer-like mode: 40, 44, 20, 40
    last = raw[-1, 0].ravel()
    got = against_random(ds, "transformer")
    n, mean, sd = 4, last.mean(), last.std(ddof=1)
    half = 3.182446305284263 * sd / np.sqrt(n)  # t(0.975, 3), from a table
    assert got["episodes"] == 4 and got["above"] == 4
    assert got["mean"] == pytest.approx(mean) and got["low"] == pytest.approx(mean - half, rel=1e-6)
    # a run below random: scores shifted under 0 are counted as such
    shifted = ds.assign(normalized_score=ds.normalized_score - 42.0)
    below = against_random(shifted, "transformer")
    assert below["above"] == 1 and below["high"] > 0 > below["mean"]
    assert against_random(ds, "nope")["episodes"] == 0 and np.isnan(against_random(ds, "nope")["mean"])
