"""Serving the apps: the options a server was started with (store, checkpoint directories, limits),
the port check, and `serve` on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import panel as pn

from dema_lab.dashboard.app import attention_app, compare_app, live_app, study_app


def serve(
    store: str = "store",
    port: int = 5006,
    address: str = "127.0.0.1",
    show: bool = False,
    presentation: bool = False,
    checkpoint_dirs=(),
    max_checkpoint_bytes: int | None = None,
    **kwargs,
):
    """Serve the apps (/attention, /compare, /live, /study) on `address` (127.0.0.1 by default).
    The live page reads checkpoint files only under the store and `checkpoint_dirs`, at most
    `max_checkpoint_bytes` each (default 1 GiB). Blocks until interrupted; kwargs go to pn.serve
    (e.g. threaded=True, websocket_origin). ValueError when the port cannot be listened on."""
    check_port(address, port)
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
    try:
        return pn.serve(apps, port=port, address=address, show=show, title="dema-lab", **kwargs)
    except OSError as e:  # taken between the check and the bind
        raise ValueError(port_message(address, port, e)) from None


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
