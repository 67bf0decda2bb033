"""The report's tables from hand-made rows: which cell a target picks, markers, ablation grouping."""

from __future__ import annotations

import pandas as pd

from benchmarks.report.rows import ablated_methods
from benchmarks.report.tables import operating_table


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


def test_trade_off_plot_draws_each_seed_as_its_own_line(tmp_path, monkeypatch):
    import benchmarks.report.plots as report

    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)
    rows = [{**_row("full-model", "sst2", 90.0, 1.0, None), "seed": s, "headline_metric": "accuracy"}
            for s in (1, 2)]
    for seed, shift in ((1, 0.0), (2, 0.05)):  # interleaved knob grids: one joint line would zig-zag
        rows += [{**_row("pabee", "sst2", 90 - 10 * k, k + shift, None), "seed": seed,
                  "headline_metric": "accuracy"} for k in (1.2, 1.5, 2.0)]
    report.trade_off_plot(pd.DataFrame(rows), tmp_path / "t")
    (ax,) = figures[0].axes
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]
    assert len(lines) == 2  # one per seed
    for ln in lines:
        assert list(ln.get_xdata()) == sorted(ln.get_xdata()) and len(set(ln.get_ydata())) == 3


def test_the_band_legend_names_the_methods_of_every_panel():
    import matplotlib.pyplot as plt

    from benchmarks.report.plots import legend_of_every_panel

    fig, axes = plt.subplots(1, 2)
    axes[0].plot([1, 2], [1, 2], label="de3")
    axes[0].plot([1, 2], [2, 1], label="pcee")
    axes[1].plot([1, 2], [1, 1], label="pabee")
    legend_of_every_panel(list(axes))
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["de3", "pcee", "pabee"]
    plt.close(fig)


def _result_row(task, method, seed, knob, speedup, score, op, report_only=False):
    """A results.jsonl row with the fields the operating-point table reads."""
    return {"task": task, "method": method, "seed": seed, "knob": knob, "speedup_layers": speedup,
            "metric": {"accuracy": score, "f1": score + 5}, "headline_metric": "accuracy",
            "operating_point": op, "report_only": report_only}


def test_the_operating_point_table_lists_each_task_method_target_and_seed():
    from benchmarks.report.markdown import operating_points_markdown
    from benchmarks.report.tables import operating_point_cells, operating_points

    rows = [
        _result_row("mrpc", "full-model", 1, {"name": "none", "value": None}, 1.0, 82.0, None),
        _result_row("mrpc", "pabee", 2, {"name": "patience", "value": 2}, 2.25, 79.0, [2.0]),
        _result_row("mrpc", "pabee", 1, {"name": "patience", "value": 3}, 1.6, 80.5, [1.5]),
        _result_row("mrpc", "pabee", 1, {"name": "patience", "value": 2}, 2.1, 79.25, [2.0]),
        _result_row("mrpc", "pabee", 1, {"name": "patience", "value": 1}, 3.0, 70.0, None),  # not chosen
        _result_row("mrpc", "de3", 1, {"name": "tau", "value": 0.123456}, 1.55, 81.0, [1.5, 2.0]),
        _result_row("mrpc", "oracle", 1, {"name": "none", "value": 0}, 2.5, 95.0, [1.5], report_only=True),
    ]
    table = [operating_point_cells(p) for p in operating_points(rows)]
    assert table == [  # by target, then method as the run has them, then seed
        ["mrpc", "1.5×", "pabee", "1", "patience=3", "1.60×", "accuracy 80.5"],
        ["mrpc", "1.5×", "de3", "1", "tau=0.1235", "1.55×", "accuracy 81.0"],
        ["mrpc", "1.5×", "oracle †", "1", "–", "2.50×", "accuracy 95.0"],
        ["mrpc", "2×", "pabee", "1", "patience=2", "2.10×", "accuracy 79.2"],
        ["mrpc", "2×", "pabee", "2", "patience=2", "2.25×", "accuracy 79.0"],
        ["mrpc", "2×", "de3", "1", "tau=0.1235", "1.55×", "accuracy 81.0"],  # one row, two targets
    ]
    md = operating_points_markdown(operating_points(rows), "`dev`")
    assert "| mrpc | 2× | pabee | 2 | patience=2 | 2.25× | accuracy 79.0 |" in md
    assert "full-model" not in md and "70.0" not in md
    assert "No row" in operating_points_markdown([], "`dev`")
