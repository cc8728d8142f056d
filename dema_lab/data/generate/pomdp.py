"""The partially observed MuJoCo datasets (``hopper-medium-pomdp``...): a fully observed embedded
dataset with the velocities taken out of its observations.

The behaviour policy saw the full state; the file keeps the same episodes, actions, rewards,
flags and ``infos/qpos``/``infos/qvel``, with observations and next_observations cut to their
first obs_dim columns, the positions qpos[1:] (``hopper-pomdp``: 5 of 11). So a POMDP dataset's
observations are exactly its full dataset's position columns, and the env of the same name masks
the same way at evaluation (dema_lab.envs.mujoco.PositionsOnly). Reference scores are the full
task's.
"""

from __future__ import annotations

import json
from pathlib import Path

from dema_lab.data.sources.d4rl import write_d4rl
from dema_lab.data.trajectory import DatasetError
from dema_lab.envs.spec import env_spec

__all__ = ["pomdp_name", "mask_dataset"]


def pomdp_name(full_env: str, quality: str) -> str:
    """The dataset name of a quality of a partially observed task: ``hopper-medium-pomdp``."""
    return f"{full_env}-{quality}-pomdp"


def mask_dataset(full_path, out_path, env: str) -> Path:
    """Write the partially observed copy of the full dataset at `full_path` for `env` (a ``-pomdp``
    env): every array and attr kept, observations cut to the positions; attrs ``env``,
    ``masked_from`` (the full file's name) and ``observed`` (the columns kept) added."""
    import h5py

    spec = env_spec(env)
    if not spec.full_env:
        raise DatasetError(f"{spec.name} is fully observed; mask_dataset makes the '-pomdp' datasets")
    keep = spec.obs_dim
    with h5py.File(full_path, "r") as f:
        attrs = {k: v for k, v in f.attrs.items()}
        if str(attrs.get("env", spec.full_env)) != spec.full_env:
            raise DatasetError(f"{full_path}: a dataset of {attrs.get('env')}, not of {spec.full_env}")
        arrays = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
        nxt = f["next_observations"][:, :keep] if "next_observations" in f else None
        infos = {k: f[f"infos/{k}"][()] for k in f["infos"]} if "infos" in f else {}
    quality = str(attrs.get("quality", ""))
    attrs.update(
        env=spec.name,
        dataset_name=pomdp_name(spec.full_env, quality),
        masked_from=Path(full_path).name,
        observed=json.dumps(list(range(keep))),
    )
    return write_d4rl(
        out_path,
        observations=arrays["observations"][:, :keep],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminals=arrays["terminals"],
        timeouts=arrays["timeouts"],
        next_observations=nxt,
        infos=infos,
        attrs=attrs,
    )
