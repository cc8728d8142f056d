"""The trainer's and the store's commands: train, runs, demo, sweep, report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Annotated, Literal

import tyro

from .cli import STORAGE_OPTION_HELP, parse_flags, store_options, switch, typed_fields
from .store import DEFAULT_STORE
from .sweep import SweepConfig
from .train import PRESETS, TrainConfig

PresetName = Literal[tuple(sorted(PRESETS))]
StorageOptions = Annotated[
    list[str], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="KEY=VALUE", help=STORAGE_OPTION_HELP)
]


@dataclasses.dataclass
class TrainFlags(TrainConfig):
    """`dema-lab train`'s flags: one per TrainConfig field (its comment is the help), and these."""

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

    def __post_init__(self):
        """The values stay as typed here: config_from_args parses and checks them."""


@dataclasses.dataclass
class SweepFlags(SweepConfig):
    """`dema-lab sweep`'s flags: one per SweepConfig field (its comment is the help), and these."""

    base: tyro.conf.Suppress[TrainConfig] = dataclasses.field(default_factory=TrainConfig)
    store: str = DEFAULT_STORE  # the store every run of the sweep goes into
    #: every run starts from this preset (DT points with DT's own tokens); --base-config and --set
    #: override it
    preset: PresetName | None = None
    #: a JSON or TOML file of TrainConfig fields for everything the grid does not set
    base_config: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    #: TrainConfig fields of every run, e.g. steps=3000 d_model=64
    set: Annotated[list[str] | None, tyro.conf.arg(metavar="KEY=VALUE [KEY=VALUE ...]")] = None
    storage_option: StorageOptions = dataclasses.field(default_factory=list)

    def __post_init__(self):
        """The values stay as typed here: _sweep_args parses them, SweepConfig checks them."""


TRAIN_DESCRIPTION = (
    "Train a Decision Mamba or Decision Transformer; the run is logged into the store. Each "
    "TrainConfig field is a flag (--eval_episodes or --eval-episodes); what is typed overrides "
    "--config FILE, which overrides --preset (with --resume: the run's saved config)."
)
SWEEP_DESCRIPTION = (
    "The paper's study: a grid of runs (K, layout, timestep embedding, DeMa/DT, seeds), resumable, "
    "in parallel processes or on a Ray cluster. The grid's flags are SweepConfig's fields; --preset, "
    "--base-config and --set give every run's other TrainConfig fields."
)


def _train_args(ns, argv) -> argparse.Namespace:
    """The namespace of `dema-lab train ARGV`: cfg_<field> for each TrainConfig field (None where
    not typed, so that only what is typed overrides --config, --preset and --resume), and the options."""
    from .config import parse_value

    flags = parse_flags(
        TrainFlags,
        argv,
        ns.command_prog,
        TRAIN_DESCRIPTION,
        underscores=True,
        config=(tyro.conf.FlagConversionOff,),
    )
    typed = typed_fields(flags, TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        setattr(ns, f"cfg_{f.name}", typed.get(f.name))
    ns.preset = flags.preset
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
    as returns-to-go scaled by 1000, do not fit a game's scores)."""
    from .data import is_atari_spec
    from .store import DEFAULT_STORE
    from .train import preset_fields, resumed_config

    preset = getattr(args, "preset", None)
    resume = getattr(args, "resume", None)
    if preset and resume:
        raise ValueError("--preset starts a new run; --resume continues a run with its own saved config")
    from_file = TrainConfig.read_file(args.config) if args.config else {}
    typed = {
        f.name: getattr(args, f"cfg_{f.name}")
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f"cfg_{f.name}") is not None
    }
    fields = {**from_file, **typed}
    if not (preset or args.config or resume) and is_atari_spec(fields.get("dataset", "")):
        preset = "atari-small"
        print(
            f"dema-lab train: Atari data ({fields['dataset']}): starting from --preset atari-small "
            "(give --preset or --config to choose another)",
            file=sys.stderr,
        )
    given = {**(preset_fields(preset, fields.get("arch")) if preset else {}), **fields}
    if resume:
        store = given.pop("store", DEFAULT_STORE)
        return resumed_config(store, args.resume, given)
    return dataclasses.replace(TrainConfig(), **given)


def _train(args) -> int:
    from .train import train

    cfg = config_from_args(args)
    tracker = None
    if getattr(args, "log_to", None):
        from .export import live_tracker

        tracker = live_tracker(*args.log_to)
    run = train(
        cfg,
        resume=args.resume,
        progress=not args.quiet,
        tracker=tracker,
        from_step=getattr(args, "from_step", None),
    )
    print(f"run {run.run_id} finished; store: {run.store.path}")
    print(f"  open it:   python -c \"import dema_lab; print(dema_lab.open_run('{run.store.path}', '{run.run_id}'))\"")
    print(f"  dashboard: panel serve dashboards/attention.py --address 127.0.0.1 --args --store {run.store.path}")
    return 0


def _runs(args) -> int:
    from .scoring import METHOD_TEXT, SCORE_TEXT
    from .store import RunStore

    store = RunStore(args.store, mode="r")
    summary = store.summary()
    stale = set(store.stale_runs())
    if args.stale:
        if not stale:
            print(f"no stale runs in {args.store}: every run marked running has a live writer")
            return 0
        for run_id in sorted(stale):
            run = store.run(run_id)
            done = run.attrs.get("steps_done", 0)
            what = (
                f"resume it (dema-lab train --resume {run_id} --store {args.store}) or delete it"
                if run.published("resume")
                else "killed before its first checkpoint: delete it"
            )
            print(
                f"{run_id}  status running, no live writer, {done} steps done; {what} "
                f"(dema-lab delete {run_id} --store {args.store})"
            )
        return 0
    if not summary.sizes.get("run"):
        print(f"store {args.store} has no runs yet; create one with `dema-lab train`")
        return 0
    status = [str(v) for v in summary.status.values]
    bad = {str(r): st.split(": ", 1)[1] for r, st in zip(summary.run.values, status) if st.startswith("unreadable")}
    cols = [
        "arch",
        "dataset",
        "K",
        "layout",
        "status",
        "steps_done",
        "score_mode",
        "last_score",
        "best_score",
        "parameters",
    ]
    rows = [
        [str(r)]
        + [
            (
                "stale"
                if c == "status" and str(r) in stale
                else _fmt(summary[c].values[i], c in ("K", "steps_done", "parameters"))
            )
            for c in cols
        ]
        for i, r in enumerate(summary.run.values)
        if str(r) not in bad
    ]
    if rows:
        header = ["run"] + cols
        widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
        print(f"scores: normalized, in score_mode; {SCORE_TEXT}; {METHOD_TEXT['last']}; {METHOD_TEXT['best']}")
    if stale:
        print(
            f"stale: marked running, but no live process writes them ({len(stale)}); "
            f"`dema-lab runs --stale --store {args.store}` says what to do with each"
        )
    for run_id, why in bad.items():
        print(f"unreadable run {run_id}: {why}; delete it with `dema-lab delete {run_id} --store {args.store}`")
    return 0


def _delete(args) -> int:
    from .store import RunStore

    store = RunStore(args.store, mode="a")
    ids = store.run_ids()
    if args.run not in ids and args.run not in store.unreadable:
        store.run(args.run)  # StoreError: not in the store, with the close matches
    if args.run in store.unreadable:
        what = f"unreadable run {args.run} ({store.unreadable[args.run]})"
    else:
        run = store.run(args.run)
        attrs = run.attrs
        what = (
            f"run {args.run} ({attrs.get('status', '?')}, {attrs.get('steps_done', 0)} steps, "
            f"{len(run.checkpoints())} checkpoint(s))"
        )
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"dema-lab delete: not deleting {what} without confirmation: give --yes to delete without asking",
                file=sys.stderr,
            )
            return 2
        answer = input(f"delete {what} from {store.path}? This cannot be undone [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    store.delete_run(args.run)
    print(f"deleted {what} from {store.path}")
    return 0


def _fmt(v, integer: bool = False) -> str:
    if isinstance(v, float):
        return "-" if v != v else (f"{v:.1f}" if abs(v) < 1e5 and not integer else f"{v:.0f}")
    return str(v)


def _video(args) -> int:
    from .rollout import export_video
    from .store import RunStore, StoreError

    run = RunStore(args.store, mode="r").run(args.run)
    names = run.rollouts()
    if not names:
        raise StoreError(f"run {args.run} has no recorded episodes yet")
    name = args.episode or names[-1]
    if name not in names:
        raise StoreError(f"run {args.run} has no episode {name!r}; its episodes: {', '.join(names)}")
    out = export_video(run.open("rollout", name), args.out or f"{args.run}-{name}.mp4", fps=args.fps)
    print(f"episode {name} of run {args.run} written to {out}")
    return 0


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train DeMa or DT; the run is logged into the store",
        add_help=False,  # its flags and help are TrainFlags', by tyro (_train_args)
    )
    train.set_defaults(func=_train, parse_flags=_train_args)
    runs = subparsers.add_parser("runs", help="list the runs in a store", parents=[store_options()])
    runs.add_argument(
        "--stale",
        action="store_true",
        help="only the runs marked running that no live process writes (killed trainers), with what to do about each",
    )
    runs.set_defaults(func=_runs)
    delete = subparsers.add_parser(
        "delete", help="delete a run (readable or not) from the store, after asking", parents=[store_options()]
    )
    delete.add_argument("run", help="run id")
    delete.add_argument("--yes", action="store_true", help="delete without asking")
    delete.set_defaults(func=_delete)
    video = subparsers.add_parser(
        "video", help="export a recorded episode's frames to mp4 (or gif)", parents=[store_options()]
    )
    video.add_argument("run", help="run id")
    video.add_argument("episode", nargs="?", help="recorded episode (rollout) name (default: the newest)")
    video.add_argument("--out", help="output file, .mp4 or .gif (default: RUN-EPISODE.mp4)")
    video.add_argument("--fps", type=float, default=30.0, help="frames per second (default: %(default)s)")
    video.set_defaults(func=_video)


def _serve_options(args) -> dict:
    """serve()'s checks and live-page options from the flags; a ValueError says why they cannot be
    used (a port out of range or in use, a bad --checkpoint-dir or --max-checkpoint-mb)."""
    import os

    from .dashboard.app import check_port, checkpoint_limit

    check_port(args.address, args.port)
    dirs = args.checkpoint_dir or []
    for d in dirs:
        if not os.path.isdir(d):
            raise ValueError(
                f"--checkpoint-dir {d} is not a directory: give an existing directory of .safetensors checkpoints"
            )
    limit = None if args.max_checkpoint_mb is None else checkpoint_limit(args.max_checkpoint_mb)
    return {"checkpoint_dirs": dirs, "max_checkpoint_bytes": limit}


def _run_server(args, options: dict) -> int:
    from .dashboard import serve

    serve(args.store, port=args.port, address=args.address, presentation=args.presentation, **options)
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    options = None if args.no_serve else _serve_options(args)  # before minutes of training
    start = time.perf_counter()
    ids = run_demo(
        args.store,
        sweep=not args.no_sweep,
        on_progress=lambda message, fraction: print(f"[demo {fraction:4.0%}] {message}", flush=True),
    )
    print(f"demo runs ready in {time.perf_counter() - start:.0f} s: {', '.join(ids)} (store: {args.store})")
    if args.no_serve:
        print(f"  open them: panel serve dashboards/attention.py --address 127.0.0.1 --args --store {args.store}")
        return 0
    print(
        f"serving the dashboard: http://127.0.0.1:{args.port}/attention  (also /compare, /live, /study); "
        f"Ctrl-C stops it",
        flush=True,
    )
    return _run_server(args, options)


def _serve(args) -> int:
    from .store import check_store

    check_store(args.store)  # missing or empty is served: the page says how to create a run
    options = _serve_options(args)
    print(
        f"serving the dashboard: http://{args.address}:{args.port}/attention  (also /compare, /live, /study); "
        f"store {args.store}; Ctrl-C stops it",
        flush=True,
    )
    return _run_server(args, options)


def _add_live_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-dir",
        action="append",
        metavar="DIR",
        help="a directory the live page's file field may read checkpoints from, besides the "
        "store (repeatable; other paths are refused)",
    )
    parser.add_argument(
        "--max-checkpoint-mb", metavar="MB", help="the largest checkpoint file the live page reads (default: 1024)"
    )


def register_demo(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve the dashboards (attention explorer, comparison, live rollouts)",
        parents=[store_options()],
    )
    serve.add_argument("--port", type=int, default=5006)
    serve.add_argument("--address", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    serve.add_argument("--presentation", action="store_true", help="full-screen template with large fonts")
    _add_live_flags(serve)
    serve.set_defaults(func=_serve)
    demo = subparsers.add_parser(
        "demo",
        help="train the demo runs (default dataset, small DeMa, K sweep) and serve the dashboard",
        parents=[store_options()],
    )
    demo.add_argument("--no-sweep", action="store_true", help="only the main demo run, no K sweep")
    demo.add_argument("--no-serve", action="store_true", help="do not serve the dashboard afterwards")
    demo.add_argument("--port", type=int, default=5006)
    demo.add_argument("--presentation", action="store_true", help="full-screen template with large fonts")
    demo.set_defaults(func=_demo, address="127.0.0.1")
    _add_live_flags(demo)


def _parse_set(items) -> dict:
    """KEY=VALUE pairs for TrainConfig fields, parsed by their declared types (dema_lab.config)."""
    from .config import ConfigError, parse_fields

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        out[key] = text
    try:
        return parse_fields(TrainConfig, out, "training config ")
    except ConfigError as e:
        raise ConfigError(f"--set: {e}") from None


SWEEP_CHOICES = {"layouts": ("B3LD", "BL3D"), "archs": ("dema", "dt"), "eval_modes": ("transformer", "rnn")}


def _sweep_args(ns, argv) -> argparse.Namespace:
    """The namespace of `dema-lab sweep ARGV`: sweep_fields (SweepConfig's fields but base, from the
    flags and the defaults) and the options (store, preset, base_config, set, storage_option)."""
    from .config import ConfigError

    flags = parse_flags(SweepFlags, argv, ns.command_prog, SWEEP_DESCRIPTION, underscores=False)
    typed = typed_fields(flags, SweepConfig)
    fields = {f.name: typed.get(f.name, getattr(flags, f.name)) for f in dataclasses.fields(SweepConfig)}
    del fields["base"]
    for name, allowed in SWEEP_CHOICES.items():
        bad = [v for v in fields[name] if v not in allowed]
        if bad:
            raise ConfigError(f"{name}: invalid choice {bad[0]!r}; choose from {', '.join(allowed)}")
    ns.sweep_fields = fields
    ns.name = fields["name"]
    ns.store = str(flags.store)
    ns.preset = flags.preset
    ns.base_config = None if flags.base_config is None else str(flags.base_config)
    ns.set = None if flags.set is None else [str(v) for v in flags.set]
    ns.storage_option = [str(v) for v in flags.storage_option]
    return ns


def _sweep(args) -> int:
    from .sweep import run_sweep
    from .train import preset_fields

    given = preset_fields(args.preset) if args.preset else {}
    given.update(TrainConfig.read_file(args.base_config) if args.base_config else {})
    base = TrainConfig.from_dict({**given, **_parse_set(args.set), "store": args.store})
    results = run_sweep(SweepConfig(**args.sweep_fields, base=base))
    failed = [r for r in results if r["what"].startswith("failed")]
    print(
        f"sweep {args.name}: {len(results) - len(failed)} of {len(results)} runs ready; "
        f"report: dema-lab report --store {args.store} --sweep {args.name}"
    )
    return 1 if failed else 0


def _report(args) -> int:
    from .report import build_report

    text = build_report(args.store, args.sweep, latency=not args.no_latency).to_markdown()
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
    from .ablation import ablation_table, episodes_published, evaluate_ablations
    from .store import RunStore

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
        f"dema_lab.ablation.ablation_table(run)"
    )
    return 0


def register_study(subparsers) -> None:
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
    from .ablation import METHODS

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
