"""Changed settings never reuse old work: records, caches and result groups are keyed by the
configuration that made them (issue 12, item 1; the training half is in test_train_hash.py)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from benchmarks.cli import main
from benchmarks.results import read_rows

PROFILE = {"name": "keys", "backbone": "tiny-random", "tasks": ["synthetic"], "methods": ["pabee", "deebert"],
           "seeds": [0], "dev_limit": 48, "threads": 1, "speedup_targets": [1.5],
           "train": {"max_seq_length": 32, "batch_size": 32, "lr": 0.001, "epochs": 1, "train_limit": 96,
                     "checkpoint_every": 1000},
           "timing": {"samples": 4, "repeats": 1, "warmup": 1, "batch_size": 4, "methods": []}}


def _run(tmp_path: Path, out: Path, **train) -> list[dict]:
    prof = {**PROFILE, "train": {**PROFILE["train"], **train}}
    path = tmp_path / f"keys-{len(list(tmp_path.glob('keys-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(prof))
    assert main(["run", "--profile", str(path), "--out", str(out), "--no-progress"]) == 0
    return read_rows(out / "results.jsonl")


def test_a_changed_config_recomputes_every_group_and_never_mixes_rows(tmp_path, capsys):
    out = tmp_path / "out"
    first = _run(tmp_path, out)
    record_meta = json.loads((out / "records/synthetic/weighted-s0.safetensors.json").read_text())["meta"]
    again = _run(tmp_path, out)  # same settings: everything reused, rows unchanged
    assert [r["date"] for r in again] == [r["date"] for r in first]
    assert "another configuration" not in capsys.readouterr().out
    changed = _run(tmp_path, out, lr=0.05)
    hashes = {r["config_hash"] for r in changed if r["recipe"] == "weighted"}
    assert len(hashes) == 1 and hashes != {r["config_hash"] for r in first if r["recipe"] == "weighted"}
    assert len({r["group_hash"] for r in changed if r["method"] == "pabee"}) == 1  # no mixed groups
    assert all(r["config"]["train"]["lr"] == 0.05 for r in changed if r["method"] != "full-model")
    new_meta = json.loads((out / "records/synthetic/weighted-s0.safetensors.json").read_text())["meta"]
    assert new_meta["config_hash"] != record_meta["config_hash"]  # the record was rebuilt
    assert "another configuration" in capsys.readouterr().out


def test_the_report_refuses_rows_of_two_configurations():
    import pytest

    from benchmarks.results import check_one_configuration

    base = {"task": "mrpc", "seed": 0, "recipe": "weighted", "full_config_hash": "f1"}
    check_one_configuration([{**base, "method": "pabee", "config_hash": "a"},
                             {**base, "method": "pcee", "config_hash": "a"}])
    with pytest.raises(ValueError, match=r"two configurations: mrpc seed 0 \(weighted\)"):
        check_one_configuration([{**base, "method": "pabee", "config_hash": "a"},
                                 {**base, "method": "pcee", "config_hash": "b"}])
    with pytest.raises(ValueError, match=r"mrpc seed 0 \(full\)"):
        check_one_configuration([{**base, "method": "pabee", "config_hash": "a"},
                                 {**base, "recipe": "two-stage", "method": "deebert", "config_hash": "c",
                                  "full_config_hash": "f2"}])


def test_dev_limit_subset_is_shared_by_every_seed(tmp_path):
    """With `dev_limit`, every seed scores the same dev subset (it does not depend on the training
    seed), so the paired analysis pools both seeds (hierarchical bootstrap), leaving none out."""
    prof = {**PROFILE, "seeds": [0, 1], "methods": ["pabee"]}
    path = tmp_path / "two-seeds.yaml"
    path.write_text(yaml.safe_dump(prof))
    out = tmp_path / "out"
    assert main(["run", "--profile", str(path), "--out", str(out), "--no-progress"]) == 0
    md = (out / "tables" / "uncertainty.md").read_text()
    assert "were scored on other dev samples" not in md
    assert "synthetic 2" in md  # two seeds in the paired analysis


def test_method_seeds_timing_first_seed_and_a_shared_first_stage(tmp_path):
    """`method_seeds` restricts a method to some seeds; `timing.seeds: first` times only the first
    seed's operating points; two-stage's first stage is the run's own `single` model (trained once)."""
    prof = {**PROFILE, "seeds": [0, 1], "method_seeds": {"deebert": [0]},
            "timing": {**PROFILE["timing"], "methods": "all", "seeds": "first"}}
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(prof))
    out = tmp_path / "out"
    assert main(["run", "--profile", str(path), "--out", str(out), "--no-progress"]) == 0
    rows = read_rows(out / "results.jsonl")
    assert {r["seed"] for r in rows if r["method"] == "deebert"} == {0}
    assert {r["seed"] for r in rows if r["method"] == "pabee"} == {0, 1}
    points = [r for r in rows if r["method"] == "pabee" and r["operating_point"]]
    assert all((r["speedup_wallclock"] is not None) == (r["seed"] == 0) for r in points)
    two = out / "models" / "synthetic" / "two-stage-s0"
    meta = json.loads((two / "final" / "multiexit.json").read_text())
    single_hash = json.loads((out / "models" / "synthetic" / "single-s0" / "final" /
                              "config_hash.json").read_text())["hash"]
    assert meta["first_stage"]["config_hash"] == single_hash
    assert not (two / "first_stage").exists()  # not trained a second time inside two-stage's folder


def test_method_seeds_and_timing_seeds_are_checked(tmp_path):
    import pytest

    from benchmarks.profiles import Profile

    for bad, match in (({"method_seeds": {"pabee": [5]}}, "method_seeds.pabee"),
                       ({"method_seeds": {"nope": [0]}}, "nope"),
                       ({"timing": {"seeds": "some"}}, "timing.seeds"),
                       ({"task_seeds": {"mrpc": [0]}}, "task_seeds.mrpc"),
                       ({"task_seeds": {"synthetic": [3]}}, "task_seeds.synthetic")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**PROFILE, **bad}))
        with pytest.raises((ValueError, KeyError), match=match):  # unknown names: KeyError
            Profile.load(str(path))


def test_task_seeds_restrict_the_plan(tmp_path):
    """`task_seeds` keeps a task to some seeds: the plan trains and replays it on those only."""
    from benchmarks.profiles import Profile
    from benchmarks.runner import Runner

    path = tmp_path / "ts.yaml"
    path.write_text(yaml.safe_dump({**PROFILE, "seeds": [0, 1, 2], "task_seeds": {"synthetic": [1]}}))
    plan = Runner(Profile.load(str(path)), tmp_path / "out").plan()
    assert {s["seed"] for s in plan} == {1}
    assert {s["recipe"] for s in plan if s["kind"] == "train"} == {"single", "weighted", "two-stage"}


def test_a_resumed_run_keeps_the_record_statistics_of_the_run_that_made_the_records():
    """A re-run that finds every record done must not erase their cost from run.json (the
    uncertainty report's yardstick), and keeps the earlier wall times."""
    from benchmarks.runner import merge_run_stats

    first = {"seconds": 2925.9, "replay_stats": {"sst2": {"record_seconds": 86.0, "records": 21}}}
    resumed = {"seconds": 25.0, "replay_stats": {"sst2": {"replay_groups": 0}}}
    merged = merge_run_stats(first, resumed)
    assert merged["replay_stats"]["sst2"] == {"record_seconds": 86.0, "records": 21}
    assert merged["seconds"] == 25.0 and merged["earlier_seconds"] == [2925.9]
    fresh = {"seconds": 9.0, "replay_stats": {"sst2": {"record_seconds": 4.0, "records": 1}}}
    assert merge_run_stats(merged, fresh)["replay_stats"]["sst2"]["records"] == 1
    assert merge_run_stats(None, fresh) == fresh
