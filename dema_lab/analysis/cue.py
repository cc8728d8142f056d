"""Where a memory task's cue sits in the attention window, and how much of the decision's attention
falls on it (MiniGrid Memory: the cue object is seen at the start, the choice is made at the end).

    cue_keys(cue_visible, t, key_step, key_kind)   the window's key tokens, at step t, that hold an
                                                   observation in which the cue was visible
    token_shares(attention)                        (step, key): the current state token's row, the
                                                   layers averaged, as shares of its |mass| (the
                                                   explorer's "mean of layers" lag profile)
    cue_attention(rollouts)                        one row per decision (an episode's last step): the
                                                   share on the cue tokens and its lag-matched average

The lag-matched average of a decision is the sum, over the same key positions (a right-aligned
window: a position is a lag), of the mean share at that position over every recorded step of the
episodes given (one run's, one checkpoint's). Only the cue seen before the decision counts (the
decision's own token is left out, seen or not). A decision whose window holds no cue token (the cue
lies further back than the window reaches) has NaN shares and in_window False.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

# the key kinds that carry an observation: the state token (B3LD) or the whole step's token (BL3D)
OBSERVATION_KINDS = ("s", "t")


def cue_keys(cue_visible, t: int, key_step, key_kind) -> np.ndarray:
    """Indices (ascending) of the keys of step t's right-aligned window that hold an observation in
    which the cue was visible. cue_visible (T,) bool by env step; key_step (L,) each key's step back
    from now (0 = step t); key_kind (L,) its kind (R/s/a, or t for one token per step)."""
    cue = np.asarray(cue_visible, dtype=bool)
    step = t + np.asarray(key_step, dtype=int)  # (L,) the env step each key belongs to
    obs = np.array([str(k) in OBSERVATION_KINDS for k in key_kind], dtype=bool) & (step >= 0) & (step <= t)
    hit = np.zeros(len(step), dtype=bool)
    hit[obs] = cue[step[obs]]
    return np.flatnonzero(hit)


def token_shares(attention) -> np.ndarray:
    """(step, layer, L, L) right-aligned attention -> (step, L): the last query's (current state
    token's) row, mean over layers, |values| normalised to sum 1 over the keys (NaN where padded)."""
    with warnings.catch_warnings():  # padded keys are NaN in every layer: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        row = np.nanmean(np.abs(np.asarray(attention, dtype=np.float64)[:, :, -1, :]), axis=1)  # (T, L)
    total = np.nansum(row, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, row / total, np.nan)


def cue_attention(rollouts: dict, max_steps: int | None = None) -> xr.Dataset:
    """One row per decision (dim `decision`: the last step of each episode in `rollouts`, name ->
    recorded episode with `attention` and `cue_visible`): `cue_share` (the decision's attention share
    on its cue tokens, %), `baseline_share` (the lag-matched average of the same key positions over
    every recorded step of these episodes, %), `cue_tokens` (how many cue tokens the window holds),
    `cue_back_steps` (steps from the decision back to the latest earlier cue step; -1 when the cue
    was never seen before it) and `in_window`. An episode that reached `max_steps` (the evaluation's
    step limit) was cut before any choice: it is left out and counted in attrs["cut_episodes"]. Cue tokens are those of earlier steps: the decision's
    own state token is left out (its attention to itself is not memory). Episodes without attention or cue_visible are left out."""
    usable = {n: ds for n, ds in rollouts.items() if "attention" in ds and "cue_visible" in ds and ds.sizes["step"]}
    cut = [n for n, ds in usable.items() if max_steps and ds.sizes["step"] >= max_steps]
    shares = {n: token_shares(ds["attention"].values) for n, ds in usable.items()}  # name -> (T, L)
    if shares:
        every = np.concatenate(list(shares.values()))  # (all steps, L)
        seen = np.isfinite(every).sum(0)
        lag_mean = np.where(seen > 0, np.nansum(every, 0) / np.maximum(seen, 1), np.nan)  # (L,)
    rows = []
    for name, ds in usable.items():
        if name in cut:
            continue
        cue = ds["cue_visible"].values.astype(bool)
        d = ds.sizes["step"] - 1  # the decision: the episode's last step
        keys = cue_keys(cue, d, ds["key_step"].values, ds["key_kind"].values)
        keys = keys[np.asarray(ds["key_step"].values)[keys] < 0]  # the past's cue, not the decision's own view
        seen_at = np.flatnonzero(cue[:d])
        inside = len(keys) > 0
        rows.append(
            {
                "episode": name,
                "cue_share": 100 * float(np.nansum(shares[name][d, keys])) if inside else np.nan,
                "baseline_share": 100 * float(np.nansum(lag_mean[keys])) if inside else np.nan,
                "cue_tokens": len(keys),
                "cue_back_steps": int(d - seen_at[-1]) if len(seen_at) else -1,
                "in_window": inside,
            }
        )
    out = xr.Dataset(
        {k: ("decision", np.array([r[k] for r in rows])) for k in rows[0] if k != "episode"} if rows else {},
        coords={"decision": np.arange(len(rows)), "episode": ("decision", np.array([r["episode"] for r in rows]))},
    )
    if rows:
        out["cue_share"].attrs = {"long_name": "attention share on the cue tokens at the decision", "units": "%"}
        out["baseline_share"].attrs = {"long_name": "lag-matched average share at the same keys", "units": "%"}
    out.attrs = {
        "cut_episodes": len(cut),
        "method": (
            "the current state token's row of the recorded (channel-aggregated) attention, mean over "
            "layers, |values| normalised to sum 1; cue tokens: the state tokens of steps whose "
            "observation shows the cue; lag-matched average: the mean share at the same window "
            "positions over every recorded step"
        ),
    }
    return out
