"""The load benchmark (`de3bert serve-bench`) on a tiny hand-made run folder: every scheduler serves
the full model and two methods at their operating points on a real clock, every served request
equals replay of the run's record, and the rows, table and plot are written; the `serving:` block
of a profile is typed (did-you-mean on a misspelt key)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.layout import RunLayout
from benchmarks.profiles import Profile
from benchmarks.report.serving import serving_markdown
from benchmarks.runner import Runner
from benchmarks.serving import equivalence, run_bench, run_phase, write_outputs
from benchmarks.serving_settings import parse_settings
from de3bert.backbone import load_tokenizer
from de3bert.data import EncodedDataset, get_task, load_examples, make_loader
from de3bert.engine import record_signals
from de3bert.model import build_model
from de3bert.record import save_record
from de3bert.registry import get_method
from de3bert.speedup import layer_speedup

PROFILE = {"name": "tiny-serving", "backbone": "tiny-random", "tasks": ["synthetic"], "seeds": [0],
           "train": {"max_seq_length": 32}, "dev_limit": 48}
POINTS = {"maxprob": 0.0, "pabee": 1}  # maxprob's knob is set from the record (half exit early)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """profile.json, the full (`single`) and `weighted` models, their records and results rows."""
    out = tmp_path_factory.mktemp("serving") / "run"
    layout = RunLayout.for_run("", out)
    (out / "profile.json").parent.mkdir(parents=True)
    (out / "profile.json").write_text(json.dumps(PROFILE))
    examples = load_examples(get_task("synthetic"), "dev", None, 48, 0)
    ds = EncodedDataset(examples, load_tokenizer("tiny-random"), 32, False)
    rows = []
    for recipe, seed in (("single", 1), ("weighted", 2)):
        torch.manual_seed(seed)
        model = build_model("tiny-random", recipe, 2, "mean").eval()
        with torch.no_grad():
            for mod in model.heads.classifiers:
                mod.weight.mul_(30.0)
        model.save(layout.model_dir("synthetic", recipe, 0) / "final")
        record = record_signals(model, make_loader(ds, 16, shuffle=False), progress=False)
        save_record(record, layout.record("synthetic", recipe, 0))
    conf = record["logits"][0].softmax(-1).max(-1).values.double().sort().values
    POINTS["maxprob"] = float((conf[23] + conf[24]) / 2)
    for name, knob in POINTS.items():
        policy = get_method(name).make_policy(2, 4)
        sp = layer_speedup(policy.replay(record, [knob])[0], 4)
        rows.append({"task": "synthetic", "seed": 0, "method": name, "recipe": "weighted",
                     "knob": {"name": policy.knob.name, "value": knob}, "operating_point": [2.0],
                     "speedup_layers": sp})
    layout.results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return layout


def test_serve_bench_rows_equal_replay_and_files(run, tmp_path):
    settings = parse_settings({"loads": [0.5, 3.0], "duration_s": 0.2, "max_requests": 60, "warmup": 2,
                               "max_batch": 8, "max_wait_ms": 1.0, "methods": ["maxprob", "pabee"],
                               "targets": [2.0]})
    rows = run_bench(run, "synthetic", settings, progress=False)
    points = [r for r in rows if r["kind"] == "point"]
    summaries = [r for r in rows if r["kind"] == "summary"]
    assert {(r["method"], r["scheduler"]) for r in summaries} == {
        (m, s) for m in ("full-model", "maxprob", "pabee") for s in ("batch1", "dynamic", "rebatch")}
    assert all(r["replay"]["checked"] == r["n"] and r["replay"]["differ_not_tie"] == 0 for r in points)
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in points)
    full = [r for r in summaries if r["method"] == "full-model" and r["sustainable_rps"] > 0]
    assert all(r["serving_speedup"] == 1.0 for r in full)
    paths = write_outputs(rows, tmp_path, tmp_path / "plots", "synthetic")
    assert [p.name for p in paths] == ["serving.jsonl", "serving.md", "serving_synthetic.png",
                                       "serving_synthetic.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert "| synthetic | maxprob @2× | rebatch |" in serving_markdown(rows)


def test_equivalence_mode_serves_the_whole_dev_set(run, tmp_path):
    settings = parse_settings({"methods": ["maxprob", "pabee"], "targets": [2.0], "max_batch": 8})
    rows = equivalence(run, "synthetic", settings, progress=False)
    assert len(rows) == 3 * 3 and all(r["checked"] == 48 and r["differ_not_tie"] == 0 for r in rows)
    assert any(r["merges"] > 0 for r in rows if r["scheduler"] == "rebatch")
    paths = write_outputs(rows, tmp_path, tmp_path / "plots", "synthetic")
    assert "## Served = replay" in paths[1].read_text()


def test_serving_block_is_typed(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'loads'"):
        parse_settings({"lods": [0.5]})
    with pytest.raises(ValueError, match="valid: batch1, dynamic, rebatch"):
        parse_settings({"schedulers": ["fifo"]})
    with pytest.raises(ValueError, match="slo_ms=-1.0 must be ≥ 0"):
        parse_settings({"slo_ms": -1})
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nbackbone: tiny-random\ntasks: [synthetic]\nserving: {max_bach: 4}\n")
    with pytest.raises(ValueError, match="serving: unknown option 'max_bach' \\(did you mean 'max_batch'"):
        Profile.load(str(path))
    path.write_text("name: x\nbackbone: tiny-random\ntasks: [synthetic]\nserving: {max_batch: 4}\n")
    assert Profile.load(str(path)).serving == {"max_batch": 4}


SHORT = {"tasks": ["synthetic"], "loads": [0.5], "duration_s": 0.2, "max_requests": 30, "warmup": 1,
         "methods": ["maxprob"], "targets": [2.0], "schedulers": ["batch1", "rebatch"]}


def test_run_phase_measures_once_per_settings_and_operating_points(run, capsys):
    run_phase(run, parse_settings(SHORT), None, progress=False)
    first = run.serving.read_text()
    keys = {json.loads(line)["phase_key"] for line in first.splitlines()}
    assert len(keys) == 1 and '"kind": "summary"' in first
    run_phase(run, parse_settings(SHORT), None, progress=False)  # resumed: nothing re-measured
    assert run.serving.read_text() == first
    assert "already measured" in capsys.readouterr().out
    run_phase(run, parse_settings({**SHORT, "max_batch": 4}), None, progress=False)  # settings changed
    again = {json.loads(line)["phase_key"] for line in run.serving.read_text().splitlines()}
    assert len(again) == 1 and again != keys


def test_de3bert_run_load_tests_the_serving_tasks_and_reports_them(tmp_path):
    profile = Profile.load("smoke")
    profile.methods, profile.serving = ["maxprob"], SHORT
    profile.timing = {**profile.timing, "methods": []}
    layout = RunLayout.for_run("", tmp_path / "run")
    Runner(profile, layout, progress=False).run()
    rows = [json.loads(line) for line in layout.serving.read_text().splitlines()]
    assert {(r["method"], r["scheduler"]) for r in rows if r["kind"] == "summary"} == {
        (m, s) for m in ("full-model", "maxprob") for s in ("batch1", "rebatch")}
    from benchmarks.report import write_reports

    written = {p.name for p in write_reports(layout)}
    assert {"serving.md", "serving_synthetic.png"} <= written


@pytest.mark.parametrize(("extra", "message"), [
    ("serving: {tasks: [sst2]}", "serving.tasks \\['sst2'\\]: not among the profile's tasks"),
    ("keep_models: none\nserving: {tasks: [synthetic]}", "needs the models: keep_models: all"),
    ("serving: {tasks: [synthetic], targets: [3.0]}", "serving.targets \\[3.0\\]: not among speedup_targets"),
])
def test_serving_tasks_must_be_the_runs_and_need_kept_models(tmp_path, extra, message):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\nbackbone: tiny-random\ntasks: [synthetic]\n{extra}\n")
    with pytest.raises(ValueError, match=message):
        Profile.load(str(path))


def test_refine_bisects_between_the_last_load_that_met_the_slo_and_the_first_miss(run, monkeypatch):
    """A server that meets the SLO up to 1.3 × capacity: the grid [0.5, 1, 2] alone reads 1.0;
    three bisections (1.5 miss, 1.25 meet, 1.375 miss) read 1.25."""
    import benchmarks.serving as serving
    from benchmarks.serving import Bench, contenders, dev_requests

    settings = parse_settings({"loads": [0.5, 1.0, 2.0], "refine": 3, "methods": ["maxprob"],
                               "targets": [2.0]})
    pool, _ = dev_requests(PROFILE, "synthetic", None)
    bench = Bench(run, "synthetic", 0, settings, pool, 0, capacity=100.0, slo_ms=50.0)

    def fake_point(c, scheduler, s, reqs, pad):  # reqs = [the offered rate] (fake arrivals below)
        load = reqs[0] / 100.0
        return {"p99_ms": 10.0 if load <= 1.3 else 500.0, "p50_ms": 1.0, "achieved_rps": 1.0,
                "mean_batch": 1.0, "idle_s": 0.0, "wall_s": 1.0, "engine_s": {"merge": 0.0}}, []

    monkeypatch.setattr(serving, "point", fake_point)
    monkeypatch.setattr(serving, "poisson_requests", lambda pool, rate, *args: ([rate], [0]))
    full = contenders(run, "synthetic", 0, settings)[0]
    bench.sweep(full, "batch1", progress=False)
    assert [r["load"] for r in bench.rows] == [0.5, 1.0, 2.0, 1.5, 1.25, 1.375]
    assert max(r["load"] for r in bench.rows if r["meets_slo"]) == 1.25
