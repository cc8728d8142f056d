"""Offline RL datasets for dema-lab: one trajectory interface for every source.

sources/ reads files, generate/ builds the embedded datasets; may import common and envs.

Sources
    load_d4rl(path)          D4RL-layout HDF5 files (validated, split into episodes)
    load_minari(id)          local Minari datasets (optional extra)
    load_dataset(spec)       ``hopper-medium`` (embedded, built on demand), a path, or ``minari:<id>``
    build_dataset(...)       the embedded suite: random/medium/expert/medium-replay/medium-expert

Training
    WindowSampler            K-step windows with returns-to-go, timesteps and masks
    normalized_score         D4RL's 0-100 normalized score
"""

from dema_lab.data.generate.builder import BUILDER_VERSION, DEFAULT_TRANSITIONS, QUALITIES, build_dataset
from dema_lab.data.generate.policy import LinearPolicy, PolicySet, load_policy_set, policy_path
from dema_lab.data.registry import (
    DEFAULT_DATASET,
    data_dir,
    embedded_names,
    ensure_embedded,
    episode_lengths,
    is_atari_spec,
    list_datasets,
    load_dataset,
)
from dema_lab.data.scores import REF_SCORES, normalized_score, reference_scores
from dema_lab.data.sources.d4rl import load_d4rl, split_episodes, write_d4rl
from dema_lab.data.sources.minari import load_minari
from dema_lab.data.trajectory import DatasetError, Trajectory, TrajectoryDataset
from dema_lab.data.windows import ReturnScale, WindowSampler, flat_returns_to_go

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_DATASET",
    "DEFAULT_TRANSITIONS",
    "QUALITIES",
    "REF_SCORES",
    "DatasetError",
    "LinearPolicy",
    "PolicySet",
    "ReturnScale",
    "Trajectory",
    "TrajectoryDataset",
    "WindowSampler",
    "build_dataset",
    "data_dir",
    "embedded_names",
    "ensure_embedded",
    "episode_lengths",
    "is_atari_spec",
    "flat_returns_to_go",
    "list_datasets",
    "load_d4rl",
    "load_dataset",
    "load_minari",
    "load_policy_set",
    "normalized_score",
    "policy_path",
    "reference_scores",
    "split_episodes",
    "write_d4rl",
]
