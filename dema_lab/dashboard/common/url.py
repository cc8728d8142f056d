"""A page's state in its URL: settings read from the query string when a session opens, and
written back as they change, so a view can be bookmarked and shared."""

from __future__ import annotations

import panel as pn
import param

from dema_lab.common.values import parse_value
from dema_lab.dashboard.common.data import friendly_error

# never read from or written to a URL
URL_SKIP = ("name", "status", "message", "revision", "rollout", "checkpoint_file")


def url_args() -> dict:
    try:
        return dict(pn.state.session_args) if pn.state.curdoc else {}
    except Exception:  # noqa: BLE001 - not in a server session
        return {}


def from_url(p: param.Parameter, name: str, text: str):
    """A URL's text as the value of parameter `p` (None: a kind of parameter URLs do not set)."""
    try:
        if isinstance(p, param.Boolean):
            return text.strip() != "" and parse_value(bool, text, f"URL setting {name}")
        if isinstance(p, param.Integer):
            return int(text)
        if isinstance(p, param.Number):
            return float(text)
    except ValueError:
        raise ValueError(f"URL setting {name}={text!r} is not a number") from None
    if isinstance(p, param.Selector):
        names = getattr(p, "names", None) or {}
        for o in p.objects:  # choices that are numbers: a checkpoint, a layer
            if str(o) == text:
                return o
        return names.get(text, text)
    if isinstance(p, param.String):
        return text
    return None


def to_url(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def url_settings(cls: type[param.Parameterized]) -> dict:
    """A component's settings given in the page's URL (`/live?env=hopper&fps=10&mode=rnn`), so a
    demo can be bookmarked: numbers, integers, booleans, choices and text, by parameter name."""
    out = {}
    for name, values in url_args().items():
        p = cls.param.objects().get(name)
        if p is None or name in URL_SKIP or not values:
            continue
        value = from_url(p, name, values[0].decode())
        if value is not None:
            out[name] = value  # out-of-range values fail in the component, naming the parameter
    return out


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


def sync_url(obj: param.Parameterized, apply: bool = False) -> list[str]:
    """Keep the page's URL following the view's state, so that any view can be bookmarked or
    shared (presentation=1 and other query arguments are kept). With `apply`, first set the
    URL's settings on the view one by one in dependency order (each choice list is filled by
    the setting before it). Returns the settings that could not be applied, each with why."""
    names = url_parameters(obj)
    problems = []
    if apply:
        args = url_args()
        for name in names:
            if name not in args or not args[name]:
                continue
            text = args[name][0].decode()
            try:
                value = from_url(obj.param[name], name, text)
                if value is not None and value != getattr(obj, name):
                    setattr(obj, name, value)
            except Exception as e:  # noqa: BLE001 - a stale or mistyped link: say so, keep the view
                problems.append(f"URL setting {name}={text!r} was not applied: {friendly_error(e)}")
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


def state_of(view) -> param.Parameterized:
    """The param-only state a view renders (its `state`), or the view itself when it has none."""
    state = getattr(view, "state", None)
    return state if isinstance(state, param.Parameterized) else view
