"""The options a dashboard server was started with: the store, the live page's checkpoint
directories and size limit, presentation mode (`--args ...` on `panel serve`, or `serve()`'s)."""

from __future__ import annotations

import os
import sys

import panel as pn


def app_options(argv: list[str] | None = None) -> dict:
    """Store path and presentation flag from `--args` of `panel serve`, the URL and the env; the
    live page's checkpoint directories (`--checkpoint-dir DIR`, repeatable) and file size limit
    (`--max-checkpoint-mb N`) from `--args` only, never from the URL."""
    argv = list(sys.argv[1:] if argv is None else argv)
    store = os.environ.get("DEMA_LAB_STORE", "store")
    presentation = False
    checkpoint_dirs, max_mb = [], None
    for i, a in enumerate(argv):
        if a == "--store" and i + 1 < len(argv):
            store = argv[i + 1]
        elif a.startswith("--store="):
            store = a.split("=", 1)[1]
        elif a == "--presentation":
            presentation = True
        elif a == "--checkpoint-dir" and i + 1 < len(argv):
            checkpoint_dirs.append(argv[i + 1])
        elif a.startswith("--checkpoint-dir="):
            checkpoint_dirs.append(a.split("=", 1)[1])
        elif a == "--max-checkpoint-mb" and i + 1 < len(argv):
            max_mb = argv[i + 1]
        elif a.startswith("--max-checkpoint-mb="):
            max_mb = a.split("=", 1)[1]
    live = {"checkpoint_dirs": checkpoint_dirs}
    if max_mb is not None:
        live["max_checkpoint_bytes"] = checkpoint_limit(max_mb)
    try:
        arg = pn.state.session_args.get("presentation") if pn.state.curdoc else None
        if arg:
            presentation = arg[0].decode().lower() not in ("0", "false", "no", "")
        s = pn.state.session_args.get("store") if pn.state.curdoc else None
        if s and allow_store_arg():
            store = s[0].decode()
    except Exception:  # noqa: BLE001 - not in a server session
        pass
    return {"store": store, "presentation": presentation, "live": live}


def checkpoint_limit(megabytes) -> int:
    """--max-checkpoint-mb as bytes; ValueError naming the flag for anything but a positive number."""
    try:
        mb = float(megabytes)
    except (TypeError, ValueError):
        mb = float("nan")
    if not mb > 0:
        raise ValueError(f"--max-checkpoint-mb must be a positive number of megabytes, not {megabytes!r}")
    return int(mb * 2**20)


def allow_store_arg() -> bool:
    return os.environ.get("DEMA_LAB_ALLOW_STORE_ARG") == "1"
