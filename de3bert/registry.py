"""One generic registry with lazy `"module:attr"` entries, and the two registries of the suite.

A registry maps a name to an object that is imported only when first asked for, so listing the
methods never imports a model, and the core never names the modules that register into it: the
plugin packages (the baselines, the DE³ method) are found through the `de3bert.plugins` entry-point
group of the installed distribution (see `pyproject.toml`). Each plugin package holds the registry
lines of its own methods: adding a method is one file plus one line in its package's `__init__`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")
PLUGIN_GROUP = "de3bert.plugins"


def resolve(ref: str) -> Any:
    """Import `"package.module:attr"` (or `"module:attr[key]"`, an item of a mapping) and return it."""
    module, _, attr = ref.partition(":")
    if not attr:
        raise ValueError(f"a lazy entry is 'module:attr', got {ref!r}")
    attr, _, key = attr.partition("[")
    obj = getattr(importlib.import_module(module), attr)
    return obj[key.rstrip("]")] if key else obj


def unknown_name(kind: str, name: str, valid: list[str]) -> KeyError:
    """A KeyError naming the bad value, the closest valid one and every valid one."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return KeyError(f"unknown {kind} {name!r}{hint}; valid {kind}s: {', '.join(valid)}")


class Registry(Generic[T]):
    """Name → object, each entry either an object or a lazy `"module:attr"` string.

    With `instantiate`, an entry that resolves to a class is replaced by one instance of it
    (recipes are stateless singletons).
    """

    def __init__(self, kind: str, instantiate: bool = False):
        self.kind, self.instantiate = kind, instantiate
        self._entries: dict[str, T | str] = {}

    def add(self, name: str, entry: T | str) -> None:
        """Register `entry` (an object or `"module:attr"`) under `name`; a name is taken once."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The object registered as `name` (imported on first use)."""
        load_plugins()
        if name not in self._entries:
            raise unknown_name(self.kind, name, self.names())
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = resolve(entry)
            if self.instantiate and isinstance(entry, type):
                entry = entry()
            if getattr(entry, "name", name) != name:
                raise ValueError(f"{self.kind} entry {name!r} resolves to an object named {entry.name!r}")
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        load_plugins()
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, object) for every entry, importing lazy ones."""
        for name in self.names():
            yield name, self.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.names()


METHODS: Registry[Any] = Registry("method")
RECIPES: Registry[Any] = Registry("recipe", instantiate=True)
_plugins_loaded = False


def load_plugins() -> None:
    """Import every `de3bert.plugins` entry point once; each adds its registry lines."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    found = entry_points(group=PLUGIN_GROUP)
    if not found:
        raise RuntimeError(f"no {PLUGIN_GROUP} entry points: install the package (pip install -e .)")
    for ep in sorted(found, key=lambda e: e.name):
        importlib.import_module(ep.value)


def get_method(name: str) -> Any:
    """The registered `Method` called `name` (see `de3bert.method.Method`)."""
    return METHODS.get(name)


def get_recipe(name: str) -> Any:
    """The registered `Recipe` instance called `name`."""
    return RECIPES.get(name)


def all_methods() -> dict[str, Any]:
    """Every registered method by name."""
    return dict(METHODS.items())
