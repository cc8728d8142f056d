"""`dema-lab sweep`, `report` and `ablate`: the paper's study over a grid of runs."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Annotated, Literal

import tyro

from dema_lab.cli.flags import (
    PresetName,
    StorageOptions,
    parse_flags,
    store_options,
    typed_fields,
    values_rule,
)
from dema_lab.models import ARCHS, LAYOUTS, MODES
from dema_lab.store.zarr_store import DEFAULT_STORE
from dema_lab.study.sweep import SWEEP_PRESETS, SweepConfig
from dema_lab.training.config import TrainConfig, parse_flat

# --preset: a training preset (training/presets) or a named sweep (study.sweep.SWEEP_PRESETS)
SweepPresetName = Literal[tuple(sorted({*PresetName.__args__, *SWEEP_PRESETS}))]


@dataclasses.dataclass
class SweepFlags:
    """`dema-lab sweep`'s flags: one per SweepConfig field but base (its comment is the help), and
    these. tyro collects the grid's flags as they were typed (values_rule); _sweep_args parses them
    and SweepConfig checks them."""

    grid: SweepConfig = dataclasses.field(default_factory=SweepConfig)
    store: str = DEFAULT_STORE  # the store every run of the sweep goes into
    #: a training preset every run starts from (DT points with DT's own tokens), or a named sweep
    #: that fixes the grid too (memory: DeMa at K 5/20/60 both ways, LSTM, GRU, DT, MLP on the memory
    #: tasks); the grid's flags, --base-config and --set override it
    preset: SweepPresetName | None = None
    #: a JSON or TOML file of TrainConfig fields for everything the grid does not set
    base_config: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    #: TrainConfig fields of every run, e.g. steps=3000 d_model=64
    set: Annotated[list[str] | None, tyro.conf.arg(metavar="KEY=VALUE [KEY=VALUE ...]")] = None
    storage_option: StorageOptions = dataclasses.field(default_factory=list)


SWEEP_DESCRIPTION = (
    "The paper's study: a grid of runs (K, layout, timestep embedding, DeMa/DT/LSTM/GRU/MLP, seeds), resumable, "
    "in parallel processes or on a Ray cluster. The grid's flags are SweepConfig's fields; --preset, "
    "--base-config and --set give every run's other TrainConfig fields."
)


def parse_set(items) -> dict:
    """KEY=VALUE pairs for TrainConfig fields, parsed by their declared types (dema_lab.common.values)."""
    from dema_lab.common.values import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        out[key] = text
    try:
        return parse_flat(out)
    except ConfigError as e:
        raise ConfigError(f"--set: {e}") from None


# SweepConfig's flags, collected as typed (its base is --preset, --base-config and --set)
GRID_VALUES = values_rule({SweepConfig}, hidden=("base",))

# the grid flags whose values are the models' own choices
SWEEP_CHOICES = {"layouts": LAYOUTS, "archs": ARCHS, "eval_modes": MODES}


def _sweep_args(ns, argv) -> argparse.Namespace:
    """The namespace of `dema-lab sweep ARGV`: sweep_fields (SweepConfig's fields but base, from the
    flags and the defaults) and the options (store, preset, base_config, set, storage_option)."""
    from dema_lab.common.values import ConfigError, field_types, parse_value

    flags = parse_flags(
        SweepFlags,
        argv,
        ns.command_prog,
        SWEEP_DESCRIPTION,
        underscores=False,
        config=(tyro.conf.OmitArgPrefixes,),
        rules=(GRID_VALUES,),
    )
    types = {name: hint for name, hint in field_types(SweepConfig).items() if name != "base"}
    typed = typed_fields(flags.grid, types)
    preset = parse_value(SweepPresetName | None, flags.preset, "preset")
    named = SWEEP_PRESETS[preset]["grid"] if preset in SWEEP_PRESETS else {}
    fields = {name: typed.get(name, named.get(name, flags.grid[name])) for name in types}
    for name, allowed in SWEEP_CHOICES.items():
        bad = [v for v in fields[name] if v not in allowed]
        if bad:
            raise ConfigError(f"{name}: invalid choice {bad[0]!r}; choose from {', '.join(allowed)}")
    ns.sweep_fields = fields
    ns.name = fields["name"]
    ns.store = str(flags.store)
    ns.preset = preset
    ns.base_config = None if flags.base_config is None else str(flags.base_config)
    ns.set = None if flags.set is None else [str(v) for v in flags.set]
    ns.storage_option = [str(v) for v in flags.storage_option]
    return ns


def _sweep(args) -> int:
    from dema_lab.study.sweep import run_sweep
    from dema_lab.training.presets import preset_fields

    if args.preset in SWEEP_PRESETS:  # a named sweep: its runs' settings
        given = dict(SWEEP_PRESETS[args.preset]["base"])
    else:
        given = preset_fields(args.preset) if args.preset else {}
    given.update(TrainConfig.read_file(args.base_config) if args.base_config else {})
    base = TrainConfig.from_flat({**given, **parse_set(args.set), "store": args.store})
    results = run_sweep(SweepConfig(**args.sweep_fields, base=base))
    failed = [r for r in results if r["what"].startswith("failed")]
    print(
        f"sweep {args.name}: {len(results) - len(failed)} of {len(results)} runs ready; "
        f"report: dema-lab report --store {args.store} --sweep {args.name}"
    )
    return 1 if failed else 0


def _report(args) -> int:
    from dema_lab.study.render import to_markdown
    from dema_lab.study.report import build_report, sweep_names

    if args.sweep is not None and args.sweep not in (names := sweep_names(args.store)):
        raise ValueError(
            f"store {args.store} has no finished run of sweep {args.sweep!r}; sweeps with finished runs: "
            f"{', '.join(names) or 'none yet'} (leave out --sweep to report every finished run)"
        )
    text = to_markdown(build_report(args.store, args.sweep, latency=not args.no_latency))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"report written to {args.out}")
    else:
        print(text)
    return 0


def _ablate(args) -> int:
    """`dema-lab ablate`: one ablation of a run's checkpoint, published in the run, printed next to
    the unablated score (evaluated too when the run has none with this checkpoint, seed and episodes)."""
    from dema_lab.evaluation.ablation import ablation_table, episodes_published, evaluate_ablations
    from dema_lab.store.zarr_store import RunStore

    run = RunStore(args.store, mode="r").run(args.run)  # a missing store or run: no write
    run = RunStore(args.store, mode="a").run(args.run)
    source = RunStore(args.store, mode="r").run(args.swap_from) if args.swap_from else None
    if source is not None and args.method != "swap":
        raise ValueError(f"--swap-from goes with --method swap, not {args.method}")
    if args.method in ("none", "no_timestep") and str(args.layers).lower() != "all":
        raise ValueError(f"--method {args.method} acts on the whole model; leave out --layers (or use all)")
    ds = evaluate_ablations(
        run,
        [args.method],
        args.layers,
        checkpoint=args.checkpoint,
        episodes=args.episodes,
        max_steps=args.max_steps,
        seed=args.seed,
        swap_from=source,
    )
    step = int(ds.checkpoint.values[0])
    table = ablation_table(run)
    if episodes_published(table, step, args.seed, "none") < args.episodes:
        evaluate_ablations(
            run, ["none"], checkpoint=step, episodes=args.episodes, max_steps=args.max_steps, seed=args.seed
        )
        table = ablation_table(run)
    layers = str(ds.layers.values[0])
    scores = table["normalized_score"].sel(checkpoint=step, seed=args.seed).isel(episode=slice(0, args.episodes))
    print(
        f"run {run.run_id}, checkpoint {step}, seed {args.seed}, {args.episodes} episode(s) per target "
        f"({', '.join(f'{t:g}' for t in ds.target.values)}), Transformer-like; D4RL normalized score, mean ± std:"
    )
    base_mean = float(scores.sel(ablation="none", layers="all").mean())
    for label, method, lay in (
        ("unablated", "none", "all"),
        (f"{args.method}, {'all layers' if layers == 'all' else 'layer ' + layers}", args.method, layers),
    ):
        s = scores.sel(ablation=method, layers=lay).values
        s = s[s == s]
        drop = "" if method == "none" else f"   drop {s.mean() - base_mean:+.1f}"
        family = str(table.family.sel(ablation=method).item())
        print(f"  {label:<28} {s.mean():6.1f} ± {s.std(ddof=1 if len(s) > 1 else 0):5.1f}{drop}   [{family}]")
    if args.method == "swap":
        print(f"  (mixer parameters from run {args.swap_from})")
    print(
        f"published in run {run.run_id} (ablation group); all of them: dema-lab report, or "
        f"dema_lab.evaluation.ablation.ablation_table(run)"
    )
    return 0


def register(subparsers) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="the paper's study: a grid of runs (K, layout, timestep "
        "embedding, DeMa/DT, seeds), resumable, in parallel processes",
        add_help=False,  # its flags and help are SweepFlags', by tyro (_sweep_args)
    )
    sweep.set_defaults(func=_sweep, parse_flags=_sweep_args)
    report = subparsers.add_parser(
        "report", help="the sweep's tables and which of the paper's findings hold", parents=[store_options()]
    )
    report.add_argument("--sweep", help="only the runs of this sweep (default: every finished run)")
    report.add_argument("--out", help="write Markdown here instead of printing it")
    report.add_argument("--no-latency", action="store_true", help="skip the per-step latency measurement")
    report.set_defaults(func=_report)
    from dema_lab.evaluation.ablation import METHODS

    ablate = subparsers.add_parser(
        "ablate",
        parents=[store_options()],
        help="evaluate a run with its hidden attention ablated (the paper's or dema-lab's method)",
        description="Evaluate a run's checkpoint with one ablation and publish the scores in the run. The paper's "
        "method (merge_exp.py) edits the mixer parameters except in_proj/out_proj: mixer-zeros, "
        "mixer-random (U[0,1), seeded), swap (from --swap-from RUN_ID, same mixer shapes); "
        "dema-lab's replaces the hidden attention inside the scan: alpha-zeros, alpha-random; "
        "no_timestep drops the timestep embedding.",
    )
    ablate.add_argument("run", help="run id")
    ablate.add_argument("--method", required=True, metavar="METHOD", help=f"one of: {', '.join(METHODS)}")
    ablate.add_argument(
        "--layers", default="all", metavar="all|N", help="all layers at once, or layer N (default: all)"
    )
    ablate.add_argument(
        "--swap-from",
        metavar="RUN_ID",
        help="with --method swap: the run whose mixer parameters (last checkpoint) replace this run's",
    )
    ablate.add_argument("--checkpoint", type=int, metavar="STEP", help="checkpoint step (default: the last)")
    ablate.add_argument("--episodes", type=int, default=5, help="episodes per target (default: %(default)s)")
    ablate.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights and of the episodes (default: %(default)s)"
    )
    ablate.add_argument(
        "--max-steps", type=int, default=1000, help="env steps per episode at most (default: %(default)s)"
    )
    ablate.set_defaults(func=_ablate)
