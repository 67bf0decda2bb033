"""The method registry: a method is a (recipe, policy) pair registered under a name.

Adding a method = one new file that calls `register_method` + one line in `METHOD_MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .policy import ExitPolicy

#: every module that registers methods or recipes (the one registry line per method file)
METHOD_MODULES = (
    "baselines.deebert",
    "baselines.pabee",
    "baselines.static",
    "baselines.oracle",
    "baselines.maxprob",
    "baselines.pcee",
    "baselines.fastbert",
    "baselines.berxit",
    "baselines.past_future",
    "de3bert.de3",
)


@dataclass(frozen=True)
class Method:
    """A named early-exit method: the recipe that trains its model and the policy that exits."""

    name: str
    recipe: str
    policy: type[ExitPolicy]
    description: str
    options: dict = field(default_factory=dict)  # policy options (e.g. λ for DE³)
    report_only: bool = False  # the oracle: uses labels, never a deployable method

    def make_policy(self, num_labels: int, num_layers: int) -> ExitPolicy:
        return self.policy(num_labels, num_layers, **self.options)

    def supports(self, num_labels: int) -> tuple[bool, str]:
        """Whether the method can run a task with `num_labels` outputs, and why not."""
        from .recipes import get_recipe

        if num_labels == 1:
            if not self.policy.supports_regression:
                return False, f"policy {self.policy.name} is classification-only"
            if not get_recipe(self.recipe).supports_regression:
                return False, f"recipe {self.recipe} is classification-only"
        return True, ""


METHODS: dict[str, Method] = {}
_loaded = False


def register_method(name: str, recipe: str, policy: type[ExitPolicy], description: str,
                    report_only: bool = False, **options) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} registered twice")
    METHODS[name] = Method(name, recipe, policy, description, dict(options), report_only)


def load_all() -> None:
    """Import every method module once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in METHOD_MODULES:
        importlib.import_module(mod)


def get_method(name: str) -> Method:
    load_all()
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def all_methods() -> dict[str, Method]:
    load_all()
    return dict(METHODS)
