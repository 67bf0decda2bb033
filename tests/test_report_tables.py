"""The report's tables from hand-made rows: which cell a target picks, markers, ablation grouping."""

from __future__ import annotations

import pandas as pd

from benchmarks.report import ablated_methods, operating_table


def _row(method, task, score, speedup, op, ablation_of="", report_only=False):
    return {"method": method, "task": task, "score": score, "speedup_layers": speedup,
            "operating_point": op, "report_only": report_only, "ablation_of": ablation_of}


ROWS = pd.DataFrame([
    _row("full-model", "mrpc", 82.0, 1.0, None),
    _row("deebert", "mrpc", 81.0, 1.6, [1.5]), _row("deebert", "mrpc", 79.0, 2.1, [2.0]),
    _row("deebert", "mrpc", 70.0, 4.0, None),  # not an operating point: never in a table
    _row("de3", "mrpc", 81.5, 1.5, [1.5, 2.0]),
    _row("oracle", "mrpc", 95.0, 2.5, [1.5, 2.0], report_only=True),
    _row("de3-dr", "mrpc", 80.0, 1.7, [1.5], ablation_of="de3"),
])


def test_operating_table_shows_the_marked_rows_with_their_speedups():
    tab = operating_table(ROWS, 1.5, ["deebert", "de3", "oracle"])
    assert tab.loc["full-model", "mrpc"] == "82.0 (1.00×)"
    assert tab.loc["deebert", "mrpc"] == "81.0 (1.60×)"
    assert tab.loc["de3", "mrpc"] == "81.5^ (1.50×)"  # highest deployable point estimate: ^, not bold
    assert tab.loc["oracle", "mrpc"] == "95.0 (2.50×)"  # labels-using oracle never marked best
    assert "de3-dr" not in tab.index
    two = operating_table(ROWS, 2.0, ["deebert", "de3"])
    assert two.loc["deebert", "mrpc"] == "79.0 (2.10×)" and two.loc["de3", "mrpc"] == "81.5^ (1.50×)"
    assert "**" not in "".join(tab.to_numpy().ravel())


def test_ablations_are_grouped_by_the_declared_parent():
    assert ablated_methods(ROWS) == {"de3": ["de3-dr"]}
