"""The runs of a store as a table: what each run is, how far it got and its headline scores
(last and best checkpoint), one row per run (dim `run`), and the family label every table and
plot uses for a run; which run a dashboard opens on (featured_run)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from dema_lab.analysis.scoring import METHOD_TEXT, METHODS, SCORE_TEXT, headline
from dema_lab.common.values import truthy
from dema_lab.store.zarr_store import Run, RunStore

ARCH_LABELS = {"dema": "DeMa", "dt": "DT", "lstm": "LSTM", "gru": "GRU", "mlp": "MLP"}


def family_label(arch: str, layout: str = "", timestep_embedding=False) -> str:
    """A run's family, as every table and plot names it: architecture, token layout and the
    timestep embedding when it is on (`DeMa B3LD`, `DT B3LD +t-emb`)."""
    te = truthy(timestep_embedding)
    name = ARCH_LABELS.get(arch, arch or "?")
    return f"{name} {layout}".strip() + (" +t-emb" if te else "")


MODE_LABELS = {"transformer": "Transformer-like", "rnn": "RNN-like"}


def model_family(arch: str, mode: str, layout: str = "B3LD", timestep_embedding=False) -> str:
    """A model as the memory study compares them, one family per way of acting: DeMa by its inference
    mode (`DeMa Transformer-like`, `DeMa RNN-like`), every other architecture by its name (`DT`,
    `LSTM`, `GRU`, `MLP`); a DeMa's layout when it is not B3LD and its timestep embedding when on."""
    name = ARCH_LABELS.get(arch, arch or "?")
    if arch == "dema":
        name += " " + MODE_LABELS.get(mode, str(mode))
        name += f" {layout}" if layout and layout != "B3LD" else ""
        name += " +t-emb" if truthy(timestep_embedding) else ""
    return name


def run_summary_row(run: Run) -> dict:
    """What the run is and how far it got; its headline scores (dema_lab.analysis.scoring.headline):
    last_score and best_score in score_mode, NaN before the first evaluation."""
    attrs = run.attrs
    cfg = attrs.get("config", {})
    prov = attrs.get("provenance", {})
    evals = run.evals()
    score = headline(evals)
    te = prov.get("timestep_embedding", cfg.get("timestep_embedding", ""))
    return {
        "run": run.run_id,
        "arch": cfg.get("arch", ""),
        "dataset": cfg.get("dataset", ""),
        "family": family_label(cfg.get("arch", ""), cfg.get("layout", ""), te),
        "env": prov.get("env", ""),
        "K": cfg.get("K", np.nan),
        "layout": cfg.get("layout", ""),
        "timestep_embedding": prov.get("timestep_embedding", cfg.get("timestep_embedding", "")),
        "seed": cfg.get("seed", np.nan),
        "status": attrs.get("status", ""),
        "steps_done": attrs.get("steps_done", 0),
        "score_mode": score["mode"] or "",
        "last_score": score["last"],
        "best_score": score["best"],
        "parameters": prov.get("parameters", np.nan),
        "created": prov.get("created", ""),
    }


# The columns of runs_summary, in order.
SUMMARY_KEYS = (
    "arch",
    "dataset",
    "env",
    "K",
    "layout",
    "timestep_embedding",
    "seed",
    "status",
    "steps_done",
    "score_mode",
    "last_score",
    "best_score",
    "parameters",
    "created",
)


def runs_summary(store: RunStore) -> xr.Dataset:
    """One row per run: what it is, how far it got and its headline scores, last and best
    checkpoint side by side (dim `run`; see dema_lab.analysis.scoring). A run that cannot be read has
    the status "unreadable: <why>"."""
    rows = []
    for run_id in store.run_ids():
        try:
            rows.append(run_summary_row(Run(store, run_id)))
        except Exception as e:  # noqa: BLE001 - one bad run must not hide the others
            rows.append({"run": run_id, "status": f"unreadable: {e}"})
    rows += [{"run": run_id, "status": f"unreadable: {why}"} for run_id, why in store.unreadable.items()]
    keys = SUMMARY_KEYS
    text = ("arch", "dataset", "env", "layout", "status", "created", "score_mode")
    data = {k: ("run", [r.get(k, "") if k in text else r.get(k, np.nan) for r in rows]) for k in keys}
    for k in text + ("timestep_embedding",):
        data[k] = ("run", np.array([str(v) for v in data[k][1]], dtype=object))
    out = xr.Dataset(data, coords={"run": [r["run"] for r in rows]}, attrs={"store": store.path, "score": SCORE_TEXT})
    out["score_mode"].attrs = {"long_name": "inference mode of the headline scores"}
    for m in METHODS:
        out[f"{m}_score"].attrs = {
            "long_name": f"normalized score, {m} checkpoint, mean over targets",
            "units": "0-100",
            "method": METHOD_TEXT[m],
        }
    return out


def open_store(path=None) -> xr.Dataset:
    """The runs of a store as an xarray Dataset with one row per run (dim `run`)."""
    return runs_summary(RunStore(path, mode="r"))


# The demo's main run (dema_lab.study.demo trains it): the run a dashboard opens on when present.
MAIN_RUN = "demo-dema-K10"


def featured_run(runs: dict[str, dict], with_episodes: set[str]) -> str | None:
    """The run a dashboard opens on. `runs` maps run ids (in store order) to their configs.

    The demo's main run when the store has it with recorded episodes; else the last DeMa run with
    recorded episodes; else the last run with recorded episodes; else the last run."""
    if MAIN_RUN in with_episodes:
        return MAIN_RUN
    ids = list(runs)
    for pick in (
        [r for r in ids if r in with_episodes and runs[r].get("arch") == "dema"],
        [r for r in ids if r in with_episodes],
        ids,
    ):
        if pick:
            return pick[-1]
    return None
