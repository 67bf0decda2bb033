"""The task registry: every task is one entry of `tasks.yaml`, checked when it is registered.

Like a method (one file + one registry line), a task is data: its folder, columns, labels,
metrics (the first is the headline), Hub config and published split sizes. A task whose format is
not a GLUE-style TSV names a parser (`"module:function"`, called with the spec and the file path,
returning `Example`s). An entry missing a required field, naming an unknown field or a metric
without bootstrap statistics is refused here, at registration, never at report time.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from .metrics import METRICS

REGISTRY_FILE = Path(__file__).with_name("tasks.yaml")


@dataclass(frozen=True)
class TaskSpec:
    """One task: where its text and labels are, and how it is scored."""

    name: str
    num_labels: int
    """Classes; 1 means regression."""
    text_fields: tuple[str, ...]
    """Column names in the TSV header (header-less files: positional indices as strings)."""
    label_field: str
    """The label's column (name, or index without a header)."""
    metrics: tuple[str, ...]
    """Metric names of `de3bert.metrics.METRICS`; the first is the headline metric."""
    labels: tuple[str, ...] = ()
    """Label strings in class order; empty = integer labels."""
    folder: str = ""
    """Folder under the local data directory (glue_data/); empty = generated (synthetic)."""
    has_header: bool = True
    dev_file: str = "dev.tsv"
    hub_config: str = ""
    """Config of the Hub dataset nyu-mll/glue (empty: no Hub copy)."""
    hub_fields: tuple[str, ...] = ()
    hub_dev_split: str = "validation"
    columns: int = 0
    """Fields per row of a header-less file (CoLA: 4); 0 = the header's width."""
    train_task: str = ""
    """A second dev split of another task trains that task's model (mnli-mm)."""
    train_rows: int = 0
    """Published training-set size (estimates when the data is not local)."""
    dev_rows: int = 0
    """Published dev-set size (the same use)."""
    parser: str = ""
    """`module:function` reading a file that is not a GLUE-style TSV; empty = the TSV reader."""

    @property
    def is_regression(self) -> bool:
        """One output (STS-B) instead of classes."""
        return self.num_labels == 1

    @property
    def headline_metric(self) -> str:
        """The metric tables rank by."""
        return self.metrics[0]


REQUIRED = tuple(f.name for f in dataclasses.fields(TaskSpec)
                 if f.default is dataclasses.MISSING and f.name != "name")


def register_task(name: str, entry: dict) -> TaskSpec:
    """A TaskSpec from one registry entry; a missing or unknown field, or a metric without
    bootstrap statistics, fails here with the task and the field named."""
    names = [f.name for f in dataclasses.fields(TaskSpec) if f.name != "name"]
    for key in entry:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"task {name!r}: unknown field {key!r}{hint}; valid: {', '.join(names)}")
    missing = [f for f in REQUIRED if f not in entry]
    if missing:
        raise ValueError(f"task {name!r}: missing required field(s) {', '.join(missing)}")
    values = {k: tuple(str(x) for x in v) if isinstance(v, list) else v for k, v in entry.items()}
    spec = TaskSpec(name=name, **values)
    unknown = [m for m in spec.metrics if m not in METRICS]
    if not spec.metrics or unknown:
        raise ValueError(f"task {name!r}: metric(s) {unknown or '(none)'} have no definition with bootstrap "
                         f"statistics; valid: {', '.join(METRICS)}")
    if not spec.is_regression and spec.labels and len(spec.labels) != spec.num_labels:
        raise ValueError(f"task {name!r}: {len(spec.labels)} labels for num_labels={spec.num_labels}")
    return spec


def load_registry(path: Path = REGISTRY_FILE) -> dict[str, TaskSpec]:
    """Every task of a registry file, in file order."""
    entries = yaml.safe_load(path.read_text()) or {}
    return {name: register_task(name, dict(entry)) for name, entry in entries.items()}


TASKS: dict[str, TaskSpec] = load_registry()
