"""The sanity guard: every trained model's deepest exit against the plain `single` fine-tune's.

An early-exit recipe trains the same backbone as `single`; at full depth it should score about as
well. A model more than `GAP` points below is a training failure until shown otherwise (issue
25: DE³'s v2 training collapsed CoLA to the majority class, and the claims read it as the
method losing). The runner prints a flag the moment such a model is recorded, the run's summary
lists every model, and `uncertainty.md` carries the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from de3bert.data import get_task
from de3bert.engine import replay_predictions
from de3bert.metrics import glue_metrics
from de3bert.record import load_record
from de3bert.registry import get_recipe

from .layout import RunLayout

GAP = 5.0  # points of the headline metric below `single` that flag a model


@dataclass(frozen=True)
class SanityRow:
    """One model's deepest exit against `single`'s, on the same task, seed and dev samples."""

    task: str
    recipe: str
    seed: int
    metric: str
    deepest: float
    single: float

    @property
    def gap(self) -> float:
        """The model's deepest exit minus single's (negative = below)."""
        return self.deepest - self.single

    @property
    def flagged(self) -> bool:
        """More than `GAP` points below single."""
        return self.gap < -GAP

    def line(self) -> str:
        """One log line; flagged ones say what to suspect."""
        text = (f"{self.task} {self.recipe} seed {self.seed}: deepest exit {self.metric} {self.deepest:.1f} "
                f"vs single {self.single:.1f} ({self.gap:+.1f})")
        flag = f" — more than {GAP:g} points below single: a training failure?"
        return text + (flag if self.flagged else "")


def deepest_metric(task: str, record: dict[str, torch.Tensor], recipe: str = "single") -> float:
    """The headline metric of a record's deepest trained exit (`Recipe.deepest_exit`: layer k of a
    truncated BERT-kL, whose record runs the untrained layers above it too)."""
    spec = get_task(task)
    L, n = record["logits"].shape[:2]
    depth = get_recipe(recipe).deepest_exit(L)
    preds = replay_predictions(record, torch.full((1, n), depth))[0]
    return float(glue_metrics(spec.metrics, preds, record["labels"])[spec.headline_metric])


def check_model(task: str, recipe: str, seed: int, record: dict, single_record: dict) -> SanityRow:
    """The guard's row for one recorded model."""
    metric = get_task(task).headline_metric
    return SanityRow(task, recipe, seed, metric, deepest_metric(task, record, recipe),
                     deepest_metric(task, single_record))


def run_sanity(layout: RunLayout) -> list[SanityRow]:
    """Every recorded model of a run against `single` of its task and seed (records only)."""
    refs = layout.records()
    singles = {(r.task, r.seed): r.path for r in refs if r.recipe == "single"}
    rows = []
    for r in refs:
        if r.recipe != "single" and (r.task, r.seed) in singles:
            rows.append(check_model(r.task, r.recipe, r.seed, load_record(r.path),
                                    load_record(singles[(r.task, r.seed)])))
    return rows


def sanity_markdown(rows: list[SanityRow]) -> list[str]:
    """The guard's table (every model; flagged rows in bold)."""
    if not rows:
        return ["No model besides `single` was recorded.", ""]
    out = ["| task | recipe | seed | metric | deepest exit | single | difference |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = f"**{r.gap:+.1f}** (flagged)" if r.flagged else f"{r.gap:+.1f}"
        out.append(f"| {r.task} | {r.recipe} | {r.seed} | {r.metric} | {r.deepest:.1f} | {r.single:.1f} "
                   f"| {diff} |")
    flagged = sum(r.flagged for r in rows)
    return out + ["", f"{flagged} of {len(rows)} models are more than {GAP:g} points below `single` "
                  "at full depth.", ""]
