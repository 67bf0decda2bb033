"""`de3bert check-regression`: the smoke golden (exact speed-ups and histograms, metrics within
tolerance) and the benchmark ratio bounds, on small hand-made results and benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.regression import benchmark_ratios, check_benchmarks, check_regression, make_golden


def _row(method: str, knob: float, speedup: float, hist: list[int], acc: float, op=None) -> dict:
    return {"task": "synthetic", "method": method, "knob": {"name": "S", "value": knob}, "seed": 0,
            "speedup_layers": speedup, "exit_histogram": hist, "metric": {"accuracy": acc},
            "headline_metric": "accuracy", "operating_point": op, "group_size": 1}


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [_row("deebert", 0.1, 1.6, [10, 20, 30, 68], 81.25, [1.5]),
        _row("pabee", 2.0, 2.0, [0, 64, 64, 0], 79.5, [1.5, 2.0])]


@pytest.fixture
def golden(tmp_path) -> Path:
    path = tmp_path / "golden.json"
    assert check_regression(path, _write_rows(tmp_path / "base.jsonl", ROWS), update=True) == 0
    assert json.loads(path.read_text()) == make_golden(tmp_path / "base.jsonl")
    return path


def test_identical_results_pass(golden, tmp_path, capsys):
    assert check_regression(golden, _write_rows(tmp_path / "same.jsonl", ROWS)) == 0
    # 6 row checks (2 rows × speed-up, histogram, accuracy) + 3 pinned points × (knob, speed-up, metric)
    assert "15/15 checks passed — no regression" in capsys.readouterr().out


@pytest.mark.parametrize("change,failing,passed", [
    ({"speedup_layers": 1.600001}, "speedup_layers", 13),         # exact, to 6 decimals (row + point)
    ({"exit_histogram": [10, 21, 29, 68]}, "exit_histogram", 14),  # one sample moved
    ({"metric": {"accuracy": 81.80}}, "accuracy", 13),            # 0.55 points > 0.5 (row + point)
])
def test_a_changed_row_is_a_regression(golden, tmp_path, capsys, change, failing, passed):
    rows = [dict(ROWS[0], **change), ROWS[1]]
    assert check_regression(golden, _write_rows(tmp_path / "new.jsonl", rows)) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if failing in x and "REGRESSION" in x)
    assert "deebert" in line
    assert f"{passed}/15 checks passed — REGRESSION" in out


def test_metric_within_tolerance_and_missing_rows(golden, tmp_path, capsys):
    rows = [dict(ROWS[0], metric={"accuracy": 81.70}), ROWS[1]]  # 0.45 points: within ±0.5
    assert check_regression(golden, _write_rows(tmp_path / "ok.jsonl", rows)) == 0
    assert check_regression(golden, _write_rows(tmp_path / "short.jsonl", ROWS[:1])) == 1
    assert "missing" in capsys.readouterr().out


def _bench(path: Path, ratios: dict[str, float], tiny: bool = False) -> Path:
    benchmarks = []
    for key, ratio in ratios.items():
        target, _, method = key.partition("/")
        goal = "<= 0.03" if target in ("indicator overhead", "replay sweep") else ">= 0.9"
        benchmarks.append({"name": key, "extra_info": {"target": target, "method": method or None,
                                                       "ratio": ratio, "goal": goal, "tiny": tiny}})
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


MEASURED = {"wall-clock fidelity/de3": 0.92, "wall-clock fidelity/deebert": 0.94, "indicator overhead": 0.04}


def test_benchmark_bounds_update_and_check(tmp_path, capsys):
    bounds = tmp_path / "bounds.json"
    assert check_benchmarks(bounds, _bench(tmp_path / "a.json", MEASURED), update=True) == 0
    saved = json.loads(bounds.read_text())["bounds"]
    assert saved["wall-clock fidelity/de3"] == {"min": round(0.92 * 0.85, 4)}
    assert saved["indicator overhead"] == {"max": round(0.04 * 1.15, 4)}
    assert check_benchmarks(bounds, _bench(tmp_path / "b.json", MEASURED)) == 0
    # the exit path got slower: fidelity below its floor, overhead above its ceiling
    slower = {**MEASURED, "wall-clock fidelity/de3": 0.70, "indicator overhead": 0.05}
    assert check_benchmarks(bounds, _bench(tmp_path / "c.json", slower)) == 1
    out = capsys.readouterr().out
    assert [x.split()[-1] for x in out.splitlines() if x.startswith(("wall-clock", "indicator"))][-3:] == \
        ["REGRESSION", "REGRESSION", "ok"]  # sorted: overhead, de3, deebert
    assert "1/3 ratio checks passed — REGRESSION" in out


def test_missing_benchmarks_fail_unless_allowed(tmp_path, capsys):
    bounds = tmp_path / "bounds.json"
    check_benchmarks(bounds, _bench(tmp_path / "a.json", MEASURED), update=True)
    subset = _bench(tmp_path / "subset.json", {"wall-clock fidelity/de3": 0.91})
    assert check_benchmarks(bounds, subset) == 1
    assert check_benchmarks(bounds, subset, allow_missing=True) == 0
    assert "1/1 ratio checks passed (2 not in this run, skipped)" in capsys.readouterr().out
    tiny = _bench(tmp_path / "tiny.json", MEASURED, tiny=True)  # smoke runs are never compared
    with pytest.raises(ValueError, match="none of the 3 bounded ratios"):
        check_benchmarks(bounds, tiny, allow_missing=True)


def test_cli_exit_codes(golden, tmp_path, capsys):
    same = _write_rows(tmp_path / "same.jsonl", ROWS)
    assert main(["check-regression", "--golden", str(golden), "--results", str(same)]) == 0
    moved = _write_rows(tmp_path / "moved.jsonl", [dict(ROWS[0], speedup_layers=1.7), ROWS[1]])
    assert main(["check-regression", "--golden", str(golden), "--results", str(moved)]) == 1
    assert main(["check-regression", "--golden", str(golden)]) == 2  # neither input given
    assert "exactly one of --results" in capsys.readouterr().err


def test_bounds_from_several_runs_use_the_worst(tmp_path, capsys):
    bounds = tmp_path / "bounds.json"
    noisier = {**MEASURED, "wall-clock fidelity/de3": 0.88, "indicator overhead": 0.05}
    runs = [_bench(tmp_path / "a.json", MEASURED), _bench(tmp_path / "b.json", noisier)]
    assert check_benchmarks(bounds, runs, update=True) == 0
    saved = json.loads(bounds.read_text())
    assert saved["runs"] == ["a.json", "b.json"]
    assert saved["bounds"]["wall-clock fidelity/de3"] == {"min": round(0.88 * 0.85, 4)}
    assert saved["bounds"]["wall-clock fidelity/deebert"] == {"min": round(0.94 * 0.85, 4)}
    assert saved["bounds"]["indicator overhead"] == {"max": round(0.05 * 1.15, 4)}
    with pytest.raises(ValueError, match="one benchmark run at a time"):
        check_benchmarks(bounds, runs)
    assert main(["check-regression", "--golden", str(bounds), "--benchmark-json", str(runs[1])]) == 0


def test_a_method_the_golden_file_does_not_know_fails(golden, tmp_path, capsys):
    """A new method's group in the results is a failure until the golden file is refreshed."""
    extra = _row("new-rule", 0.5, 1.2, [0, 0, 100, 28], 80.0)
    assert check_regression(golden, _write_rows(tmp_path / "new.jsonl", [*ROWS, extra])) == 1
    out = capsys.readouterr().out
    assert "synthetic/new-rule/seed0 group" in out and "--update" in out


def test_a_moved_operating_point_fails(golden, tmp_path, capsys):
    """Same rows, but the 2× operating point now sits on another knob (a changed selection rule)."""
    moved = [dict(ROWS[0], operating_point=[1.5, 2.0]), dict(ROWS[1], operating_point=[1.5])]
    assert check_regression(golden, _write_rows(tmp_path / "moved.jsonl", moved)) == 1
    out = capsys.readouterr().out
    assert "synthetic/deebert/seed0@2" in out and "synthetic/pabee/seed0@2 operating point" in out


def test_golden_pins_knob_and_speedup_of_each_operating_point(golden):
    points = json.loads(golden.read_text())["operating_points"]
    same = {"ties": 0, "n_samples": None, "num_layers": 4}
    deebert = {"knob": 0.1, "speedup_layers": 1.6, "metric": 81.25}
    pabee = {"knob": 2.0, "speedup_layers": 2.0}
    assert points == {"synthetic/deebert/seed0@1.5": {**deebert, **same},
                      "synthetic/pabee/seed0@1.5": {**pabee, "metric": 79.5, **same},
                      "synthetic/pabee/seed0@2": {**pabee, "metric": 79.5, **same}}


def test_benchmark_bounds_merge_keeps_the_ratios_a_run_lacks(tmp_path, capsys):
    """`--update --merge` with a run of some targets: their bounds are replaced, the others kept,
    and the runs behind the file are all named."""
    bounds = tmp_path / "bounds.json"
    check_benchmarks(bounds, _bench(tmp_path / "a.json", MEASURED), update=True)
    real = {"wall-clock fidelity, real cola inputs, batch 1/de3": 0.80, "indicator overhead": 0.03}
    assert check_benchmarks(bounds, _bench(tmp_path / "new.json", real), update=True, merge=True) == 0
    saved = json.loads(bounds.read_text())
    assert saved["bounds"]["wall-clock fidelity/de3"] == {"min": round(0.92 * 0.85, 4)}  # kept
    assert saved["bounds"]["indicator overhead"] == {"max": round(0.03 * 1.15, 4)}  # replaced
    real_key = "wall-clock fidelity, real cola inputs, batch 1/de3"
    assert saved["bounds"][real_key] == {"min": round(0.8 * 0.85, 4)}  # new
    assert saved["runs"] == ["a.json", "new.json"]
    assert "1 new, 1 replaced, 2 kept" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--merge needs --update"):
        check_benchmarks(bounds, _bench(tmp_path / "b.json", MEASURED), merge=True)


def test_per_task_and_per_recipe_ratios_get_a_bound_each(tmp_path):
    """Training throughput is one target run per (recipe, task): every pair keeps its own bound
    (they used to collapse onto one key, the worst of them)."""
    rows = [{"name": f"{r}-{t}", "extra_info": {"target": "training throughput", "recipe": r, "task": t,
                                                "ratio": ratio, "goal": ">= 1.2", "tiny": False}}
            for r, t, ratio in (("single", "mrpc", 1.3), ("single", "sst2", 1.5), ("de3", "mrpc", 1.25))]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"benchmarks": rows}))
    keys = {"training throughput, mrpc/single", "training throughput, sst2/single",
            "training throughput, mrpc/de3"}
    assert set(benchmark_ratios(path)) == keys


# A row with near ties (samples within TIE_EPS of the knob or of a class boundary): 128 samples,
# one exit tie and one prediction tie, so T = 2 samples may move and accuracy may move by
# 0.5 + 2·200/128 = 3.625 points. The same changes on a tie-free row are regressions.
TIED = dict(_row("fastbert", 0.575, 128 * 4 / 412, [10, 20, 30, 68], 80.0, [1.5]),
            n_samples=128, near_ties={"eps": 1e-4, "exit": 1, "prediction": 1})


@pytest.mark.parametrize("hist,acc,ok", [
    ([10, 21, 29, 68], 80.0, True),    # one sample one layer later: a tie flipped
    ([11, 19, 30, 68], 80.78, True),   # two samples moved (= T), accuracy within 3.625
    ([12, 18, 29, 69], 80.0, False),   # three moves > T = 2: more flips than near ties
    ([10, 20, 30, 68], 84.0, False),   # accuracy moved 4 points > 3.625
])
def test_near_ties_may_move_exactly_as_far_as_they_allow(tmp_path, hist, acc, ok):
    golden = tmp_path / "golden.json"
    check_regression(golden, _write_rows(tmp_path / "base.jsonl", [TIED]), update=True)
    layers = sum((i + 1) * c for i, c in enumerate(hist))
    moved = dict(TIED, exit_histogram=hist, speedup_layers=128 * 4 / layers, metric={"accuracy": acc})
    assert check_regression(golden, _write_rows(tmp_path / "new.jsonl", [moved])) == (0 if ok else 1)
    assert check_regression(golden, tmp_path / "new.jsonl", exact=True) == 1  # --exact: no tolerance
    assert check_regression(golden, tmp_path / "base.jsonl", exact=True) == 0
    untied = dict(moved, near_ties={"eps": 1e-4, "exit": 0, "prediction": 0})
    base0 = _write_rows(tmp_path / "base0.jsonl", [dict(TIED, near_ties=untied["near_ties"])])
    check_regression(golden, base0, update=True)
    assert check_regression(golden, _write_rows(tmp_path / "new0.jsonl", [untied])) == 1  # no ties: exact


def test_an_older_golden_schema_is_an_error_not_a_pass(golden, tmp_path):
    old = json.loads(golden.read_text())
    del old["schema"]
    golden.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="schema 1 predates near-tie counts.*--update"):
        check_regression(golden, _write_rows(tmp_path / "same.jsonl", ROWS))
