"""Config values parsed by their declared types: one rule for flags, JSON/TOML files and Python.

A dataclass field annotated `int`, `float`, `bool`, `str`, `list[X]` or `X | None` accepts a
value of that type, or text that parses as one, the same text a command-line flag would take:

    int     10, 10.0, "10", "10_000"            not True, 2.5, "ten"
    float   1e-4, 3, "1e-4"                     not False, "fast"
    bool    true, false, 0, 1, and the text true/false, yes/no, on/off, 1/0 (any case)
    str     "dema"                              not 5
    Literal one of its choices                          (the config's choices: Literal["a", "b"])
    list[X] [1, 2], "1,2", or one X (a list of one)
    X|None  null (JSON), or the text none/null, or an X

Anything else is a ConfigError naming the field and the expected type, so that
`timestep_embedding = "no"` in a TOML file means False and `steps = "ten"` is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
NONE = ("none", "null")


def truthy(value) -> bool:
    """Whether a stored or displayed flag is on: True, a nonzero number, or the text of TRUE (any
    case). Anything else (False, 0, "off", "", None, NaN) is off. For values that must be a bool or
    an error, use parse_value(bool, ...)."""
    if isinstance(value, str):
        return value.strip().lower() in TRUE
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


class ConfigError(ValueError):
    """A config key that does not exist, or a value of the wrong type or out of range."""


def _describe(hint) -> str:
    """'an integer', 'true or false', 'a list of numbers', ... for messages."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _is_optional(hint):
        return f"{_describe(args[0])} or none"
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        inner = _describe(typing.get_args(hint)[0])
        return "a list of " + {
            "an integer": "integers",
            "a number": "numbers",
            "a string": "strings",
            "true or false": "true/false values",
        }.get(inner, inner)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _is_optional(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def parse_value(hint, value, name: str):
    """`value` (a Python value or a flag's text) as the type `hint`; ConfigError naming `name`."""

    def refuse():
        shown = f"{value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
        return ConfigError(f"{name}: expected {_describe(hint)}, got {shown}")

    if _is_optional(hint):
        if value is None or (isinstance(value, str) and value.strip().lower() in NONE):
            return None
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
        try:
            return parse_value(inner, value, name)
        except ConfigError:
            raise refuse() from None
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        try:
            return [parse_value(item, v, name) for v in value]
        except ConfigError:
            raise refuse() from None
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        if isinstance(value, str) and value.strip() in choices:
            return value.strip()
        raise refuse()
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise refuse()
    if hint is int:
        if isinstance(value, bool):
            raise refuse()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    number = float(value.strip())
                except ValueError:
                    raise refuse() from None
                if number.is_integer():
                    return int(number)
        raise refuse()
    if hint is float:
        if isinstance(value, bool):
            raise refuse()
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise refuse() from None
        else:
            raise refuse()
        if not math.isfinite(number):
            raise refuse()
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise refuse()
    return value  # a type this module does not parse (a nested dataclass): as given


@functools.cache
def field_types(cls) -> dict:
    """{field name: declared type} of a dataclass (string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_fields(cls, values: dict, what: str = "") -> dict:
    """`values` with every value parsed by its field's declared type; ConfigError for an unknown
    key (listing the known ones) or a value of the wrong type (naming the field and the type).
    `cls` is a dataclass, or a {name: type} dict of fields (a config composed of sections)."""
    types_ = cls if isinstance(cls, dict) else field_types(cls)
    what = what or f"{getattr(cls, '__name__', 'config')} "
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"unknown {what}keys {unknown}; its fields: {', '.join(types_)}")
    return {k: parse_value(types_[k], v, k) for k, v in values.items()}


def coerce(obj) -> None:
    """Parse every field of a dataclass instance in place by its declared type (for __post_init__:
    `OptimConfig(steps="10")` holds 10, `OptimConfig(steps="ten")` raises ConfigError)."""
    for name, hint in field_types(type(obj)).items():
        object.__setattr__(obj, name, parse_value(hint, getattr(obj, name), name))
