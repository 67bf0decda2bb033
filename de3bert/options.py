"""Typed options for recipes and policies: a dataclass per owner, unknown keys and wrong types rejected.

A misspelt option must never train silently with a default (`{"betaa": 0.5}` would train with
β = 1.0), so every recipe and policy declares its options as a dataclass and every mapping that
reaches one goes through `parse_options`, which names the bad key, the closest valid one and
every valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

O = TypeVar("O")


@dataclass(frozen=True)
class NoOptions:
    """The options of a recipe or policy that has none."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_type(owner: str, key: str, value: Any, kind: Any) -> Any:
    """`value` converted to the field's type (int → float allowed), or a ValueError naming both."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        if math.isnan(float(value)):
            raise ValueError(f"{owner}: option {key} is NaN")
        return float(value)
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        if value not in typing.get_args(kind):
            valid = ", ".join(map(str, typing.get_args(kind)))
            raise ValueError(f"{owner}: option {key}={value!r} is not one of: {valid}")
        return value
    if origin in (typing.Union, types.UnionType):  # `str | list`: any member type will do
        bases = tuple(typing.get_origin(a) or a for a in typing.get_args(kind))
        if not isinstance(value, bases):
            names = " or ".join(b.__name__ for b in bases)
            raise ValueError(f"{owner}: option {key}={value!r} must be {names}, got {type(value).__name__}")
        return value
    base = kind if isinstance(kind, type) else origin
    if base is not None and not (isinstance(value, base) and not (base is int and isinstance(value, bool))):
        raise ValueError(f"{owner}: option {key}={value!r} must be {getattr(base, '__name__', base)}, "
                         f"got {type(value).__name__}")
    return value


def parse_options(cls: type[O], values: dict | O | None, owner: str) -> O:
    """An instance of the options dataclass `cls` from a mapping; unknown keys and bad types fail."""
    if isinstance(values, cls):
        return values
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1) or sorted(
                (n for n in names if len(n) >= 2 and str(key).startswith(n)), key=len, reverse=True)[:1]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = ", ".join(names) if names else "none"
            raise ValueError(f"{owner}: unknown option {key!r}{hint}; valid options: {valid}")
    types = _field_types(cls)
    return cls(**{k: _check_type(owner, k, v, types[k]) for k, v in values.items()})


def options_dict(opts: Any) -> dict:
    """A plain dict of an options instance (for results rows and saved model metadata)."""
    return dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) else dict(opts or {})


def known_subset(cls: type, mapping: dict) -> dict:
    """The keys of `mapping` that are fields of `cls` (reading options back from saved metadata)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in mapping.items() if k in names}
