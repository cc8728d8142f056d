"""The page template around every app (presentation mode too), local resources, and the guard
that turns a page that fails to build into a one-line message."""

from __future__ import annotations

import panel as pn

from dema_lab.dashboard.common.data import friendly_error
from dema_lab.dashboard.common.text import alert, md


def pin_local_resources() -> None:
    """Make every component of the current session's page link this server's static files.

    Panel picks a new component's stylesheet URLs from its document's template variable
    `dist_url`, falling back to its CDN (https://cdn.holoviz.org) when the variable is not set yet;
    the server sets it only when it renders the page's HTML. A component created before that by
    another thread (a periodic refresh, a demo's progress, a live rollout) linked the CDN, which
    fails offline (seen intermittently as loading.css requests). Setting it first, as the server
    will, closes that window. Call it at the start of every page builder."""
    from panel.io.resources import LOCAL_DIST

    doc = pn.state.curdoc
    if doc is None or doc.session_context is None:
        return  # a notebook or a script: Panel's own resource handling applies
    rel = pn.state.rel_path
    doc._template_variables.setdefault("dist_url", f"{rel}/{LOCAL_DIST}" if rel else LOCAL_DIST)


PRESENTATION_CSS = """
body, .bk-root, .markdown, .bk-input, .bk-btn, label { font-size: 21px !important; }
#header { min-height: 70px; }
.title { font-size: 2em !important; }
"""


# ---------------------------------------------------------------------- templates
def page_template(title: str, main, sidebar=None, presentation: bool = False):
    # Bootstrap: its resources are bundled with Panel (the Fast design always pulls a web font),
    # so the pages work offline
    tmpl = pn.template.BootstrapTemplate(
        title=title,
        sidebar=[sidebar] if sidebar is not None else [],
        main=[main],
        header_background="#1f3b57",
        collapsed_sidebar=False,
        sidebar_width=310,
    )
    if presentation:
        tmpl.config.raw_css.append(PRESENTATION_CSS)
        tmpl.sidebar_width = 380
    return tmpl


def guarded(build, title: str):
    """Build a page; a failure becomes a message, never a traceback."""
    try:
        return build()
    except Exception as e:  # noqa: BLE001
        return alert(md("**{} cannot be shown:** {}", title, friendly_error(e)), "danger", sizing_mode="stretch_width")
