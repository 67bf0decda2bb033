"""How sure each comparison is: a finished run's records and exit files → cross-fitted operating
points, paired bootstrap intervals, significance, trivial baselines and the claims report.

Reads only `records/` and `exits/` (no model runs). The selection protocol and bootstrap settings
come from the run's profile (`selection`, `bootstrap`); the statistics are `benchmarks.stats`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from de3bert.engine import replay_predictions
from de3bert.record import load_record
from de3bert.registry import METHODS

from .analysis import indicator_scores
from .layout import RunLayout
from .profiles import BootstrapSettings
from .results import FULL, precision_label, read_rows
from .sanity import GAP, run_sanity, sanity_markdown
from .stats import bootstrap as st


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
    layers = {r: every_layer_predictions(rec) for r, rec in recs.items()}
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


def every_layer_predictions(record: dict) -> np.ndarray:
    """`[L, N]` predictions of a recorded model at each of its exits (the model checks read them)."""
    L, n = record["logits"].shape[:2]
    return replay_predictions(record, torch.arange(1, L + 1)[:, None].expand(L, n)).numpy()


def run_inputs(layout: RunLayout, settings: Settings) -> dict:
    """The claims input structure (see `benchmarks.claims`) of a finished run."""
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


def analyse_run(layout: RunLayout) -> tuple[dict, dict, Settings, float]:
    """(inputs, per-task analyses, settings, seconds) for a finished run."""
    from .claims import analyse_tasks

    settings = settings_of(layout)
    t0 = time.perf_counter()
    inputs = run_inputs(layout, settings)
    per = analyse_tasks(inputs, n_boot=settings.replicates, seed=settings.seed, ci=settings.ci)
    return inputs, per, settings, time.perf_counter() - t0


# ---- tables ----------------------------------------------------------------------------------------
LEGEND = ("Cells: estimate ±half-width of the 95% interval (achieved layer speed-up on the scored "
          "samples). **bold** = best deployable method, significantly better than the runner-up after "
          "Benjamini–Hochberg control across the table's columns; `tie` = best point estimate but not "
          "distinguishable from the runner-up; `≈full` = not distinguishable from the full model; "
          "† uses labels (head-room only). Tasks marked *not learned* (full model below its "
          "bar over the trivial predictor) are excluded from claims.")


def _cell(a: st.Analysis, m: str, t: float) -> str:
    iv, sp = a.interval(m, "metric", t), a.interval(m, "speedup", t)
    return f"{iv.estimate:.1f} ±{iv.half_width:.1f} ({sp.estimate:.2f}×)"


def _column(name: str, p: dict, t: float, methods: list[str], deployable: list[str], alpha: float) -> dict:
    """One task's cells at target t, with the significance and full-model markers."""
    a = p["analysis"]
    have = [m for m in methods if m in a.methods]
    cells = {m: _cell(a, m, t) for m in have}
    dep = [m for m in deployable if m in a.methods]
    if len(dep) >= 1:
        best = st.significant_best({name: (a, t)}, dep, alpha=alpha)[0]
        cells[best.best] = f"**{cells[best.best]}**" if best.bold else f"{cells[best.best]} tie"
    near = st.vs_full_model(a, FULL, [m for m in have if m != FULL], [t], alpha)
    for (m, _), v in near.items():
        if v["not_distinguishable"]:
            cells[m] += " ≈full"
    full = a.interval(FULL, "metric", t)
    cells[FULL] = f"{full.estimate:.1f} ±{full.half_width:.1f} (1.00×)"
    cells["trivial predictor"] = f"{p['learned'].trivial[next(iter(p['learned'].trivial))]:.1f}"
    return cells


def target_table(inputs: dict, per: dict, t: float, methods: list[str], settings: Settings) -> list[str]:
    """A Markdown table: methods × tasks at target t, with intervals and markers."""
    import pandas as pd

    cols = {}
    for task, p in per.items():
        if t not in inputs["tasks"][task]["targets"] or not set(methods) & set(p["analysis"].methods):
            continue  # e.g. DE³'s ablations on a regression task: no column of full model alone
        deployable = [m for m in methods if _method(m) and not _method(m).report_only]
        label = task if p["learned"].learned else f"{task} (not learned)"
        cols[label] = _column(task, p, t, methods, deployable, settings.alpha)
    if not cols:
        return []
    order = [FULL, "trivial predictor", *methods]
    df = pd.DataFrame(cols).reindex([m for m in order if any(m in c for c in cols.values())]).fillna("–")
    df.index = [f"{m} †" if _method(m) and _method(m).report_only else m for m in df.index]
    return [df.to_markdown(), ""]


def difference_table(inputs: dict, per: dict, settings: Settings) -> list[str]:
    """Subject − every other method at every target: interval and q-value (BH per task)."""
    lines = ["| task | target | comparison | difference [95% CI] | q |", "|---|---|---|---|---|"]
    for task, p in per.items():
        a = p["analysis"]
        if settings.subject not in a.methods:
            continue
        others = [m for m in a.methods if m != settings.subject]
        for c in st.compare(a, [(settings.subject, m) for m in others], "metric",
                            inputs["tasks"][task]["targets"]):
            iv = c.interval
            lines.append(f"| {task} | {c.target:g}× | {c.a} − {c.b} | {iv.estimate:+.1f} "
                         f"[{iv.lo:+.1f}, {iv.hi:+.1f}] | {c.q:.3f} |")
    return lines + [""] if len(lines) > 2 else []


def auc_table(per: dict, methods: list[str]) -> list[str]:
    """Area under each method's own scored curve (mean metric over speed-up), with intervals."""
    import pandas as pd

    cols = {}
    for task, p in per.items():
        a = p["analysis"]
        cols[task] = {m: f"{a.interval(m, 'auc').estimate:.1f} ±{a.interval(m, 'auc').half_width:.1f}"
                      for m in methods if m in a.methods and (m, "auc", None) in a.names}
    df = pd.DataFrame(cols).fillna("–")
    return [df.to_markdown(), ""] if len(df) else []


def _one_pass_seconds(layout: RunLayout) -> dict[str, float]:
    """Seconds of one full-depth recording pass per task (from run.json), the analysis's yardstick."""
    path = layout.out / "run.json"
    if not path.is_file():
        return {}
    stats = json.loads(path.read_text()).get("replay_stats", {})
    return {t: s["record_seconds"] / s["records"] for t, s in stats.items() if s.get("records")}


def _main_methods(per: dict) -> tuple[list[str], dict[str, list[str]]]:
    """(methods that are not ablations, {method: its ablations}) in the order the run has them."""
    names = list(dict.fromkeys(m for p in per.values() for m in p["analysis"].methods if m != FULL))
    main = [m for m in names if not (_method(m) and _method(m).ablation_of)]
    abl: dict[str, list[str]] = {}
    for m in names:
        parent = _method(m).ablation_of if _method(m) else ""
        if parent:
            abl.setdefault(parent, []).append(m)
    return main, abl


def _train_settings(inputs: dict) -> str:
    return inputs.get("train_settings", "equal")


def uncertainty_markdown(inputs: dict, per: dict, settings: Settings, seconds: float,
                         passes: dict[str, float], sanity: list | None = None) -> str:
    """tables/uncertainty.md: the run's tables with intervals, significance and trivial baselines."""
    main, abl = _main_methods(per)
    targets = sorted({t for task in inputs["tasks"].values() for t in task["targets"]})
    any_a = next(iter(per.values()))["analysis"]
    md = ["# Early exit at equal layer speed-up, with uncertainty", "",
          f"Selection protocol: **{settings.selection}** ({st.PROTOCOL_LABELS.get(settings.selection, '')}); "
          f"{settings.replicates} paired bootstrap replicates ({any_a.ci} intervals, the same resampled "
          "dev indices for every method, selection redone inside each replicate); seeds: "
          + ", ".join(f"{t} {p['n_seeds']}" for t, p in per.items())
          + " (one seed: sample-level intervals only; several: hierarchical bootstrap over seeds, "
            "then samples).",
          "", f"Training settings: {_train_settings(inputs)}; training precision: "
          f"{inputs.get('precision', 'not recorded')}.", "", LEGEND, "",
          "## Is each task learned?", ""]
    md += [f"- {t}: {'learned' if p['learned'].learned else '**not learned**'} — "
           + "; ".join(p["learned"].reasons) for t, p in per.items()] + [""]
    for t, task in inputs["tasks"].items():
        if task.get("seeds_left_out"):
            md += [f"- {t}: seeds {task['seeds_left_out']} were scored on other dev samples (a per-seed "
                   "`dev_limit` subset) and are left out of the paired analysis.", ""]
    for t in targets:
        md += [f"## Target {t:g}×", "", *target_table(inputs, per, t, main, settings)]
    for parent, variants in abl.items():
        for t in targets:
            md += [f"## Ablations of {parent} at {t:g}×", "",
                   *target_table(inputs, per, t, [parent, *variants], settings)]
    md += ["## Area under each method's scored curve", "",
           "Mean metric over speed-up targets from 1 to S_max (each method's own curve of operating "
           "points under the protocol; no envelope over knobs).", "", *auc_table(per, main)]
    md += [f"## {settings.subject} − each method", "", *difference_table(inputs, per, settings)]
    md += ["## Sanity: each model's deepest exit vs `single`", "",
           "A recipe's full-depth exit should score about as well as the plain fine-tune of the same "
           f"backbone; more than {GAP:g} points below is flagged as a likely training failure.", "",
           *sanity_markdown(sanity or [])]
    cost = ", ".join(f"{t} {passes[t]:.1f} s" for t in passes) or "not recorded"
    md += ["## Cost", "", f"This analysis: {seconds:.1f} s for {len(per)} task(s), from records and "
           f"exit files only; one full-depth recording pass per task: {cost}.", ""]
    return "\n".join(md)


def legend_of_every_panel(axes) -> None:
    """One legend, right of the last panel (outside the bands), naming the methods of *every*
    panel: a task may lack some methods (e.g. a regression task), so no one panel's list is all."""
    shown = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[-1].legend(shown.values(), shown.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def band_plot(per: dict, path) -> list:
    """Trade-off curves of the main methods with their 95% bootstrap bands, one panel per task."""
    import matplotlib.pyplot as plt

    from .plotstyle import method_colours

    main, _ = _main_methods(per)
    fig, axes = plt.subplots(1, len(per), figsize=(4.2 * len(per), 3.4), squeeze=False)
    colours = method_colours(main)
    for ax, (task, p) in zip(axes[0], per.items(), strict=True):
        a = p["analysis"]
        for m in [m for m in main if m in a.methods and not (_method(m) and _method(m).report_only)]:
            c = a.curve(m)
            ax.plot(c["speedup"], c["metric"], label=m, color=colours[m], lw=1.2)
            ax.fill_between(c["speedup"], c["metric_lo"], c["metric_hi"], color=colours[m], alpha=0.15)
        full = next(a.point[i] for i, n in enumerate(a.names) if n[0] == FULL and n[1] == "metric")
        ax.axhline(full, color="grey", ls="--", lw=1)
        ax.set_title(task + ("" if p["learned"].learned else " (not learned)"))
        ax.set_xlabel("layer speed-up (×, scored folds)")
    axes[0][0].set_ylabel("metric")
    legend_of_every_panel(axes[0])
    paths = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for q in paths:
        fig.savefig(q, bbox_inches="tight", dpi=130)
    plt.close(fig)
    return paths


def write_uncertainty(layout: RunLayout) -> list:
    """tables/uncertainty.md + .json, tables/claims.md + .json and the banded trade-off plot."""
    from .claims import _jsonable, build_claims, claims_markdown

    inputs, per, settings, seconds = analyse_run(layout)
    passes = _one_pass_seconds(layout)
    layout.tables.mkdir(parents=True, exist_ok=True)
    layout.plots.mkdir(parents=True, exist_ok=True)
    md = layout.tables / "uncertainty.md"
    md.write_text(uncertainty_markdown(inputs, per, settings, seconds, passes, run_sanity(layout)))
    claims = build_claims(inputs, de3=settings.subject, alpha=settings.alpha, n_boot=settings.replicates,
                          seed=settings.seed, analyses=per)
    claims["cost"] = {"analysis_seconds": seconds, "one_pass_seconds": passes}
    cmd, cjs = layout.tables / "claims.md", layout.tables / "claims.json"
    cmd.write_text(claims_markdown(claims) + "\n")
    cjs.write_text(json.dumps(_jsonable(claims), indent=1, ensure_ascii=False) + "\n")
    js = layout.tables / "uncertainty.json"
    js.write_text(json.dumps(_jsonable({"settings": settings.__dict__, "seconds": seconds,
                                        "one_pass_seconds": passes, "cells": _cells_json(per)}),
                             indent=1, ensure_ascii=False) + "\n")
    return [md, js, cmd, cjs, *band_plot(per, layout.plots / "tradeoff_intervals")]


def _cells_json(per: dict) -> list[dict]:
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
