"""`dema-lab export`: replay a run into TensorBoard or an offline W&B run."""

from __future__ import annotations

from dema_lab.integrations.trackers import TRACKERS, export_run, other_event_files
from dema_lab.store.zarr_store import RunStore


def _export(args) -> int:
    if len(args.to) > 2:
        raise ValueError(f"--to takes a tracker and an optional folder, got {' '.join(args.to)}")
    tracker, folder = args.to[0], (args.to[1] if len(args.to) > 1 else None)
    if tracker not in TRACKERS:
        raise ValueError(f"--to {tracker}: choose one of {', '.join(TRACKERS)}")
    run = RunStore(args.store, mode="r").run(args.run)
    out = export_run(run, tracker, folder, project=args.project)
    if tracker == "tensorboard":
        print(
            f"run {args.run} written to {out} (replacing an earlier export there); view it: "
            f"tensorboard --logdir {out.parent} --host 127.0.0.1"
        )
        others = other_event_files(out)
        if others:
            print(
                f"note: {out} also holds {len(others)} event file(s) that this export did not write (live "
                f"logging during training, or an export by an older dema-lab), and TensorBoard shows "
                f"their scalars too: remove them ({others[0].name}{', ...' if len(others) > 1 else ''}) "
                f"to see this export alone"
            )
    else:
        print(f"run {args.run} written to the offline W&B run {out}; upload it (optional): wandb sync {out}")
    return 0


def register(subparsers) -> None:
    from dema_lab.cli.flags import store_options

    p = subparsers.add_parser(
        "export",
        parents=[store_options()],
        help="replay a run into TensorBoard or an offline W&B run",
        description="Replay a run's training metrics, evaluations (last and best), decay "
        "statistics and recorded episodes into a tracker.",
    )
    p.add_argument("run", help="run id")
    p.add_argument(
        "--to",
        nargs="+",
        required=True,
        metavar="TRACKER [DIR]",
        help="tensorboard DIR (default runs/) or wandb [DIR] (offline; default ./wandb)",
    )
    p.add_argument("--project", default="dema-lab", help="W&B project name (default: %(default)s)")
    p.set_defaults(func=_export)
