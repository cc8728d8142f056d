"""The trainer's and the store's commands: train, runs, demo, sweep, report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing

from .train import TrainConfig


def _flag_type(hint, name: str):
    """An argparse `type` that parses a flag's text as dema_lab.config does a file's value."""
    from .config import ConfigError, parse_value

    def parse(text):
        try:
            return parse_value(hint, text, name)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None

    parse.__name__ = name
    return parse


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, parsed by its declared type (dema_lab.config); defaults
    stay None so that only what the user typed overrides the config file."""
    from .config import field_types

    for f in dataclasses.fields(TrainConfig):
        hint = field_types(TrainConfig)[f.name]
        kw: dict = {
            "default": None,
            "help": f"(default: {f.default if f.default is not dataclasses.MISSING else None})",
        }
        if typing.get_origin(hint) is list or any(typing.get_origin(a) is list for a in typing.get_args(hint)):
            item = next(typing.get_args(a)[0] for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is list)
            kw.update(type=_flag_type(item, f.name), nargs="+")
        else:
            kw.update(type=_flag_type(hint, f.name))
            if hint in (bool, bool | None):
                kw.update(metavar="BOOL")
        parser.add_argument(f"--{f.name}", dest=f"cfg_{f.name}", **kw)


def config_from_args(args) -> TrainConfig:
    """TrainConfig defaults < the --preset < the --config file < the flags typed. With --resume, the
    run's saved config takes the defaults' place: only what is given explicitly changes."""
    from .store import DEFAULT_STORE
    from .train import PRESETS, resumed_config

    preset = getattr(args, "preset", None)
    if preset and getattr(args, "resume", None):
        raise ValueError("--preset starts a new run; --resume continues a run with its own saved config")
    given = dict(PRESETS[preset]) if preset else {}
    given.update(TrainConfig.read_file(args.config) if args.config else {})
    given.update(
        {
            f.name: getattr(args, f"cfg_{f.name}")
            for f in dataclasses.fields(TrainConfig)
            if getattr(args, f"cfg_{f.name}") is not None
        }
    )
    if getattr(args, "resume", None):
        store = given.pop("store", DEFAULT_STORE)
        return resumed_config(store, args.resume, given)
    return dataclasses.replace(TrainConfig(), **given)


def _train(args) -> int:
    from .models import CheckpointError
    from .store import StoreError
    from .train import train

    try:
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
    except (ValueError, FileNotFoundError, StoreError, CheckpointError, RuntimeError, FloatingPointError) as e:
        print(f"dema-lab train: {e}", file=sys.stderr)
        return 2
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

    try:
        run = RunStore(args.store, mode="r").run(args.run)
        names = run.rollouts()
        if not names:
            raise StoreError(f"run {args.run} has no recorded episodes yet")
        name = args.episode or names[-1]
        if name not in names:
            raise StoreError(f"run {args.run} has no episode {name!r}; its episodes: {', '.join(names)}")
        out = export_video(run.open("rollout", name), args.out or f"{args.run}-{name}.mp4", fps=args.fps)
    except (ValueError, StoreError, OSError) as e:
        print(f"dema-lab video: {e}", file=sys.stderr)
        return 2
    print(f"episode {name} of run {args.run} written to {out}")
    return 0


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train DeMa or DT; the run is logged into the store",
        description="Train a Decision Mamba or Decision Transformer. Every flag "
        "overrides the matching TrainConfig field (and --config FILE).",
    )
    from .train import PRESETS

    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a named preset: 'official' is the official DeMa's MuJoCo model and "
        "training (AndssY/dema); --config and flags override it",
    )
    train.add_argument("--config", help="a JSON or TOML file of TrainConfig fields")
    train.add_argument("--resume", metavar="RUN_ID", help="continue a killed run from its last checkpoint")
    train.add_argument(
        "--from-step",
        type=int,
        metavar="STEP",
        dest="from_step",
        help="with --resume: continue from the saved state of this step instead of the newest "
        "(the newest keep_resume_states are kept); what came after it is trained again",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--log-to",
        nargs=2,
        metavar=("TRACKER", "DIR"),
        help="also log live to a tracker: tensorboard DIR (event files in DIR/RUN_ID)",
    )
    _add_config_flags(train)
    train.set_defaults(func=_train)
    runs = subparsers.add_parser("runs", help="list the runs in a store")
    runs.add_argument("--store", default=TrainConfig().store, help="store path or URL (default: %(default)s)")
    runs.add_argument(
        "--stale",
        action="store_true",
        help="only the runs marked running that no live process writes (killed trainers), with what to do about each",
    )
    runs.set_defaults(func=_runs)
    delete = subparsers.add_parser("delete", help="delete a run (readable or not) from the store, after asking")
    delete.add_argument("run", help="run id")
    delete.add_argument("--store", default=TrainConfig().store, help="store path or URL (default: %(default)s)")
    delete.add_argument("--yes", action="store_true", help="delete without asking")
    delete.set_defaults(func=_delete)
    video = subparsers.add_parser("video", help="export a recorded episode's frames to mp4 (or gif)")
    video.add_argument("run", help="run id")
    video.add_argument("episode", nargs="?", help="recorded episode (rollout) name (default: the newest)")
    video.add_argument("--store", default=TrainConfig().store, help="store path or URL (default: %(default)s)")
    video.add_argument("--out", help="output file, .mp4 or .gif (default: RUN-EPISODE.mp4)")
    video.add_argument("--fps", type=float, default=30.0, help="frames per second (default: %(default)s)")
    video.set_defaults(func=_video)


def _serve_options(args, command: str) -> dict | None:
    """serve()'s checks and live-page options from the flags: None after printing why they cannot be
    used (a port out of range or in use, a bad --checkpoint-dir or --max-checkpoint-mb)."""
    import os

    from .dashboard.app import check_port, checkpoint_limit

    try:
        check_port(args.address, args.port)
        dirs = args.checkpoint_dir or []
        for d in dirs:
            if not os.path.isdir(d):
                raise ValueError(
                    f"--checkpoint-dir {d} is not a directory: give an existing directory of .safetensors checkpoints"
                )
        limit = None if args.max_checkpoint_mb is None else checkpoint_limit(args.max_checkpoint_mb)
    except ValueError as e:
        print(f"dema-lab {command}: {e}", file=sys.stderr)
        return None
    return {"checkpoint_dirs": dirs, "max_checkpoint_bytes": limit}


def _run_server(args, command: str, options: dict) -> int:
    from .dashboard import serve

    try:
        serve(args.store, port=args.port, address=args.address, presentation=args.presentation, **options)
    except ValueError as e:  # the port was taken since it was checked
        print(f"dema-lab {command}: {e}", file=sys.stderr)
        return 2
    return 0


def _demo(args) -> int:
    from .demo import run_demo
    from .store import StoreError

    options = None if args.no_serve else _serve_options(args, "demo")  # before minutes of training
    if options is None and not args.no_serve:
        return 2
    start = time.perf_counter()
    try:
        ids = run_demo(
            args.store,
            sweep=not args.no_sweep,
            on_progress=lambda message, fraction: print(f"[demo {fraction:4.0%}] {message}", flush=True),
        )
    except (ValueError, StoreError, RuntimeError) as e:
        print(f"dema-lab demo: {e}", file=sys.stderr)
        return 2
    print(f"demo runs ready in {time.perf_counter() - start:.0f} s: {', '.join(ids)} (store: {args.store})")
    if args.no_serve:
        print(f"  open them: panel serve dashboards/attention.py --address 127.0.0.1 --args --store {args.store}")
        return 0
    print(
        f"serving the dashboard: http://127.0.0.1:{args.port}/attention  (also /compare, /live, /study); "
        f"Ctrl-C stops it",
        flush=True,
    )
    return _run_server(args, "demo", options)


def _serve(args) -> int:
    from .store import StoreError, check_store

    try:
        check_store(args.store)  # missing or empty is served: the page says how to create a run
    except StoreError as e:
        print(f"dema-lab serve: {e}", file=sys.stderr)
        return 2
    options = _serve_options(args, "serve")
    if options is None:
        return 2
    print(
        f"serving the dashboard: http://{args.address}:{args.port}/attention  (also /compare, /live, /study); "
        f"store {args.store}; Ctrl-C stops it",
        flush=True,
    )
    return _run_server(args, "serve", options)


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
    serve = subparsers.add_parser("serve", help="serve the dashboards (attention explorer, comparison, live rollouts)")
    serve.add_argument("--store", default=TrainConfig().store, help="store path (default: %(default)s)")
    serve.add_argument("--port", type=int, default=5006)
    serve.add_argument("--address", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    serve.add_argument("--presentation", action="store_true", help="full-screen template with large fonts")
    _add_live_flags(serve)
    serve.set_defaults(func=_serve)
    demo = subparsers.add_parser(
        "demo", help="train the demo runs (default dataset, small DeMa, K sweep) and serve the dashboard"
    )
    demo.add_argument("--store", default=TrainConfig().store, help="store path (default: %(default)s)")
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


def _sweep_switches(texts) -> list[bool]:
    """--timestep-embedding off on: each value parsed as a bool."""
    from .config import parse_value

    return parse_value(list[bool], list(texts), "--timestep-embedding")


def _sweep(args) -> int:
    from .models import CheckpointError
    from .store import StoreError
    from .sweep import SweepConfig, run_sweep

    try:
        base = TrainConfig.from_file(args.base_config) if args.base_config else TrainConfig()
        base = dataclasses.replace(base, store=args.store, **_parse_set(args.set))
        sweep = SweepConfig(
            name=args.name,
            datasets=args.datasets,
            K=args.K,
            layouts=args.layouts,
            timestep_embedding=_sweep_switches(args.timestep_embedding),
            archs=args.archs,
            seeds=args.seeds,
            eval_modes=args.eval_modes,
            ablations=not args.no_ablations,
            ablation_episodes=args.ablation_episodes,
            ablation_layers=args.ablation_layers,
            workers=args.workers,
            executor=args.executor,
            address=args.address or "",
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            max_retries=args.max_retries,
            base=base,
        )
        results = run_sweep(sweep)
    except (ValueError, FileNotFoundError, StoreError, CheckpointError, ImportError) as e:
        print(f"dema-lab sweep: {e}", file=sys.stderr)
        return 2
    failed = [r for r in results if r["what"].startswith("failed")]
    print(
        f"sweep {args.name}: {len(results) - len(failed)} of {len(results)} runs ready; "
        f"report: dema-lab report --store {args.store} --sweep {args.name}"
    )
    return 1 if failed else 0


def _report(args) -> int:
    from .report import build_report
    from .store import StoreError

    try:
        text = build_report(args.store, args.sweep, latency=not args.no_latency).to_markdown()
    except StoreError as e:
        print(f"dema-lab report: {e}", file=sys.stderr)
        return 2
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
    from .models import CheckpointError
    from .store import RunStore, StoreError

    try:
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
    except (ValueError, StoreError, CheckpointError) as e:
        print(f"dema-lab ablate: {e}", file=sys.stderr)
        return 2
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
    )
    sweep.add_argument("--name", default="sweep", help="sweep name, the prefix of its run ids (default: %(default)s)")
    sweep.add_argument("--store", default=TrainConfig().store)
    sweep.add_argument("--datasets", nargs="+", default=["hopper-medium"], metavar="DATASET")
    sweep.add_argument("--K", nargs="+", type=int, default=[5, 10, 20, 40])
    sweep.add_argument("--layouts", nargs="+", default=["B3LD"], choices=["B3LD", "BL3D"])
    sweep.add_argument(
        "--timestep-embedding",
        nargs="+",
        default=["off"],
        metavar="off|on",
        help="DeMa with and/or without a timestep embedding (DT always has its own)",
    )
    sweep.add_argument("--archs", nargs="+", default=["dema"], choices=["dema", "dt"])
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0])
    sweep.add_argument("--eval-modes", nargs="+", default=["transformer", "rnn"], choices=["transformer", "rnn"])
    sweep.add_argument(
        "--no-ablations", action="store_true", help="skip the ablations (hidden attention, timestep embedding)"
    )
    sweep.add_argument("--ablation-episodes", type=int, default=5)
    sweep.add_argument(
        "--ablation-layers",
        nargs="+",
        default=["all"],
        metavar="all|each|N",
        help="hidden-attention ablations of all layers at once (all), of every layer on its own "
        "(each), or of layer N (default: all)",
    )
    sweep.add_argument("--workers", type=int, default=0, help="parallel runs (default: one per core)")
    sweep.add_argument(
        "--executor",
        default="local",
        choices=["local", "ray"],
        help="local processes (default) or a Ray cluster (the cluster extra)",
    )
    sweep.add_argument(
        "--address", help="with --executor ray: the cluster's HOST:PORT (default: RAY_ADDRESS, else a local Ray)"
    )
    sweep.add_argument("--num-cpus", type=float, default=1.0, help="with ray: CPUs per run (default: %(default)s)")
    sweep.add_argument(
        "--num-gpus",
        type=float,
        default=0.0,
        help="with ray: GPUs per run, fractional to share one, e.g. 0.25 (default: %(default)s)",
    )
    sweep.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="with ray: reruns of a run whose worker died, each resuming from the store (default: 3)",
    )
    sweep.add_argument("--base-config", help="JSON/TOML TrainConfig for everything the grid does not set")
    sweep.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="TrainConfig fields, e.g. steps=3000 d_model=64")
    sweep.set_defaults(func=_sweep)
    report = subparsers.add_parser("report", help="the sweep's tables and which of the paper's findings hold")
    report.add_argument("--store", default=TrainConfig().store)
    report.add_argument("--sweep", help="only the runs of this sweep (default: every finished run)")
    report.add_argument("--out", help="write Markdown here instead of printing it")
    report.add_argument("--no-latency", action="store_true", help="skip the per-step latency measurement")
    report.set_defaults(func=_report)
    from .ablation import METHODS

    ablate = subparsers.add_parser(
        "ablate",
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
    ablate.add_argument("--store", default=TrainConfig().store, help="store path (default: %(default)s)")
    ablate.set_defaults(func=_ablate)
