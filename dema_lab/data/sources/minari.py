"""Minari datasets (optional extra) through the trajectory interface.

Reads only datasets already in the local Minari directory
(``MINARI_DATASETS_PATH``, default ``~/.minari/datasets``); it never
downloads. Minari stores T+1 observations per episode (the last is the
final state); a :class:`Trajectory` keeps the first T as ``observations`` and
the last T as ``next_observations``.
"""

from __future__ import annotations

import numpy as np

from dema_lab.data.trajectory import DatasetError, Trajectory, TrajectoryDataset

__all__ = ["load_minari"]


def _import_minari():
    try:
        import minari
    except ImportError as err:
        raise ImportError("loading Minari datasets needs the optional extra: pip install 'dema-lab[minari]'") from err
    return minari


def load_minari(dataset_id: str, env: str | None = None) -> TrajectoryDataset:
    """Load a local Minari dataset (e.g. ``mujoco/hopper/expert-v0``).

    env: optional short env name / Gymnasium id; its obs/act sizes are checked.
    Raises :class:`DatasetError` if the dataset is not in the local directory
    or its spaces are not flat boxes.
    """
    minari = _import_minari()
    dataset_id = dataset_id.removeprefix("minari:")
    try:
        local = minari.list_local_datasets()
    except Exception:  # an unreadable local dir: let load_dataset report it
        local = None
    if local is not None and dataset_id not in local:
        known = ", ".join(sorted(local)) or "none"
        raise DatasetError(
            f"minari:{dataset_id}: not in the local Minari directory (local datasets: {known}); "
            f"download it once with `minari download {dataset_id}` (dema-lab never downloads)"
        )
    ds = minari.load_dataset(dataset_id)
    trajs = []
    for ep in ds.iterate_episodes():
        obs = ep.observations
        if not isinstance(obs, np.ndarray) or not isinstance(ep.actions, np.ndarray):
            raise DatasetError(
                f"minari:{dataset_id}: observations/actions are {type(obs).__name__}/"
                f"{type(ep.actions).__name__}, only flat Box spaces are supported"
            )
        T = len(ep.rewards)
        if T == 0:
            continue
        obs = obs.reshape(len(obs), -1).astype(np.float32)  # (T+1, obs)
        act = ep.actions.reshape(T, -1).astype(np.float32)  # (T, act)
        rew = np.asarray(ep.rewards, dtype=np.float32).reshape(T)
        for key, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
            if not np.isfinite(arr).all():
                raise DatasetError(f"minari:{dataset_id}: episode {ep.id} key '{key}' contains NaN/inf values")
        trajs.append(
            Trajectory(
                observations=obs[:T],
                actions=act,
                rewards=rew,
                terminated=bool(np.asarray(ep.terminations)[-1]),
                next_observations=obs[1 : T + 1],
            )
        )
    if not trajs:
        raise DatasetError(f"minari:{dataset_id}: the dataset holds no episodes")
    meta = {}
    try:
        meta = dict(ds.storage.metadata)
    except Exception:
        pass
    attrs = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
    spec = _spec_for(env, ds)
    if spec is not None:
        got = (trajs[0].observations.shape[1], trajs[0].actions.shape[1])
        if got != (spec.obs_dim, spec.act_dim):
            raise DatasetError(
                f"minari:{dataset_id}: obs/act dims {got[0]}/{got[1]} but {spec.name} ({spec.gym_id}) "
                f"has {spec.obs_dim}/{spec.act_dim}"
            )
        attrs.setdefault("d4rl_key", spec.d4rl_key)
    return TrajectoryDataset(
        trajs,
        env=spec.name if spec else None,
        quality=dataset_id.split("/")[-1].rsplit("-v", 1)[0] if "/" in dataset_id else None,
        source=f"minari:{dataset_id}",
        attrs=attrs,
        ref_min_score=meta.get("ref_min_score"),
        ref_max_score=meta.get("ref_max_score"),
    )


def _spec_for(env, ds):
    from dema_lab.envs.spec import env_spec

    if env is not None:
        return env_spec(env)
    try:
        gym_id = ds.spec.env_spec.id
    except Exception:
        return None
    try:
        return env_spec(gym_id)
    except ValueError:
        return None
