"""`--dry-run`: the plan priced from costs measured on this machine (or pinned by the profile),
per task and part; a GPU plan in GPU-hours for one and N GPUs, even with no data present."""

from __future__ import annotations

import pytest

from benchmarks.cli import main
from benchmarks.estimate import TaskCosts
from benchmarks.layout import RunLayout
from benchmarks.profiles import Profile
from benchmarks.runner import TRAIN_OVERHEAD_SECONDS, Runner


def test_paper_plan_is_priced_without_its_data(tmp_path, capsys):
    assert main(["run", "--profile", "paper", "--dry-run", "--data-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "out"), "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "no local data for cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte: using the published" in out
    assert "312 training runs, 501 replay groups" in out  # de3-v2defaults: +1 per task and seed
    gpu_hours = float(out.split("estimated ")[1].split(" GPU-hours")[0])
    assert 150 < gpu_hours < 165  # 0.15 s per step: MNLI and QQP about 55-60 h each
    assert "step times pinned by the profile" in out and "on 4 GPUs through the Ray executor" in out
    mnli = next(line for line in out.splitlines() if line.startswith("mnli "))
    assert 55 < float(mnli.split()[-1]) < 65
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_smoke_plan_is_timed_on_this_machine(tmp_path, capsys):
    assert main(["run", "--profile", "smoke", "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "[dry-run] measured synthetic on this machine in" in out and "train step" in out
    assert "min on this machine (costs measured on this machine just now)" in out
    assert any(line.startswith("synthetic ") for line in out.splitlines())


def test_step_seconds_for_a_task_not_run_is_named(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nbackbone: tiny-random\ntasks: [synthetic]\nmethods: [deebert]\n"
                    "step_seconds: {sst2: 0.1, default: 0.05}\n")
    assert main(["run", "--profile", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    assert "warning: step_seconds has 'sst2', a task this profile does not run (synthetic)" in \
        capsys.readouterr().out


@pytest.mark.parametrize("recipe,stages", [("single", [1.0]), ("two-stage", None)])
def test_training_estimate_is_steps_times_step_time(tmp_path, recipe, stages):
    """Smoke: 800 rows / batch 32 × 3 epochs = 75 steps per stage, × each stage's relative cost;
    two-stage's first stage is the `single` run's (counted there, not twice)."""
    runner = Runner(Profile.load("smoke"), RunLayout.for_run("smoke", tmp_path))
    costs = {"synthetic": TaskCosts(step=0.5, row_batched=0.0, row_single=0.0, source="measured")}
    plan = [{"kind": "train", "task": "synthetic", "recipe": recipe, "seed": 0, "skip": None}]
    from de3bert.registry import get_recipe

    weights = stages or [st.cost for st in get_recipe(recipe).stages()[1:]]
    want = 75 * 0.5 * sum(weights) + TRAIN_OVERHEAD_SECONDS
    assert runner.estimate(plan, costs)["synthetic"]["train"] == pytest.approx(want)
