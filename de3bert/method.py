"""A method = a recipe (how its model is trained) + a policy (when a sample leaves), by name.

Method objects live in their method's own file and are registered lazily by one line in
their package's `__init__` (`METHODS.add("pabee", "baselines.pabee:METHOD")`). Everything that
differs between methods and matters to the suite is declared here, not guessed from a name:
`family` groups a method with its variants, `ablation_of` marks a variant as an ablation of
another method (the report's ablation tables), `report_only` keeps the oracle out of claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import options_dict, parse_options
from .policy import ExitPolicy
from .registry import get_recipe


@dataclass(frozen=True)
class Method:
    """A named early-exit method: the recipe that trains its model and the policy that exits."""

    name: str
    """Registry name (`de3bert list`)."""
    recipe: str
    """Registered recipe that trains the method's model."""
    policy: type[ExitPolicy]
    """Exit rule class."""
    description: str
    """One line for `de3bert list -v` and the tables."""
    options: dict = field(default_factory=dict)
    """Policy options (typed by `policy.Options`; checked at construction)."""
    report_only: bool = False
    """Uses labels (the oracle): head-room only, never deployable or claimed."""
    family: str = ""
    """Methods of one family share a paper (defaults to the method's own name)."""
    ablation_of: str = ""
    """Name of the method this one ablates (empty: a method in its own right)."""

    def __post_init__(self) -> None:
        opts = parse_options(self.policy.Options, self.options, f"method {self.name}")
        object.__setattr__(self, "options", options_dict(opts))
        object.__setattr__(self, "family", self.family or self.name)

    def make_policy(self, num_labels: int, num_layers: int) -> ExitPolicy:
        """The method's policy for a task with `num_labels` outputs on a `num_layers` model."""
        return self.policy(num_labels, num_layers, self.options)

    def supports(self, num_labels: int) -> tuple[bool, str]:
        """Whether the method can run a task with `num_labels` outputs, and why not."""
        if num_labels == 1:
            if not self.policy.supports_regression:
                return False, f"policy {self.policy.name} is classification-only"
            if not get_recipe(self.recipe).supports_regression:
                return False, f"recipe {self.recipe} is classification-only"
        return True, ""

    def describe(self) -> dict:
        """What results rows record about the method (how they were made)."""
        return {"policy_options": self.options, "report_only": self.report_only,
                "family": self.family, "ablation_of": self.ablation_of or None}
