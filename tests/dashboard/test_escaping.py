"""No markup from a store, a file or a URL: the rendering helpers (dashboard.common.text) escape
every outside value, and every page built from a store holding hostile strings (a run directory
named like an HTML tag, a rollout whose `mode` and `checkpoint` attributes hold a tag and a
Markdown link, a sweep named like a Markdown image) and a URL whose every query parameter is
hostile renders none of them as HTML: no <img>, no link to the attacker, no event handler, in
anything the page sends to the browser (the Bokeh models' HTML, read without a browser). A bad
URL value is left out with a one-line notice and the page keeps a valid view.

The store is tests/data/legacy_store (two small finished runs of sweep 'legacy'), copied and
edited on disk as someone with write access to a shared store would."""

from __future__ import annotations

import html
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / "tests" / "data" / "legacy_store"
DEMA = "legacy-hopper-medium-dema-B3LD-ts0-K5-s0"
DT = "legacy-hopper-medium-dt-B3LD-ts1-K5-s0"

ATTACKER = "127.0.0.1:9"  # nothing listens there: a request to it fails (a browser test sees it)
TAG_RUN = "<img src=x onerror=window.__pwned=9>"  # a run directory's name (no slash: a valid one)
TAG_MODE = "<img src=x onerror=window.__pwned=7>"
LINK_CHECKPOINT = f"[**Session expired: click here**](http://{ATTACKER}/)"
IMAGE_SWEEP = f"![](http://{ATTACKER}/sweep.png)"
HOSTILE = [
    "<img src=x onerror=window.__pwned=1>",
    f"![](http://{ATTACKER}/t.png)",
    f"[**Session expired: click here**](http://{ATTACKER}/)",
]

# every page's URL parameters (common.url.url_parameters of its state, and `save`, which a URL
# must never set); test_every_url_parameter_is_tested checks the list is complete
PAGES = {
    "attention": ["run", "checkpoint", "episode", "layer", "aggregation", "channel", "query", "step", "explanation"],
    "compare": ["runs", "mode", "layer", "query_kind"],
    "live": ["checkpoint", "env", "target", "mode", "aggregation", "layer", "seed", "fps", "save"],
    "study": ["sweep", "latency"],
}


def make_hostile_store(dest: Path) -> Path:
    """The legacy store with the DT run's directory renamed to TAG_RUN and its sweep to
    IMAGE_SWEEP, and the DeMa run's rollouts' `mode` TAG_MODE and `checkpoint` LINK_CHECKPOINT."""
    import zarr

    shutil.copytree(LEGACY, dest)
    (dest / "runs" / DT).rename(dest / "runs" / TAG_RUN)
    run = zarr.open_group(str(dest), path=f"runs/{TAG_RUN}", mode="r+", zarr_format=3)
    run.attrs["config"] = {**run.attrs["config"], "sweep": IMAGE_SWEEP}
    rollouts = zarr.open_group(str(dest), path=f"runs/{DEMA}/rollout", mode="r+", zarr_format=3)
    for name in rollouts.group_keys():
        rollouts[name].attrs.update(mode=TAG_MODE, checkpoint=LINK_CHECKPOINT)
    return dest


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory) -> str:
    return str(make_hostile_store(tmp_path_factory.mktemp("hostile") / "store"))


# ---------------------------------------------------------------------------- what reaches the browser
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def hostile_markup(markup: str) -> list[str]:
    """What in this HTML would act in a browser: an <img> or <script>, a link or image to the
    attacker, an event handler attribute."""
    parser = _Tags()
    parser.feed(markup)
    bad = []
    for tag, attrs in parser.tags:
        if tag in ("img", "script", "iframe", "object", "embed"):
            bad.append(f"<{tag} {attrs}>")
        if any(ATTACKER in str(v) for v in attrs.values()):
            bad.append(f"<{tag} {attrs}> points to the attacker")
        if any(k.startswith("on") for k in attrs):
            bad.append(f"<{tag} {attrs}> has an event handler")
    return bad


def page_html(viewables) -> list[str]:
    """The HTML of every text model the page sends to the browser: Panel's Markdown, HTML and
    Alert panes (their `text` is the rendered HTML, escaped once more for transport) and Bokeh
    Divs (their `text` is HTML as is)."""
    import holoviews.plotting.bokeh  # noqa: F401 - the pages' plots render with it
    import panel as pn
    from bokeh.document import Document
    from bokeh.models import Div
    from panel.models.markup import HTML as PanelHTML

    root = pn.Column(*viewables).get_root(Document())
    out = []
    for model in root.references():
        if isinstance(model, PanelHTML):
            out.append(html.unescape(model.text))
        elif isinstance(model, Div):
            out.append(model.text)
    return out


def build_page(page: str, store: str, query: dict, monkeypatch):
    """The served page (app.*_app) for a URL's query {name: value}; the template's main and sidebar
    contents, and the component shown."""
    from dema_lab.dashboard import app
    from dema_lab.dashboard.common import url

    monkeypatch.setattr(url, "url_args", lambda: {k: [str(v).encode()] for k, v in query.items()})
    builder = {"attention": app.attention_app, "compare": app.compare_app, "live": app.live_app}.get(page)
    if page == "live":
        tmpl = app.live_app(store, presentation=False, live={"checkpoint_dirs": []})
    elif page == "study":
        tmpl = app.study_app(store, presentation=False)
    else:
        tmpl = builder(store, presentation=False)
    return list(tmpl.main) + list(tmpl.sidebar)


def texts_of(viewables) -> str:
    """Every rendered text of the page, tags stripped (what a person reads)."""
    return html.unescape(re.sub(r"<[^>]+>", "", "\n".join(page_html(viewables))))


def find(viewables, cls):
    """The first object of class `cls` under these viewables (Panel layouts and Viewers)."""
    import panel as pn

    for v in viewables:
        if isinstance(v, cls):
            return v
        for o in getattr(v, "objects", []) if isinstance(v, pn.layout.ListLike | pn.Tabs) else []:
            found = find([o], cls)
            if found is not None:
                return found
    return None


# ---------------------------------------------------------------------------- the helpers
@pytest.mark.parametrize("value", [*HOSTILE, TAG_RUN, "$$\\href{http://127.0.0.1:9/}{x}$$", "a\n# heading\n- item"])
def test_the_helpers_render_any_value_as_its_literal_text(value):
    import panel as pn

    from dema_lab.dashboard.common.text import alert, as_markdown, html_pane, markdown_pane, md

    for pane in (
        markdown_pane(value),
        alert(value),
        markdown_pane(md("**Run {}** cannot be read: {}", value, value)),
        html_pane(value),
    ):
        rendered = html.unescape(pane._transform_object(pane.object)["object"])
        assert not hostile_markup(rendered), rendered
        assert "<a " not in rendered and "<h1" not in rendered and "<li" not in rendered, rendered
        text = html.unescape(re.sub(r"</?(p|strong)>", "", rendered))
        assert " ".join(value.split()) in " ".join(text.split()), (value, rendered)  # as text
    # what md() made keeps its own markup; a plain str added to it is escaped
    m = md("**{}**", value) + value
    out = html.unescape(pn.pane.Markdown(as_markdown(m))._transform_object(as_markdown(m))["object"])
    assert out.startswith("<p><strong>") and not hostile_markup(out), out


def test_html_escapes_values_in_text_and_attributes_and_tolerates_wrong_types():
    from dema_lab.dashboard.common.text import html

    out = html('<span data-run="{}">{} · target {:g}</span>', '"><img src=x onerror=1>', TAG_RUN, "abc")
    assert not hostile_markup(out), out
    assert out.endswith("· target abc</span>")  # a string where a number was expected: shown
    assert html("{:.1f}", 2.25) == "2.2"


# ---------------------------------------------------------------------------- the pages
@pytest.mark.parametrize("page", list(PAGES))
def test_a_hostile_store_renders_no_markup(page, hostile_store, monkeypatch):
    """The DeMa run's rollouts carry a tag and a link in `mode` and `checkpoint` (shown on the
    landing page), the DT run is named like a tag and its sweep like an image."""
    query = {"run": TAG_RUN} if page == "attention" else {}
    shown = build_page(page, hostile_store, query, monkeypatch)
    bad = [b for h in page_html(shown) for b in hostile_markup(h)]
    assert not bad, bad
    if page == "attention":
        text = texts_of(shown)
        assert TAG_RUN in text  # the run id shown as text: the explorer opened the hostile run
        shown = build_page(page, hostile_store, {"run": DEMA}, monkeypatch)
        bad = [b for h in page_html(shown) for b in hostile_markup(h)]
        assert not bad, bad
        text = texts_of(shown)
        assert TAG_MODE in text and LINK_CHECKPOINT in text  # the attributes, as text


@pytest.mark.parametrize("page", list(PAGES))
def test_hostile_values_in_every_url_parameter_render_no_markup(page, hostile_store, monkeypatch):
    """Every URL parameter of the page set to a hostile value at once (the values taken in turn):
    each is left out with a notice that shows its value as text, and nothing of it is markup."""
    names = PAGES[page]
    first = 1 if page == "study" else 0  # the study page's two parameters get the Markdown ones
    query = {name: HOSTILE[(first + i) % len(HOSTILE)] for i, name in enumerate(names)}
    shown = build_page(page, hostile_store, query, monkeypatch)
    bad = [b for h in page_html(shown) for b in hostile_markup(h)]
    assert not bad, bad
    text = texts_of(shown)
    for name, value in query.items():
        if name != "save":  # not a URL setting at all: ignored
            assert f"URL setting {name}={value!r} was not applied" in text, (name, text)


def test_every_url_parameter_is_tested(hostile_store):
    from dema_lab.dashboard.common.url import url_parameters
    from dema_lab.dashboard.compare.view import SequenceComparison
    from dema_lab.dashboard.explorer.state import ExplorerState
    from dema_lab.dashboard.live.state import LiveState
    from dema_lab.dashboard.study.view import StudyReport

    states = {
        "attention": ExplorerState(hostile_store),
        "compare": SequenceComparison(hostile_store),
        "live": LiveState(hostile_store),
        "study": StudyReport(hostile_store, latency=False),
    }
    for page, state in states.items():
        assert set(url_parameters(state)) <= set(PAGES[page]), page
    assert "save" not in url_parameters(states["live"])  # a link never pre-arms a write


# ---------------------------------------------------------------------------- bad URL values
def _all(v):
    """v and everything laid out in it (layouts, tabs, the widgets of a pn.Param)."""
    import panel as pn

    yield v
    if isinstance(v, pn.Param):
        yield from _all(v.layout)
    for o in getattr(v, "objects", None) or []:
        yield from _all(o)


def widget(shown, name: str):
    """The widget labelled `name` on the page (its sidebar or main area)."""
    import panel as pn

    found = [o for v in shown for o in _all(v) if isinstance(o, pn.widgets.Widget) and o.name == name]
    assert found, f"no widget {name!r} on the page"
    return found[0]


def probe(shown) -> str:
    """The explorer's probe (the run, episode, step and checksums of what it shows)."""
    return next(h for h in page_html(shown) if "data-heatmap" in h)


@pytest.mark.parametrize(
    "query",
    [{"layer": "7", "checkpoint": "abc", "step": "x", "query": "R99"}, {"run": "nope", "layer": "-5", "channel": "-1"}],
)
def test_bad_url_values_are_left_out_and_the_explorer_keeps_a_valid_view(query, hostile_store, monkeypatch):
    shown = build_page("attention", hostile_store, query, monkeypatch)
    text = texts_of(shown)
    assert "cannot be opened" not in text, text
    for name, value in query.items():
        assert f"URL setting {name}={value!r} was not applied" in text, text
    for label in ("Run", "Checkpoint", "Episode", "Layer", "Lag profile of token"):
        w = widget(shown, label)
        assert w.value in list(w.values), (label, w.value, w.values)  # a choice it offers, not the bogus value
    assert widget(shown, "Run").value == DEMA  # the run it opens on, not 'nope' over its data
    assert 'data-heatmap="none"' not in probe(shown) and f'data-run="{DEMA}"' in probe(shown)


def test_a_sweep_that_is_not_in_the_store_keeps_the_study_page(hostile_store, monkeypatch):
    shown = build_page("study", hostile_store, {"sweep": "nosuch", "latency": "false"}, monkeypatch)
    text = texts_of(shown)
    assert "URL setting sweep='nosuch' was not applied" in text, text
    assert "cannot be built" not in text and "Which of the paper's findings hold" in text, text
    assert widget(shown, "Sweep").value in widget(shown, "Sweep").values


def test_a_link_cannot_tick_save_or_set_an_infinite_target(hostile_store, monkeypatch):
    shown = build_page("live", hostile_store, {"save": "true", "fps": "7", "target": "inf"}, monkeypatch)
    assert widget(shown, "Save the rollout to the run").value is False
    assert widget(shown, "Max steps per second").value == 7  # the page did read its URL
    assert "URL setting target='inf' was not applied: target must be a finite number" in texts_of(shown)
    assert widget(shown, "Target return").value == 3600  # the checkpoint's evaluation target, kept
