"""A finished run's rows as the report reads them: one frame, the ablation grouping and the header
labels (training settings, precision) every table must state.

The rows themselves are read and checked by `benchmarks.results` (the store); this module only
shapes them for the report, so every table sees the same columns and the same grouping.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from de3bert.registry import METHODS

from ..layout import RunLayout
from ..results import FULL, check_one_configuration, read_rows


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


def targets_of(df: pd.DataFrame) -> list[float]:
    """Every speed-up target some row is the operating point for, ascending."""
    return sorted({t for v in df["operating_point"] if isinstance(v, list) for t in v})


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


def precision_label(values: Iterable) -> str:
    """The training precision(s) behind a run's rows, as every table's header says it (`auto`
    resolves per machine, and precision changes the trained model); rows made before it was
    recorded count as `fp32 or bf16 (not recorded)`."""
    seen = sorted({v if isinstance(v, str) else "fp32 or bf16 (not recorded)" for v in values})
    if not seen:
        return "not recorded"
    return seen[0] if len(seen) == 1 else " + ".join(seen) + " (rows differ: compare with care)"
