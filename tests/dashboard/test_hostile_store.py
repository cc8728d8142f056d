"""A shared store edited by someone else, and links made by someone else, in a real browser: no
injected script runs, no injected image or link renders, on every page.

The store (test_escaping.make_hostile_store) has a run directory named
`<img src=x onerror=window.__pwned=9>`, rollouts whose `mode` is `<img ... window.__pwned=7>`
and whose `checkpoint` is a Markdown link, and a sweep named like a Markdown image; the links
add hostile values to every query parameter. Every target is 127.0.0.1:9, where nothing
listens: an image that rendered would also show as a failed request (a console error)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from helpers.browser import ARTIFACTS, Page, Server
from test_escaping import ATTACKER, DEMA, HOSTILE, PAGES, TAG_RUN, make_hostile_store

# what the page holds that an attacker put there: the marker their script sets, their images and
# links, any element with an inline event handler; Panel renders each pane in its own shadow root,
# so the checks walk into every one
INJECTED_JS = f"""() => {{
    const roots = [document];
    for (let i = 0; i < roots.length; i++)
        for (const e of roots[i].querySelectorAll('*')) if (e.shadowRoot) roots.push(e.shadowRoot);
    const all = sel => roots.flatMap(r => [...r.querySelectorAll(sel)]);
    return {{
        pwned: typeof window.__pwned,
        images: all('img').map(e => e.src).filter(s => s.includes('{ATTACKER}') || s.endsWith('/x')),
        links: all('a').map(e => e.href).filter(h => h.includes('{ATTACKER}')),
        handlers: all('[onerror], [onload], [onclick]').map(e => e.outerHTML.slice(0, 120)),
        text: roots.map(r => (r.body || r).textContent || '').join(' '),
    }};
}}"""


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    store = make_hostile_store(tmp_path_factory.mktemp("hostile") / "store")
    ARTIFACTS.mkdir(exist_ok=True)
    s = Server(str(store), ARTIFACTS / "hostile-store-server.log")
    yield s
    s.stop()


def _visit(browser, url: str, wait_text: str) -> dict:
    """Open `url`, wait for `wait_text` on the page and for it to settle; what was injected."""
    p = Page(browser, url)
    page = p.page
    try:
        page.get_by_text(wait_text).filter(visible=True).first.wait_for(timeout=90_000)
        page.wait_for_timeout(1500)  # late renders (alerts, tables, the findings) and image loads
        found = page.evaluate(INJECTED_JS)
        assert found["pwned"] == "undefined", f"injected script ran on {url}"
        assert not found["images"], (url, found["images"])
        assert not found["links"], (url, found["links"])
        assert not found["handlers"], (url, found["handlers"])
        p.check_clean()  # no console error, no failed request (an image of the attacker's would fail)
        return found
    finally:
        page.close()


def test_browser_a_hostile_store_runs_no_script_and_shows_no_injected_link(hostile_server, browser):
    url = hostile_server.url
    # the landing page: the DeMa run, whose rollouts carry the tag and the link (the info line
    # shows them as text)
    _visit(browser, url("attention"), "window.__pwned=7")
    # the run whose directory is named like a tag
    _visit(browser, url("attention") + "?" + urlencode({"run": TAG_RUN}), "window.__pwned=9>")
    _visit(browser, url("compare"), "last score (final checkpoint)")
    _visit(browser, url("live"), "Save the rollout to the run")
    _visit(browser, url("study"), "Which of the paper's findings hold")


@pytest.mark.parametrize("page", list(PAGES))
def test_browser_hostile_query_parameters_run_no_script_and_show_no_injected_link(page, hostile_server, browser):
    """Each of the page's URL parameters set to a hostile value (the three taken in turn): each
    is refused with a notice showing it as text."""
    names = PAGES[page]
    query = {name: HOSTILE[i % len(HOSTILE)] for i, name in enumerate(names)}
    if page == "attention":
        query["run"] = DEMA  # a valid setting among them is applied
    wait = "Save the rollout to the run" if page == "live" else "was not applied"
    found = _visit(browser, hostile_server.url(page) + "?" + urlencode(query), wait)
    for name, value in query.items():
        if name not in ("save", "run"):
            assert f"URL setting {name}={value!r} was not applied" in found["text"], (name, found["text"][:2000])
