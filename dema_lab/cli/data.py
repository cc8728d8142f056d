"""``dema-lab data ...``: build, list and inspect datasets; retrain the behaviour policies.

    dema-lab data build ENV QUALITY [--out PATH] [--seed N] [--transitions N | --episodes N]
    dema-lab data list
    dema-lab data info SPEC
    dema-lab data train-policies ENV [--minutes M] [--seed N] [--out PATH]

``register(subparsers)`` adds the ``data`` command to the main CLI (dema_lab.cli.main), whose error
handler reports failures: one line, exit status 2, or 1 when the data could not be built or read.
"""

from __future__ import annotations

import argparse
import json
import time

__all__ = ["register"]


def _build(args) -> int:
    from dema_lab.data.generate.builder import build_dataset
    from dema_lab.data.registry import embedded_name, embedded_path, qualities_for
    from dema_lab.data.sources.d4rl import load_d4rl
    from dema_lab.envs.spec import env_spec

    spec = env_spec(args.env)
    allowed = qualities_for(spec.name)
    if not allowed:
        raise ValueError(
            f"no embedded datasets for {spec.name}; for it, read DQN-Replay files "
            f"(--dataset dqn-replay:/path/<Game>/1/replay_logs)"
        )
    if args.quality not in allowed:
        raise ValueError(f"unknown quality {args.quality!r}; choose one of {', '.join(allowed)}")
    out = args.out or embedded_path(embedded_name(spec.name, args.quality), args.seed, args.transitions)
    t0 = time.perf_counter()
    path = build_dataset(
        spec.name,
        args.quality,
        out,
        seed=args.seed,
        transitions=args.transitions,
        episodes=args.episodes,
        action_noise=args.noise,
        progress=not args.quiet,
    )
    ds = load_d4rl(path)
    a = ds.attrs
    print(
        f"wrote {path}\n  {len(ds)} episodes ({a['complete_episodes']} complete), {ds.num_transitions} transitions, "
        f"return {a['episode_return_mean']:.1f} ± {a['episode_return_std']:.1f} over complete episodes "
        f"(normalized {a['normalized_score_mean']:.1f}), {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _list(args) -> int:
    from dema_lab.data.registry import data_dir, list_datasets

    print(f"cache dir: {data_dir()}  (set DEMA_LAB_DATA to move it)")
    print(f"{'name':32s} {'state':10s} path")
    for row in list_datasets():
        if row["cached"]:
            state = "cached" if row["current"] in (True, None) else "stale"
        else:
            state = "-" if row["policy"] else "no policy"
        print(f"{row['name']:32s} {state:10s} {row['path'] if row['cached'] else ''}")
    return 0


def _info(args) -> int:
    from dema_lab.data.registry import load_dataset

    ds = load_dataset(args.spec, env=args.env)
    s = ds.summary()
    s["attrs"] = {k: v for k, v in ds.attrs.items()}
    print(json.dumps(s, indent=2, default=str))
    return 0


def _train(args) -> int:
    from dataclasses import replace

    from dema_lab.data.generate.ars import DEFAULT_CONFIGS, ARSConfig, train_ars
    from dema_lab.envs.spec import env_spec

    spec = env_spec(args.env)
    cfg = DEFAULT_CONFIGS.get(spec.name, ARSConfig())
    over = {
        "n_directions": args.directions,
        "top_directions": args.top,
        "step_size": args.step_size,
        "noise": args.ars_noise,
    }
    cfg = replace(cfg, **{k: v for k, v in over.items() if v is not None})
    train_ars(
        spec.name,
        args.minutes,
        args.seed,
        cfg,
        args.out,
        args.target_return,
        log=lambda m: print(m, flush=True),
        max_iterations=args.max_iterations,
    )
    return 0


def _exit_status(error: BaseException) -> int:
    """1 when the data could not be built or read, 2 for anything else (a bad env or quality, a
    spec that names no dataset)."""
    from dema_lab.data.registry import UnknownDatasetError
    from dema_lab.data.trajectory import DatasetError

    if isinstance(error, UnknownDatasetError):
        return 2
    return 1 if isinstance(error, (DatasetError, ImportError, FileNotFoundError)) else 2


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` and its subcommands to an argparse subparsers object."""
    data = subparsers.add_parser("data", help="offline datasets: build, list, info, train-policies")
    data.set_defaults(exit_status=_exit_status)
    sub = data.add_subparsers(dest="data_command", metavar="{build,list,info,train-policies}")
    sub.required = True

    b = sub.add_parser("build", help="build an embedded dataset in D4RL's HDF5 layout")
    b.add_argument(
        "env",
        help="hopper, halfcheetah, walker2d (their -pomdp tasks: hopper-pomdp ...), breakout, pong, "
        "minigrid-memory-s7/-s11/-s13/-s17/-s31, popgym-repeatprevious-easy/-medium (or a Gymnasium id)",
    )
    b.add_argument(
        "quality",
        help="random, medium, expert, medium-replay, medium-expert (Atari: random, medium, expert, mixed; "
        "MiniGrid and POPGym: mixed)",
    )
    b.add_argument("--out", default=None, help="output .hdf5 (default: the dataset cache)")
    b.add_argument("--seed", type=int, default=0)
    size = b.add_mutually_exclusive_group()
    size.add_argument(
        "--transitions", type=int, default=None, help="total steps (default 100000; Atari 50000; memory tasks 20000)"
    )
    size.add_argument("--episodes", type=int, default=None, help="whole episodes instead of a step budget")
    b.add_argument("--noise", type=float, default=None, help="Gaussian action-noise std for medium/expert")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    ls = sub.add_parser("list", help="embedded datasets and what is cached")
    ls.set_defaults(func=_list)

    i = sub.add_parser("info", help="summary of a dataset (name, .hdf5 path or minari:<id>)")
    i.add_argument("spec")
    i.add_argument("--env", default=None, help="check dims against this env")
    i.set_defaults(func=_info)

    t = sub.add_parser("train-policies", help="retrain the ARS behaviour policies (one-off)")
    t.add_argument("env")
    t.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="output .npz (default: the package's shipped file)")
    t.add_argument("--target-return", type=float, default=None, help="stop once evaluation reaches it")
    t.add_argument("--max-iterations", type=int, default=None, help="stop after this many ARS iterations")
    t.add_argument("--directions", type=int, default=None, help="ARS N")
    t.add_argument("--top", type=int, default=None, help="ARS b")
    t.add_argument("--step-size", type=float, default=None, help="ARS alpha")
    t.add_argument("--ars-noise", type=float, default=None, help="ARS nu")
    t.set_defaults(func=_train)
    return data
