"""LaTeX rendering of results.md's tables (results.tex), for pasting into a paper.

Rendering only: the same grids as results.md (`tables.result_tables`), one tabular per table,
each preceded by a comment naming it; Markdown bold never reaches the LaTeX.
"""

from __future__ import annotations

import pandas as pd

from .tables import result_tables


def tabular(df: pd.DataFrame) -> str:
    """One grid as a LaTeX tabular (special characters escaped, Markdown bold dropped)."""
    return df.to_latex(escape=True).replace(r"\*\*", "").replace("**", "")


def results_latex(df: pd.DataFrame, targets: list[float]) -> str:
    """results.tex: every table of results.md, in the same order."""
    tex = []
    for parent, t, tab in result_tables(df, targets):
        tex += [f"% ablations of {parent}, target {t:g}x" if parent else f"% target {t:g}x", tabular(tab)]
    return "\n\n".join(tex)
