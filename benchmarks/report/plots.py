"""Every figure of a run (trade-off curves, exit histograms, the banded plot), styled alike.

Rendering only: the frames come from `rows`, the banded plot's curves from
`uncertainty.band_panels`. Each figure is saved as PNG and PDF by the function that draws it
(its one writer), and every method keeps one colour across all figures of all runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from de3bert.registry import METHODS  # noqa: E402

from ..results import FULL  # noqa: E402
from .rows import is_ablation_col  # noqa: E402
from .tables import at_target  # noqa: E402
from .uncertainty import BandPanel  # noqa: E402


def method_colours(methods: Iterable[str]) -> dict[str, tuple]:
    """One colour per method, the same in every plot of every run: fixed by the method's place in
    the registry (tab20's ten dark colours first, then its light ones, so neighbours differ)."""
    methods = set(methods)
    order = [*METHODS.names(), *sorted(methods - set(METHODS.names()))]
    tab20 = sns.color_palette("tab20", 20)
    palette = [tab20[i] for i in [*range(0, 20, 2), *range(1, 20, 2)]]
    return {m: palette[i % 20] for i, m in enumerate(order) if m in methods}


def _save(fig, path: Path) -> list[Path]:
    """Save a figure as PNG and PDF next to each other, then close it."""
    paths = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in paths:  # via a temp file: a killed report never leaves half a figure
        tmp = p.with_name(p.name + ".tmp")
        fig.savefig(tmp, bbox_inches="tight", dpi=130, format=p.suffix[1:])
        os.replace(tmp, p)
    plt.close(fig)
    return paths


def trade_off_plot(df: pd.DataFrame, path: Path, include_ablations: bool = False) -> list[Path]:
    """One panel per task, one line per method and seed (a seed's knob grid is its own, so seeds
    are not joined into one zig-zag line): headline metric against layer speed-up."""
    sub = df[(df["method"] != FULL) & ~df["report_only"].fillna(False).astype(bool)]
    if not include_ablations:
        sub = sub[~is_ablation_col(sub)]
    sub = sub.sort_values("speedup_layers")
    colours = method_colours(sub["method"].unique())
    grid = sns.relplot(data=sub, x="speedup_layers", y="score", hue="method", col="task", kind="line",
                       palette=colours, hue_order=list(colours),
                       col_order=list(dict.fromkeys(df["task"])),
                       marker="o", markersize=3, col_wrap=min(3, sub["task"].nunique()),
                       facet_kws={"sharey": False, "sharex": False}, height=3.2, aspect=1.2,
                       units="seed", estimator=None, sort=True, errorbar=None, lw=1)
    full = df[df["method"] == FULL].groupby("task")["score"].mean()
    for task, ax in grid.axes_dict.items():
        if task in full:
            ax.axhline(full[task], color="grey", ls="--", lw=1)
        ax.set_xlabel("layer speed-up (×)")
        ax.set_ylabel(df[df["task"] == task]["headline_metric"].iloc[0])
    seeds = "one line per seed; " if sub["seed"].nunique() > 1 else ""
    grid.figure.suptitle(f"metric vs layer speed-up ({seeds}dashed: full model)", y=1.02)
    grid.figure.subplots_adjust(hspace=0.35)
    return _save(grid.figure, path)


def exit_histogram_plot(df: pd.DataFrame, path: Path, target: float) -> list[Path]:
    """Share of samples leaving at each layer, per method, at one operating point."""
    sel = at_target(df, target)
    sel = sel[~is_ablation_col(sel)]
    recs = []
    for _, r in sel.iterrows():
        total = sum(r["exit_histogram"])
        for layer, c in enumerate(r["exit_histogram"], 1):
            recs.append({"task": r["task"], "method": r["method"], "layer": layer, "share": c / total})
    if not recs:
        return []
    hist = pd.DataFrame(recs)
    grid = sns.catplot(data=hist, x="layer", y="share", hue="method", col="task", kind="bar",
                       col_order=list(dict.fromkeys(hist["task"])),
                       col_wrap=min(3, hist["task"].nunique()), height=3.0, aspect=1.3)
    grid.figure.suptitle(f"exit-layer distribution at the {target:g}× operating point", y=1.02)
    return _save(grid.figure, path)


def legend_of_every_panel(axes) -> None:
    """One legend, right of the last panel (outside the bands), naming the methods of *every*
    panel: a task may lack some methods (e.g. a regression task), so no one panel's list is all."""
    shown = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[-1].legend(shown.values(), shown.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def band_plot(panels: list[BandPanel], path: Path) -> list[Path]:
    """Trade-off curves of the main methods with their 95% bootstrap bands, one panel per task."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    colours = method_colours({m for p in panels for m in p.curves})
    for ax, p in zip(axes[0], panels, strict=True):
        for m, c in p.curves.items():
            ax.plot(c["speedup"], c["metric"], label=m, color=colours[m], lw=1.2)
            ax.fill_between(c["speedup"], c["metric_lo"], c["metric_hi"], color=colours[m], alpha=0.15)
        ax.axhline(p.full_metric, color="grey", ls="--", lw=1)
        ax.set_title(p.task + ("" if p.learned else " (not learned)"))
        ax.set_xlabel("layer speed-up (×, scored folds)")
    axes[0][0].set_ylabel("metric")
    legend_of_every_panel(axes[0])
    return _save(fig, path)


def latency_load_plot(points: list[dict], path: Path) -> list[Path]:
    """One task's p99 latency against offered load (`serving.jsonl` point rows), one panel per
    scheduler, one line per contender, the SLO dashed."""
    scheds = list(dict.fromkeys(r["scheduler"] for r in points))
    colours = method_colours(r["method"] for r in points if r["method"] != FULL)
    styles = ["-", "--", ":"]  # one per target of a method
    fig, axes = plt.subplots(1, len(scheds), figsize=(5 * len(scheds), 4), squeeze=False, sharey=True)
    for ax, sched in zip(axes[0], scheds, strict=True):
        lines: dict[tuple, list] = {}
        for r in points:
            if r["scheduler"] == sched:
                lines.setdefault((r["method"], r["target"]), []).append((r["load"], r["p99_ms"]))
        targets = sorted({t for _, t in lines if t is not None})
        for (method, target), xy in lines.items():
            xs, ys = zip(*sorted(xy), strict=True)
            if method == FULL:
                ax.plot(xs, ys, marker="o", lw=2.5, color="black", label=method)
            else:
                ax.plot(xs, ys, marker="o", ms=4, lw=1, color=colours[method], label=f"{method}@{target:g}x",
                        ls=styles[targets.index(target) % len(styles)])
        ax.axhline(points[0]["slo_ms"], color="k", ls="--", lw=0.8)
        ax.set(title=sched, xlabel="offered load (× full model batch-1 capacity)", xscale="log", yscale="log")
    axes[0][0].set_ylabel("p99 latency (ms)")
    axes[0][-1].legend(fontsize=6, loc="upper left")
    return _save(fig, path)
