"""Resolve a dataset spec to a :class:`TrajectoryDataset`.

A spec is one of

    hopper-medium            an embedded dataset: built on first use from the
                             shipped policies into the cache dir, reused after
    hopper-medium-pomdp      its partially observed copy (positions only; generate/pomdp.py)
    minigrid-memory-s7       an embedded memory task (MiniGrid Memory, POPGym RepeatPrevious:
    popgym-repeatprevious-easy  scripted policies, generate/scripted.py), built likewise
    path/to/file.hdf5        a D4RL-layout file
    minari:<dataset id>      a dataset in the local Minari directory
    breakout-mixed           an embedded Atari dataset (:mod:`dema_lab.data.generate.atari`), built likewise
    dqn-replay:<folder>      a DQN-Replay run folder (``<Game>/<run>/replay_logs``), read with
                             :mod:`dema_lab.data.sources.dqn_replay`

The cache dir is ``$DEMA_LAB_DATA`` or ``~/.cache/dema-lab/datasets``. A
cached file is rebuilt when the builder version or the policy weights it was
built from have changed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dema_lab.data.generate import builder
from dema_lab.data.generate.builder import BUILDER_VERSION, QUALITIES, build_dataset
from dema_lab.data.generate.policy import policy_path
from dema_lab.data.generate.pomdp import mask_dataset, pomdp_name
from dema_lab.data.sources.d4rl import load_d4rl, read_episode_lengths
from dema_lab.data.trajectory import DatasetError, TrajectoryDataset
from dema_lab.envs.spec import ENV_SPECS

__all__ = [
    "DEFAULT_DATASET",
    "data_dir",
    "embedded_names",
    "embedded_name",
    "is_memory_task_spec",
    "qualities_for",
    "parse_embedded",
    "embedded_path",
    "ensure_embedded",
    "load_dataset",
    "episode_lengths",
    "list_datasets",
    "UnknownDatasetError",
]

DEFAULT_DATASET = "hopper-medium"


class UnknownDatasetError(DatasetError):
    """A dataset spec that names no dataset (no file, no minari:<id>, no embedded name): a bad
    argument, not data that could not be read."""


def data_dir() -> Path:
    """Where embedded datasets are cached (``$DEMA_LAB_DATA`` overrides)."""
    env = os.environ.get("DEMA_LAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dema-lab" / "datasets"


def _scripted(env: str) -> bool:
    return ENV_SPECS[env].kind in ("minigrid", "popgym")


def qualities_for(env: str) -> tuple[str, ...]:
    """The qualities the builder makes for an env: the MuJoCo suite's (a ``-pomdp`` task's too),
    the Atari games' that have a behaviour policy (:mod:`dema_lab.data.generate.atari`), or the
    memory tasks' one, "mixed" (:mod:`dema_lab.data.generate.scripted`)."""
    if ENV_SPECS[env].kind == "atari":
        from dema_lab.data.generate.atari import ATARI_POLICIES, ATARI_QUALITIES

        return ATARI_QUALITIES if env in ATARI_POLICIES else ()
    if _scripted(env):
        from dema_lab.data.generate.scripted import SCRIPTED_QUALITIES

        return SCRIPTED_QUALITIES
    return QUALITIES


def embedded_name(env: str, quality: str) -> str:
    """The name of an env's dataset of a quality: ``hopper-medium``, ``hopper-medium-pomdp`` for
    ``hopper-pomdp``, and the bare task for a memory task's one quality (``minigrid-memory-s7``)."""
    spec = ENV_SPECS[env]
    if spec.full_env:
        return pomdp_name(spec.full_env, quality)
    return env if _scripted(env) else f"{env}-{quality}"


def embedded_names() -> list[str]:
    """All the names the builder can make (embedded_name of every env and quality)."""
    return [embedded_name(e, q) for e in ENV_SPECS for q in qualities_for(e)]


def parse_embedded(name: str) -> tuple[str, str] | None:
    """``hopper-medium-replay`` -> (``hopper``, ``medium-replay``), ``hopper-medium-pomdp`` ->
    (``hopper-pomdp``, ``medium``), ``minigrid-memory-s7`` -> (``minigrid-memory-s7``, ``mixed``);
    None if not embedded."""
    for e in ENV_SPECS:
        for q in qualities_for(e):
            if embedded_name(e, q) == name:
                return e, q
    return None


def is_atari_spec(spec: str) -> bool:
    """Whether a dataset spec names Atari data, known without opening it: ``dqn-replay:...`` or an
    embedded game's name (``breakout-mixed``)."""
    parsed = parse_embedded(str(spec))
    return str(spec).startswith("dqn-replay:") or (parsed is not None and ENV_SPECS[parsed[0]].kind == "atari")


def is_memory_task_spec(spec: str) -> bool:
    """Whether a dataset spec names an embedded MiniGrid or POPGym dataset (returns of at most 1, so
    returns-to-go want no scaling)."""
    parsed = parse_embedded(str(spec))
    return parsed is not None and _scripted(parsed[0])


def _default_transitions(name: str) -> int:
    parsed = parse_embedded(name)
    if parsed is not None and ENV_SPECS[parsed[0]].kind == "atari":
        from dema_lab.data.generate.atari import ATARI_DEFAULT_TRANSITIONS

        return ATARI_DEFAULT_TRANSITIONS
    if parsed is not None and _scripted(parsed[0]):
        from dema_lab.data.generate.scripted import SCRIPTED_DEFAULT_TRANSITIONS

        return SCRIPTED_DEFAULT_TRANSITIONS
    return builder.DEFAULT_TRANSITIONS


def embedded_path(name: str, seed: int = 0, transitions: int | None = None) -> Path:
    """Cache file for an embedded dataset built with these settings."""
    default = _default_transitions(name)
    n = transitions or default
    suffix = "" if (seed == 0 and n == default) else f"-s{seed}-n{n}"
    return data_dir() / f"{name}{suffix}.hdf5"


def is_current(path: Path, env: str, quality: str) -> bool:
    """True if the cached file exists and was built by this builder from these weights."""
    import h5py

    from dema_lab.data.generate.builder import file_digest

    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("builder_version", -1))
            digest = f.attrs.get("policy_digest", "")
            revision = int(f.attrs.get("policy_revision", 1))
    except (OSError, ValueError):
        return False
    if isinstance(digest, bytes):
        digest = digest.decode()
    if ENV_SPECS[env].kind == "atari":
        from dema_lab.data.generate.atari import ATARI_BUILDER_VERSION, ATARI_POLICY_REVISIONS

        return version == ATARI_BUILDER_VERSION and revision == ATARI_POLICY_REVISIONS.get(env, 1)
    if _scripted(env):
        from dema_lab.data.generate.scripted import SCRIPTED_BUILDER_VERSION

        return version == SCRIPTED_BUILDER_VERSION
    want = "" if quality == "random" else file_digest(policy_path(ENV_SPECS[env].full_env or env))
    return version == BUILDER_VERSION and digest == want


def ensure_embedded(name: str, seed: int = 0, transitions: int | None = None, progress: bool = True) -> Path:
    """Path to the cached embedded dataset, building it first if needed."""
    parsed = parse_embedded(name)
    if parsed is None:
        raise DatasetError(f"{name!r} is not an embedded dataset; choose one of {', '.join(embedded_names())}")
    env, quality = parsed
    path = embedded_path(name, seed, transitions)
    if not is_current(path, env, quality):
        full_env = ENV_SPECS[env].full_env
        full = ensure_embedded(embedded_name(full_env, quality), seed, transitions, progress) if full_env else None
        if progress:
            print(f"building {name} into {path} (once; reused afterwards)", flush=True)
        if full is not None:  # the cached full dataset's episodes, velocities taken out
            mask_dataset(full, path, env)
        else:
            build_dataset(env, quality, path, seed=seed, transitions=transitions, progress=progress)
    return path


def load_dataset(spec, env: str | None = None, progress: bool = True) -> TrajectoryDataset:
    """Load a dataset from an embedded name, an ``.hdf5`` path or ``minari:<id>``."""
    if isinstance(spec, TrajectoryDataset):
        return spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise DatasetError(f"dataset spec must be a name, path or minari:<id>, got {spec!r}")
    if spec.startswith("minari:"):
        from dema_lab.data.sources.minari import load_minari

        return load_minari(spec[len("minari:") :], env=env)
    if spec.startswith("dqn-replay:"):
        from dema_lab.data.sources.dqn_replay import load_dqn_replay

        return load_dqn_replay(spec[len("dqn-replay:") :], env=env)
    return load_d4rl(_hdf5_path(spec, progress), env=env)


def _hdf5_path(spec: str, progress: bool) -> Path:
    """The D4RL-layout file a name or path stands for (an embedded dataset built first if need be)."""
    if parse_embedded(spec) is not None and not Path(spec).exists():
        return ensure_embedded(spec, progress=progress)
    path = Path(spec).expanduser()
    if path.exists() or path.suffix.lower() in (".hdf5", ".h5", ".he5"):
        return path
    raise UnknownDatasetError(
        f"unknown dataset {spec!r}: not a file, not minari:<id>, not an embedded name ({', '.join(embedded_names())})"
    )


def episode_lengths(spec, progress: bool = True) -> np.ndarray:
    """(E,) the episode lengths of a dataset, as load_dataset splits it. A D4RL-layout file (an
    embedded name included) is read for its episode boundaries alone, so that checking K against a
    dataset costs no observations; minari: and dqn-replay: datasets are loaded whole."""
    if isinstance(spec, TrajectoryDataset):
        return np.asarray(spec.lengths)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, str) and spec and not spec.startswith(("minari:", "dqn-replay:")):
        return read_episode_lengths(_hdf5_path(spec, progress))
    return np.asarray(load_dataset(spec, progress=progress).lengths)


def list_datasets() -> list[dict]:
    """Embedded datasets and the cache state of each: name, path, cached, current."""
    rows = []
    for name in embedded_names():
        env, quality = parse_embedded(name)
        path = embedded_path(name)
        rows.append(
            {
                "name": name,
                "path": str(path),
                "cached": path.exists(),
                "current": path.exists() and is_current(path, env, quality),
                "policy": ENV_SPECS[env].kind == "atari"
                or _scripted(env)
                or policy_path(ENV_SPECS[env].full_env or env).exists()
                or quality == "random",
            }
        )
    # other files in the cache dir (other seeds/sizes, user copies)
    known = {r["path"] for r in rows}
    if data_dir().exists():
        for p in sorted(data_dir().glob("*.hdf5")):
            if str(p) not in known:
                rows.append({"name": p.stem, "path": str(p), "cached": True, "current": None, "policy": None})
    return rows
