"""The sweep report: the paper's tables from the runs in a store, and which findings hold
(read, computed and judged here; drawn as Markdown and plots by dema_lab.study.render).

    sweep_names(store)        the sweeps with finished runs in a store
    run_table(store, sweep)   one row per run (xarray Dataset, dim `run`): what it is, its cost,
                              its scores per inference mode at the last and the best checkpoint
                              (dema_lab.analysis.scoring), per-step latency, the state it carries between
                              steps, decay fits per layer, ablation scores, the explanations'
                              faithfulness against recency and the causal horizon
    build_report(...)         the tables (pandas DataFrames, cells "mean ± std" over seeds; the
                              aggregate over datasets "IQM [95% bootstrap CI]") and the findings,
                              as plain statements with their numbers (paired t intervals)
    cue_decisions(store, ...) the MiniGrid runs' decisions: attention share on the cue step(s)
                              against its lag-matched average (dema_lab.analysis.cue)
    cue_finding(decisions)    "Does the hidden attention find the cue?" from those, paired
    paired_verdict(diffs)     a verdict from paired differences, with the evidence it needs
                              (at least MIN_PAIRS pairs, not all equal) or what it lacks
    Report.methods()          the method paragraph: how the scores, tables and verdicts are made

The dashboard's "Study report" tab (dema_lab.dashboard.StudyReport) and notebook 04 show the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from dema_lab.analysis.cue import cue_attention
from dema_lab.analysis.runs import ARCH_LABELS, family_label
from dema_lab.analysis.scoring import (
    METHOD_TEXT,
    METHODS,
    MIN_PAIRS,
    SCORE_TEXT,
    against_random,
    evidence_gap,
    format_interval,
    iqm_interval,
    run_scores,
    t_interval,
)
from dema_lab.evaluation.defaults import default_modes
from dema_lab.models.cost import carried_state_bytes
from dema_lab.store.zarr_store import Run, RunStore


def _latency(model, mode: str, steps: int = 40) -> float:
    """Median seconds per env step for `mode` after a warm-up, on random observations
    (steady state: the window is full)."""
    from dema_lab.evaluation.rollout import single_threaded
    from dema_lab.models import Policy

    policy = Policy(model, mode)
    policy.reset(1000.0)
    rng = np.random.default_rng(0)
    times = []
    with single_threaded():  # as the evaluation runs
        for t in range(model.cfg.K + steps):
            obs = rng.normal(size=model.cfg.state_dim).astype(np.float32)
            start = time.perf_counter()
            policy.act(obs)
            if t >= model.cfg.K:
                times.append(time.perf_counter() - start)
            policy.observe(0.0)
    return float(np.median(times))


_COST: dict = {}  # (store, run, checkpoint step) -> inference cost; a published checkpoint never changes


def _inference_cost(rs: RunStore, run) -> dict:
    """Latency per env step (ms) and the state carried between steps (bytes) for each inference
    mode of the run's last checkpoint, measured once per process."""
    from dema_lab.models import load_checkpoint

    key = (str(rs.path), run.run_id, run.checkpoints()[-1])
    if key not in _COST:
        ck = load_checkpoint(run.checkpoint_bytes())
        cost = {}
        for mode in default_modes(ck.config.arch):
            cost[f"latency_ms_{mode}"] = 1e3 * _latency(ck.model, mode)
            cost[f"state_bytes_{mode}"] = carried_state_bytes(ck.config, mode)
        _COST[key] = cost
    return dict(_COST[key])


def sweep_names(store) -> list[str]:
    """The names of the sweeps that have at least one finished run in `store`, sorted."""
    rs = RunStore(store, mode="r")
    names = set()
    for run_id in rs.run_ids():
        try:
            attrs = Run(rs, run_id).attrs
        except Exception:  # noqa: BLE001 - run_table names the unreadable runs
            continue
        if attrs.get("status") == "finished" and attrs.get("config", {}).get("sweep"):
            names.add(attrs["config"]["sweep"])
    return sorted(names)


def run_table(store, sweep: str | None = None, latency: bool = True) -> xr.Dataset:
    """One row per finished run of `sweep` (all finished runs when None). Runs that cannot be
    read are left out and named, with the reason, in attrs["skipped"]. Scores (dema_lab.analysis.scoring,
    mean over targets): `score_<mode>` at the last checkpoint, `best_score_<mode>` at each
    target's best checkpoint."""
    rs = RunStore(store, mode="r")
    run_ids = rs.run_ids()
    rows, skipped = [], {r: f"its metadata cannot be read ({m})" for r, m in getattr(rs, "unreadable", {}).items()}
    for run_id in run_ids:
        try:
            row = _run_row(rs, Run(rs, run_id), sweep, latency)
        except Exception as e:  # noqa: BLE001 - one broken run must not hide the others
            skipped[run_id] = f"{type(e).__name__}: {e}"
            continue
        if row is not None:
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        out = xr.Dataset(coords={"run": np.array([], dtype=object)})
    else:
        out = xr.Dataset.from_dataframe(df.set_index("run"))
    out.attrs.update(store=str(store), sweep=sweep or "", skipped=skipped)
    return out


def _run_row(rs: RunStore, run, sweep: str | None, latency: bool) -> dict | None:
    """The report's row for one run; None for a run outside `sweep` or not finished."""
    from dema_lab.evaluation.ablation import ablation_table
    from dema_lab.evaluation.faithfulness import faithfulness_table

    attrs = run.attrs
    cfg = attrs.get("config", {})
    if (sweep and cfg.get("sweep") != sweep) or attrs.get("status") != "finished":
        return None
    prov = attrs.get("provenance", {})
    row = {
        "run": run.run_id,
        "dataset": prov.get("dataset", cfg.get("dataset")),
        "arch": cfg["arch"],
        "layout": cfg["layout"],
        "timestep_embedding": bool(prov.get("timestep_embedding")),
        "K": int(cfg["K"]),
        "seed": int(cfg["seed"]),
        "parameters": prov.get("parameters", np.nan),
        "forward_macs": prov.get("forward_macs", np.nan),
        "train_seconds": attrs.get("wall_seconds", np.nan),
    }
    for key in ("steps", "batch_size", "d_model", "n_layer", "d_state", "eval_episodes"):
        row[key] = cfg.get(key, np.nan)
    targets = cfg.get("eval_targets") or prov.get("eval_targets") or []
    row["eval_targets"] = " ".join(f"{float(t):g}" for t in targets) or "the env's defaults"
    step_macs = prov.get("step_macs", {})
    evals = run.evals()
    if "normalized_score" in evals:
        scores = run_scores(evals)
        for mode in scores.mode.values:
            row[f"score_{mode}"] = float(scores["last"].sel(mode=mode))
            row[f"best_score_{mode}"] = float(scores["best"].sel(mode=mode))
            row[f"macs_per_step_{mode}"] = step_macs.get(str(mode), np.nan)
            vs = against_random(evals, str(mode))
            row[f"random_low_{mode}"], row[f"random_high_{mode}"] = vs["low"], vs["high"]
            row[f"episodes_{mode}"], row[f"above_random_{mode}"] = vs["episodes"], vs["above"]
            row[f"random_gap_{mode}"] = vs["gap"]
    decay = run.decay()
    if "r2" in decay:
        d = decay.isel(checkpoint=-1)
        kind = "s" if "s" in d.query_kind.values else str(d.query_kind.values[0])
        for layer in d.layer.values:
            row[f"r2_layer{layer}"] = float(d["r2"].sel(layer=layer, query_kind=kind))
            row[f"half_life_steps_layer{layer}"] = float(d["half_life_steps"].sel(layer=layer, query_kind=kind))
    paper = run.paper_attention()
    if "curve_r2" in paper:  # the paper's display (last-row |alpha|), last checkpoint
        p = paper.isel(checkpoint=-1)
        row["paper_r2"] = float(p["curve_r2"])
        row["paper_half_life_steps"] = float(p["curve_half_life_steps"])
        if "curve_kind_r2" in p and "s" in p.key_kind.values:
            row["paper_state_r2"] = float(p["curve_kind_r2"].sel(key_kind="s"))
            row["paper_state_half_life_steps"] = float(p["curve_kind_half_life"].sel(key_kind="s"))
    abl = ablation_table(run)
    if "normalized_score" in abl:
        row.update(ablation_scores(abl))
    faith = faithfulness_table(run)
    if faith is not None:
        row.update(faithfulness_scores(faith))
    if latency and run.checkpoints():
        row.update(_inference_cost(rs, run))
    return row


# the explanation methods judged against the recency baseline (recency and random are the baselines)
EXPLANATION_FINDINGS = ("alpha", "unified", "rollout", "attribution", "gradient", "occlusion")


def faithfulness_scores(faith: xr.Dataset) -> dict:
    """A run's faithfulness for its row (a faithfulness/<checkpoint> group in): per method, the
    mean paired positive-AUC difference against recency over the decisions with its 95% bootstrap
    interval (faith_<method>, _low, _high), its AUC against random's (faith_<method>_random), the
    median Spearman agreement with occlusion; the causal horizon (window cut, α truncated) and
    the attention half-life it is compared with."""
    row = {}
    for m in faith.explanation.values:
        m = str(m)
        if m in ("recency", "random"):
            continue
        rec = faith.sel(explanation=m, baseline="recency")
        row[f"faith_{m}"] = float(rec["versus_mean"])
        row[f"faith_{m}_low"], row[f"faith_{m}_high"] = float(rec["versus_low"]), float(rec["versus_high"])
        row[f"faith_{m}_random"] = float(faith["versus_mean"].sel(explanation=m, baseline="random"))
        row[f"faith_{m}_spearman"] = float(faith["spearman_median"].sel(explanation=m))
    for key in ("horizon_cut", "horizon_alpha"):
        if key in faith:
            row[key] = float(faith[key])
    row["explain_half_life_steps"] = float(faith.attrs.get("half_life_steps", np.nan))
    return row


def faithfulness_verdict(df: pd.DataFrame, method: str) -> tuple[str, str]:
    """Whether `method` beats recency on positive-perturbation AUC, from each run's paired
    difference and its 95% bootstrap interval over decisions: holds when every run's interval lies
    above 0, does not hold when every one lies below, else inconclusive. Returns (verdict, evidence)."""
    col = f"faith_{method}"
    if col not in df or df[col].notna().sum() == 0:
        return "not measured", f"no run explained by {method} (dema-lab explain RUN)"
    rows = df[df[col].notna()]
    above, below = int((rows[col + "_low"] > 0).sum()), int((rows[col + "_high"] < 0).sum())
    n = len(rows)
    verdict = "holds" if above == n else "does not hold" if below == n else "inconclusive"
    per_run = "; ".join(
        f"{r['run']}: {r[col]:+.3g} [{r[col + '_low']:+.3g}, {r[col + '_high']:+.3g}]" for _, r in rows.iterrows()
    )
    return verdict, (
        f"beats recency in {above} of {n} run(s), worse in {below} (positive-perturbation AUC minus recency's, "
        f"mean over decisions, 95% bootstrap interval): {per_run}"
    )


def horizon_table(df: pd.DataFrame) -> pd.DataFrame:
    """The causal horizon against K (median over runs): by window cut and by α truncated, beside
    the attention half-life (decay statistics, state tokens) and K itself."""
    cols = [c for c in ("horizon_cut", "horizon_alpha", "explain_half_life_steps") if c in df]
    if not cols or df[cols[0]].notna().sum() == 0:
        return pd.DataFrame()
    t = df[df[cols[0]].notna()].groupby(["dataset", "K"])[cols].median()
    return t.rename(
        columns={
            "horizon_cut": "causal horizon, window cut (steps)",
            "horizon_alpha": "causal horizon, α truncated (steps)",
            "explain_half_life_steps": "attention half-life (steps)",
        }
    ).map(lambda v: f"{v:.1f}" if np.isfinite(v) else "–")


def ablation_column(method: str, layers: str = "all") -> str:
    """The run table's column of one ablation: ablation_<method>, or ablation_<method>@<layer>."""
    return f"ablation_{method}" if str(layers) == "all" else f"ablation_{method}@{layers}"


def ablation_scores(abl: xr.Dataset) -> dict:
    """A run's ablation scores for its row (ablation_table's form in): per (method, layers), the
    mean normalized score at the last ablated checkpoint, Transformer-like, over targets and
    episodes, then over seeds; and the episodes per ablation."""
    last = abl.isel(checkpoint=-1)["normalized_score"]
    if "mode" in last.dims:
        last = last.sel(mode="transformer" if "transformer" in last.mode.values else last.mode.values[0])
    mean = last.mean(("target", "episode")).mean("seed")  # (ablation, layers); NaN: not evaluated
    row = {}
    for method in mean.ablation.values:
        for layers in mean.layers.values:
            value = float(mean.sel(ablation=method, layers=layers))
            if np.isfinite(value):
                row[ablation_column(str(method), str(layers))] = value
    row["ablation_episodes"] = int(last.notnull().any([d for d in last.dims if d != "episode"]).sum())
    return row


# The hidden-attention finding, one verdict per method: the paper's (parameter-level) and dema-lab's (α-level)
ABLATION_FINDINGS = (
    ("mixer-zeros", "mixer parameters (conv1d, x_proj, dt_proj, A_log, D) set to zeros"),
    ("mixer-random", "mixer parameters set to U[0,1)"),
    ("alpha-zeros", "hidden attention α set to zeros"),
    ("alpha-random", "hidden attention α replaced by random weights"),
)


def ablation_methods_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Method × layers, by dataset: the normalized score under each ablation and its drop against
    the unablated score of the same run (cells mean ± std over runs), with the method's family
    (the paper's parameter-level ablation or dema-lab's α-level one) and the number of runs."""
    from dema_lab.evaluation.ablation import FAMILY
    from dema_lab.evaluation.ablation import METHODS as ABLATION_METHODS

    cols = []
    for col in runs.columns:
        if col.startswith("ablation_") and col != "ablation_episodes" and runs[col].notna().any():
            method, _, layers = col[len("ablation_") :].partition("@")
            if method in ABLATION_METHODS and method != "no_timestep":
                order = (ABLATION_METHODS.index(method), -1 if not layers else int(layers))
                cols.append((*order, method, layers or "all", col))
    rows = []
    for dataset, part in runs.groupby("dataset"):
        for _, _, method, layers, col in sorted(cols):
            values = part[col]
            if values.notna().any():
                drop = values - part["ablation_none"] if "ablation_none" in part else values * np.nan
                rows.append(
                    {
                        "dataset": dataset,
                        "family": FAMILY[method],
                        "method": method,
                        "layers": layers,
                        "normalized score": _cell(values.values),
                        "drop against unablated": "–" if method == "none" else _cell(drop.values),
                        "runs": int(values.notna().sum()),
                    }
                )
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["dataset", "family", "method", "layers"])


def _cell(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return "–"
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def _count(x) -> str:
    return "–" if not np.isfinite(x) else (f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k")


def _table(df: pd.DataFrame, index, columns, value, fmt=_cell, paired: bool = False) -> pd.DataFrame:
    """Cells fmt(values over seeds) of `value`, rows `index`, columns `columns`. A missing cell
    shows "–"; with `paired`, only the rows where every column has runs (a comparison)."""
    if value not in df or df.empty:
        return pd.DataFrame()
    out = df.groupby(index + columns, dropna=False)[value].apply(lambda s: fmt(s.values))
    out = out.unstack(columns) if columns else out.to_frame(_LABELS.get(value, value))
    if paired:
        out = out.dropna()
    return out.fillna("–")


def _last_best(df: pd.DataFrame, index, columns, mode: str = "transformer", paired: bool = False) -> pd.DataFrame:
    """_table of the `mode` score at the last and at the best checkpoint, side by side: columns
    (*columns, "last" / "best"), "mean ± std" over seeds."""
    parts = {
        m: _table(df, index, columns, f"score_{mode}" if m == "last" else f"best_score_{mode}", paired=paired)
        for m in METHODS
    }
    parts = {m: t for m, t in parts.items() if not t.empty}
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, axis=1, names=["checkpoint"]).fillna("–")  # columns (method, *columns)
    if columns:
        out.columns = out.columns.reorder_levels([*range(1, out.columns.nlevels), 0])
    else:
        out.columns = out.columns.get_level_values(0)
        return out
    order = sorted(out.columns, key=lambda c: (c[:-1], METHODS.index(c[-1])))
    return out[order]


def aggregate_table(df: pd.DataFrame, mode: str = "transformer", confidence: float = 0.95) -> pd.DataFrame:
    """The aggregate over datasets, as RL papers report it: per model and K, the IQM
    (dema_lab.analysis.scoring.iqm) of the `mode` score of every (dataset, seed) run, at the last and the
    best checkpoint, each with its percentile-bootstrap interval ("IQM [low, high]"), and how
    many runs and datasets it covers. Rows (model, K)."""
    cols = {m: f"score_{mode}" if m == "last" else f"best_score_{mode}" for m in METHODS}
    if df.empty or cols["last"] not in df:
        return pd.DataFrame()
    model = df.arch.map(ARCH_LABELS).fillna(df.arch)
    rows = []
    for (name, k), part in df.assign(model=model).groupby(["model", "K"]):
        row = {"model": name, "K": k}
        for m, col in cols.items():
            centre, low, high = iqm_interval(part[col] if col in part else [], confidence=confidence)
            row[m] = "–" if not np.isfinite(centre) else f"{centre:.1f} {format_interval(low, high)}"
        row["runs"] = int(part[cols["last"]].notna().sum())
        row["datasets"] = int(part.loc[part[cols["last"]].notna(), "dataset"].nunique())
        rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "K"])


_LABELS = {
    "score_transformer": "Transformer-like",
    "score_rnn": "RNN-like",
    "best_score_transformer": "Transformer-like, best",
    "best_score_rnn": "RNN-like, best",
    "latency_ms_transformer": "ms/step Transformer-like",
    "latency_ms_rnn": "ms/step RNN-like",
    "state_bytes_transformer": "state Transformer-like",
    "state_bytes_rnn": "state RNN-like",
    "ablation_none": "none",
    "ablation_zeros": "zeros",
    "ablation_random": "random",
    "ablation_no_timestep": "no timestep embedding",
}


@dataclass
class Report:
    """The study's report on a set of runs (build_report): one row per run, the paper's tables,
    the findings with their verdicts and evidence, the runs left out and why, and the command
    that rebuilds it. dema_lab.study.render draws it (to_markdown, score_plot)."""

    runs: pd.DataFrame
    tables: dict = field(default_factory=dict)  # title -> DataFrame
    findings: list = field(default_factory=list)  # (finding, verdict, evidence)
    skipped: dict = field(default_factory=dict)  # run -> why it could not be read
    source: str = ""  # the command that rebuilds it

    def settings(self) -> list[str]:
        """How the runs were made: each training and evaluation setting with its values."""
        out = []
        for col, label in (
            ("steps", "training steps"),
            ("batch_size", "batch size"),
            ("d_model", "d_model"),
            ("n_layer", "layers"),
            ("d_state", "d_state (DeMa)"),
            ("eval_episodes", "evaluation episodes per target and mode"),
            ("eval_targets", "target returns"),
            ("ablation_episodes", "episodes per ablation"),
        ):
            if col in self.runs and self.runs[col].notna().any():
                part = self.runs if col != "d_state" else self.runs[self.runs.arch == "dema"]
                by = dict(part.groupby("arch")[col].unique()) if col == "d_model" else {"": part[col].unique()}
                vals = " / ".join(f"{a + ' ' if a else ''}{_values(v)}" for a, v in by.items())
                out.append(f"{label}: {vals}")
        if "train_seconds" in self.runs:
            out.append(f"training time: {self.runs.train_seconds.sum() / 3600:.1f} h over {len(self.runs)} runs")
        return out

    @staticmethod
    def methods() -> str:
        """How the scores, tables and verdicts are made (dema_lab.analysis.scoring), in one paragraph."""
        return (
            f"Scores: {SCORE_TEXT} (normalized: 0 is the random policy, 100 the reference, D4RL's expert "
            f"for MuJoCo or the human player for Atari (gamer-normalized)); {METHOD_TEXT['last']}; {METHOD_TEXT['best']}. "
            "Each table says which it shows. Cells are the mean ± std over seeds; the aggregate over "
            "datasets is the IQM (interquartile mean) of every (dataset, seed) run with its 95% "
            "percentile-bootstrap interval. Every score-based finding is judged twice, side by side: by each "
            "target's best checkpoint (the paper's scoring) and by the last checkpoint (dema-lab's). Scores "
            "are compared in pairs (same run, or same dataset, K and seed) with a 95% Student-t interval on "
            "the mean paired difference: holds when the interval lies above 0, does not hold when below, "
            'inconclusive when it contains 0 (for a claim of "at least as good": holds, no significant '
            f"difference). A verdict needs at least {MIN_PAIRS} pairs whose differences are not all equal (a "
            "sample std above 0): MuJoCo evaluation is deterministic per seed, and equal differences give a "
            "zero-width interval, a certainty no measurement has. Short of that, the finding is inconclusive "
            "and its evidence says what is missing. The verdict against the random policy, over a run's "
            f"episodes, needs the same: {MIN_PAIRS} episodes, not all scoring the same. The hidden-attention "
            "ablations name "
            "their method: the paper's parameter-level ones (merge_exp.py) and dema-lab's α-level ones; the "
            "decay finding is judged on the paper's attention display and on dema-lab's decay statistics. "
            "An explanation method is faithful when, on decisions of recorded Transformer-like episodes, "
            "replacing the earlier tokens it ranks highest moves the decision more than replacing those the "
            "recency baseline ranks highest: the paired positive-perturbation AUC difference, with its 95% "
            "percentile-bootstrap interval over decisions, lies above 0 in every run (below 0 in every run: "
            "does not hold; else inconclusive). The causal horizon is the smallest number of steps of context "
            "whose score reaches the full window's 95% interval."
        )

    def findings_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.findings, columns=["paper's finding", "on this data", "evidence"])


def _values(values) -> str:
    """Distinct setting values, numbers in numeric order without a trailing .0; missing ones left out."""
    vals = [v for v in values if not (isinstance(v, float) and np.isnan(v))]
    nums = [v for v in vals if isinstance(v, (int, float, np.number))]
    text = [f"{float(v):g}" for v in sorted(nums)] + sorted(str(v) for v in vals if v not in nums)
    return ", ".join(dict.fromkeys(text)) or "–"


def build_report(store, sweep: str | None = None, latency: bool = True) -> Report:
    table = run_table(store, sweep, latency)
    df = table.to_dataframe().reset_index() if table.sizes.get("run") else pd.DataFrame()
    rep = Report(
        runs=df,
        skipped=dict(table.attrs.get("skipped", {})),
        source=f"dema-lab report --store {store}" + (f" --sweep {sweep}" if sweep else ""),
    )
    if df.empty:
        rep.findings.append(("(no finished runs)", "not measured", f"store {store}, sweep {sweep or 'any'}"))
        return rep
    dema = df[df.arch == "dema"]
    main = dema[(dema.layout == "B3LD") & (~dema.timestep_embedding)]
    key = ["dataset"]

    rep.tables["Normalized score against K (DeMa, B3LD, Transformer-like; last and best checkpoint)"] = _last_best(
        main, key, ["K"]
    )
    cost = (
        main.groupby("K")[
            [c for c in ("parameters", "forward_macs", "macs_per_step_transformer", "macs_per_step_rnn") if c in main]
        ]
        .first()
        .T
    )
    cost.index.name = "quantity"
    rep.tables["Parameters and MACs against K (DeMa, B3LD)"] = cost.map(_count) if not cost.empty else cost
    both = df[(df.layout == "B3LD") & (~df.timestep_embedding | (df.arch == "dt"))]
    rep.tables[
        "Aggregate over datasets: IQM [95% bootstrap CI] of the normalized score over every (dataset, seed) "
        "run (B3LD, Transformer-like; last and best checkpoint)"
    ] = aggregate_table(both)
    if set(both.arch) >= {"dema", "dt"}:
        sc = _last_best(both, key + ["K"], ["arch"], paired=True)
        params = both.groupby(["arch"])["parameters"].first().map(_count)
        macs = both.groupby(["arch", "K"])["forward_macs"].first().map(_count).unstack("arch").dropna()
        rep.tables["DeMa against DT: score (Transformer-like; last and best checkpoint)"] = sc
        rep.tables["DeMa against DT: parameters"] = params.to_frame("parameters")
        rep.tables["DeMa against DT: MACs per forward, by K"] = macs
    if len(set(dema.layout)) > 1:
        rep.tables["B3LD against BL3D (DeMa, Transformer-like, last checkpoint)"] = _table(
            dema[~dema.timestep_embedding], key + ["K"], ["layout"], "score_transformer", paired=True
        )
    if len(set(dema.timestep_embedding)) > 1:
        te = dema[dema.layout == "B3LD"].assign(
            timestep_embedding=lambda d: d.timestep_embedding.map({False: "off", True: "on"})
        )
        rep.tables["Timestep embedding off against on (DeMa, B3LD, Transformer-like, last checkpoint)"] = _table(
            te, key + ["K"], ["timestep_embedding"], "score_transformer", paired=True
        )
    methods = ablation_methods_table(main)
    if not methods.empty:
        rep.tables[
            "Hidden-attention ablations, method × layers (DeMa, B3LD, Transformer-like, last checkpoint; "
            "runs of every K and seed; drop = ablated − unablated, paired within each run)"
        ] = methods
    if "ablation_no_timestep" in df:
        with_te = df[df.ablation_no_timestep.notna()].assign(model=lambda d: d.arch.map(ARCH_LABELS).fillna(d.arch))
        rep.tables["Timestep embedding removed at evaluation (models trained with one; normalized score)"] = pd.concat(
            [_table(with_te, key + ["model", "K"], [], c) for c in ("ablation_none", "ablation_no_timestep")], axis=1
        )
    if "score_rnn" in main:
        cols = [_table(main, key + ["K"], [], c) for c in ("score_transformer", "score_rnn")]
        for c in ("latency_ms_transformer", "latency_ms_rnn"):
            if c in main:
                cols.append(_table(main, key + ["K"], [], c, fmt=lambda v: f"{np.nanmean(v):.2f}"))
        for c in ("state_bytes_transformer", "state_bytes_rnn"):
            if c in main:
                cols.append(_table(main, key + ["K"], [], c, fmt=lambda v: f"{np.nanmean(v) / 1024:.1f} KiB"))
        rep.tables[
            "RNN-like against Transformer-like: score (last checkpoint), latency per step (ms), state carried "
            "between steps"
        ] = pd.concat(cols, axis=1)
    rep.tables.update(recurrent_tables(df))
    decay_cols = sorted(c for c in main if c.startswith(("r2_layer", "half_life_steps_layer")))
    if decay_cols:
        decay = pd.concat(
            [_table(main, key + ["K"], [], c, fmt=lambda v: f"{np.nanmean(v):.2f}") for c in decay_cols], axis=1
        )
        decay.columns = [
            c.replace("r2_layer", "R² layer ").replace("half_life_steps_layer", "half-life layer ")
            for c in decay.columns
        ]
        rep.tables[
            "Decay statistics (last checkpoint, state tokens): R² of the exponential fit, half-life in steps"
        ] = decay
    paper_cols = [
        c
        for c in ("paper_r2", "paper_half_life_steps", "paper_state_r2", "paper_state_half_life_steps")
        if c in main and main[c].notna().any()
    ]
    if paper_cols:
        table = pd.concat(
            [_table(main, key + ["K"], [], c, fmt=lambda v: f"{np.nanmean(v):.2f}") for c in paper_cols], axis=1
        )
        table.columns = [
            {
                "paper_r2": "R² (all keys, lag in tokens)",
                "paper_half_life_steps": "half-life (steps)",
                "paper_state_r2": "R² (state keys, lag in steps)",
                "paper_state_half_life_steps": "half-life, state keys (steps)",
            }[c]
            for c in paper_cols
        ]
        rep.tables[
            "Attention decay by the paper's display (last checkpoint: the current token's |α| row, mean over "
            "channels, decision steps ≥ 20 and layers, not normalised), exponential fits"
        ] = table
    faith_cols = [f"faith_{m}" for m in EXPLANATION_FINDINGS if f"faith_{m}" in df]
    if faith_cols:
        explained = df[df[faith_cols].notna().any(axis=1)]
        rep.tables[
            "Faithfulness of explanations: positive-perturbation AUC minus recency's, mean over decisions "
            "[95% bootstrap interval], last checkpoint"
        ] = (
            explained.set_index("run")[faith_cols]
            .apply(
                lambda col: [
                    f"{v:+.3g} [{lo:+.3g}, {hi:+.3g}]" if np.isfinite(v) else "–"
                    for v, lo, hi in zip(col, explained[col.name + "_low"], explained[col.name + "_high"])
                ]
            )
            .rename(columns=lambda c: c.removeprefix("faith_"))
        )
    horizon = horizon_table(main)
    if not horizon.empty:
        rep.tables["Causal horizon against K and the attention half-life (DeMa, B3LD, median over runs)"] = horizon
    rep.tables[
        "Against the random policy (normalized score 0): last checkpoint, every (target, episode), "
        "95% Student-t interval"
    ] = random_table(df)
    rep.findings = findings(df)
    if df.dataset.astype(str).str.startswith(CUE_DATASET_PREFIX).any():
        decisions = cue_decisions(store, sweep)
        rep.findings.append(cue_finding(decisions))
        rep.tables["Attention on the cue at the decision (MiniGrid Memory, last checkpoint's episodes)"] = cue_table(
            decisions
        )
    return rep


def recurrent_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """RNN-like DeMa (B3LD, no timestep embedding) beside the LSTM and GRU baselines, by dataset and
    K: the RNN-like score at the last and the best checkpoint, the latency per step and the state
    each carries between steps. Empty without an LSTM or GRU run."""
    dema = (df.arch == "dema") & (df.layout == "B3LD") & ~df.timestep_embedding.astype(bool)
    rec = df[dema | df.arch.isin(["lstm", "gru"])]
    if not rec.arch.isin(["lstm", "gru"]).any() or "score_rnn" not in rec:
        return {}
    rec = rec.assign(model=rec.arch.map(ARCH_LABELS))
    key = ["dataset", "K"]
    out = {
        "RNN-like DeMa against LSTM and GRU: score (RNN-like; last and best checkpoint)": _last_best(
            rec, key, ["model"], mode="rnn"
        )
    }
    for col, what, fmt in (
        ("latency_ms_rnn", "latency per step (ms)", lambda v: f"{np.nanmean(v):.2f}"),
        ("state_bytes_rnn", "state carried between steps", lambda v: f"{np.nanmean(v) / 1024:.1f} KiB"),
    ):
        if col in rec:
            out[f"RNN-like DeMa against LSTM and GRU: {what}"] = _table(rec, key, ["model"], col, fmt=fmt)
    return out


def random_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, mode): the last checkpoint's mean normalized score over its episodes with
    the 95% interval, how many episodes scored above the random policy (0), and the verdict:
    "beats random" when the interval lies above 0, "below random" under it, else "not shown"
    (also when the episodes are too few or all score the same: evidence_gap)."""
    rows = []
    for _, r in df.iterrows():
        for mode in ("transformer", "rnn"):
            if not r.get(f"episodes_{mode}", 0) or pd.isna(r.get(f"episodes_{mode}")):
                continue
            low, high = r[f"random_low_{mode}"], r[f"random_high_{mode}"]
            verdict = "beats random" if low > 0 else ("below random" if high < 0 else "not shown")
            if r.get(f"random_gap_{mode}"):  # too few episodes, or no spread: no verdict
                verdict = "not shown"
            rows.append(
                {
                    "dataset": r["dataset"],
                    "model": family_label(r["arch"], r["layout"], r["timestep_embedding"]),
                    "K": int(r["K"]),
                    "seed": int(r["seed"]),
                    "inference": f"{mode}-like",
                    "score": f"{r[f'score_{mode}']:.1f} {format_interval(low, high)}",
                    "episodes above random": f"{int(r[f'above_random_{mode}'])} of {int(r[f'episodes_{mode}'])}",
                    "verdict": verdict,
                }
            )
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).sort_values(["dataset", "model", "K", "seed", "inference"], kind="stable")
    return table.set_index(["dataset", "model", "K", "seed"])  # sorted: the same on every store


def paired_verdict(diffs, confidence: float = 0.95, at_least: bool = False) -> tuple[str, str]:
    """Verdict on "A beats B" (with `at_least`, "A is at least as good as B") from paired
    differences A - B (same run, or same dataset, K and seed), from the Student-t interval on
    their mean (paired_interval). No pairs: not measured. Evidence short of a verdict (fewer than
    MIN_PAIRS pairs, or differences all equal: dema_lab.analysis.scoring.evidence_gap):
    inconclusive, the evidence saying what is missing. Otherwise holds if the interval lies above
    0, does not hold if below, and when it contains 0 inconclusive ("A beats B") or "holds (no
    significant difference)" ("A at least as good as B"). Returns (verdict, evidence)."""
    mean, low, high, n = paired_interval(diffs, confidence)
    if not n:
        return "not measured", "no paired runs"
    gap = evidence_gap(diffs)
    if gap:
        return "inconclusive", f"{gap}; mean paired difference {mean:+.1f} over {n} pair{'s' * (n != 1)}"
    if low > 0:
        verdict = "holds"
    elif high < 0:
        verdict = "does not hold"
    else:
        verdict = "holds (no significant difference)" if at_least else "inconclusive"
    return verdict, (
        f"mean paired difference {mean:+.1f}, {confidence:.0%} t-interval "
        f"{format_interval(low, high, signed=True)} over {n} pairs"
    )


def paired_interval(diffs, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the mean of the finite paired differences with its Student-t
    interval (dema_lab.analysis.scoring.t_interval); NaN bounds with fewer than two pairs."""
    return t_interval(diffs, confidence)


# The two scorings every score-based finding is judged by, side by side: (run-table column prefix, label)
SCORINGS = (("best_score_", "best checkpoint (the paper's scoring)"), ("score_", "last checkpoint (dema-lab's)"))

SHORT_K_COMPARISONS = ((20, 40), (5, 20))  # fixed in advance: the first decides, the second is reported


def short_k_finding(main: pd.DataFrame, score: str = "score_transformer", scoring: str = "") -> tuple[str, str, str]:
    """ "A short K (8-20) is enough", from two comparisons fixed in advance (no K is chosen by its
    score): K=20 against K=40 decides (holds when K=20 scores better, "holds (no significant
    difference)" when the interval contains 0, does not hold when K=40 scores better, and
    inconclusive without the evidence a verdict needs: paired_verdict); K=5
    against K=20 says whether an even shorter K loses score, and is reported without changing
    the verdict. Each comparison pairs every (dataset, seed) run at both K (last-checkpoint,
    Transformer-like scores)."""
    claim = "A short K (8–20) is enough" + (f" · {scoring}" if scoring else "")
    grid = main.pivot_table(index=["dataset", "seed"], columns="K", values=score, aggfunc="mean")
    parts, verdict = [], "not measured"
    for i, (k_a, k_b) in enumerate(SHORT_K_COMPARISONS):
        role = "decides" if i == 0 else "reported"
        if k_a not in grid or k_b not in grid or grid[[k_a, k_b]].dropna().empty:
            parts.append(f"K={k_a} against K={k_b} ({role}): no (dataset, seed) run at both")
            continue
        both = grid[[k_a, k_b]].dropna()
        v, paired = paired_verdict(both[k_a] - both[k_b], at_least=i == 0)
        names = sorted(set(both.index.get_level_values("dataset")))
        parts.append(
            f"K={k_a} against K={k_b} ({role}; {len(both)} pair(s) on {', '.join(names)}): "
            f"{both[k_a].mean():.1f} vs {both[k_b].mean():.1f}, {paired}"
        )
        if i == 0:
            verdict = v
    if verdict == "not measured":
        parts[0] += "; run K=20 and K=40 on the same datasets and seeds"
    return claim, verdict, "; ".join(parts)


# Which datasets need memory (fixed in advance, by name): the partially observed MuJoCo sets (velocities
# removed), MiniGrid Memory and POPGym; of them, the long corridor, whose cue lies further back than a
# K-20 window reaches. Every other dataset is fully observed (D4RL-style locomotion, Atari's frame stack).
MEMORY_DATASET_MARKS = ("-pomdp", "minigrid-memory", "popgym-")
LONG_CUE_DATASETS = ("minigrid-memory-s31", "popgym-repeatprevious-medium")
MEMORY_K = 20  # the short window of the memory findings (the paper's 8-20), as the memory sweep trains it


def needs_memory(dataset: str) -> bool:
    """Whether a dataset (by name) is a partially observed task, where the past must be remembered."""
    return any(mark in str(dataset) for mark in MEMORY_DATASET_MARKS)


def _modes_finding(runs: pd.DataFrame, a, b, claim: str, needs: str, at_least: bool = False) -> tuple:
    """(claim, verdict, evidence) of "mode A beats (at_least: is at least as good as) mode B" from the
    runs scored both ways, paired within each run. a, b: (score column, label)."""
    (col_a, label_a), (col_b, label_b) = a, b
    pairs = runs.dropna(subset=[col_a, col_b]) if col_a in runs and col_b in runs else runs.iloc[0:0]
    if pairs.empty:
        return claim, "not measured", f"needs {needs} in both modes"
    verdict, evidence = paired_verdict(pairs[col_a] - pairs[col_b], at_least=at_least)
    return (
        claim,
        verdict,
        f"{label_a} minus {label_b}: {evidence}; {label_a} {pairs[col_a].mean():.1f} vs {label_b} "
        f"{pairs[col_b].mean():.1f} on {', '.join(sorted(set(pairs.dataset)))}",
    )


def memory_findings(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The findings of the memory study (`dema-lab sweep --preset memory`), by both scorings:

    A short K fails where the cue lies beyond it: on the long corridor (LONG_CUE_DATASETS), the
        DeMa trained on K 20 acting RNN-like (its state carries the whole episode) beats the same
        weights acting Transformer-like on the last 20 steps; paired within each run.
    On fully observed tasks the short window is still enough: there, the same DeMa acting
        Transformer-like on 20 steps is at least as good as acting RNN-like; paired within each run.
    RNN-like DeMa against LSTM and GRU: RNN-like DeMa at least as good as each, paired on dataset,
        K and seed (on every dataset: the memory sweep's are memory tasks); the evidence gives the
        latency per step and the state each carries between steps (bytes).
    Each verdict needs MIN_PAIRS pairs not all equal (paired_verdict), else it says what is missing."""
    out = []
    dema = df[(df.arch == "dema") & (df.layout == "B3LD") & (~df.timestep_embedding)]
    k20 = dema[dema.K == MEMORY_K]
    long_cue = k20[k20.dataset.isin(LONG_CUE_DATASETS)]
    observed = k20[~k20.dataset.map(needs_memory)]
    questions = (  # (runs, mode A, mode B, claim, the runs it needs, A only "at least as good")
        (long_cue, "rnn", "transformer", "A short K fails where the cue lies beyond it (K={K}, long corridor)",
         f"DeMa K={MEMORY_K} runs on {', '.join(LONG_CUE_DATASETS)}", False),
        (observed, "transformer", "rnn", "On fully observed tasks the short window (K={K}) is still enough",
         f"DeMa K={MEMORY_K} runs on fully observed datasets", True),
    )  # fmt: skip
    labels = {"rnn": "RNN-like", "transformer": "Transformer-like"}
    for runs, mode_a, mode_b, claim, needs, at_least in questions:
        for prefix, scoring in SCORINGS:
            a, b = (prefix + mode_a, labels[mode_a]), (prefix + mode_b, labels[mode_b])
            out.append(_modes_finding(runs, a, b, f"{claim.format(K=MEMORY_K)} · {scoring}", needs, at_least))
    pair_key = ["dataset", "K", "seed"]
    for arch in ("lstm", "gru"):
        theirs = df[df.arch == arch]
        name = ARCH_LABELS[arch]
        for prefix, scoring in SCORINGS:
            score = prefix + "rnn"
            claim = f"RNN-like DeMa matches or beats {name} · {scoring}"
            if score not in dema or score not in theirs:
                out.append((claim, "not measured", f"needs RNN-like scores of DeMa runs and {name} runs"))
                continue
            cols = pair_key + [c for c in (score, "latency_ms_rnn", "state_bytes_rnn") if c in df]
            joined = (
                dema[cols]
                .merge(theirs[cols], on=pair_key, suffixes=("_a", "_b"))
                .dropna(subset=[score + "_a", score + "_b"])
            )
            if joined.empty:
                out.append((claim, "not measured", f"needs DeMa and {name} runs on the same dataset, K and seed"))
                continue
            a, b = joined[score + "_a"], joined[score + "_b"]
            verdict, evidence = paired_verdict(a - b, at_least=True)
            evidence += f"; DeMa {a.mean():.1f} vs {name} {b.mean():.1f}"
            if "latency_ms_rnn_a" in joined:
                evidence += (
                    f"; latency per step {joined.latency_ms_rnn_a.median():.2f} vs "
                    f"{joined.latency_ms_rnn_b.median():.2f} ms"
                )
            if "state_bytes_rnn_a" in joined:
                evidence += (
                    f"; state carried between steps {joined.state_bytes_rnn_a.median():,.0f} vs "
                    f"{joined.state_bytes_rnn_b.median():,.0f} bytes"
                )
            out.append((claim, verdict, evidence))
    return out


def findings(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Each of the paper's findings with a verdict on this data and the numbers behind it.
    Comparisons are paired (within a run, or across runs of the same dataset, K and seed), on
    last-checkpoint scores, with a Student-t interval on the mean difference (paired_verdict);
    the short-K finding compares fixed K values (short_k_finding)."""
    out = []
    dema = df[df.arch == "dema"]
    main = dema[(dema.layout == "B3LD") & (~dema.timestep_embedding)]
    pair_key = ["dataset", "K", "seed"]

    def within(claim, a, b, label_a, label_b):
        if a not in main or b not in main or main[[a, b]].dropna().empty:
            out.append((claim, "not measured", f"needs {label_a} and {label_b} scores"))
            return
        verdict, evidence = paired_verdict(main[a] - main[b])
        out.append((claim, verdict, f"{evidence}; {label_a} {main[a].mean():.1f} vs {label_b} {main[b].mean():.1f}"))

    def across(claim, runs_a, runs_b, label_a, label_b, score="score_transformer"):
        """A claim of "A at least as good as B": a difference within the noise holds."""
        if score not in runs_a or score not in runs_b:
            what = _LABELS.get(score, score)  # "Transformer-like", "Transformer-like, best", ...
            out.append((claim, "not measured", f"needs {what} scores of {label_a} runs and {label_b} runs"))
            return
        joined = runs_a[pair_key + [score]].merge(runs_b[pair_key + [score]], on=pair_key, suffixes=("_a", "_b"))
        if joined.empty:
            out.append(
                (claim, "not measured", f"needs {label_a} runs and {label_b} runs on the same dataset, K and seed")
            )
            return
        a, b = joined[score + "_a"], joined[score + "_b"]
        verdict, evidence = paired_verdict(a - b, at_least=True)
        out.append((claim, verdict, f"{evidence}; {label_a} {a.mean():.1f} vs {label_b} {b.mean():.1f}"))

    # score comparisons, by both scorings side by side: the paper's (each target's best checkpoint
    # over training, as the official experiment.py prints) and dema-lab's (the last checkpoint)
    for prefix, scoring in SCORINGS:
        within(
            f"Transformer-like DeMa beats RNN-like DeMa · {scoring}",
            prefix + "transformer",
            prefix + "rnn",
            "Transformer-like",
            "RNN-like",
        )
    if main.K.nunique() > 1:
        for prefix, scoring in SCORINGS:
            if prefix + "transformer" in main:
                out.append(short_k_finding(main, prefix + "transformer", scoring))
    from dema_lab.evaluation.ablation import FAMILY

    for method, what in ABLATION_FINDINGS:
        within(
            f"Hidden attention matters: {what}, the score drops ({FAMILY[method]})",
            "ablation_none",
            ablation_column(method),
            "unablated",
            method,
        )
    b3 = dema[dema.layout == "B3LD"]
    for prefix, scoring in SCORINGS:
        across(
            f"No timestep embedding is needed (without scores at least as well) · {scoring}",
            b3[~b3.timestep_embedding],
            b3[b3.timestep_embedding],
            "no-timestep-embedding",
            "timestep-embedding",
            prefix + "transformer",
        )
    if "ablation_no_timestep" in dema and dema.ablation_no_timestep.notna().any():
        te = dema[dema.ablation_no_timestep.notna()]
        verdict, evidence = paired_verdict(te.ablation_no_timestep - te.ablation_none)
        out[-1] = (
            out[-1][0],
            out[-1][1],
            out[-1][2] + f"; removing it at evaluation from DeMa trained with it: "
            f"{evidence} ({te.ablation_none.mean():.1f} → {te.ablation_no_timestep.mean():.1f})",
        )
    claim = "Hidden attention decays roughly exponentially with lag"
    for r2_col, hl_col, method in (
        (
            "paper_r2",
            "paper_half_life_steps",
            "the paper's display (current token's |α| row, mean over channels, steps ≥ 20 and layers, not normalised)",
        ),
        (
            "paper_state_r2",
            "paper_state_half_life_steps",
            "the paper's display, state keys only, lag in env steps (no R/s/a sawtooth)",
        ),
    ):
        if r2_col in main and main[r2_col].notna().any():
            vals = main[r2_col].dropna()
            med = float(vals.median())
            evidence = f"median R² of the log-linear fit over {len(vals)} runs: {med:.2f} (bar: 0.8)"
            if hl_col in main and main.K.nunique() > 1:
                hl = main.groupby("K")[hl_col].median()
                evidence += "; median half-life by K: " + ", ".join(f"K={k}: {v:.1f} steps" for k, v in hl.items())
            out.append((f"{claim} · {method}", "holds" if med >= 0.8 else "does not hold", evidence))
    r2 = main[[c for c in main if c.startswith("r2_layer")]].to_numpy().ravel() if len(main) else []
    r2 = np.asarray(r2, float)
    r2 = r2[np.isfinite(r2)]
    if len(r2):
        med = float(np.median(r2))
        evidence = f"median R² of the log-linear fit over runs and layers: {med:.2f} (bar: 0.8)"
        hl_cols = [c for c in main if c.startswith("half_life_steps_layer")]
        if hl_cols and main.K.nunique() > 1:
            hl = main.assign(hl=main[hl_cols].median(axis=1)).groupby("K")["hl"].median()
            evidence += "; median half-life by K: " + ", ".join(f"K={k}: {v:.1f} steps" for k, v in hl.items())
        out.append(
            (
                f"{claim} · dema-lab's decay statistics (every state query on dataset windows, rows "
                f"normalised, per layer)",
                "holds" if med >= 0.8 else "does not hold",
                evidence,
            )
        )
    for method in EXPLANATION_FINDINGS:
        if f"faith_{method}" in df:
            verdict, evidence = faithfulness_verdict(df, method)
            out.append((f"Hidden attention is a faithful explanation: {method} beats recency", verdict, evidence))
    if "horizon_cut" in main and main.horizon_cut.notna().any():
        h = main[main.horizon_cut.notna()]
        shorter = int((h.horizon_cut < h.K).sum())
        by_k = h.groupby("K")[["horizon_cut", "explain_half_life_steps"]].median()
        out.append(
            (
                "A short window is enough, causally: the causal horizon is shorter than K",
                "holds" if shorter == len(h) else "does not hold" if shorter == 0 else "inconclusive",
                f"{shorter} of {len(h)} run(s); median horizon (window cut) against half-life by K: "
                + ", ".join(
                    f"K={k}: {r.horizon_cut:.0f} vs {r.explain_half_life_steps:.1f} steps" for k, r in by_k.iterrows()
                ),
            )
        )
    dt = df[(df.arch == "dt") & (df.layout == "B3LD")]
    for prefix, scoring in SCORINGS:
        across(f"DeMa matches or beats DT · {scoring}", main, dt, "DeMa", "DT", prefix + "transformer")
    if len(dt) and len(main):
        ratio = float(main.parameters.median() / dt.parameters.median())
        out.append(
            (
                "DeMa needs far fewer parameters than DT",
                "holds" if ratio <= 0.5 else "does not hold",
                f"DeMa/DT parameters: {ratio:.2f}",
            )
        )
    if df.dataset.map(needs_memory).any() or df.arch.isin(["lstm", "gru"]).any():
        out += memory_findings(df)
    return out


CUE_DATASET_PREFIX = "minigrid-memory"  # the memory tasks whose episodes say when the cue is in view


def cue_decisions(store, sweep: str | None = None) -> xr.Dataset:
    """The decisions of the finished MiniGrid Memory runs of `sweep` (all when None) whose recorded
    episodes have hidden attention and the cue flag: dema_lab.analysis.cue.cue_attention over the
    episodes of each run's last checkpoint with any (those cut at the run's eval_max_steps before a
    choice left out, their count in attrs["cut_episodes"]), concatenated on `decision` with the run, its
    dataset, K and inference mode beside each. Runs without such episodes add nothing."""
    from dema_lab.store.schema import parse_rollout_name

    rs = RunStore(store, mode="r")
    parts, cut = [], 0
    for run_id in rs.run_ids():
        try:
            run = Run(rs, run_id)
            cfg = run.attrs.get("config", {})
            dataset = str(run.attrs.get("provenance", {}).get("dataset", cfg.get("dataset", "")))
            if (sweep and cfg.get("sweep") != sweep) or run.attrs.get("status") != "finished":
                continue
            if not dataset.startswith(CUE_DATASET_PREFIX):
                continue
            names = [parse_rollout_name(n) for n in run.rollouts()]
            for mode in sorted({n.mode for n in names}):
                mine = [n for n in names if n.mode == mode]
                last = max(n.step for n in mine)
                eps = {n.name: run.open("rollout", n.name) for n in mine if n.step == last}
                part = cue_attention(eps, cfg.get("eval_max_steps"))
                cut += part.attrs["cut_episodes"]
                if part.sizes["decision"]:
                    parts.append(
                        part.assign_coords(
                            run=("decision", [run_id] * part.sizes["decision"]),
                            dataset=("decision", [dataset] * part.sizes["decision"]),
                            K=("decision", [int(cfg.get("K", 0))] * part.sizes["decision"]),
                            mode=("decision", [mode] * part.sizes["decision"]),
                        )
                    )
        except Exception:  # noqa: BLE001 - run_table names the unreadable runs; this finding skips them
            continue
    if not parts:
        return xr.Dataset(coords={"decision": np.arange(0)}, attrs={"cut_episodes": cut})
    out = xr.concat(parts, "decision")
    out.attrs["cut_episodes"] = cut
    return out.assign_coords(decision=np.arange(out.sizes["decision"]))


CUE_CLAIM = "Does the hidden attention find the cue? (MiniGrid Memory, at the decision)"


def cue_finding(decisions: xr.Dataset, confidence: float = 0.95) -> tuple[str, str, str]:
    """(claim, verdict, evidence): at each decision (an episode's last step, where the object is
    chosen) whose window holds the cue's step(s), the current state token's attention share on
    them minus its lag-matched average (dema_lab.analysis.cue), paired per decision across the
    episodes and runs: holds when the Student-t interval on the mean difference lies above 0,
    does not hold below, inconclusive when it contains 0 or the evidence is short
    (paired_verdict); not measured without decisions. The evidence adds the IQM of the
    differences with its bootstrap interval, the decisions whose cue lay beyond the window, and
    the means by dataset."""
    cut = int(decisions.attrs.get("cut_episodes", 0))
    cut_text = f"{cut} episode(s) cut at the step limit before a choice left out"
    if not decisions.sizes.get("decision") or "cue_share" not in decisions:
        need = "needs finished MiniGrid Memory runs with recorded episodes that end in a choice"
        return CUE_CLAIM, "not measured", f"{need} (hidden attention and the cue flag); {cut_text}"
    inside = decisions.isel(decision=np.flatnonzero(decisions.in_window.values.astype(bool)))
    unseen = int((decisions.cue_back_steps < 0).sum())
    beyond = int((~decisions.in_window.astype(bool)).sum()) - unseen
    runs = len(set(decisions.run.values)) if "run" in decisions.coords else 1
    outside = (
        f"of {decisions.sizes['decision']} decisions, {beyond} had the cue beyond the window and {unseen} never "
        "saw it before the choice"
    )
    if not inside.sizes.get("decision"):
        return CUE_CLAIM, "not measured", f"{outside}, over {runs} run(s): no decision to measure"
    diffs = inside.cue_share.values - inside.baseline_share.values
    verdict, evidence = paired_verdict(diffs, confidence)
    centre, low, high = iqm_interval(diffs, confidence)
    parts = [
        f"share on the cue (%) minus its lag-matched average: {evidence}",
        f"IQM {centre:+.1f} {format_interval(low, high, signed=True)} (bootstrap)",
        f"cue {np.mean(inside.cue_share.values):.1f}% vs lag-matched {np.mean(inside.baseline_share.values):.1f}%",
        f"{outside}; {cut_text}; {runs} run(s)",
    ]
    if "dataset" in inside.coords and "mode" in inside.coords:
        groups = sorted(set(zip(inside.dataset.values.tolist(), inside["mode"].values.tolist())))
        for name, mode in groups:
            part = inside.isel(
                decision=np.flatnonzero((inside.dataset.values == name) & (inside["mode"].values == mode))
            )
            parts.append(
                f"{name} {mode}-like: {part.cue_share.mean().item():.1f}% vs {part.baseline_share.mean().item():.1f}% "
                f"over {part.sizes['decision']} decision(s)"
            )
    return CUE_CLAIM, verdict, "; ".join(parts)


def cue_table(decisions: xr.Dataset) -> pd.DataFrame:
    """By dataset, K and inference mode: the decisions, how many had the cue in the window, and the
    mean attention share on the cue against its lag-matched average (%), over those that had it."""
    if not decisions.sizes.get("decision") or "cue_share" not in decisions:
        return pd.DataFrame()
    df = decisions.reset_coords().to_dataframe()
    rows = []
    for (dataset, k, mode), part in df.groupby(["dataset", "K", "mode"]):
        inside = part[part.in_window.astype(bool)]
        rows.append(
            {
                "dataset": dataset,
                "K": int(k),
                "inference": f"{mode}-like",
                "decisions": len(part),
                "cue in the window": len(inside),
                "share on the cue (%)": _cell(inside.cue_share.values),
                "lag-matched average (%)": _cell(inside.baseline_share.values),
                "runs": part["run"].nunique(),
            }
        )
    return pd.DataFrame(rows).set_index(["dataset", "K", "inference"])
