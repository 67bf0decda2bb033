"""How sure each comparison is: a finished run's records and exit files → cross-fitted operating
points, paired bootstrap intervals, significance and trivial baselines (uncertainty.md/.json, the
banded plot, and the input of the claims report).

Reads only `records/` and `exits/` (no model runs). The selection protocol and bootstrap settings
come from the run's profile (`selection`, `bootstrap`); the statistics are `benchmarks.stats`.
Computing only: `analyse_run` and the table functions return typed values (`TargetTable`,
comparisons, intervals, `BandPanel`); `markdown`, `jsonout` and `plots` render them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from de3bert.engine import replay_predictions
from de3bert.record import load_record
from de3bert.registry import METHODS, get_recipe

from ..layout import RunLayout
from ..profiles import BootstrapSettings
from ..results import FULL, read_rows
from ..sanity import SanityRow, run_sanity
from ..stats import bootstrap as st
from .analysis import indicator_scores
from .claims import analyse_tasks
from .rows import precision_label


@dataclass(frozen=True)
class Settings(BootstrapSettings):
    """How a run's uncertainty is computed: the profile's `bootstrap` block and its `selection`."""

    selection: str = "crossfit"
    """Operating-point protocol: crossfit (default) or dev (the literature's)."""


def settings_of(layout: RunLayout) -> Settings:
    """The run's settings from its profile.json (defaults when absent)."""
    path = layout.out / "profile.json"
    prof = json.loads(path.read_text()) if path.is_file() else {}
    boot = prof.get("bootstrap") or {}
    return Settings(selection=prof.get("selection", "crossfit"), **boot)


def _method(name: str):
    return METHODS.get(name) if name in METHODS else None


def _seed_block(layout: RunLayout, task: str, seed: int, methods: list[str], recipes: dict) -> tuple:
    """MethodRecords (exits, preds) and indicator scores of one (task, seed), and its labels."""
    recs: dict[str, dict] = {}
    for recipe in {recipes[m] for m in methods} | {"single"}:
        recs[recipe] = load_record(layout.record(task, recipe, seed))
    labels = recs["single"]["labels"]
    L = recs["single"]["logits"].shape[0]
    out = {FULL: {"exits": np.full((1, labels.numel()), L),
                  "preds": replay_predictions(recs["single"], torch.full((1, labels.numel()), L)).numpy()}}
    layers = {r: every_layer_predictions(rec, r) for r, rec in recs.items()}
    for m in methods:
        side = json.loads(layout.exits(task, m, seed).read_text())
        exits = torch.tensor(side["exit_layers"])
        out[m] = {"exits": exits.numpy(), "preds": replay_predictions(recs[recipes[m]], exits).numpy(),
                  "layers": layers[recipes[m]]}
    indicators = {}
    for recipe, rec in recs.items():
        if rec["logits"].shape[-1] > 1:
            for name, (score, correct) in indicator_scores(recipe, rec).items():
                if name in methods:
                    indicators[name] = {"score": score, "correct": correct}
    return out, indicators, labels.numpy(), L


def every_layer_predictions(record: dict, recipe: str) -> np.ndarray:
    """`[D, N]` predictions of a recorded model at each exit it trained, D = the recipe's
    `deepest_exit` (the model checks read the last one as the model's full-depth answer)."""
    L, n = record["logits"].shape[:2]
    D = get_recipe(recipe).deepest_exit(L)
    return replay_predictions(record, torch.arange(1, D + 1)[:, None].expand(D, n)).numpy()


def run_inputs(layout: RunLayout, settings: Settings) -> dict:
    """The claims input structure (see `benchmarks.report.claims`) of a finished run."""
    rows = read_rows(layout.results)
    tasks: dict[str, dict] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task]
        methods = list(dict.fromkeys(r["method"] for r in trows if r["method"] != FULL))
        recipes = {r["method"]: r["recipe"] for r in trows}
        seeds, labels, L, left_out = {}, None, None, []
        for seed in sorted({r["seed"] for r in trows}):
            have = [m for m in methods if layout.exits(task, m, seed).is_file()]
            recs, ind, y, L = _seed_block(layout, task, seed, have, recipes)
            if labels is not None and not np.array_equal(labels, y):
                left_out.append(seed)  # another dev subset (dev_limit): not pairable with the first
                continue
            labels, seeds[str(seed)] = y, {"methods": recs, "indicators": ind}
        tasks[task] = {"metric": trows[0]["headline_metric"], "n_layers": L, "labels": labels,
                       "targets": sorted({t for r in trows for t in (r.get("operating_point") or [])}),
                       "full_model": FULL, "seeds": seeds, "baselines": _baselines(methods, settings),
                       "seeds_left_out": left_out}
    modes = sorted({(r.get("train_settings") or {}).get("train_settings", "equal") for r in rows})
    return {"protocol": settings.selection, "tasks": tasks, "train_settings": " + ".join(modes),
            "precision": precision_label(r.get("train_precision") for r in rows),
            "indicator_pairs": _indicator_pairs(tasks, settings)}


def _baselines(methods: list[str], settings: Settings) -> list[str]:
    """Deployable methods outside the subject's family (no ablations, no label-using oracle)."""
    subject = _method(settings.subject)
    out = []
    for m in methods:
        meth = _method(m)
        if meth and not meth.report_only and not meth.ablation_of and meth.family != subject.family:
            out.append(m)
    return out


def _indicator_pairs(tasks: Mapping[str, dict], settings: Settings) -> list[list[str]]:
    """Claim 2's pairs: the subject's indicator against every other indicator recorded."""
    names = {n for t in tasks.values() for s in t["seeds"].values() for n in s["indicators"]}
    return [[settings.subject, n] for n in sorted(names) if n != settings.subject] \
        if settings.subject in names else []


@dataclass(frozen=True)
class RunAnalysis:
    """Everything uncertainty.md, uncertainty.json, the banded plot and the claims are made from."""

    inputs: dict
    """The claims input structure (`run_inputs`)."""
    per: dict[str, dict]
    """Per task: `analysis`, `indicators`, `learned`, `models`, `n_seeds` (`claims.analyse_tasks`)."""
    settings: Settings
    seconds: float
    """Seconds the analysis took."""
    passes: dict[str, float]
    """Seconds of one full-depth recording pass per task (`one_pass_seconds`)."""
    sanity: list[SanityRow] = field(default_factory=list)

    @property
    def targets(self) -> list[float]:
        """Every target of any task, ascending."""
        return sorted({t for task in self.inputs["tasks"].values() for t in task["targets"]})

    @property
    def ci(self) -> str:
        """The interval method the analyses used."""
        return next(iter(self.per.values()))["analysis"].ci

    @property
    def protocol_label(self) -> str:
        """The selection protocol in words."""
        return st.PROTOCOL_LABELS.get(self.settings.selection, "")


def analyse_run(layout: RunLayout) -> RunAnalysis:
    """Analyse a finished run from its records and exit files (and its sanity rows)."""
    settings = settings_of(layout)
    t0 = time.perf_counter()
    inputs = run_inputs(layout, settings)
    per = analyse_tasks(inputs, n_boot=settings.replicates, seed=settings.seed, ci=settings.ci)
    seconds = time.perf_counter() - t0
    return RunAnalysis(inputs, per, settings, seconds, one_pass_seconds(layout), run_sanity(layout))


def one_pass_seconds(layout: RunLayout) -> dict[str, float]:
    """Seconds of one full-depth recording pass per task (from run.json), the analysis's yardstick."""
    path = layout.out / "run.json"
    if not path.is_file():
        return {}
    stats = json.loads(path.read_text()).get("replay_stats", {})
    return {t: s["record_seconds"] / s["records"] for t, s in stats.items() if s.get("records")}


def main_methods(per: Mapping[str, dict]) -> tuple[list[str], dict[str, list[str]]]:
    """(methods that are not ablations, {method: its ablations}) in the order the run has them."""
    names = list(dict.fromkeys(m for p in per.values() for m in p["analysis"].methods if m != FULL))
    main = [m for m in names if not (_method(m) and _method(m).ablation_of)]
    abl: dict[str, list[str]] = {}
    for m in names:
        parent = _method(m).ablation_of if _method(m) else ""
        if parent:
            abl.setdefault(parent, []).append(m)
    return main, abl


def uses_labels(method: str) -> bool:
    """A report-only method (the oracle): its cells are head-room, never a result (†)."""
    return bool(_method(method) and _method(method).report_only)


# ---- the tables' contents ----------------------------------------------------------------------
TRIVIAL = "trivial predictor"  # the row of the trivial predictor's score in a target table


@dataclass(frozen=True)
class TargetCell:
    """One method's cell at a target: metric interval, achieved speed-up and its markers."""

    metric: st.Interval
    speedup: float
    best: str = ""
    """'bold' (best, significantly ahead of the runner-up after BH), 'tie' (best point estimate
    only) or ''."""
    near_full: bool = False
    """Not distinguishable from the full model."""


@dataclass(frozen=True)
class TargetTable:
    """Methods × tasks at one target; a column holds `TargetCell`s and the trivial predictor's score."""

    target: float
    columns: dict[str, dict[str, TargetCell | float]]
    rows: list[str]
    """Row order: the full model, the trivial predictor, then the methods any column has."""
    learned: dict[str, bool]
    """Per column (task): whether the task was learned."""


def _column(task: str, p: dict, t: float, methods: list[str], alpha: float) -> dict[str, TargetCell | float]:
    """One task's cells at target t, with the significance and full-model markers."""
    a = p["analysis"]
    have = [m for m in methods if m in a.methods]
    best = {}
    dep = [m for m in methods if m in a.methods and _method(m) and not _method(m).report_only]
    if dep:
        top = st.significant_best({task: (a, t)}, dep, alpha=alpha)[0]
        best[top.best] = "bold" if top.bold else "tie"
    near = st.vs_full_model(a, FULL, [m for m in have if m != FULL], [t], alpha)
    close = {m for (m, _), v in near.items() if v["not_distinguishable"]}
    col: dict[str, TargetCell | float] = {
        m: TargetCell(a.interval(m, "metric", t), a.interval(m, "speedup", t).estimate, best.get(m, ""),
                      m in close) for m in have}
    col[FULL] = TargetCell(a.interval(FULL, "metric", t), 1.0)
    col[TRIVIAL] = p["learned"].trivial[next(iter(p["learned"].trivial))]
    return col


def target_table(run: RunAnalysis, t: float, methods: list[str]) -> TargetTable | None:
    """Methods × tasks at target t, with intervals and markers (None: no task has them there)."""
    cols = {}
    for task, p in run.per.items():
        if t not in run.inputs["tasks"][task]["targets"] or not set(methods) & set(p["analysis"].methods):
            continue  # e.g. DE³'s ablations on a regression task: no column of full model alone
        cols[task] = _column(task, p, t, methods, run.settings.alpha)
    if not cols:
        return None
    order = [FULL, TRIVIAL, *methods]
    rows = [m for m in order if any(m in c for c in cols.values())]
    return TargetTable(t, cols, rows, {task: run.per[task]["learned"].learned for task in cols})


def subject_differences(run: RunAnalysis) -> list[tuple[str, st.Comparison]]:
    """(task, subject − method) at every target, BH-adjusted per task."""
    subject, out = run.settings.subject, []
    for task, p in run.per.items():
        a = p["analysis"]
        if subject not in a.methods:
            continue
        others = [m for m in a.methods if m != subject]
        out += [(task, c) for c in st.compare(a, [(subject, m) for m in others], "metric",
                                              run.inputs["tasks"][task]["targets"])]
    return out


def auc_intervals(run: RunAnalysis, methods: list[str]) -> dict[str, dict[str, st.Interval]]:
    """Per task: the area under each method's own scored curve (mean metric over speed-up)."""
    return {task: {m: p["analysis"].interval(m, "auc") for m in methods
                   if m in p["analysis"].methods and (m, "auc", None) in p["analysis"].names}
            for task, p in run.per.items()}


def interval_records(per: Mapping[str, dict]) -> list[dict]:
    """Every (task, method, quantity, target) estimate with its interval, for other tools."""
    out = []
    for task, p in per.items():
        a = p["analysis"]
        for m, q, t in a.names:
            if q in ("metric", "speedup", "auc"):
                iv = a.interval(m, q, t)
                out.append({"task": task, "method": m, "quantity": q, "target": t,
                            "estimate": iv.estimate, "lo": iv.lo, "hi": iv.hi, "ci": iv.method})
    return out


@dataclass(frozen=True)
class BandPanel:
    """One task's panel of the banded plot: each deployable main method's scored curve and band."""

    task: str
    learned: bool
    full_metric: float
    curves: dict[str, dict[str, np.ndarray]]
    """Per method: `speedup`, `metric`, `metric_lo`, `metric_hi` along its curve."""


def band_panels(run: RunAnalysis) -> list[BandPanel]:
    """The banded plot's panels, one per task."""
    main, _ = main_methods(run.per)
    panels = []
    for task, p in run.per.items():
        a = p["analysis"]
        curves = {m: a.curve(m) for m in main if m in a.methods and not uses_labels(m)}
        full = next(a.point[i] for i, n in enumerate(a.names) if n[0] == FULL and n[1] == "metric")
        panels.append(BandPanel(task, p["learned"].learned, float(full), curves))
    return panels
