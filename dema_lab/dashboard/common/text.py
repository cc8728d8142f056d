"""Text on the pages, escaped by default: every value put into Markdown or HTML shows as the
literal text it is.

Store contents (run ids, rollout attributes, sweep and dataset names), file contents and URL
query values are written by others (a shared store, a shared link), so a page never renders
them as markup:

    md("Run **{}** cannot be read: {}", run_id, why)     Markdown: the template is code, each
                                                        value escaped (formats like {:.1f} apply)
    html("<b>{}</b> · target {:g}", run_id, target)     the same for HTML
    markdown_pane(text), alert(text), html_pane(text)   panes; plain text (a str, or a param
                                                        reference to one) is escaped as a whole,
                                                        what md() / html() made is kept
    trusted_markdown(text), trusted_html(text)          the explicit exception: markup written
                                                        in code, with no outside values

md() and html() return Markdown / HTML (str subclasses): markup whose values are escaped. A
plain str anywhere is text, never markup, so a message built without these helpers shows its
characters literally instead of rendering them.
"""

from __future__ import annotations

import functools
import html as _html
import re
import string

import param

# CommonMark lets any ASCII punctuation be backslash-escaped; escaping all of it leaves no link,
# image, emphasis, HTML tag, entity, table cell, math or autolinked URL (linkify skips escapes)
_MARKDOWN_PUNCTUATION = re.compile(r"""([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])""")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


class Markdown(str):
    """Markdown whose outside values were escaped (md(), trusted_markdown()): safe to render.
    `+` and join() keep it Markdown, escaping a plain str added to it."""

    def __add__(self, other):
        return Markdown(str(self) + escape_markdown(other))

    def __radd__(self, other):
        return Markdown(escape_markdown(other) + str(self))

    def join(self, parts):
        return Markdown(str(self).join(escape_markdown(p) for p in parts))


class HTML(str):
    """HTML whose outside values were escaped (html(), trusted_html()): safe to render.
    `+` and join() keep it HTML, escaping a plain str added to it."""

    def __add__(self, other):
        return HTML(str(self) + escape_html(other))

    def __radd__(self, other):
        return HTML(escape_html(other) + str(self))

    def join(self, parts):
        return HTML(str(self).join(escape_html(p) for p in parts))


def escape_markdown(value) -> str:
    """`value` as Markdown that renders as its literal text on one line: every ASCII punctuation
    character backslash-escaped (so no markup and no HTML), line breaks as spaces."""
    if isinstance(value, Markdown):
        return str(value)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(value)))


def escape_html(value) -> str:
    """`value` as HTML text (quotes too, so it is safe in an attribute value)."""
    if isinstance(value, HTML):
        return str(value)
    return _html.escape(str(value), quote=True)


class _Escaping(string.Formatter):
    """str.format with each formatted value escaped. A format spec the value does not support (a
    store attribute of the wrong type: a string where a number was expected) falls back to the
    value's text: a page shows what is there rather than failing."""

    def __init__(self, escape):
        self.escape = escape

    def format_field(self, value, format_spec):
        if isinstance(value, (Markdown, HTML)) and not format_spec:
            return self.escape(value)
        try:
            text = format(value, format_spec)
        except (TypeError, ValueError):
            text = str(value)
        return self.escape(text)


_MD, _HTML = _Escaping(escape_markdown), _Escaping(escape_html)


def md(template: str, *args, **kwargs) -> Markdown:
    """`template` (Markdown written in code) with its {} fields filled by escaped values."""
    return Markdown(_MD.vformat(template, args, kwargs))


def html(template: str, *args, **kwargs) -> HTML:
    """`template` (HTML written in code) with its {} fields filled by escaped values."""
    return HTML(_HTML.vformat(template, args, kwargs))


def trusted_markdown(text: str) -> Markdown:
    """Markdown written in code, rendered as is: never pass it a value from a store, file or URL."""
    return Markdown(text)


def trusted_html(text: str) -> HTML:
    """HTML written in code, rendered as is: never pass it a value from a store, file or URL."""
    return HTML(text)


def as_markdown(text) -> Markdown:
    """Markdown to render: md()'s output as is, anything else (None: nothing) as literal text."""
    if isinstance(text, Markdown):
        return text
    return Markdown("" if text is None else escape_markdown(text))


def as_html(text) -> HTML:
    """HTML to render: html()'s output as is, anything else (None: nothing) as literal text."""
    if isinstance(text, HTML):
        return text
    return HTML("" if text is None else escape_html(text))


def join_markdown(parts, sep: str = "\n\n") -> Markdown:
    """Paragraphs (Markdown or plain text, empty ones left out) joined into one Markdown."""
    return Markdown(sep.join(as_markdown(p) for p in parts if p))


# The panes below render their object through as_markdown / as_html whenever it is set (at
# creation, from a param reference, or by `pane.object = ...` later): a plain string is always
# text. Panel never picks them for pn.panel(obj) (priority False). Panel renders `$$...$$` in
# Markdown as math on the page: never for text made here. They are made on first use, so that
# the param-only states (explorer.state, live.state) can build their messages here without Panel.
_MARKDOWN_OPTIONS = dict(renderer="markdown-it", disable_math=True)


@functools.cache
def _panes() -> dict:
    import panel as pn

    class EscapedMarkdown(pn.pane.Markdown):
        """pn.pane.Markdown that renders a plain str as literal text, md()'s Markdown as Markdown."""

        priority = False

        def _transform_object(self, obj):
            return super()._transform_object(as_markdown(obj))

    class EscapedAlert(pn.pane.Alert):
        """pn.pane.Alert that renders a plain str as literal text, md()'s Markdown as Markdown."""

        priority = False

        def _transform_object(self, obj):
            return super()._transform_object(as_markdown(obj))

    class EscapedHTML(pn.pane.HTML):
        """pn.pane.HTML that renders a plain str as literal text, html()'s HTML as HTML."""

        priority = False

        def _transform_object(self, obj):
            return super()._transform_object(as_html(obj))

    return {"markdown": EscapedMarkdown, "alert": EscapedAlert, "html": EscapedHTML}


def markdown_pane(text, **kwargs):
    """A Markdown pane of `text` (see as_markdown): a str, or a param reference that it follows."""
    return _panes()["markdown"](text, **{**_MARKDOWN_OPTIONS, **kwargs})


def alert(text, alert_type: str = "warning", **kwargs):
    """An Alert of `text` (see as_markdown): a str, or a param reference (or rx expression) that
    it follows, hidden while it is empty."""
    if isinstance(text, (param.Parameter, param.rx)) and "visible" not in kwargs:
        kwargs["visible"] = text.rx.bool()
    return _panes()["alert"](text, alert_type=alert_type, **{**_MARKDOWN_OPTIONS, **kwargs})


def html_pane(text, **kwargs):
    """An HTML pane of `text` (see as_html): a str, or a param reference that it follows."""
    return _panes()["html"](text, **kwargs)
