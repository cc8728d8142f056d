"""TrainConfig: one training run's settings, composed of sections.

    model       ModelConfig (dema_lab.models.config): the network, validated and bounded there
    data        the dataset and how its windows become training tokens
    optim       the optimisation: steps, batch, AdamW, the lr schedule, initial weights, seed
    evaluation  what is evaluated, recorded and measured at each evaluation
    run         where the run goes and how it is logged: store, run id, device, checkpoints

Outside Python the config is flat: flags (`--K 20 --eval_episodes 3`), JSON/TOML files and the
`config` attribute of a stored run name each field once, without its section (`to_flat`,
`from_flat`); no two sections share a field name. What a run *is* (RESUME_FIXED: every field of
model, data and optim but those marked resumable) cannot change when it is resumed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dema_lab.common.values import ConfigError, coerce, field_types, parse_fields
from dema_lab.models.config import ModelConfig
from dema_lab.models.policy import MODES
from dema_lab.ssm import AGGREGATIONS
from dema_lab.store.zarr_store import DEFAULT_STORE

# ModelConfig's fields that the dataset sets (its states and actions), not the config
FROM_DATA = ("state_dim", "act_dim", "obs_shape", "n_actions")

# a field that a resume may change although its section is what a run is (field metadata)
RESUMABLE = {"resumable": True}


def _check(obj, at_least_one=(), at_least_zero=(), positive=()) -> list[str]:
    """The bound problems of a section's fields (after `coerce` parsed them by type)."""
    problems = [f"{n} must be >= 1, got {getattr(obj, n)}" for n in at_least_one if getattr(obj, n) < 1]
    problems += [f"{n} must be >= 0, got {getattr(obj, n)}" for n in at_least_zero if getattr(obj, n) < 0]
    problems += [f"{n} must be > 0, got {getattr(obj, n)}" for n in positive if not getattr(obj, n) > 0]
    return problems


class _Section:
    """A config section: every field parsed by its declared type (Literal choices included,
    dema_lab.common.values) and its bounds checked on construction; ConfigError names the fields."""

    def __post_init__(self):
        coerce(self)
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def problems(self) -> list[str]:
        return []


@dataclass
class DataConfig(_Section):
    """The dataset, and how its K-step windows become training tokens."""

    dataset: str = "hopper-medium"  # embedded name, D4RL .hdf5 path, or minari:<id>
    rtg_scale: float = 1000.0  # returns-to-go are divided by this in the tokens
    #: training tokens: current (R_t, as at evaluation) | previous (the official trainer's R_{t-1}
    #: with s_t, its `del_r`; RAS only)
    rtg_form: Literal["current", "previous"] = "current"
    #: short training windows: right-padded, or left (the official trainer's)
    train_padding: Literal["right", "left"] = "right"
    #: the first burn_in steps of every training window only warm the model's state up: no loss
    #: on their predictions (recurrent models then learn from a state that has seen some past)
    burn_in: int = 0

    def problems(self):
        return _check(self, positive=("rtg_scale",), at_least_zero=("burn_in",))


@dataclass
class OptimConfig(_Section):
    """The optimisation: AdamW with a linear warm-up and gradient clipping."""

    steps: int = field(default=10_000, metadata=RESUMABLE)  # optimiser steps (a resume may raise them)
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    decay_all: bool = False  # weight decay on every parameter (official) or on matrices only
    warmup_steps: int = 1_000
    #: after the warm-up: constant | cosine (the official Atari trainer's)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_decay_steps: int = 0  # cosine: the step where lr reaches its 10% floor; 0 = steps
    grad_clip: float = 0.25
    #: initial weights: torch (PyTorch's defaults) | official (mamba_ssm's _init_weights, as
    #: Mamba_mujoco: zero Linear biases but dt_proj's, embeddings N(0, 0.02), out_proj scaled
    #: by 1/sqrt(n_layer))
    init: Literal["torch", "official"] = "torch"
    seed: int = 0

    def problems(self):
        out = _check(
            self,
            at_least_one=("steps", "batch_size"),
            at_least_zero=("warmup_steps", "lr_decay_steps", "weight_decay"),
            positive=("lr", "grad_clip"),
        )
        return out


@dataclass
class EvalConfig(_Section):
    """What each evaluation does: episodes in the env, recorded episodes, decay statistics."""

    eval_every: int = 0  # 0: evaluate only at the end
    eval_episodes: int = 5
    eval_targets: list[float] | None = None  # None: the paper's targets for the env
    eval_modes: list[Literal[MODES]] | None = None  # None: transformer and rnn (DeMa), transformer (DT)
    eval_max_steps: int = 1000
    record_episodes: int = 1  # recorded (frames + attention) episodes per (mode, target)
    render_size: int = 128  # frame size; 0 = no frames
    attention: Literal[AGGREGATIONS] = "minmax"  # channel aggregation of the logged attention
    decay_windows: int = 64  # dataset windows for the decay statistics

    def problems(self):
        return _check(
            self,
            at_least_one=("eval_episodes", "eval_max_steps"),
            at_least_zero=("eval_every", "record_episodes", "render_size", "decay_windows"),
        )


@dataclass
class RunConfig(_Section):
    """Where the run goes, what it runs on, and how often it is logged and checkpointed."""

    store: str = DEFAULT_STORE  # the run store: a directory, or an fsspec URL (s3://bucket/path, memory://...)
    run_id: str = ""  # default: <arch>-<dataset>-K<K>-s<seed>-<time>
    sweep: str = ""  # the sweep this run belongs to, if any
    device: str = "auto"  # auto: CUDA when present
    threads: int = 0  # torch CPU threads; 0 = torch's default
    log_every: int = 100
    checkpoint_every: int = 1_000
    keep_resume_states: int = 3  # the newest N resume states are kept (--resume RUN --from-step S)

    def problems(self):
        out = _check(
            self, at_least_one=("log_every", "checkpoint_every", "keep_resume_states"), at_least_zero=("threads",)
        )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            out.append(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        return out


# the sections, in the order of the flat config
SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "evaluation": EvalConfig, "run": RunConfig}
# the sections that say what a run is: their fields (but RESUMABLE ones) are fixed at resume
RUN_DEFINING = ("model", "data", "optim")


def _section_fields(name: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(SECTIONS[name]) if not (name == "model" and f.name in FROM_DATA)]


# {flat field name: (section, declared type)}
FLAT = {f.name: (s, field_types(SECTIONS[s])[f.name]) for s in SECTIONS for f in _section_fields(s)}
assert len(FLAT) == sum(len(_section_fields(s)) for s in SECTIONS), "two sections share a field name"

# What a run is: a resume cannot change these (it may change the rest, e.g. steps or evaluation).
RESUME_FIXED = tuple(f.name for s in RUN_DEFINING for f in _section_fields(s) if not f.metadata.get("resumable"))


def flat_types() -> dict:
    """{flat field name: declared type}: what flags, files and --set may give."""
    return {name: hint for name, (_, hint) in FLAT.items()}


def parse_flat(values: dict, what: str = "training config ") -> dict:
    """`values` (flat keys) parsed by their declared types; ConfigError for an unknown key or a bad value."""
    return parse_fields(flat_types(), values, what)


def _flatten(values: dict) -> dict:
    """Flat fields of `values`, whose sections (as dicts or section objects) count as their fields."""
    out = {}
    for key, value in values.items():
        if key in SECTIONS and dataclasses.is_dataclass(value) and isinstance(value, SECTIONS[key]):
            value = dataclasses.asdict(value)
        if key in SECTIONS and isinstance(value, dict):
            out.update({k: v for k, v in value.items() if not (key == "model" and k in FROM_DATA)})
        else:
            out[key] = value
    return out


@dataclass
class TrainConfig:
    """Everything one training run needs, by section (see the module's docstring). Build one from
    flat fields with `TrainConfig.from_flat({...})`, a preset with `from_preset`, a file with
    `from_file`; `cfg.replace(K=10)` is a new config with flat fields changed."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"invalid training config: {name} must be a {cls.__name__}")
        problems = self.problems()
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What the sections cannot check alone: the combinations of their fields."""
        m, d = self.model, self.data
        out = []
        if d.rtg_form == "previous" and m.token_order not in ("RAS", "ARS"):
            out.append(
                "rtg_form 'previous' is the official DeMa's training form and needs token_order RAS "
                "(or ARS, its Atari order)"
            )
        elif d.rtg_form == "previous" and m.K < 2:
            out.append("rtg_form 'previous' trains on steps 1..K-1 of each window and needs K >= 2")
        if d.train_padding == "left" and m.token_order in ("RAS", "ARS") and d.rtg_form == "current":
            out.append(
                "train_padding 'left' with token_order RAS is the official trainer's and needs its "
                "rtg_form 'previous' (with 'current', the first real step would see a pad action)"
            )
        if d.burn_in >= m.K:
            out.append(f"burn_in={d.burn_in} leaves no step of a K={m.K} window to train on; use burn_in < K")
        if m.K > m.max_ep_len:
            out.append(
                f"K={m.K} is longer than max_ep_len={m.max_ep_len}, the longest episode the "
                f"model handles; use K <= {m.max_ep_len} (or raise max_ep_len)"
            )
        return out

    # ------------------------------------------------------------------ the flat form
    def to_flat(self) -> dict:
        """{field: value} without sections: what a run stores as its `config`, and a config file holds."""
        return {name: getattr(getattr(self, section), name) for name, (section, _) in FLAT.items()}

    @classmethod
    def from_flat(cls, fields: dict | None = None, /, **more) -> TrainConfig:
        """The config of flat fields (a config file's, a stored run's `config`, keyword arguments),
        each parsed by its declared type; the rest default. A section given as a dict (`{"model":
        {...}}`, as dataclasses.asdict writes it) counts as its fields. One ConfigError lists every
        problem."""
        given = _flatten({**(fields or {}), **more})
        try:
            parsed = parse_flat(given)
        except ConfigError as e:
            raise ConfigError(f"invalid training config: {e}") from None
        sections, problems = {}, []
        for name, section in SECTIONS.items():
            kwargs = {k: v for k, v in parsed.items() if FLAT[k][0] == name}
            try:
                sections[name] = section(**kwargs)
            except ValueError as e:
                problems.append(str(e).removeprefix("invalid model config: "))
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        return cls(**sections)

    def replace(self, **fields) -> TrainConfig:
        """A new config with flat `fields` changed (validated as a whole). A new arch without a
        timestep_embedding takes that arch's default (DT's on, DeMa's off), as a config built
        with it would."""
        flat = self.to_flat()
        if fields.get("arch", flat["arch"]) != flat["arch"] and "timestep_embedding" not in fields:
            flat["timestep_embedding"] = None
        return TrainConfig.from_flat({**flat, **fields})

    def model_config(self, state_dim: int, act_dim: int, obs_shape: tuple = (), n_actions: int = 0) -> ModelConfig:
        """The model for a dataset's states and actions (Atari: image obs_shape, n_actions discrete)."""
        return dataclasses.replace(
            self.model, state_dim=state_dim, act_dim=act_dim, obs_shape=tuple(obs_shape), n_actions=n_actions
        )

    # ------------------------------------------------------------------ presets and files
    @classmethod
    def from_preset(cls, name: str, **overrides) -> TrainConfig:
        """The config of a named preset (PRESETS, for `overrides`' arch) with flat `overrides` on top."""
        from dema_lab.training.presets import preset_fields

        return cls.from_flat({**preset_fields(name, overrides.get("arch")), **overrides})

    @classmethod
    def read_file(cls, path) -> dict:
        """The flat fields a JSON or TOML config file sets, parsed by their declared types as flags
        are (ConfigError naming the file and the field for an unknown key or a bad value). A file
        written by `to_flat` (or with section tables) loads."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} "
                + (
                    "is a directory"
                    if path.is_dir()
                    else "does not exist"
                    if not path.exists()
                    else "is not a regular file"
                )
                + "; give a JSON or TOML (.toml) file of TrainConfig fields"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read ({e})") from None
        try:
            if path.suffix == ".toml":
                import tomllib

                d = tomllib.loads(text)
            else:
                d = json.loads(text)
        except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise ConfigError(
                f"config file {path} cannot be parsed ({e}); it must be JSON or TOML "
                f"(.toml) with TrainConfig's field names as keys"
            ) from None
        if not isinstance(d, dict):
            raise ConfigError(f"config file {path} must hold a table of TrainConfig fields, not {type(d).__name__}")
        try:
            given = parse_flat(_flatten(d))
            cls.from_flat(given)
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {str(e).removeprefix('invalid training config: ')}") from None
        return given

    @classmethod
    def from_file(cls, path) -> TrainConfig:
        return cls.from_flat(cls.read_file(path))
