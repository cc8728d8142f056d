"""`dema-lab runs`, `delete` and `video`: what a store holds, removing a run, a recorded episode as a video."""

from __future__ import annotations

import sys

from dema_lab.analysis.runs import SUMMARY_KEYS, runs_summary
from dema_lab.cli.flags import (
    store_options,
)


def _runs(args) -> int:
    from dema_lab.analysis.scoring import METHOD_TEXT, SCORE_TEXT
    from dema_lab.store.zarr_store import RunStore

    store = RunStore(args.store, mode="r")
    summary = runs_summary(store)
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
    cols = [k for k in SUMMARY_KEYS if k not in ("env", "timestep_embedding", "seed", "created")]
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
    deleting = [str(r) for r, st in zip(summary.run.values, status) if st == "deleting"]
    if deleting:
        print(
            f"deleting: a `dema-lab delete` of {len(deleting)} run(s) was interrupted; run it again to "
            f"finish: " + ", ".join(f"dema-lab delete {r} --store {args.store}" for r in deleting)
        )
    if stale:
        print(
            f"stale: marked running, but no live process writes them ({len(stale)}); "
            f"`dema-lab runs --stale --store {args.store}` says what to do with each"
        )
    for run_id, why in bad.items():
        print(f"unreadable run {run_id}: {why}; delete it with `dema-lab delete {run_id} --store {args.store}`")
    return 0


def _delete(args) -> int:
    from dema_lab.store.zarr_store import RunStore

    store = RunStore(args.store, mode="a")
    ids = store.run_ids()
    if args.run not in ids and args.run not in store.unreadable:
        store.run(args.run)  # StoreError: not in the store, with the close matches
    if args.run in store.unreadable:
        what = f"unreadable run {args.run} ({store.unreadable[args.run]})"
    elif (attrs := store.run(args.run).attrs).get("status") == "deleting":
        what = f"run {args.run} (partly deleted: an earlier delete was interrupted)"
    else:
        run = store.run(args.run)
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
    from dema_lab.evaluation.rollout import export_video
    from dema_lab.store.errors import StoreError
    from dema_lab.store.zarr_store import RunStore

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
