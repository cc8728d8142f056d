"""`dema-lab serve` under load: a burst of plain page requests (what any web page open in the
user's browser can send, cross-site) leaves the other pages answering in seconds, and the memory
of the sessions it made is given back once they are destroyed. Requests go to 127.0.0.1 only."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import wait_until
from helpers.browser import ARTIFACTS, ROOT, free_port

from dema_lab.dashboard.common.options import MAX_SESSIONS as LIMIT  # sessions per page

BURST = 60
SESSIONS = 30
ANSWER_S = 5.0  # the index and /compare answer within this, during and after the burst
UNUSED_S = 2  # the server's unused-session lifetime here, so that the test's sessions go quickly


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def get(url: str, timeout: float = 60.0) -> tuple[int | str, float, str]:
    """(HTTP status or the error's name, seconds it took, the body's first 2000 characters)."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            status, body = r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode(errors="replace")
    except OSError as e:
        status, body = type(e).__name__, str(e)
    return status, time.monotonic() - start, body[:2000]


@pytest.fixture
def served(dash_store, tmp_path):
    """`dema-lab serve` of the dashboards' test store on 127.0.0.1, unused sessions kept UNUSED_S s."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "load-server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dema_lab.cli.main", "serve", "--store", dash_store, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": "egl", "DEMA_LAB_UNUSED_SESSION_S": str(UNUSED_S)},
    )
    base = f"http://127.0.0.1:{port}"

    def answers():
        assert proc.poll() is None, log_path.read_text()
        return get(base + "/", timeout=2)[0] == 200

    try:
        wait_until(answers, 90, "dema-lab serve to answer /", interval=0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def open_page(url: str, timeout: float = 60.0) -> None:
    """GET `url` until it is served (a busy server answers 503: retry, as the busy page does)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = get(url)
        if status == 200:
            return
        assert status == 503 and "busy" in body, (status, body)
        assert time.monotonic() < deadline, f"{url} stayed busy for {timeout:g} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_a_burst_of_page_requests_leaves_the_server_answering_and_its_memory_returns(served):
    base, pid = served
    for page in ("/attention", "/compare"):  # the first requests import what the pages need
        open_page(base + page)
    time.sleep(UNUSED_S + 2)  # their sessions destroyed
    baseline = rss_mb(pid)

    # 60 concurrent plain GETs of the main page; meanwhile the index and /compare answer in seconds
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        burst = [pool.submit(get, base + "/attention") for _ in range(BURST)]
        time.sleep(0.5)
        during = {page: get(base + page, timeout=30) for page in ("/", "/compare")}
        results = [f.result() for f in burst]
    took = time.monotonic() - start
    for page, (status, seconds, _) in during.items():
        assert status == 200 and seconds < ANSWER_S, f"{page} during the burst: {status} after {seconds:.1f} s"
    statuses = [r[0] for r in results]
    served_now = statuses.count(200)
    assert 1 <= served_now <= LIMIT and statuses.count(503) == BURST - served_now, sorted(map(str, statuses))
    assert all("busy" in body for status, _, body in results if status == 503)
    assert took < 30, f"the burst took {took:.0f} s"
    for page in ("/", "/compare"):  # and right after it
        status, seconds, _ = get(base + page, timeout=30)
        assert status == 200 and seconds < ANSWER_S, f"{page} after the burst: {status} after {seconds:.1f} s"
    open_page(base + "/attention", timeout=UNUSED_S + 15)  # the burst's sessions go: the page is served again

    # 30 sessions opened (at most LIMIT at once: the busy page is retried) and left to expire
    for _ in range(SESSIONS):
        open_page(base + "/attention")
    peak = rss_mb(pid)
    ok = lambda: rss_mb(pid) <= 1.2 * baseline  # noqa: E731
    deadline = time.monotonic() + 60
    while not ok() and time.monotonic() < deadline:
        time.sleep(1)
    assert ok(), f"server memory {rss_mb(pid):.0f} MB (peak {peak:.0f}) did not return within 20% of {baseline:.0f} MB"


def test_sessions_beyond_the_limit_get_the_busy_page_until_one_is_destroyed(monkeypatch):
    import panel as pn
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    from dema_lab.dashboard import app
    from dema_lab.dashboard.common import sessions

    monkeypatch.setenv("DEMA_LAB_MAX_SESSIONS", "2")

    class Request:
        arguments: dict = {}
        headers: dict = {}
        cookies: dict = {}
        path = "/compare"

    def open_session(i: int):
        doc = Document()
        context = type("Context", (), {"request": Request(), "id": f"session-{i}"})()
        doc._session_context = lambda: context  # what a served document has (bokeh keeps a weak reference)
        with set_curdoc(doc):
            page = app.compare_app("no-store", presentation=False)
        return doc, context, page

    opened = [open_session(i) for i in range(3)]
    assert sessions.count("compare") == 2
    assert not isinstance(opened[0][2], pn.pane.Alert) and not isinstance(opened[1][2], pn.pane.Alert)
    busy = opened[2][2]
    assert (
        isinstance(busy, pn.pane.Alert) and "busy" in str(busy.object) and "2 sessions of /compare" in str(busy.object)
    )
    doc, context, _ = opened[0]
    for callback in doc.session_destroyed_callbacks:  # what Bokeh does when it destroys the session
        callback(context)
    assert sessions.count("compare") == 1
    assert not isinstance(open_session(3)[2], pn.pane.Alert)


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("DEMA_LAB_MAX_SESSIONS", "0", "DEMA_LAB_MAX_SESSIONS must be at least 1"),
        ("DEMA_LAB_MAX_SESSIONS", "many", "DEMA_LAB_MAX_SESSIONS: expected"),
        ("DEMA_LAB_UNUSED_SESSION_S", "-1", "DEMA_LAB_UNUSED_SESSION_S must be a positive number of seconds"),
    ],
)
def test_bad_session_bounds_are_refused_in_one_line(monkeypatch, env, value, message):
    from dema_lab.dashboard.common.options import session_limits

    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=message) as e:
        session_limits()
    assert "\n" not in str(e.value)
    monkeypatch.delenv(env)
    assert session_limits(3, 1.5) == (3, 1.5)
