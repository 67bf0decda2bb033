"""A run's report: every table (Markdown, LaTeX, JSON) and figure, from its rows, records and exits.

Layout, one job per module:

- computing: `rows` (the results frame), `tables` (point-estimate tables, operating points),
  `analysis` (per-layer metrics, indicator AUROCs, overheads), `uncertainty` (intervals and
  significance), `claims` (the paper's claims checked);
- rendering: `cells` (the one formatter of a table cell), `markdown` (the run's tables),
  `markdown_claims` (claims.md), `latex`, `jsonout`, `plots`;
- writing: `writers` (the one writer of each file; claims.md/.json: `claims.write_claims`).

`write_reports(layout)` is the entry point (`de3bert run` and `de3bert report`). It imports the
writers when called, so importing one part (e.g. `benchmarks.report.claims`, or running it with
`python -m`) loads neither the plotting libraries nor the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..layout import RunLayout


def write_reports(out: str | Path | RunLayout, plots_dir: str | Path | None = None) -> list[Path]:
    """Write the run's tables (<out>/tables) and figures (the layout's plots folder); the paths
    written (`writers.write_reports`)."""
    from .writers import write_reports as write

    return write(out, plots_dir)
