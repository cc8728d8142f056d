"""`dema-lab serve` and `dema-lab demo`: the dashboards on 127.0.0.1, and the demo runs before them."""

from __future__ import annotations

import argparse
import time

from dema_lab.cli.flags import (
    store_options,
)


def _serve_options(args) -> dict:
    """serve()'s checks and live-page options from the flags; a ValueError says why they cannot be
    used (a port out of range or in use, a bad --checkpoint-dir or --max-checkpoint-mb)."""
    import os

    from dema_lab.dashboard.common.options import checkpoint_limit, session_limits
    from dema_lab.dashboard.server import check_port

    check_port(args.address, args.port)
    session_limits()  # $DEMA_LAB_MAX_SESSIONS / $DEMA_LAB_UNUSED_SESSION_S, checked before anything starts
    dirs = args.checkpoint_dir or []
    for d in dirs:
        if not os.path.isdir(d):
            raise ValueError(
                f"--checkpoint-dir {d} is not a directory: give an existing directory of .safetensors checkpoints"
            )
    limit = None if args.max_checkpoint_mb is None else checkpoint_limit(args.max_checkpoint_mb)
    return {"checkpoint_dirs": dirs, "max_checkpoint_bytes": limit}


def _run_server(args, options: dict) -> int:
    from dema_lab.dashboard import serve

    serve(args.store, port=args.port, address=args.address, presentation=args.presentation, **options)
    return 0


def _demo(args) -> int:
    from dema_lab.study.demo import run_demo

    options = None if args.no_serve else _serve_options(args)  # before minutes of training
    start = time.perf_counter()
    ids = run_demo(
        args.store,
        sweep=not args.no_sweep,
        workers=args.workers,
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
    from dema_lab.store.zarr_store import check_store

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


def register(subparsers) -> None:
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
    demo.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="train the demo runs in N processes at once (default: 2 with two cores or more, else 1)",
    )
    demo.add_argument("--port", type=int, default=5006)
    demo.add_argument("--presentation", action="store_true", help="full-screen template with large fonts")
    demo.set_defaults(func=_demo, address="127.0.0.1")
    _add_live_flags(demo)
