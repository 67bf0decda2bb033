"""Markdown rendering of the run's tables: results.md, operating_points.md, indicators.md and
uncertainty.md (claims.md: `markdown_claims`, which the claims report imports on its own).

Rendering only: each function lays out values computed elsewhere (`tables`, `analysis`,
`uncertainty`, `claims`) with the cell formats of `cells`, and returns text; the files are
written by `writers` (and `claims.write_claims`). Wording and table shapes live here, numbers never.
"""

from __future__ import annotations

import pandas as pd

from ..sanity import GAP, sanity_markdown
from . import cells
from .analysis import AnalysisTables
from .markdown_claims import pipe_table
from .rows import precision_label, train_settings_label
from .tables import OperatingPoint, operating_point_cells, result_tables, speed_table
from .uncertainty import (
    RunAnalysis,
    TargetCell,
    TargetTable,
    auc_intervals,
    main_methods,
    subject_differences,
    target_table,
    uses_labels,
)


def _section(title: str, note: str, df: pd.DataFrame, index: bool = True) -> list[str]:
    """A titled frame (nothing when the frame is empty)."""
    if not len(df):
        return []
    return [f"## {title}", "", *([note, ""] if note else []), df.to_markdown(index=index), ""]


# ---- results.md / operating_points.md -----------------------------------------------------------
RESULTS_INTRO = ("The literature's protocol: each knob tuned and scored on the same dev split, no intervals. "
                 "Cells: headline dev metric (achieved layer speed-up); `^` = highest point estimate, which "
                 "says nothing about significance: see `uncertainty.md` for cross-fitted operating points, "
                 "95% intervals and which differences are real; the oracle uses labels (head-room only).")


def results_markdown(df: pd.DataFrame, targets: list[float]) -> str:
    """results.md: the main tables per target, the ablations per parent and target, the speed-ups."""
    md = ["# Early exit at equal layer speed-up (selection: dev, point estimates)", "", RESULTS_INTRO, "",
          f"Training settings: {train_settings_label(df)}; training precision: "
          f"{precision_label(df['train_precision'] if 'train_precision' in df else [None])}.", ""]
    for parent, t, tab in result_tables(df, targets):
        title = f"Ablations of {parent} at {cells.target(t)}" if parent else f"Target {cells.target(t)}"
        md += [f"## {title}", "", tab.to_markdown(), ""]
    md += ["The area under each method's metric-vs-speed-up curve is in `uncertainty.md`: it uses each "
           "method's own curve of cross-fitted operating points (an upper envelope over knob values "
           "would favour methods with many knob values).", ""]
    speed = speed_table(df)
    if len(speed):
        md += ["## Three speed-ups at the operating points", "",
               "Wall-clock: batch 1 (and batch 32 with batch shrinking), median of interleaved repeats, "
               "on the first timing samples of the dev set; `model` = timing model from per-layer costs.",
               "", speed.to_markdown(index=False), ""]
    return "\n".join(md)


def operating_points_markdown(points: list[OperatingPoint], selection: str) -> str:
    """operating_points.md: the knob value chosen for every task, target, method and seed."""
    md = ["# Operating points: the knob value each method runs at", "",
          f"Selection: {selection}. One row per task, target, method and seed: the knob value chosen "
          "for the target, the layer speed-up it achieves and the headline dev metric there (the rows "
          "behind `results.md`, before the mean over seeds); † uses labels (head-room only).", ""]
    if not points:
        return "\n".join(md + ["No row of this run is an operating point.", ""])
    header = ["task", "target", "method", "seed", "knob", "layer speed-up", "headline metric"]
    return "\n".join(md + pipe_table(header, [operating_point_cells(p) for p in points]) + [""])


# ---- indicators.md ------------------------------------------------------------------------------
def indicators_markdown(t: AnalysisTables) -> str:
    """indicators.md: per-layer metrics, indicator AUROCs, the oracle's head-room, exit-head costs."""
    parts = ["# Per-layer metrics, exit indicators and exit-head overhead", ""]
    parts += _section("Headline dev metric of each layer's classifier (per recipe)",
                      "`single` = the plain fine-tune (one classifier, same budget): only its last layer.",
                      t.per_layer)
    parts += _section("AUROC of each indicator for 'this layer's prediction is correct' (per layer)",
                      "Higher is better; 0.5 = chance. Every threshold method on its own recipe's record.",
                      t.indicators)
    parts += _section("Oracle head-room (first correct layer; uses labels)", "", t.oracle, index=False)
    parts += _section("Exit-head cost per layer (per recipe)",
                      "Extra vs `weighted` = what a recipe's heads cost beyond plain linear classifiers "
                      "(DE³: the prototype branch).", t.overhead, index=False)
    return "\n".join(parts)


# ---- uncertainty.md -----------------------------------------------------------------------------
LEGEND = ("Cells: estimate ±half-width of the 95% interval (achieved layer speed-up on the scored "
          "samples). **bold** = best deployable method, significantly better than the runner-up after "
          "Benjamini–Hochberg control across the table's columns; `tie` = best point estimate but not "
          "distinguishable from the runner-up; `≈full` = not distinguishable from the full model; "
          "† uses labels (head-room only). Tasks marked *not learned* (full model below its "
          "bar over the trivial predictor) are excluded from claims.")


def _target_cell(c: TargetCell | float) -> str:
    if isinstance(c, TargetCell):
        return cells.marked(cells.at_speedup(cells.interval(c.metric), c.speedup), c.best, c.near_full)
    return cells.number(c)  # the trivial predictor's score


def target_markdown(table: TargetTable | None) -> list[str]:
    """A target table: methods × tasks, with intervals and markers (nothing for no table)."""
    if table is None:
        return []
    cols = {(task if table.learned[task] else f"{task} (not learned)"):
            {m: _target_cell(c) for m, c in col.items()} for task, col in table.columns.items()}
    df = pd.DataFrame(cols).reindex(table.rows).fillna(cells.NONE)
    df.index = [f"{m} †" if uses_labels(m) else m for m in df.index]
    return [df.to_markdown(), ""]


def _difference_markdown(run: RunAnalysis) -> list[str]:
    """Subject − every other method at every target: interval and q-value (BH per task)."""
    rows = [[task, cells.target(c.target), f"{c.a} − {c.b}", cells.difference(c), cells.q(c)]
            for task, c in subject_differences(run)]
    if not rows:
        return []
    return pipe_table(["task", "target", "comparison", "difference [95% CI]", "q"], rows) + [""]


def _auc_markdown(run: RunAnalysis, methods: list[str]) -> list[str]:
    """Area under each method's own scored curve, with intervals."""
    cols = {task: {m: cells.interval(iv) for m, iv in ivs.items()}
            for task, ivs in auc_intervals(run, methods).items()}
    df = pd.DataFrame(cols).fillna(cells.NONE)
    return [df.to_markdown(), ""] if len(df) else []


def _uncertainty_head(run: RunAnalysis) -> list[str]:
    """Title, protocol and bootstrap settings, training settings, legend, learned tasks."""
    s = run.settings
    md = ["# Early exit at equal layer speed-up, with uncertainty", "",
          f"Selection protocol: **{s.selection}** ({run.protocol_label}); {s.replicates} paired bootstrap "
          f"replicates ({run.ci} intervals, the same resampled dev indices for every method, selection "
          "redone inside each replicate); seeds: "
          + ", ".join(f"{t} {p['n_seeds']}" for t, p in run.per.items())
          + " (one seed: sample-level intervals only; several: hierarchical bootstrap over seeds, "
            "then samples).",
          "", f"Training settings: {run.inputs.get('train_settings', 'equal')}; training precision: "
          f"{run.inputs.get('precision', 'not recorded')}.", "", LEGEND, "",
          "## Is each task learned?", ""]
    md += [f"- {t}: {'learned' if p['learned'].learned else '**not learned**'} — "
           + "; ".join(p["learned"].reasons) for t, p in run.per.items()] + [""]
    for t, task in run.inputs["tasks"].items():
        if task.get("seeds_left_out"):
            md += [f"- {t}: seeds {task['seeds_left_out']} were scored on other dev samples (a per-seed "
                   "`dev_limit` subset) and are left out of the paired analysis.", ""]
    return md


def uncertainty_markdown(run: RunAnalysis) -> str:
    """uncertainty.md: the run's tables with intervals, significance and trivial baselines."""
    main, abl = main_methods(run.per)
    md = _uncertainty_head(run)
    for t in run.targets:
        md += [f"## Target {cells.target(t)}", "", *target_markdown(target_table(run, t, main))]
    for parent, variants in abl.items():
        for t in run.targets:
            md += [f"## Ablations of {parent} at {cells.target(t)}", "",
                   *target_markdown(target_table(run, t, [parent, *variants]))]
    md += ["## Area under each method's scored curve", "",
           "Mean metric over speed-up targets from 1 to S_max (each method's own curve of operating "
           "points under the protocol; no envelope over knobs).", "", *_auc_markdown(run, main)]
    md += [f"## {run.settings.subject} − each method", "", *_difference_markdown(run)]
    md += ["## Sanity: each model's deepest exit vs `single`", "",
           "A recipe's full-depth exit should score about as well as the plain fine-tune of the same "
           f"backbone; more than {GAP:g} points below is flagged as a likely training failure.", "",
           *sanity_markdown(run.sanity)]
    cost = ", ".join(f"{t} {run.passes[t]:.1f} s" for t in run.passes) or "not recorded"
    md += ["## Cost", "", f"This analysis: {run.seconds:.1f} s for {len(run.per)} task(s), from records and "
           f"exit files only; one full-depth recording pass per task: {cost}.", ""]
    return "\n".join(md)
