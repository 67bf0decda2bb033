"""The one writer of each report file of a run: compute (`tables`, `analysis`, `uncertainty`,
`claims`), render (`markdown`, `markdown_claims`, `latex`, `jsonout`, `plots`), write.

Every file under <out>/tables and every figure has exactly one function that writes it, so two
code paths can never disagree about a file's contents: results.md/.tex (`write_results`),
operating_points.md (`write_operating_points`), indicators.md (`write_indicators`),
uncertainty.md/.json (`write_uncertainty`), claims.md/.json (`claims.write_claims`, called from
`write_uncertainty` with the run's analyses), serving.md and the latency-vs-load figures
(`write_serving`, from serving.jsonl), figures (the `plots` function that draws each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from de3bert.record import atomic_write_text

from ..layout import RunLayout
from ..results import FULL
from . import plots
from .analysis import analyse, overhead
from .claims import write_claims
from .jsonout import json_text
from .latex import results_latex
from .markdown import indicators_markdown, operating_points_markdown, results_markdown, uncertainty_markdown
from .rows import ablated_methods, load_rows, targets_of
from .serving import serving_markdown
from .tables import operating_points
from .uncertainty import analyse_run, band_panels, interval_records


def write_results(layout: RunLayout, df: pd.DataFrame) -> list[Path]:
    """tables/results.md and results.tex: the point-estimate tables at every target."""
    md, tex = layout.tables / "results.md", layout.tables / "results.tex"
    atomic_write_text(md, results_markdown(df, targets_of(df)))
    atomic_write_text(tex, results_latex(df, targets_of(df)))
    return [md, tex]


def write_operating_points(layout: RunLayout, df: pd.DataFrame) -> list[Path]:
    """tables/operating_points.md: knob, layer speed-up and metric per task, method, target, seed."""
    chosen = {s for s in df.get("operating_point_selection", []) if isinstance(s, str)} or {"dev"}
    selection = " + ".join(f"`{s}`" for s in sorted(chosen))
    if selection == "`dev`":
        selection += (" (each knob tuned on the dev split it is scored on, as in `results.md`; "
                      "`uncertainty.md` chooses it again by its own protocol)")
    path = layout.tables / "operating_points.md"
    atomic_write_text(path, operating_points_markdown(operating_points(df.to_dict("records")), selection))
    return [path]


def write_figures(layout: RunLayout, df: pd.DataFrame) -> list[Path]:
    """The trade-off plots (main methods; each method with its ablations) and the exit histogram."""
    written = plots.trade_off_plot(df, layout.plots / "tradeoff")
    for parent, variants in ablated_methods(df).items():
        keep = df["method"].isin([parent, *variants, FULL])
        written += plots.trade_off_plot(df[keep], layout.plots / f"tradeoff_{parent}_ablations",
                                        include_ablations=True)
    if targets_of(df):
        written += plots.exit_histogram_plot(df, layout.plots / "exit_histogram", max(targets_of(df)))
    return written


def write_indicators(layout: RunLayout) -> list[Path]:
    """tables/indicators.md: per-layer metrics, indicator AUROCs, oracle, exit-head overheads."""
    path = layout.tables / "indicators.md"
    atomic_write_text(path, indicators_markdown(analyse(layout)))
    return [path]


def write_uncertainty(layout: RunLayout) -> list[Path]:
    """tables/uncertainty.md + .json, tables/claims.md + .json (through `write_claims`) and the
    banded trade-off plot, from one analysis of the run's records and exit files."""
    run = analyse_run(layout)
    s = run.settings
    md, js = layout.tables / "uncertainty.md", layout.tables / "uncertainty.json"
    atomic_write_text(md, uncertainty_markdown(run))
    ov = overhead(layout)  # claim 3: DE³'s exit-head cost per layer, next to the plain heads'
    if not ov.empty:
        run.inputs["overhead"] = ov[ov["recipe"].isin([s.subject, "weighted"])].to_dict("records")
    claims = write_claims(run.inputs, layout.tables, de3=s.subject, alpha=s.alpha, n_boot=s.replicates,
                          seed=s.seed, analyses=run.per,
                          cost={"analysis_seconds": run.seconds, "one_pass_seconds": run.passes})
    atomic_write_text(js, json_text({"settings": s.__dict__, "seconds": run.seconds,
                                     "one_pass_seconds": run.passes, "cells": interval_records(run.per)}))
    return [md, js, *claims, *plots.band_plot(band_panels(run), layout.plots / "tradeoff_intervals")]


def write_serving(layout: RunLayout) -> list[Path]:
    """tables/serving.md (every task in serving.jsonl) and one latency-vs-load figure per task;
    nothing when the run has no load benchmark."""
    if not layout.serving.is_file():
        return []
    rows = [json.loads(line) for line in layout.serving.read_text().splitlines() if line.strip()]
    path = layout.tables / "serving.md"
    layout.tables.mkdir(parents=True, exist_ok=True)
    layout.plots.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, serving_markdown(rows))
    written = [path]
    for task in dict.fromkeys(r["task"] for r in rows if r.get("kind") == "point"):
        points = [r for r in rows if r.get("kind") == "point" and r["task"] == task]
        written += plots.latency_load_plot(points, layout.plots / f"serving_{task}")
    return written


def write_reports(out: str | Path | RunLayout, plots_dir: str | Path | None = None) -> list[Path]:
    """Write the run's tables (<out>/tables) and figures (the layout's plots folder); the paths."""
    layout = out if isinstance(out, RunLayout) else RunLayout.for_run("", out, plots_dir)
    df = load_rows(layout)
    layout.tables.mkdir(parents=True, exist_ok=True)
    layout.plots.mkdir(parents=True, exist_ok=True)
    written = write_results(layout, df) + write_operating_points(layout, df) + write_figures(layout, df)
    return written + write_indicators(layout) + write_uncertainty(layout) + write_serving(layout)
