"""Paper-style tables (Markdown, LaTeX), curve areas and seaborn trade-off plots from results.jsonl."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from de3bert.registry import METHODS  # noqa: E402

from .layout import RunLayout  # noqa: E402
from .plotstyle import method_colours  # noqa: E402
from .results import FULL, check_one_configuration, precision_label, read_rows  # noqa: E402


def ablation_of(row: dict) -> str:
    """The method a row's method ablates ('' for a method in its own right): recorded in the row,
    else declared by the registered method (rows written before the field existed)."""
    if "ablation_of" in row:
        return row["ablation_of"] or ""
    return METHODS.get(row["method"]).ablation_of if row["method"] in METHODS else ""


def load_rows(out: str | Path | RunLayout) -> pd.DataFrame:
    """A run's rows as a frame, with the headline `score` and the `ablation_of` column filled."""
    path = out.results if isinstance(out, RunLayout) else Path(out) / "results.jsonl"
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    check_one_configuration(rows)
    for r in rows:
        r["ablation_of"] = "" if r["method"] == FULL else ablation_of(r)
    df = pd.DataFrame(rows)
    df["score"] = [m[h] for m, h in zip(df["metric"], df["headline_metric"], strict=True)]
    return df


def ablated_methods(df: pd.DataFrame) -> dict[str, list[str]]:
    """{method: [its ablations]} for every method in the frame that has ablations."""
    out: dict[str, list[str]] = {}
    for method, parent in df.drop_duplicates("method")[["method", "ablation_of"]].itertuples(index=False):
        if parent:
            out.setdefault(parent, []).append(method)
    return out


def is_ablation_col(df: pd.DataFrame) -> pd.Series:
    """Boolean mask of the frame's ablation rows."""
    return df["ablation_of"].fillna("").astype(bool)


def operating_table(df: pd.DataFrame, target: float, methods: list[str] | None = None) -> pd.DataFrame:
    """Rows = methods, columns = tasks: 'metric (achieved layer speed-up)' at the target."""
    sel = df[df["operating_point"].apply(lambda v: isinstance(v, list) and target in v)]
    if methods is not None:
        sel = sel[sel["method"].isin(methods)]
    table: dict[str, dict[str, str]] = {}
    best: dict[str, float] = {}
    for task, g in sel.groupby("task", sort=False):
        scores = g.groupby("method")["score"].mean()
        deployable = [m for m in scores.index if not g[g["method"] == m]["report_only"].any()]
        best[task] = scores[deployable].max() if deployable else np.nan
    for (method, task), g in sel.groupby(["method", "task"], sort=False):
        s, sp = g["score"].mean(), g["speedup_layers"].mean()
        mark = "^" if np.isclose(s, best.get(task, np.nan)) and not g["report_only"].any() else ""
        table.setdefault(method, {})[task] = f"{s:.1f}{mark} ({sp:.2f}×)"
    full = df[df["method"] == FULL].groupby("task")["score"].mean()
    table = {FULL: {t: f"{v:.1f} (1.00×)" for t, v in full.items()}, **table}
    tasks = list(dict.fromkeys(df["task"]))
    return pd.DataFrame(table).T.reindex(columns=tasks).fillna("–")


def _latex(df: pd.DataFrame) -> str:
    return df.to_latex(escape=True).replace(r"\*\*", "").replace("**", "")


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
    paths = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in paths:
        grid.figure.savefig(p, bbox_inches="tight", dpi=130)
    plt.close(grid.figure)
    return paths


def exit_histogram_plot(df: pd.DataFrame, path: Path, target: float) -> list[Path]:
    """Share of samples leaving at each layer, per method, at one operating point."""
    sel = df[df["operating_point"].apply(lambda v: isinstance(v, list) and target in v)]
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
    paths = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in paths:
        grid.figure.savefig(p, bbox_inches="tight", dpi=130)
    plt.close(grid.figure)
    return paths


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    """The three speed-ups (and live = replay) at every timed operating point."""
    speed = df[df["speedup_wallclock"].notna() & (df["method"] != FULL)]
    cols = ["task", "method", "knob", "speedup_layers", "speedup_flops", "speedup_layers_timed_subset",
            "speedup_wallclock", "speedup_wallclock_b32", "speedup_wallclock_model", "live_agrees",
            "live_disagreements", "live_checked"]
    s = speed[[c for c in cols if c in speed.columns]].copy()
    if "speedup_layers_timed_subset" in s:
        s["wallclock/layers (subset)"] = s["speedup_wallclock"] / s["speedup_layers_timed_subset"]
        s = s.rename(columns={"speedup_layers_timed_subset": "layers (timed subset)"})
    s["knob"] = s["knob"].apply(lambda k: f"{k['name']}={k['value']:.4g}")
    return s.round(3)


def train_settings_label(df: pd.DataFrame) -> str:
    """Which `train_settings` made the rows (`equal`: one budget for every method; `original`:
    each method's published settings), as every table must say."""
    if "train_settings" not in df:
        return "equal (one budget for every method)"
    modes = sorted({(t or {}).get("train_settings", "equal") for t in df["train_settings"]
                    if isinstance(t, dict)} or {"equal"})
    words = {"equal": "equal (one budget for every method)",
             "original": "original (each method's published settings; README table)"}
    return " + ".join(words.get(m, m) for m in modes)


def tables_markdown(df: pd.DataFrame, targets: list[float]) -> tuple[list[str], list[str]]:
    """The Markdown and LaTeX parts of results.md/.tex: main tables, ablations, areas, speed-ups."""
    md = ["# Early exit at equal layer speed-up (selection: dev, point estimates)", "",
          "The literature's protocol: each knob tuned and scored on the same dev split, no intervals. "
          "Cells: headline dev metric (achieved layer speed-up); `^` = highest point estimate, which "
          "says nothing about significance: see `uncertainty.md` for cross-fitted operating points, "
          "95% intervals and which differences are real; the oracle uses labels (head-room only).", "",
          f"Training settings: {train_settings_label(df)}; training precision: "
          f"{precision_label(df['train_precision'] if 'train_precision' in df else [None])}.", ""]
    tex = []
    main = list(df[~is_ablation_col(df)]["method"].unique())
    for t in targets:
        tab = operating_table(df, t, main)
        md += [f"## Target {t:g}×", "", tab.to_markdown(), ""]
        tex += [f"% target {t:g}x", _latex(tab)]
    for parent, variants in ablated_methods(df).items():
        for t in targets:
            tab = operating_table(df, t, [parent, *variants])
            md += [f"## Ablations of {parent} at {t:g}×", "", tab.to_markdown(), ""]
            tex += [f"% ablations of {parent}, target {t:g}x", _latex(tab)]
    md += ["The area under each method's metric-vs-speed-up curve is in `uncertainty.md`: it uses each "
           "method's own curve of cross-fitted operating points (an upper envelope over knob values "
           "would favour methods with many knob values).", ""]
    speed = speed_table(df)
    if len(speed):
        md += ["## Three speed-ups at the operating points", "",
               "Wall-clock: batch 1 (and batch 32 with batch shrinking), median of interleaved repeats, "
               "on the first timing samples of the dev set; `model` = timing model from per-layer costs.",
               "", speed.to_markdown(index=False), ""]
    return md, tex


def write_reports(out: str | Path | RunLayout, plots_dir: str | Path | None = None) -> list[Path]:
    """Write the run's tables (<out>/tables) and figures (the layout's plots folder)."""
    layout = out if isinstance(out, RunLayout) else RunLayout.for_run("", out, plots_dir)
    df = load_rows(layout)
    layout.tables.mkdir(parents=True, exist_ok=True)
    layout.plots.mkdir(parents=True, exist_ok=True)
    targets = sorted({t for v in df["operating_point"] if isinstance(v, list) for t in v})
    md, tex = tables_markdown(df, targets)
    (layout.tables / "results.md").write_text("\n".join(md))
    (layout.tables / "results.tex").write_text("\n\n".join(tex))
    written = [layout.tables / "results.md", layout.tables / "results.tex"]
    written += trade_off_plot(df, layout.plots / "tradeoff")
    for parent, variants in ablated_methods(df).items():
        keep = df["method"].isin([parent, *variants, FULL])
        written += trade_off_plot(df[keep], layout.plots / f"tradeoff_{parent}_ablations",
                                  include_ablations=True)
    if targets:
        written += exit_histogram_plot(df, layout.plots / "exit_histogram", max(targets))
    from .analysis import write_analysis
    from .uncertainty import write_uncertainty

    written += write_analysis(layout)
    written += write_uncertainty(layout)
    return written
