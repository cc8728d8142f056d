"""D4RL's HDF5 layout: reading (with validation) and writing.

A D4RL file is a flat table of N transitions:

    observations      (N, obs_dim)  float
    actions           (N, act_dim)  float
    rewards           (N,)          float
    terminals         (N,)          bool   the env's ``terminated`` at that step
    timeouts          (N,)          bool   optional: the step a time limit cut
    next_observations (N, obs_dim)  float  optional
    infos/qpos, infos/qvel, ...            optional, ignored by the loader

Episodes end where ``terminals`` or ``timeouts`` is true, as D4RL's
``sequence_dataset`` and the Decision Transformer loader split them. Old
files without ``timeouts`` are also cut every ``max_episode_steps`` steps
(DT's convention for them). Whatever follows the last end is kept as a final
unterminated episode. ``d4rl`` itself is not needed: h5py reads the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from dema_lab.data.trajectory import DatasetError, Trajectory, TrajectoryDataset

__all__ = ["load_d4rl", "read_d4rl_arrays", "read_episode_lengths", "write_d4rl", "split_episodes", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
_FLAG_KEYS = ("terminals", "timeouts")


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _checked_hdf5_file(path: str | Path) -> Path:
    """`path`, once it is known to be a non-empty regular HDF5 file; DatasetError otherwise."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a D4RL .hdf5 file")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # checked before anything opens it: reading a FIFO would block
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a special file"
        )
        raise DatasetError(
            f"{path}: is not a regular file ({kind}); give an HDF5 file (a D4RL-layout .hdf5, e.g. one "
            f"`dema-lab data build ENV QUALITY` writes)"
        )
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty (0 bytes); rebuild or re-download it")
    if not h5py.is_hdf5(path):
        raise DatasetError(
            f"{path}: not an HDF5 file; expected a D4RL-layout .hdf5 (build one with `dema-lab data build ENV QUALITY`)"
        )
    return path


def read_d4rl_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Open and validate a D4RL-layout file; return (arrays, attrs).

    arrays has the four required keys plus ``timeouts``/``next_observations``
    when present, with rewards/flags as (N,) and float arrays as float32.
    Raises :class:`DatasetError` naming the file, the key and the problem.
    """
    import h5py

    path = _checked_hdf5_file(path)
    with h5py.File(path, "r") as f:
        present = [k for k in f.keys()]
        if not present:
            raise DatasetError(
                f"{path}: the HDF5 file is empty (no datasets); expected keys {', '.join(REQUIRED_KEYS)}"
            )
        for key in REQUIRED_KEYS:
            if key not in f:
                raise DatasetError(
                    f"{path}: missing key '{key}'; a D4RL file needs {', '.join(REQUIRED_KEYS)} "
                    f"(found: {', '.join(sorted(present))})"
                )
            if not isinstance(f[key], h5py.Dataset):
                raise DatasetError(f"{path}: key '{key}' is a group, expected an array")
        arrays = {k: f[k][()] for k in REQUIRED_KEYS}
        for k in ("timeouts", "next_observations"):
            if k in f and isinstance(f[k], h5py.Dataset):
                arrays[k] = f[k][()]
        attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    _validate(path, arrays)
    return arrays, attrs


def read_episode_lengths(path: str | Path, max_episode_steps: int | None = 1000) -> np.ndarray:
    """(E,) the episode lengths of a D4RL-layout file, as load_d4rl splits it, read from its
    `terminals` (and `timeouts`) alone: checking a K against a dataset needs no observations (an
    Atari dataset's frames are gigabytes). The other keys are checked when the dataset is loaded."""
    import h5py

    path = _checked_hdf5_file(path)
    flags: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        for key in _FLAG_KEYS:
            if key not in f:
                if key == "terminals":
                    raise DatasetError(f"{path}: missing key 'terminals'; a D4RL file needs {', '.join(REQUIRED_KEYS)}")
                continue
            if not isinstance(f[key], h5py.Dataset):
                raise DatasetError(f"{path}: key '{key}' is a group, expected an array")
            flags[key] = np.asarray(f[key][()])
    for key, arr in flags.items():
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or arr.dtype.kind not in "fiub":
            raise DatasetError(
                f"{path}: key '{key}' has shape {arr.shape} and dtype {arr.dtype}, expected (N,) numbers"
            )
        flags[key] = arr != 0
    if "timeouts" in flags and len(flags["timeouts"]) != len(flags["terminals"]):
        raise DatasetError(
            f"{path}: mismatched lengths: key 'timeouts' has {len(flags['timeouts'])} rows but "
            f"'terminals' has {len(flags['terminals'])}"
        )
    if not len(flags["terminals"]):
        raise DatasetError(f"{path}: key 'terminals' has 0 rows; the file holds no transitions")
    starts, ends, _ = split_episodes(flags["terminals"], flags.get("timeouts"), max_episode_steps)
    return ends - starts


def _validate(path: Path, a: dict[str, np.ndarray]) -> None:
    """Shapes, lengths and finiteness; fixes (N, 1) rewards/flags to (N,)."""
    for key in ("rewards", *_FLAG_KEYS):
        if key in a and a[key].ndim == 2 and a[key].shape[1] == 1:
            a[key] = a[key][:, 0]
    frames = a["observations"].ndim == 3 and a["observations"].dtype == np.uint8  # Atari: (N, H, W) uint8
    for key, ndim, what in (
        ("observations", 3 if frames else 2, "(N, obs_dim) or uint8 frames (N, H, W)"),
        ("actions", 2, "(N, act_dim)"),
        ("next_observations", 2, "(N, obs_dim)"),
        ("rewards", 1, "(N,)"),
        ("terminals", 1, "(N,)"),
        ("timeouts", 1, "(N,)"),
    ):
        if key in a and a[key].ndim != ndim:
            raise DatasetError(f"{path}: key '{key}' has shape {a[key].shape}, expected {what}")
        if key in a and a[key].dtype.kind not in "fiub":
            raise DatasetError(f"{path}: key '{key}' has dtype {a[key].dtype}, expected numbers")
    n = len(a["observations"])
    if n == 0:
        raise DatasetError(f"{path}: key 'observations' has 0 rows; the file holds no transitions")
    for key, arr in a.items():
        if len(arr) != n:
            raise DatasetError(
                f"{path}: mismatched lengths: key '{key}' has {len(arr)} rows but 'observations' has {n}"
            )
    if "next_observations" in a and a["next_observations"].shape[1] != a["observations"].shape[1]:
        raise DatasetError(
            f"{path}: key 'next_observations' has {a['next_observations'].shape[1]} features "
            f"but 'observations' has {a['observations'].shape[1]}"
        )
    for key in ("observations", "actions", "rewards", "next_observations"):
        if key not in a or (frames and key in ("observations", "next_observations")):
            continue
        a[key] = np.asarray(a[key], dtype=np.float32)
        bad = ~np.isfinite(a[key])
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetError(
                f"{path}: key '{key}' contains {int(bad.sum())} NaN/inf values (first at row {row}); "
                "clean or drop those transitions"
            )
    for key in _FLAG_KEYS:
        if key in a:
            a[key] = np.asarray(a[key]) != 0


def split_episodes(terminals: np.ndarray, timeouts: np.ndarray | None, max_episode_steps: int | None = None):
    """Episode boundaries for a flat table of N steps.

    Returns (starts (E,), ends (E,) exclusive, terminated (E,) bool). An
    episode ends after step i when terminals[i] or timeouts[i]; without
    timeouts, also after every ``max_episode_steps`` steps of one episode.
    A trailing unterminated run is a final episode with terminated False.
    """
    n = len(terminals)
    done = terminals.copy() if timeouts is None else (terminals | timeouts)
    ends = np.flatnonzero(done) + 1  # exclusive ends
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    starts = np.concatenate([[0], ends[:-1]])
    if timeouts is None and max_episode_steps:
        s_list, e_list = [], []
        for s, e in zip(starts, ends):  # chop runs longer than the time limit
            cuts = np.arange(s, e, max_episode_steps)
            s_list.append(cuts)
            e_list.append(np.append(cuts[1:], e))
        starts, ends = np.concatenate(s_list), np.concatenate(e_list)
    terminated = terminals[ends - 1].astype(bool)
    return starts.astype(np.int64), ends.astype(np.int64), terminated


def _resolve_env(env, attrs: dict, path: Path, obs_dim: int, act_dim: int):
    """Env spec from the argument, the file's attrs, or (leniently) its name."""
    from dema_lab.envs.spec import env_spec

    if env is not None:
        return env_spec(env)
    if attrs.get("env"):
        try:
            return env_spec(str(attrs["env"]))
        except ValueError:
            return None
    try:  # "hopper_medium-v2.hdf5", "walker2d-expert.hdf5": accept only if the dims agree
        spec = env_spec(path.stem.replace("_", "-"))
    except ValueError:
        return None
    return spec if (spec.obs_dim, spec.act_dim) == (obs_dim, act_dim) else None


def load_d4rl(path: str | Path, env: str | None = None, max_episode_steps: int | None = 1000) -> TrajectoryDataset:
    """Load a D4RL-layout HDF5 file into a :class:`TrajectoryDataset`.

    env: if given (short name or Gymnasium id), the observation and action
        sizes are checked against it; otherwise the file's ``env`` attr is used.
    max_episode_steps: time limit used to split files that lack ``timeouts``.
    """
    path = Path(path)
    a, attrs = read_d4rl_arrays(path)
    obs_dim, act_dim = a["observations"].shape[1], a["actions"].shape[1]
    if a["observations"].ndim == 3:  # frames: a state is attrs frame_stack of them
        obs_dim = int(attrs.get("frame_stack", 4)) * int(np.prod(a["observations"].shape[1:]))
    spec = _resolve_env(env, attrs, path, obs_dim, act_dim)
    if spec is not None:
        for key, got, want, what in (
            ("observations", obs_dim, spec.obs_dim, "obs_dim"),
            ("actions", act_dim, spec.act_dim, "act_dim"),
        ):
            if got != want:
                raise DatasetError(
                    f"{path}: key '{key}' has {got} features but {spec.name} ({spec.gym_id}) has "
                    f"{what} {want}; is this a dataset for another env?"
                )
    starts, ends, terminated = split_episodes(a["terminals"], a.get("timeouts"), max_episode_steps)
    nxt = a.get("next_observations")
    trajs = [
        Trajectory(
            observations=a["observations"][s:e],
            actions=a["actions"][s:e],
            rewards=a["rewards"][s:e],
            terminated=bool(term),
            next_observations=None if nxt is None else nxt[s:e],
        )
        for s, e, term in zip(starts, ends, terminated)
    ]
    ds = TrajectoryDataset(
        trajs,
        env=spec.name if spec else attrs.get("env"),
        quality=attrs.get("quality"),
        source=str(path),
        attrs=attrs,
        ref_min_score=attrs.get("ref_min_score"),
        ref_max_score=attrs.get("ref_max_score"),
    )
    if spec is not None and "d4rl_key" not in ds.attrs:
        ds.attrs["d4rl_key"] = spec.d4rl_key
    return ds


def write_d4rl(
    path: str | Path,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray | None = None,
    next_observations: np.ndarray | None = None,
    infos: dict[str, np.ndarray] | None = None,
    attrs: dict | None = None,
    compression: str | None = None,
) -> Path:
    """Write arrays in D4RL's layout (float32 data, bool flags).

    attrs values must be HDF5-storable (str, numbers, 1-D arrays). The file
    is written next to ``path`` and renamed into place, so a reader never
    sees half a file.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")  # unique per writer
    try:
        with h5py.File(tmp, "w") as f:
            obs = np.asarray(observations)
            if obs.dtype == np.uint8 and obs.ndim == 3:  # Atari frames stay uint8, in chunks of frames
                f.create_dataset(
                    "observations",
                    data=obs,
                    compression=compression or "gzip",
                    chunks=(min(len(obs), 256), *obs.shape[1:]),
                )
            else:
                f.create_dataset("observations", data=np.asarray(obs, np.float32), compression=compression)
            f.create_dataset("actions", data=np.asarray(actions, np.float32), compression=compression)
            f.create_dataset("rewards", data=np.asarray(rewards, np.float32), compression=compression)
            f.create_dataset("terminals", data=np.asarray(terminals, bool))
            if timeouts is not None:
                f.create_dataset("timeouts", data=np.asarray(timeouts, bool))
            if next_observations is not None:
                f.create_dataset(
                    "next_observations", data=np.asarray(next_observations, np.float32), compression=compression
                )
            for k, v in (infos or {}).items():
                f.create_dataset(f"infos/{k}", data=np.asarray(v), compression=compression)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
