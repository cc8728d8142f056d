"""The sweep report: the paper's tables from the runs in a store, and which findings hold.

    sweep_names(store)        the sweeps with finished runs in a store
    run_table(store, sweep)   one row per run (xarray Dataset, dim `run`): what it is, its cost,
                              its final scores per inference mode, per-step latency, the state it
                              carries between steps, decay fits per layer, ablation scores
    build_report(...)         the tables (pandas DataFrames, cells "mean ± std" over seeds) and
                              the findings, as plain statements with their numbers
    Report.to_markdown()      all of it as Markdown (for `dema-lab report`, notebooks, notes)
    Report.score_plot()       normalized score against K, one line per dataset and family (HoloViews)

The dashboard's "Study report" tab (dema_lab.dashboard.StudyReport) and notebook 04 show the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from .store import Run, RunStore


def _latency(model, mode: str, steps: int = 40) -> float:
    """Median seconds per env step for `mode` after a warm-up, on random observations
    (steady state: the window is full)."""
    from .models import Policy
    from .rollout import single_threaded

    policy = Policy(model, mode)
    policy.reset(1000.0)
    rng = np.random.default_rng(0)
    times = []
    with single_threaded():          # as the evaluation runs
        for t in range(model.cfg.K + steps):
            obs = rng.normal(size=model.cfg.state_dim).astype(np.float32)
            start = time.perf_counter()
            policy.act(obs)
            if t >= model.cfg.K:
                times.append(time.perf_counter() - start)
            policy.observe(0.0)
    return float(np.median(times))


_COST: dict = {}       # (store, run, checkpoint step) -> inference cost; a published checkpoint never changes


def _inference_cost(rs: RunStore, run) -> dict:
    """Latency per env step (ms) and the state carried between steps (bytes) for each inference
    mode of the run's last checkpoint, measured once per process."""
    from .models import load_checkpoint

    key = (str(rs.path), run.run_id, run.checkpoints()[-1])
    if key not in _COST:
        ck = load_checkpoint(run.checkpoint_bytes())
        cost = {}
        for mode in (["transformer", "rnn"] if ck.config.arch == "dema" else ["transformer"]):
            cost[f"latency_ms_{mode}"] = 1e3 * _latency(ck.model, mode)
            cost[f"state_bytes_{mode}"] = carried_state_bytes(ck.config, mode)
        _COST[key] = cost
    return dict(_COST[key])


def carried_state_bytes(cfg, mode: str) -> int:
    """What inference keeps between env steps: RNN-like, each layer's conv and SSM state;
    Transformer-like, the last K steps of (R, s, a, t)."""
    if mode == "rnn":
        d_inner = cfg.expand * cfg.d_model
        return cfg.n_layer * d_inner * (cfg.d_conv + cfg.d_state) * 4
    return cfg.K * (cfg.state_dim + cfg.act_dim + 2) * 4


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
    read are left out and named, with the reason, in attrs["skipped"]."""
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
    from .ablation import ablation_table

    attrs = run.attrs
    cfg = attrs.get("config", {})
    if (sweep and cfg.get("sweep") != sweep) or attrs.get("status") != "finished":
        return None
    prov = attrs.get("provenance", {})
    row = {"run": run.run_id, "dataset": prov.get("dataset", cfg.get("dataset")), "arch": cfg["arch"],
           "layout": cfg["layout"], "timestep_embedding": bool(prov.get("timestep_embedding")),
           "K": int(cfg["K"]), "seed": int(cfg["seed"]), "parameters": prov.get("parameters", np.nan),
           "forward_macs": prov.get("forward_macs", np.nan), "train_seconds": attrs.get("wall_seconds", np.nan)}
    for key in ("steps", "batch_size", "d_model", "n_layer", "d_state", "eval_episodes"):
        row[key] = cfg.get(key, np.nan)
    targets = cfg.get("eval_targets") or prov.get("eval_targets") or []
    row["eval_targets"] = " ".join(f"{float(t):g}" for t in targets) or "the env's defaults"
    step_macs = prov.get("step_macs", {})
    evals = run.evals()
    if "normalized_score" in evals:
        last = evals.isel(checkpoint=-1)
        for mode in last.mode.values:
            row[f"score_{mode}"] = float(last["normalized_score"].sel(mode=mode).mean())
            row[f"macs_per_step_{mode}"] = step_macs.get(str(mode), np.nan)
    decay = run.decay()
    if "r2" in decay:
        d = decay.isel(checkpoint=-1)
        kind = "s" if "s" in d.query_kind.values else str(d.query_kind.values[0])
        for layer in d.layer.values:
            row[f"r2_layer{layer}"] = float(d["r2"].sel(layer=layer, query_kind=kind))
            row[f"half_life_steps_layer{layer}"] = float(d["half_life_steps"].sel(layer=layer, query_kind=kind))
    abl = ablation_table(run)
    if "normalized_score" in abl:
        a = abl.isel(checkpoint=-1)["normalized_score"].mean(("target", "episode"))
        for kind in a.ablation.values:
            row[f"ablation_{kind}"] = float(a.sel(ablation=kind))
        row["ablation_episodes"] = int(abl.sizes["episode"])
    if latency and run.checkpoints():
        row.update(_inference_cost(rs, run))
    return row


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


_LABELS = {"score_transformer": "Transformer-like", "score_rnn": "RNN-like",
           "latency_ms_transformer": "ms/step Transformer-like", "latency_ms_rnn": "ms/step RNN-like",
           "state_bytes_transformer": "state Transformer-like", "state_bytes_rnn": "state RNN-like",
           "ablation_none": "none", "ablation_zeros": "zeros", "ablation_random": "random",
           "ablation_no_timestep": "no timestep embedding"}


@dataclass
class Report:
    runs: pd.DataFrame
    tables: dict = field(default_factory=dict)       # title -> DataFrame
    findings: list = field(default_factory=list)     # (finding, verdict, evidence)
    skipped: dict = field(default_factory=dict)      # run -> why it could not be read
    source: str = ""                                 # the command that rebuilds it

    def settings(self) -> list[str]:
        """How the runs were made: each training and evaluation setting with its values."""
        out = []
        for col, label in (("steps", "training steps"), ("batch_size", "batch size"), ("d_model", "d_model"),
                           ("n_layer", "layers"), ("d_state", "d_state (DeMa)"), ("eval_episodes",
                           "evaluation episodes per target and mode"), ("eval_targets", "target returns"),
                           ("ablation_episodes", "episodes per ablation")):
            if col in self.runs and self.runs[col].notna().any():
                part = self.runs if col != "d_state" else self.runs[self.runs.arch == "dema"]
                by = dict(part.groupby("arch")[col].unique()) if col == "d_model" else {"": part[col].unique()}
                vals = " / ".join(f"{a + ' ' if a else ''}{_values(v)}" for a, v in by.items())
                out.append(f"{label}: {vals}")
        if "train_seconds" in self.runs:
            out.append(f"training time: {self.runs.train_seconds.sum() / 3600:.1f} h over {len(self.runs)} runs")
        return out

    def findings_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.findings, columns=["paper's finding", "on this data", "evidence"])

    def score_plot(self, mode: str = "transformer", width: int = 520, height: int = 320):
        """Normalized score against K: a line per dataset and family (DeMa / DT, layout, timestep
        embedding), points at each run's mean over seeds, error bars at ± one std over seeds."""
        import holoviews as hv

        col = f"score_{mode}"
        title = f"normalized score against K ({mode}-like)"
        if self.runs.empty or col not in self.runs:
            return hv.Curve([], "K", "normalized score").opts(title=f"{title}: no runs", width=width, height=height)
        df = self.runs.dropna(subset=[col]).copy()
        df["family"] = (df.arch.map({"dema": "DeMa", "dt": "DT"}).fillna(df.arch) + " " + df.layout
                        + np.where(df.timestep_embedding, " +t-emb", ""))
        stats = df.groupby(["dataset", "family", "K"])[col].agg(["mean", "std", "count"]).reset_index()
        stats["std"] = stats["std"].fillna(0.0)
        layers = []
        for (dataset, family), part in stats.groupby(["dataset", "family"]):
            label = f"{dataset} · {family}"
            layers.append(hv.Curve(part, "K", ("mean", "normalized score"), label=label))
            layers.append(hv.Scatter(part, "K", [("mean", "normalized score"), "count"], label=label)
                          .opts(size=7, tools=["hover"]))
            if (part["count"] > 1).any():
                layers.append(hv.ErrorBars(part, "K", [("mean", "normalized score"), "std"]))
        ks = sorted(stats.K.unique())
        return hv.Overlay(layers).opts(title=title, width=width, height=height, logx=len(ks) > 2 and ks[-1] >= 4 * ks[0],
                                       xticks=[int(k) for k in ks], show_grid=True, legend_position="right",
                                       toolbar="above")

    def to_markdown(self) -> str:
        lines = [f"# Sweep report ({len(self.runs)} runs)", ""]
        if self.source:
            lines += [f"Made by `{self.source}`.", ""]
        if len(self.runs):
            lines += ["Settings: " + "; ".join(self.settings()) + ". Each score is a mean over the "
                      "evaluation episodes of the run's last checkpoint; with few episodes, differences of a "
                      "few points are within the noise, which the paired verdicts take into account.", ""]
        if self.skipped:
            lines += ["Runs left out because they cannot be read: "
                      + "; ".join(f"{r} ({why})" for r, why in self.skipped.items()), ""]
        lines += ["## Findings", "", "| paper's finding | on this data | evidence |", "|---|---|---|"]
        lines += [f"| {f} | {v} | {e} |" for f, v, e in self.findings]
        for title, table in self.tables.items():
            lines += ["", f"## {title}", ""]
            lines += [_markdown(table) if not table.empty else "(no runs for this table)"]
        return "\n".join(lines) + "\n"


def _values(values) -> str:
    """Distinct setting values, numbers in numeric order without a trailing .0; missing ones left out."""
    vals = [v for v in values if not (isinstance(v, float) and np.isnan(v))]
    nums = [v for v in vals if isinstance(v, (int, float, np.number))]
    text = [f"{float(v):g}" for v in sorted(nums)] + sorted(str(v) for v in vals if v not in nums)
    return ", ".join(dict.fromkeys(text)) or "–"


def _markdown(df: pd.DataFrame) -> str:
    df = df.reset_index()
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(str(v) for v in r.values) + " |")
    return "\n".join(out)


def build_report(store, sweep: str | None = None, latency: bool = True) -> Report:
    table = run_table(store, sweep, latency)
    df = table.to_dataframe().reset_index() if table.sizes.get("run") else pd.DataFrame()
    rep = Report(runs=df, skipped=dict(table.attrs.get("skipped", {})),
                 source=f"dema-lab report --store {store}" + (f" --sweep {sweep}" if sweep else ""))
    if df.empty:
        rep.findings.append(("(no finished runs)", "not measured", f"store {store}, sweep {sweep or 'any'}"))
        return rep
    dema = df[df.arch == "dema"]
    main = dema[(dema.layout == "B3LD") & (~dema.timestep_embedding)]
    key = ["dataset"]

    rep.tables["Normalized score against K (DeMa, B3LD, Transformer-like)"] = _table(main, key, ["K"], "score_transformer")
    cost = main.groupby("K")[[c for c in ("parameters", "forward_macs", "macs_per_step_transformer",
                                          "macs_per_step_rnn") if c in main]].first().T
    cost.index.name = "quantity"
    rep.tables["Parameters and MACs against K (DeMa, B3LD)"] = cost.map(_count) if not cost.empty else cost
    both = df[(df.layout == "B3LD") & (~df.timestep_embedding | (df.arch == "dt"))]
    if set(both.arch) >= {"dema", "dt"}:
        sc = _table(both, key + ["K"], ["arch"], "score_transformer", paired=True)
        params = both.groupby(["arch"])["parameters"].first().map(_count)
        macs = both.groupby(["arch", "K"])["forward_macs"].first().map(_count).unstack("arch").dropna()
        rep.tables["DeMa against DT: score"] = sc
        rep.tables["DeMa against DT: parameters"] = params.to_frame("parameters")
        rep.tables["DeMa against DT: MACs per forward, by K"] = macs
    if len(set(dema.layout)) > 1:
        rep.tables["B3LD against BL3D (DeMa, Transformer-like)"] = _table(dema[~dema.timestep_embedding], key + ["K"],
                                                                          ["layout"], "score_transformer", paired=True)
    if len(set(dema.timestep_embedding)) > 1:
        te = dema[dema.layout == "B3LD"].assign(
            timestep_embedding=lambda d: d.timestep_embedding.map({False: "off", True: "on"}))
        rep.tables["Timestep embedding off against on (DeMa, B3LD)"] = _table(
            te, key + ["K"], ["timestep_embedding"], "score_transformer", paired=True)
    abl_cols = [c for c in ("ablation_none", "ablation_zeros", "ablation_random") if c in dema]
    if abl_cols:
        rep.tables["Hidden-attention ablations (normalized score, Transformer-like)"] = pd.concat(
            [_table(main, key + ["K"], [], c) for c in abl_cols], axis=1)
    if "ablation_no_timestep" in df:
        with_te = df[df.ablation_no_timestep.notna()].assign(
            model=lambda d: d.arch.map({"dema": "DeMa", "dt": "DT"}).fillna(d.arch))
        rep.tables["Timestep embedding removed at evaluation (models trained with one; normalized score)"] = \
            pd.concat([_table(with_te, key + ["model", "K"], [], c) for c in ("ablation_none", "ablation_no_timestep")],
                      axis=1)
    if "score_rnn" in main:
        cols = [_table(main, key + ["K"], [], c) for c in ("score_transformer", "score_rnn")]
        for c in ("latency_ms_transformer", "latency_ms_rnn"):
            if c in main:
                cols.append(_table(main, key + ["K"], [], c, fmt=lambda v: f"{np.nanmean(v):.2f}"))
        for c in ("state_bytes_transformer", "state_bytes_rnn"):
            if c in main:
                cols.append(_table(main, key + ["K"], [], c, fmt=lambda v: f"{np.nanmean(v) / 1024:.1f} KiB"))
        rep.tables["RNN-like against Transformer-like: score, latency per step (ms), state carried between steps"] = \
            pd.concat(cols, axis=1)
    decay_cols = sorted(c for c in main if c.startswith(("r2_layer", "half_life_steps_layer")))
    if decay_cols:
        decay = pd.concat([_table(main, key + ["K"], [], c, fmt=lambda v: f"{np.nanmean(v):.2f}") for c in decay_cols],
                          axis=1)
        decay.columns = [c.replace("r2_layer", "R² layer ").replace("half_life_steps_layer", "half-life layer ")
                         for c in decay.columns]
        rep.tables["Decay statistics (last checkpoint, state tokens): R² of the exponential fit, half-life in steps"] = \
            decay
    rep.findings = findings(df)
    return rep


def paired_verdict(diffs) -> tuple[str, str]:
    """Verdict on "A beats B" from paired differences A - B (same run, or same dataset, K and
    seed): holds if the mean difference is positive by more than two standard errors,
    does not hold if negative by as much, inconclusive otherwise. With a single pair, a
    difference of more than 1 point decides."""
    d = np.asarray([x for x in diffs if np.isfinite(x)], dtype=float)
    if not len(d):
        return "not measured", "no paired runs"
    mean = float(d.mean())
    if len(d) == 1:
        bar, spread = 1.0, "one pair"
    else:
        se = float(d.std(ddof=1) / np.sqrt(len(d)))
        bar, spread = 2 * se, f"± {se:.1f} (s.e.) over {len(d)} pairs"
    verdict = "holds" if mean > bar else ("does not hold" if mean < -bar else "inconclusive")
    return verdict, f"mean paired difference {mean:+.1f} {spread}"


def short_k_finding(main: pd.DataFrame) -> tuple[str, str, str]:
    """"A short K (8-20) is enough": the best short K against the best K above 20, paired by
    dataset and seed. Means by K are taken over the datasets run at every K only (else over the
    K values every dataset has), so that a dataset swept at fewer K (a hard one, say) cannot tilt
    which K looks best; the pairs are then every (dataset, seed) run at both chosen K."""
    claim = "A short K (8–20) is enough"
    grid = main.pivot_table(index=["dataset", "seed"], columns="K", values="score_transformer", aggfunc="mean")
    full = grid.dropna()                                    # datasets (and seeds) run at every K
    if not full.empty:
        names = sorted(set(full.index.get_level_values("dataset")))
        over = f"over the {len(names)} dataset(s) run at every K ({', '.join(names)})"
    else:
        full = grid.dropna(axis=1)                          # else the K values every dataset has
        over = "over the K values every dataset has"
    by_k = full.mean()
    evidence = f"mean score by K {over}: " + (", ".join(f"K={k}: {v:.1f}" for k, v in by_k.items()) or "none")
    short = by_k[(by_k.index >= 8) & (by_k.index <= 20)]
    longer = by_k[by_k.index > 20]
    if not len(short) or not len(longer):
        return claim, "not measured", evidence + "; needs a K in 8–20 and a K above 20 on the same datasets"
    k_short, k_long = int(short.idxmax()), int(longer.idxmax())
    both = grid[[k_short, k_long]].dropna()
    verdict, paired = paired_verdict(both[k_short] - both[k_long])
    if verdict == "inconclusive":
        verdict = "holds (no significant difference)"
    return claim, verdict, f"{evidence}; K={k_short} against K={k_long}: {paired}"


def findings(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Each of the paper's findings with a verdict on this data and the numbers behind it.
    Comparisons are paired (within a run, or across runs of the same dataset, K and seed)."""
    out = []
    dema = df[df.arch == "dema"]
    main = dema[(dema.layout == "B3LD") & (~dema.timestep_embedding)]
    pair_key = ["dataset", "K", "seed"]

    def within(claim, a, b, label_a, label_b):
        if a not in main or b not in main:
            out.append((claim, "not measured", f"needs {label_a} and {label_b} scores"))
            return
        verdict, evidence = paired_verdict(main[a] - main[b])
        out.append((claim, verdict, f"{evidence}; {label_a} {main[a].mean():.1f} vs {label_b} {main[b].mean():.1f}"))

    def across(claim, runs_a, runs_b, label_a, label_b):
        """A claim of "A at least as good as B": a difference within the noise holds."""
        joined = runs_a.merge(runs_b, on=pair_key, suffixes=("_a", "_b"))
        if joined.empty:
            out.append((claim, "not measured", f"needs runs of {label_a} and {label_b} with the same dataset, K, seed"))
            return
        verdict, evidence = paired_verdict(joined.score_transformer_a - joined.score_transformer_b)
        if verdict == "inconclusive":
            verdict = "holds (no significant difference)"
        out.append((claim, verdict, f"{evidence}; {label_a} {joined.score_transformer_a.mean():.1f} vs "
                                    f"{label_b} {joined.score_transformer_b.mean():.1f}"))

    within("Transformer-like DeMa beats RNN-like DeMa", "score_transformer", "score_rnn",
           "Transformer-like", "RNN-like")
    if main.K.nunique() > 1:
        out.append(short_k_finding(main))
    for kind in ("zeros", "random"):
        within(f"Hidden attention matters (replaced by {kind}, the score drops)", "ablation_none",
               f"ablation_{kind}", "unablated", kind)
    b3 = dema[dema.layout == "B3LD"]
    across("No timestep embedding is needed (without scores at least as well)",
           b3[~b3.timestep_embedding][pair_key + ["score_transformer"]],
           b3[b3.timestep_embedding][pair_key + ["score_transformer"]], "without", "with")
    if "ablation_no_timestep" in dema and dema.ablation_no_timestep.notna().any():
        te = dema[dema.ablation_no_timestep.notna()]
        verdict, evidence = paired_verdict(te.ablation_no_timestep - te.ablation_none)
        out[-1] = (out[-1][0], out[-1][1], out[-1][2] + f"; removing it at evaluation from DeMa trained with it: "
                   f"{evidence} ({te.ablation_none.mean():.1f} → {te.ablation_no_timestep.mean():.1f})")
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
        out.append(("Hidden attention decays roughly exponentially with lag", "holds" if med >= 0.8 else "does not hold",
                    evidence))
    dt = df[(df.arch == "dt") & (df.layout == "B3LD")]
    across("DeMa matches or beats DT", main[pair_key + ["score_transformer"]],
           dt[pair_key + ["score_transformer"]], "DeMa", "DT")
    if len(dt) and len(main):
        ratio = float(main.parameters.median() / dt.parameters.median())
        out.append(("DeMa needs far fewer parameters than DT", "holds" if ratio <= 0.5 else "does not hold",
                    f"DeMa/DT parameters: {ratio:.2f}"))
    return out
