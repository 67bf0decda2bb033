"""The point-estimate tables of a run (results.md/.tex) and its operating points, from its rows.

Computing is kept apart from rendering: `operating_cells`, `operating_points` and `speed_frame`
return typed values; `operating_table` and `speed_table` turn them into grids of cells (the
formats of `cells`), which `markdown` and `latex` lay out. The literature's protocol: each knob
tuned and scored on the same dev split, no intervals (those are `uncertainty`'s).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..results import FULL
from . import cells
from .rows import ablated_methods, is_ablation_col


@dataclass(frozen=True)
class OperatingCell:
    """One method's mean headline metric and layer speed-up at a target on one task."""

    score: float
    speedup: float
    best: bool = False
    """Highest deployable point estimate of its column (says nothing about significance)."""


def at_target(df: pd.DataFrame, target: float) -> pd.DataFrame:
    """The rows that are the operating point for `target`."""
    return df[df["operating_point"].apply(lambda v: isinstance(v, list) and target in v)]


def operating_cells(df: pd.DataFrame, target: float,
                    methods: list[str] | None = None) -> dict[str, dict[str, OperatingCell]]:
    """{method: {task: cell}} at the target (mean over seeds), the full model first."""
    sel = at_target(df, target)
    if methods is not None:
        sel = sel[sel["method"].isin(methods)]
    best: dict[str, float] = {}
    for task, g in sel.groupby("task", sort=False):
        scores = g.groupby("method")["score"].mean()
        deployable = [m for m in scores.index if not g[g["method"] == m]["report_only"].any()]
        best[task] = scores[deployable].max() if deployable else np.nan
    out: dict[str, dict[str, OperatingCell]] = {}
    for (method, task), g in sel.groupby(["method", "task"], sort=False):
        s, sp = g["score"].mean(), g["speedup_layers"].mean()
        top = bool(np.isclose(s, best.get(task, np.nan)) and not g["report_only"].any())
        out.setdefault(method, {})[task] = OperatingCell(s, sp, top)
    full = df[df["method"] == FULL].groupby("task")["score"].mean()
    return {FULL: {t: OperatingCell(v, 1.0) for t, v in full.items()}, **out}


def operating_table(df: pd.DataFrame, target: float, methods: list[str] | None = None) -> pd.DataFrame:
    """Rows = methods, columns = tasks: 'metric (achieved layer speed-up)' at the target; `^` marks
    the highest deployable point estimate."""
    grid = {m: {t: cells.at_speedup(cells.number(c.score) + ("^" if c.best else ""), c.speedup)
                for t, c in per_task.items()}
            for m, per_task in operating_cells(df, target, methods).items()}
    tasks = list(dict.fromkeys(df["task"]))
    return pd.DataFrame(grid).T.reindex(columns=tasks).fillna(cells.NONE)


def result_tables(df: pd.DataFrame, targets: list[float]) -> list[tuple[str, float, pd.DataFrame]]:
    """(ablated parent or '' for the main methods, target, grid) of every results table, in order."""
    main = list(df[~is_ablation_col(df)]["method"].unique())
    out = [("", t, operating_table(df, t, main)) for t in targets]
    for parent, variants in ablated_methods(df).items():
        out += [(parent, t, operating_table(df, t, [parent, *variants])) for t in targets]
    return out


SPEED_COLUMNS = ["task", "method", "knob", "speedup_layers", "speedup_flops", "speedup_layers_timed_subset",
                 "speedup_wallclock", "speedup_wallclock_b32", "speedup_wallclock_model", "live_agrees",
                 "live_disagreements", "live_checked"]


def speed_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The three speed-ups (and live = replay) at every timed operating point, unrounded."""
    speed = df[df["speedup_wallclock"].notna() & (df["method"] != FULL)]
    s = speed[[c for c in SPEED_COLUMNS if c in speed.columns]].copy()
    if "speedup_layers_timed_subset" in s:
        s["wallclock/layers (subset)"] = s["speedup_wallclock"] / s["speedup_layers_timed_subset"]
        s = s.rename(columns={"speedup_layers_timed_subset": "layers (timed subset)"})
    return s


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    """`speed_frame` as a table: knobs as 'name=value', numbers to 3 decimals."""
    s = speed_frame(df)
    s["knob"] = s["knob"].apply(cells.knob)
    return s.round(3)


@dataclass(frozen=True)
class OperatingPoint:
    """The knob value one (task, method, seed) runs at for one target, and what it achieves."""

    task: str
    method: str
    target: float
    seed: int
    knob: Mapping | None
    speedup: float
    metric: str
    score: float
    report_only: bool = False


def operating_points(rows: Iterable[Mapping]) -> list[OperatingPoint]:
    """Every (task, method, target, seed) operating point of a run's rows (`operating_point` lists
    the targets a row is chosen for), ordered by task and method as the run has them, then target
    and seed."""
    points, tasks, methods = [], {}, {}
    for r in rows:
        targets = r.get("operating_point")
        if not isinstance(targets, list):
            continue
        tasks.setdefault(r["task"], len(tasks))
        methods.setdefault(r["method"], len(methods))
        headline = r["headline_metric"]
        points += [OperatingPoint(r["task"], r["method"], float(t), int(r["seed"]), r.get("knob"),
                                  float(r["speedup_layers"]), headline, float(r["metric"][headline]),
                                  r.get("report_only") is True) for t in targets]
    return sorted(points, key=lambda p: (tasks[p.task], p.target, methods[p.method], p.seed))


def operating_point_cells(p: OperatingPoint) -> list[str]:
    """One row of operating_points.md: task, target, method (†: uses labels), seed, knob, layer
    speed-up, headline metric."""
    method = f"{p.method} †" if p.report_only else p.method
    return [p.task, cells.target(p.target), method, str(p.seed), cells.knob(p.knob),
            cells.speedup(p.speedup), f"{p.metric} {cells.number(p.score)}"]
