"""A page's state in its URL: settings read from the query string when a session opens, and
written back as they change, so a view can be bookmarked and shared.

A URL is anyone's to write (a shared link), so a setting is applied only when it is one of the
parameter's choices, a number within its bounds, or a boolean; any other value is left out with
a one-line notice (its text escaped) and the view stays as it was. A link never sets what writes
data (`save`) or reads files (`checkpoint_file`).
"""

from __future__ import annotations

import math

import panel as pn
import param

from dema_lab.common.values import parse_value
from dema_lab.dashboard.common.data import friendly_error
from dema_lab.dashboard.common.text import Markdown, md

# never read from or written to a URL: state, and what a link must not pre-arm (a write, a file)
URL_SKIP = ("name", "status", "message", "revision", "rollout", "checkpoint_file", "save")
MAX_CHOICES_NAMED = 8  # choices a notice lists


def url_args() -> dict:
    try:
        return dict(pn.state.session_args) if pn.state.curdoc else {}
    except Exception:  # noqa: BLE001 - not in a server session
        return {}


def _choice(p: param.Selector, name: str, text: str):
    """The choice of selector `p` that `text` names (its value or its label); ValueError naming
    the choices when there is none."""
    names = getattr(p, "names", None) or {}
    for o in p.objects:  # choices that are numbers: a checkpoint, a layer
        if str(o) == text:
            return o
    if text in names and names[text] in p.objects:
        return names[text]
    shown = [str(o) for o in p.objects[:MAX_CHOICES_NAMED]]
    more = f" and {len(p.objects) - MAX_CHOICES_NAMED} more" if len(p.objects) > MAX_CHOICES_NAMED else ""
    choices = f"one of {', '.join(shown)}{more}" if shown else "none yet"
    raise ValueError(f"it is not one of the choices of {name} ({choices})")


def from_url(p: param.Parameter, name: str, text: str):
    """A URL's text as the value of parameter `p` (None: a kind of parameter URLs do not set).
    ValueError when it is not a value of `p`: a number that is not one, a choice that is not one
    of p's (as they are now: pass the instance's parameter, `obj.param[name]`)."""
    if isinstance(p, param.Boolean):
        return text.strip() != "" and parse_value(bool, text, f"URL setting {name}")
    try:
        if isinstance(p, param.Integer):
            return int(text)
        if isinstance(p, param.Number):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        kind = "a whole number" if isinstance(p, param.Integer) else "a finite number"
        raise ValueError(f"{name} must be {kind}") from None
    if isinstance(p, param.ListSelector):
        return [_choice(p, name, t) for t in text.split(",") if t]
    if isinstance(p, param.Selector):
        return _choice(p, name, text)
    if isinstance(p, param.String):
        return text
    return None


def to_url(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(to_url(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def url_parameters(obj: param.Parameterized) -> list[str]:
    """The parameters of a view that its URL carries, in declaration order (which is the order
    in which they depend on each other: run before checkpoint before episode before step)."""
    return [
        n
        for n, p in obj.param.objects("existing").items()
        if n not in URL_SKIP
        and (p.precedence is None or p.precedence >= 0)
        and isinstance(p, (param.Selector, param.Number, param.Boolean, param.String))
    ]


def sync_url(obj: param.Parameterized, apply: bool = False) -> list[Markdown]:
    """Keep the page's URL following the view's state, so that any view can be bookmarked or
    shared (presentation=1 and other query arguments are kept). With `apply`, first set the
    URL's settings on the view one by one in dependency order (each choice list is filled by
    the setting before it). Returns the settings that could not be applied, each a one-line
    notice (Markdown, the URL's text escaped) saying why; the view keeps its value for them."""
    names = url_parameters(obj)
    problems = []
    if apply:
        args = url_args()
        for name in names:
            if name not in args or not args[name]:
                continue
            text = args[name][0].decode(errors="replace")
            try:
                value = from_url(obj.param[name], name, text)
                if value is not None and value != getattr(obj, name):
                    setattr(obj, name, value)
            except Exception as e:  # noqa: BLE001 - a stale or mistyped link: say so, keep the view
                problems.append(url_notice(name, text, e))
    loc = pn.state.location if pn.state.curdoc else None
    if loc is None:
        return problems

    def push(*events):
        loc.update_query(**{e.name: to_url(e.new) for e in events if e.new is not None})

    def push_all():
        loc.update_query(**{n: to_url(getattr(obj, n)) for n in names if getattr(obj, n) is not None})

    obj.param.watch(push, names)
    pn.state.onload(push_all)  # once the browser has sent its own URL: the whole state
    return problems


def url_notice(name: str, text: str, error: BaseException) -> Markdown:
    """The one-line notice of a URL setting that was not applied (the URL's text escaped, and
    shortened: a link can be long)."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return md("URL setting {}={} was not applied: {}", name, repr(shown), friendly_error(error))


def state_of(view) -> param.Parameterized:
    """The param-only state a view renders (its `state`), or the view itself when it has none."""
    state = getattr(view, "state", None)
    return state if isinstance(state, param.Parameterized) else view
