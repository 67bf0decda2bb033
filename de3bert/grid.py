"""Evaluate a policy's knob grid on a record: the one replay → predictions → metrics → speed-up path.

`de3bert eval`, the benchmark runner and the export latency check all call `evaluate_grid`, so a
knob value means the same exits, predictions, metrics and layer speed-up wherever it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import TaskSpec
from .engine import replay_predictions
from .metrics import glue_metrics
from .speedup import layer_speedups, refine_grid


@dataclass(frozen=True)
class GridResult:
    """Every knob value of a (refined) grid, replayed from one record."""

    knob: str
    values: list[float]
    exits: torch.Tensor  # [K, N] 1-based exit layers
    preds: torch.Tensor  # [K, N]
    metrics: list[dict[str, float]]
    speedups: list[float]  # layer speed-up per knob value


def evaluate_grid(policy, record: dict[str, torch.Tensor], task: TaskSpec, grid: list[float] | None = None,
                  targets: list[float] | tuple = ()) -> GridResult:
    """Replay `grid` (default: the policy's own; refined near `targets` when given) from `record`:
    exits, predictions, the task's metrics and the layer speed-up of every knob value."""
    values = list(grid) if grid is not None else policy.grid()
    if targets:
        values = refine_grid(policy, record, values, list(targets))
    exits = policy.replay(record, values)
    preds = replay_predictions(record, exits)
    metrics = [glue_metrics(task.metrics, preds[k], record["labels"]) for k in range(len(values))]
    return GridResult(policy.knob.name, [float(v) for v in values], exits, preds, metrics,
                      layer_speedups(exits, policy.num_layers))
