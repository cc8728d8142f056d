"""`dema-lab train`: train DeMa or DT into the store (flags generated from TrainConfig by tyro)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Annotated

import tyro

from dema_lab.cli.flags import (
    PresetName,
    StorageOptions,
    parse_flags,
    switch,
    typed_fields,
    values_rule,
)
from dema_lab.models.config import ModelConfig
from dema_lab.store.zarr_store import DEFAULT_STORE
from dema_lab.training.config import FROM_DATA, SECTIONS, TrainConfig, flat_types


@dataclasses.dataclass
class TrainFlags:
    """`dema-lab train`'s flags: one per TrainConfig field, without its section's prefix (the
    field's comment is the help), and these. tyro collects the config's flags as they were typed
    (values_rule); config_from_args builds and checks the TrainConfig from them."""

    training: Annotated[TrainConfig, tyro.conf.arg(name="")] = dataclasses.field(default_factory=TrainConfig)
    #: start from a named preset ('official': the official DeMa's MuJoCo model and training,
    #: AndssY/dema); --config and the flags override it
    preset: PresetName | None = None
    config: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None  # a JSON or TOML file of TrainConfig fields
    #: continue a killed run from its last checkpoint (with its saved config: the flags typed change it)
    resume: Annotated[str | None, tyro.conf.arg(metavar="RUN_ID")] = None
    #: with --resume: continue from the saved state of this step instead of the newest (the newest
    #: keep_resume_states are kept); what came after it is trained again
    from_step: Annotated[int | None, tyro.conf.arg(metavar="STEP")] = None
    quiet: Annotated[bool, switch(), tyro.conf.arg(help_behavior_hint="")] = False  # no progress bar
    #: also log live to a tracker: tensorboard DIR (event files in DIR/RUN_ID)
    log_to: Annotated[tuple[str, str] | None, tyro.conf.arg(metavar="TRACKER DIR")] = None
    storage_option: StorageOptions = dataclasses.field(default_factory=list)


TRAIN_DESCRIPTION = (
    "Train a Decision Mamba or Decision Transformer; the run is logged into the store. Each "
    "TrainConfig field is a flag (--eval_episodes or --eval-episodes); what is typed overrides "
    "--config FILE, which overrides --preset (with --resume: the run's saved config)."
)

# the config's classes, whose flags tyro collects without constructing them
CONFIG_VALUES = values_rule({TrainConfig, *SECTIONS.values()}, hidden=FROM_DATA)
assert ModelConfig in SECTIONS.values()


def _train_args(ns, argv) -> argparse.Namespace:
    """The namespace of `dema-lab train ARGV`: `typed`, the TrainConfig fields typed (flat, parsed
    by their declared types), so that only what is typed overrides --config, --preset and --resume;
    and the options."""
    from dema_lab.common.values import parse_value

    flags = parse_flags(
        TrainFlags,
        argv,
        ns.command_prog,
        TRAIN_DESCRIPTION,
        underscores=True,
        config=(tyro.conf.FlagConversionOff, tyro.conf.OmitArgPrefixes),
        rules=(CONFIG_VALUES,),
    )
    ns.typed = typed_fields(flags.training, flat_types())
    ns.preset = parse_value(PresetName | None, flags.preset, "preset")
    ns.config = None if flags.config is None else str(flags.config)
    ns.resume = None if flags.resume is None else str(flags.resume)
    ns.from_step = parse_value(int | None, flags.from_step, "--from-step")
    ns.quiet = bool(flags.quiet)
    ns.log_to = None if flags.log_to is None else [str(v) for v in flags.log_to]
    ns.storage_option = [str(v) for v in flags.storage_option]
    return ns


def config_from_args(args) -> TrainConfig:
    """TrainConfig defaults < the --preset < the --config file < the flags typed. With --resume, the
    run's saved config takes the defaults' place: only what is given explicitly changes. Atari data
    with neither --preset nor --config starts from the atari-small preset (MuJoCo's defaults, such
    as returns-to-go scaled by 1000, do not fit a game's scores); a MiniGrid or POPGym dataset
    gets rtg_scale 1 unless one is given."""
    from dema_lab.data import is_atari_spec
    from dema_lab.data.registry import is_memory_task_spec
    from dema_lab.training.presets import preset_fields
    from dema_lab.training.resume import resumed_config

    preset = getattr(args, "preset", None)
    resume = getattr(args, "resume", None)
    if preset and resume:
        raise ValueError("--preset starts a new run; --resume continues a run with its own saved config")
    from_file = TrainConfig.read_file(args.config) if args.config else {}
    fields = {**from_file, **args.typed}
    if not (preset or args.config or resume) and is_atari_spec(fields.get("dataset", "")):
        preset = "atari-small"
        print(
            f"dema-lab train: Atari data ({fields['dataset']}): starting from --preset atari-small "
            "(give --preset or --config to choose another)",
            file=sys.stderr,
        )
    if not (preset or args.config or resume or "rtg_scale" in fields) and is_memory_task_spec(
        fields.get("dataset", "")
    ):
        fields["rtg_scale"] = 1.0
        print(
            f"dema-lab train: {fields['dataset']} scores returns of at most 1: returns-to-go unscaled "
            "(--rtg_scale 1; give --rtg_scale to choose another)",
            file=sys.stderr,
        )
    given = {**(preset_fields(preset, fields.get("arch")) if preset else {}), **fields}
    if resume:
        store = given.pop("store", DEFAULT_STORE)
        return resumed_config(store, args.resume, given)
    return TrainConfig.from_flat(given)


def _train(args) -> int:
    from dema_lab.training import Tracker, train

    cfg = config_from_args(args)
    hooks = []
    if getattr(args, "log_to", None):
        from dema_lab.integrations.trackers import live_tracker

        hooks.append(Tracker(live_tracker(*args.log_to)))
    run = train(
        cfg,
        resume=args.resume,
        progress=not args.quiet,
        from_step=getattr(args, "from_step", None),
        hooks=hooks,
    )
    print(f"run {run.run_id} finished; store: {run.store.path}")
    print(f"  open it:   python -c \"import dema_lab; print(dema_lab.open_run('{run.store.path}', '{run.run_id}'))\"")
    print(f"  dashboard: panel serve dashboards/attention.py --address 127.0.0.1 --args --store {run.store.path}")
    return 0


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train DeMa or DT; the run is logged into the store",
        add_help=False,  # its flags and help are TrainFlags', by tyro (_train_args)
    )
    train.set_defaults(func=_train, parse_flags=_train_args)
