"""The served apps: a template around the components, the empty-store page, and `serve`.

    attention_app(store)   the explorer, with the sequence-length comparison, live rollouts and the
                           study report as tabs
    compare_app(store)     the comparison alone;   live_app(store)   live rollouts alone
    study_app(store)       the study report alone (the paper's tables for a sweep)
    serve(store)           all four on 127.0.0.1 (``dema-lab serve``)

Store path: ``--args --store PATH`` on ``panel serve``, else $DEMA_LAB_STORE, else "store".
Presentation mode (full screen, larger fonts): ``?presentation=1`` or ``--args --presentation``.
The live page's file field reads the store and ``--args --checkpoint-dir DIR`` (repeatable) only,
files up to ``--max-checkpoint-mb`` (1024); never set from the URL.
The single-component pages take their settings from the URL too: ``/live?env=hopper&mode=rnn&fps=10``.

A page is built once a browser has loaded it (a page fetched without running its script costs an
empty template), the explorer's other tabs when first opened, and at most
``$DEMA_LAB_MAX_SESSIONS`` (common.options.MAX_SESSIONS) sessions of a page are open at once
(common.sessions): beyond that the page says the server is busy. With ``panel serve``, ``--unused-session-lifetime 5000
--check-unused-sessions 1000`` destroys the sessions of unloaded pages and closed tabs as quickly
as ``dema-lab serve`` does.
"""

from __future__ import annotations

import panel as pn

from dema_lab.dashboard.common import sessions
from dema_lab.dashboard.common.data import StoreIndex, friendly_error
from dema_lab.dashboard.common.options import app_options
from dema_lab.dashboard.common.template import guarded, page_template, pin_local_resources
from dema_lab.dashboard.common.text import alert, join_markdown, md
from dema_lab.dashboard.common.url import state_of, sync_url
from dema_lab.dashboard.empty_store.job import DemoJob
from dema_lab.dashboard.empty_store.page import DemoProgress, EmptyStorePage


def attention_app(store: str | None = None, presentation: bool | None = None, live: dict | None = None):
    """The main app: the attention explorer, with comparison and live rollouts as tabs; the
    empty-store page (and demo button) until the store has a run. `live`: LiveRollout's
    checkpoint_dirs and max_checkpoint_bytes (default: from `--args`). Built once the browser has
    loaded the page; the tabs after the first when first opened."""
    if not sessions.admit("attention"):
        return busy_page("attention")
    pin_local_resources()
    opts = app_options()
    store = store or opts["store"]
    presentation = opts["presentation"] if presentation is None else presentation
    live = opts["live"] if live is None else live
    main = pn.Column(loading(), sizing_mode="stretch_width")
    sidebar = pn.Column(sizing_mode="stretch_width")
    tmpl = page_template("dema-lab · hidden attention explorer", main, sidebar, presentation)
    demo = DemoJob.for_store(store)
    state = {"shown": None}

    def show_explorer():
        if state["shown"] == "explorer":
            return
        from dema_lab.dashboard.compare.view import SequenceComparison
        from dema_lab.dashboard.explorer.view import AttentionExplorer

        index = StoreIndex(store)
        explorer = AttentionExplorer(index, presentation=presentation)
        problems = sync_url(explorer.state, apply=True)  # the URL follows the state's parameters
        if problems:
            explorer.state.message = join_markdown([explorer.state.message, *problems])
        state["shown"] = "explorer"
        state["explorer"] = explorer
        tabs = lazy_tabs(
            ("Attention explorer", explorer.views()),
            ("Sequence length", lambda: SequenceComparison(index, presentation=presentation).views(), "The comparison"),
            ("Live rollout", lambda: _live_tab(index, presentation, live), "Live rollouts"),
            ("Study report", lambda: _study_tab(index, presentation), "The study report"),
        )
        controls = explorer.controls()
        tabs.param.watch(lambda e: setattr(controls, "visible", e.new == 0), "active")
        sidebar[:] = [controls]
        main[:] = [tabs]
        if demo.running:  # the demo goes on training: its progress above the tabs
            progress = DemoProgress(demo)
            main.insert(0, progress)
            progress.watch()
            _keep_refreshing(explorer, demo)

    def show_empty():
        state["shown"] = "empty"
        sidebar[:] = [pn.pane.Markdown("No runs yet.")]
        main[:] = [EmptyStorePage(store, on_ready=show_explorer)]

    def build():
        try:
            empty = StoreIndex(store).is_empty()
            if empty:
                show_empty()
            else:
                show_explorer()
        except Exception as e:  # noqa: BLE001 - a store that is not one, unreadable, ...
            main[:] = [
                alert(
                    md("**The store cannot be opened:** {}", friendly_error(e)),
                    alert_type="danger",
                    sizing_mode="stretch_width",
                )
            ]

    pn.state.onload(build)  # at once outside a server
    return tmpl


def busy_page(page: str):
    """What a session beyond the page's limit shows instead of the page (nothing else is built)."""
    return alert(sessions.busy_text(page), alert_type="warning", sizing_mode="stretch_width")


def loading():
    return pn.pane.Markdown("Loading…", css_classes=["dema-loading"], sizing_mode="stretch_width")


def lazy_tabs(first: tuple, *later: tuple) -> pn.Tabs:
    """Tabs with `first` = (title, content) built, and each of `later` = (title, build, failure)
    built when the tab is first opened (a failure becomes a message naming `failure`): a session
    costs only the tab it shows."""
    holders = [pn.Column(loading(), sizing_mode="stretch_width") for _ in later]
    built = [False] * len(later)
    tabs = pn.Tabs(first, *[(t[0], h) for t, h in zip(later, holders)], dynamic=True, sizing_mode="stretch_width")

    def opened(event):
        i = event.new - 1
        if 0 <= i < len(later) and not built[i]:
            built[i] = True
            _, build, failure = later[i]
            holders[i][:] = [guarded(build, failure)]

    tabs.param.watch(opened, "active")
    return tabs


def _live_tab(index, presentation, options: dict):
    from dema_lab.dashboard.live.view import LiveRollout

    live = LiveRollout(index, presentation=presentation, **options)
    return pn.Row(pn.Column(live.controls(), width=300), live.views(), sizing_mode="stretch_width")


def _study_tab(index, presentation):
    from dema_lab.dashboard.study.view import StudyReport

    return StudyReport(index, presentation=presentation).__panel__()


def _keep_refreshing(explorer, demo: DemoJob):
    """While the demo trains, pick up its new runs and episodes every few seconds."""

    def tick():
        explorer.state.refresh()
        if not demo.running and cb is not None:
            cb.stop()

    cb = pn.state.add_periodic_callback(tick, period=5000)


def _component_app(component: str, title: str, failure: str, store: str | None, presentation: bool | None, **options):
    """A page of one component (controls in the sidebar, views in the main area); a component that
    cannot be built becomes a message naming why. `options` go to the component. Built once the
    browser has loaded the page."""
    from dema_lab.dashboard.compare.view import SequenceComparison
    from dema_lab.dashboard.live.view import LiveRollout
    from dema_lab.dashboard.study.view import StudyReport

    if not sessions.admit(component):
        return busy_page(component)
    pin_local_resources()
    cls = {"compare": SequenceComparison, "live": LiveRollout, "study": StudyReport}[component]
    opts = app_options()
    store = store or opts["store"]
    presentation = opts["presentation"] if presentation is None else presentation
    main = pn.Column(loading(), sizing_mode="stretch_width")
    sidebar = pn.Column(sizing_mode="stretch_width")

    def build():
        try:
            view = cls(store, presentation=presentation, **options)
            # the URL's settings on the built view, each checked against its choices as they are now; a
            # bad one is left out with a notice (common.url.sync_url)
            problems = sync_url(state_of(view), apply=True)
            controls, views = view.controls(), view.views()
            if problems:
                notice = alert(join_markdown(problems), css_classes=["dema-url-notice"], sizing_mode="stretch_width")
                views = pn.Column(notice, views, sizing_mode="stretch_width")
        except Exception as e:  # noqa: BLE001
            controls, views = None, alert(md("**{}:** {}", failure, friendly_error(e)), alert_type="danger")
        sidebar[:] = [] if controls is None else [controls]
        main[:] = [views]

    pn.state.onload(build)  # at once outside a server
    return page_template(f"dema-lab · {title}", main, sidebar, presentation)


def compare_app(store: str | None = None, presentation: bool | None = None):
    return _component_app("compare", "sequence length", "The store cannot be read", store, presentation)


def live_app(store: str | None = None, presentation: bool | None = None, live: dict | None = None):
    """The live rollout page; `live`: LiveRollout's checkpoint_dirs and max_checkpoint_bytes (default:
    from `--args`)."""
    live = app_options()["live"] if live is None else live
    return _component_app("live", "live rollout", "Live rollouts cannot start", store, presentation, **live)


def study_app(store: str | None = None, presentation: bool | None = None):
    return _component_app("study", "study report", "The study report cannot be built", store, presentation)
