"""Tasks as data (issue 26): registry checks at registration, and a task whose headline metric
once crashed the report (mnli-mm's `accuracy_mm`) reporting end to end on generated files."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from benchmarks.cli import main
from de3bert.tasks import TASKS, register_task

ENTRY = {"num_labels": 2, "text_fields": ["a", "b"], "label_field": "y", "metrics": ["accuracy"]}


def test_every_registered_task_is_complete():
    assert {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli-mm", "qnli", "rte", "wnli"} <= set(TASKS)
    assert all(t.folder for n, t in TASKS.items() if n != "synthetic")


@pytest.mark.parametrize("change, message", [
    ({"metrics": None}, "missing required field(s) metrics"),
    ({"label_feld": "y"}, "unknown field 'label_feld' (did you mean 'label_field'?)"),
    ({"metrics": ["bleu"]}, "metric(s) ['bleu'] have no definition with bootstrap statistics"),
    ({"labels": ["x"]}, "1 labels for num_labels=2"),
])
def test_a_bad_task_entry_is_refused_at_registration(change, message):
    entry = {k: v for k, v in {**ENTRY, **change}.items() if v is not None}
    with pytest.raises(ValueError) as err:
        register_task("pairs", entry)
    assert message in str(err.value) and "'pairs'" in str(err.value)


def _mnli_files(root, n_train: int = 96, n_dev: int = 60) -> None:
    """MNLI-format files (header with sentence1, sentence2, gold_label), a learnable toy signal."""
    rng = random.Random(0)
    labels = ["entailment", "neutral", "contradiction"]
    words = {lab: [f"{lab[:3]}{i}" for i in range(5)] for lab in labels}

    def rows(n: int) -> str:
        out = ["index\tsentence1\tsentence2\tgold_label"]
        for i in range(n):
            lab = labels[i % 3]
            out.append(f"{i}\tthe cat {rng.choice(words[lab])}\ta dog {rng.choice(words[lab])}\t{lab}")
        return "\n".join(out) + "\n"

    (root / "MNLI").mkdir(parents=True)
    (root / "MNLI" / "train.tsv").write_text(rows(n_train))
    (root / "MNLI" / "dev_mismatched.tsv").write_text(rows(n_dev))


def test_mnli_mm_reports_end_to_end(tmp_path):
    """Before: results.md was written, then `unknown metric 'accuracy_mm'` stopped the report;
    uncertainty.* and claims.* were never written."""
    _mnli_files(tmp_path / "glue")
    profile = {"name": "mm", "backbone": "tiny-random", "tasks": ["mnli-mm"], "methods": ["pabee", "de3"],
               "seeds": [0], "threads": 1, "speedup_targets": [1.5],
               "train": {"max_seq_length": 16, "batch_size": 16, "lr": 0.001, "epochs": 1,
                         "checkpoint_every": 1000, "precision": "fp32"},
               "timing": {"samples": 4, "repeats": 1, "warmup": 1, "batch_size": 4, "methods": []},
               "bootstrap": {"replicates": 50}}
    path = tmp_path / "mm.yaml"
    path.write_text(yaml.safe_dump(profile))
    out = tmp_path / "run"
    assert main(["run", "--profile", str(path), "--out", str(out), "--data-dir", str(tmp_path / "glue"),
                 "--no-progress"]) == 0
    tables = out / "tables"
    for name in ("results.md", "uncertainty.md", "claims.md", "operating_points.md"):
        assert "mnli-mm" in (tables / name).read_text(), name
    claims = json.loads((tables / "claims.json").read_text())
    assert claims["tasks"]["mnli-mm"]["metric"] == "accuracy_mm"
