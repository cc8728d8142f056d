"""The options a dashboard server was started with: the store, the live page's checkpoint
directories and size limit, presentation mode (`--args ...` on `panel serve`, or `serve()`'s), and
the bounds on its sessions (how many per page, how long an unused one lives)."""

from __future__ import annotations

import os
import sys

import panel as pn

from dema_lab.common.values import ConfigError, parse_value


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


# ---------------------------------------------------------------------- session bounds
MAX_SESSIONS = 8  # open sessions per page: a few tabs each for a person or two, on 2 CPU cores
UNUSED_SESSION_S = 5.0  # how long a session no browser has connected to is kept


def session_limits(max_sessions=None, unused_session_s=None) -> tuple[int, float]:
    """The session bounds a server runs with: at most `max_sessions` open sessions per page (a
    request beyond it is told the server is busy), and a session no browser is connected to
    (a page fetched by something that never ran its script, or a closed tab) destroyed after
    `unused_session_s` seconds. None takes $DEMA_LAB_MAX_SESSIONS / $DEMA_LAB_UNUSED_SESSION_S,
    else MAX_SESSIONS / UNUSED_SESSION_S. ValueError naming the setting for anything else than a
    positive whole number of sessions and a positive number of seconds."""
    if max_sessions is None:
        max_sessions = os.environ.get("DEMA_LAB_MAX_SESSIONS") or MAX_SESSIONS
        max_name = "DEMA_LAB_MAX_SESSIONS"
    else:
        max_name = "max_sessions"
    if unused_session_s is None:
        unused_session_s = os.environ.get("DEMA_LAB_UNUSED_SESSION_S") or UNUSED_SESSION_S
        unused_name = "DEMA_LAB_UNUSED_SESSION_S"
    else:
        unused_name = "unused_session_s"
    try:
        n = parse_value(int, max_sessions, max_name)
        if n < 1:
            raise ConfigError(f"{max_name} must be at least 1, not {n}")
        s = parse_value(float, unused_session_s, unused_name)
        if not 0 < s < float("inf"):
            raise ConfigError(f"{unused_name} must be a positive number of seconds, not {s:g}")
    except ConfigError as e:
        raise ConfigError(f"{e} (the dashboard's session bounds)") from None
    return n, s
