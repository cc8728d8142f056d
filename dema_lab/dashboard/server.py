"""Serving the apps: the options a server was started with (store, checkpoint directories, limits),
the port check, the bound on sessions per page, and `serve` on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import panel as pn
from panel.io.server import DocHandler

from dema_lab.dashboard.app import attention_app, compare_app, live_app, study_app
from dema_lab.dashboard.common import sessions
from dema_lab.dashboard.common.options import session_limits


def serve(
    store: str = "store",
    port: int = 5006,
    address: str = "127.0.0.1",
    show: bool = False,
    presentation: bool = False,
    checkpoint_dirs=(),
    max_checkpoint_bytes: int | None = None,
    max_sessions: int | None = None,
    unused_session_s: float | None = None,
    **kwargs,
):
    """Serve the apps (/attention, /compare, /live, /study) on `address` (127.0.0.1 by default).
    The live page reads checkpoint files only under the store and `checkpoint_dirs`, at most
    `max_checkpoint_bytes` each (default 1 GiB). At most `max_sessions` sessions of each page are
    open at once: a request beyond that gets a small "busy, retry" page with HTTP 503, at once;
    a session no browser is connected to is destroyed after `unused_session_s` seconds (defaults:
    options.session_limits). Blocks until interrupted; kwargs go to pn.serve (e.g. threaded=True,
    websocket_origin). ValueError when the port cannot be listened on or a bound is not valid."""
    check_port(address, port)
    max_sessions, unused_s = session_limits(max_sessions, unused_session_s)
    live = {"checkpoint_dirs": list(checkpoint_dirs)}
    if max_checkpoint_bytes is not None:
        live["max_checkpoint_bytes"] = int(max_checkpoint_bytes)
    presentation = presentation or None  # --presentation forces it on, else ?presentation=1 decides
    apps = {
        "attention": lambda: attention_app(store, presentation, live),
        "compare": lambda: compare_app(store, presentation),
        "live": lambda: live_app(store, presentation, live),
        "study": lambda: study_app(store, presentation),
    }
    kwargs.setdefault("websocket_origin", [f"{address}:{port}", f"localhost:{port}"])
    kwargs.setdefault("index", str(Path(__file__).with_name("index.html")))  # offline, unlike Panel's
    # sessions of pages fetched without a browser (or of closed tabs) go within about unused_s + 1 s
    kwargs.setdefault("unused_session_lifetime_milliseconds", int(1000 * unused_s))
    kwargs.setdefault("check_unused_sessions_milliseconds", int(1000 * min(1.0, unused_s)))
    sessions.configure(max_sessions)
    guard_sessions()
    try:
        return pn.serve(apps, port=port, address=address, show=show, title="dema-lab", **kwargs)
    except OSError as e:  # taken between the check and the bind
        raise ValueError(port_message(address, port, e)) from None


class BoundedDocHandler(DocHandler):
    """Panel's page handler, answering a request beyond the page's session limit with a small
    static "busy, retry" page (HTTP 503) before a session is made: a burst of requests costs
    milliseconds each instead of a page build each, and the server stays responsive."""

    async def get(self, *args, **kwargs):
        page = self.application_context.url.strip("/") or "/"
        if sessions.full(page):
            self.set_status(503)
            self.set_header("Retry-After", str(sessions.RETRY_S))
            self.set_header("Cache-Control", "no-store")
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.write(sessions.busy_html(page))
            return
        with sessions.building(page):
            await super().get(*args, **kwargs)


def guard_sessions() -> None:
    """Have servers made from now on in this process serve their pages with BoundedDocHandler
    (Panel installs its DocHandler the same way, in Bokeh's per-app routes)."""
    from bokeh.server import urls

    for i, route in enumerate(urls.per_app_patterns):
        if route[1] is DocHandler:
            urls.per_app_patterns[i] = (route[0], BoundedDocHandler, *route[2:])


def port_message(address: str, port: int, e: OSError) -> str:
    import errno

    if e.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {address} is in use (another dema-lab serve?): stop what listens there, "
            f"or pick another port with --port"
        )
    return f"cannot listen on {address}:{port} ({e.strerror or e}): give a local address with --address"


def check_port(address: str, port) -> None:
    """ValueError with one line when the dashboard cannot listen on address:port: a port outside
    1-65535, one in use, or an address this machine does not have."""
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range: give --port between 1 and 65535 (default 5006)")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise ValueError(port_message(address, port, e)) from None
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Tornado binds
                s.bind(addr)
        except OSError as e:
            import errno

            if e.errno == errno.EADDRNOTAVAIL and addr[0] == "::1":  # no IPv6 here: Tornado skips it too
                continue
            raise ValueError(port_message(address, port, e)) from None
