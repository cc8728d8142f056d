"""The open sessions of a dashboard server, bounded per page, and what a closed one gives back.

A page fetched over HTTP becomes a Bokeh session on the server, whether or not a browser ever
runs its script, and any web page can make a browser fetch ours. So each page builder calls
`admit(page)` first: beyond `limit()` open sessions of that page it shows `busy_text()` instead
of building anything (`dema-lab serve` answers such a request before a session is made, with HTTP
503: dashboard.server). An admitted session is counted until Bokeh destroys it; then the memory it
held is collected and handed back to the operating system.
"""

from __future__ import annotations

import contextlib
import gc
import html
import threading
import time

_lock = threading.Lock()
_open: dict[str, dict[str, float]] = {}  # page -> {session id: when admitted}
_building: dict[str, int] = {}  # page -> requests let through over HTTP whose session is being made
_limit: int | None = None  # serve()'s; None: options.session_limits()'s
RETRY_S = 5  # what the busy page asks the browser to wait before it retries
RECLAIM_AFTER_S = 2.0  # sessions are destroyed in batches: collect once after the last of one
_reclaim = {"due": None}


def configure(max_sessions: int | None) -> None:
    """Set the limit of open sessions per page for this process (serve()); None: the default."""
    global _limit
    _limit = max_sessions


def limit() -> int:
    from dema_lab.dashboard.common.options import session_limits

    return _limit if _limit is not None else session_limits()[0]


def count(page: str) -> int:
    """Open sessions of `page`, with those being made."""
    with _lock:
        return len(_open.get(page, ())) + _building.get(page, 0)


def full(page: str) -> bool:
    return count(page) >= limit()


@contextlib.contextmanager
def building(page: str):
    """Count a request's session as open while it is being made (before the builder admits it):
    requests that arrive together cannot all pass a check that none of them has been counted in."""
    with _lock:
        _building[page] = _building.get(page, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _building[page] -= 1


def admit(page: str) -> bool:
    """Whether the current session may build `page`: True (and the session counted until it is
    destroyed) when fewer than limit() sessions of it are open, and outside a server (a notebook,
    a test); False when the page should show busy_text() instead."""
    import panel as pn

    doc = pn.state.curdoc
    context = getattr(doc, "session_context", None)
    if context is None:
        return True
    sid = context.id
    with _lock:
        sessions = _open.setdefault(page, {})
        if sid not in sessions and len(sessions) >= limit():
            return False
        sessions[sid] = time.monotonic()

    def closed(session_context):  # Bokeh passes it by this name
        with _lock:
            _open.get(page, {}).pop(session_context.id, None)
        reclaim_soon()

    doc.on_session_destroyed(closed)
    return True


def busy_text(page: str) -> str:
    return (
        f"The dashboard is busy: {limit()} sessions of /{page} are open. Retry in a few seconds, "
        f"or close other tabs of this page (the limit is $DEMA_LAB_MAX_SESSIONS)."
    )


def busy_html(page: str) -> str:
    """The page a request beyond the limit gets (it reloads itself after RETRY_S seconds)."""
    text = html.escape(busy_text(page))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{RETRY_S}'><title>dema-lab is busy</title></head>"
        f"<body style='font-family: sans-serif; margin: 3em'><h2>dema-lab is busy</h2><p>{text}</p></body></html>"
    )


def reclaim_soon() -> None:
    """Collect the garbage of destroyed sessions and return the freed heap to the operating system,
    once, RECLAIM_AFTER_S seconds after the last session of a batch was destroyed (a session's
    documents, plots and arrays form reference cycles, and glibc keeps freed memory otherwise)."""
    from tornado.ioloop import IOLoop

    first = _reclaim["due"] is None
    _reclaim["due"] = time.monotonic() + RECLAIM_AFTER_S
    if not first:
        return
    loop = IOLoop.current()

    def run():
        wait = _reclaim["due"] - time.monotonic()
        if wait > 0:
            loop.call_later(wait, run)
            return
        _reclaim["due"] = None
        reclaim()

    loop.call_later(RECLAIM_AFTER_S, run)


def reclaim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc's: give freed heap pages back
