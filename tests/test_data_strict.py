"""Rows with more fields than the header are rejected naming file and line; MNLI's mismatched
dev split is the task `mnli-mm` with its own metric."""

from __future__ import annotations

from pathlib import Path

import pytest

from de3bert.data import DataError, get_task, load_examples, read_tsv
from de3bert.metrics import glue_metrics

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def _write(root: Path, task: str, name: str, text: str) -> Path:
    d = root / get_task(task).folder
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text, encoding="utf-8")
    return d / name


def test_mrpc_row_with_a_stray_tab_is_rejected(tmp_path):
    path = _write(tmp_path, "mrpc", "dev.tsv", MRPC_HEADER
                  + "1\t1\t2\tHe said so .\tHe did say so .\n"
                  + "0\t3\t4\tThe pie\tbusiness does not fit .\tOur strategy .\n")  # a tab in sentence 1
    with pytest.raises(DataError) as err:
        read_tsv(get_task("mrpc"), path)
    msg = str(err.value)
    assert f"{path}:3" in msg and "6 fields, expected 5" in msg


def test_cola_row_with_a_fifth_field_is_rejected(tmp_path):
    path = _write(tmp_path, "cola", "train.tsv", "gj04\t1\t\tA fine sentence .\n"
                  "gj04\t0\t*\tA broken\tsentence .\n")
    with pytest.raises(DataError, match=f"{path}:2: malformed row with 5 fields, expected 4"):
        read_tsv(get_task("cola"), path)


def test_rows_of_the_header_width_still_load(tmp_path):
    path = _write(tmp_path, "mrpc", "dev.tsv", MRPC_HEADER + "1\t1\t2\tA .\tB .\n0\t3\t4\tC .\tD .\n")
    rows = read_tsv(get_task("mrpc"), path)
    assert [(e.texts, e.label) for e in rows] == [(("A .", "B ."), 1), (("C .", "D ."), 0)]


@pytest.mark.parametrize("task", ["mrpc", "cola", "rte", "sst2", "stsb", "wnli"])
def test_real_glue_files_pass_the_strict_width(glue_dir, task):
    spec = get_task(task)
    assert len(load_examples(spec, "dev", glue_dir)) > 0


MNLI_HEADER = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"


def test_mnli_mismatched_is_its_own_task(tmp_path):
    _write(tmp_path, "mnli", "train.tsv", MNLI_HEADER + "0\t1\t1n\tfiction\tA .\tB .\tneutral\tneutral\n")
    _write(tmp_path, "mnli", "dev_matched.tsv", MNLI_HEADER
           + "0\t1\t1e\tfiction\tM .\tN .\tentailment\tentailment\n")
    _write(tmp_path, "mnli-mm", "dev_mismatched.tsv", MNLI_HEADER
           + "0\t1\t1c\tletters\tX .\tY .\tcontradiction\tcontradiction\n"
           + "1\t2\t2n\tletters\tZ .\tW .\tneutral\tneutral\n")
    mm = get_task("mnli-mm")
    assert mm is get_task("MNLI_MM") is get_task("mnli-mismatched") and get_task("mnli").name == "mnli"
    assert get_task("MNLI").dev_file == "dev_matched.tsv" and mm.dev_file == "dev_mismatched.tsv"
    assert mm.num_labels == 3 and mm.train_task == "mnli" and mm.hub_dev_split == "validation_mismatched"
    dev = load_examples(mm, "dev", tmp_path)
    assert [(e.texts, e.label) for e in dev] == [(("X .", "Y ."), 2), (("Z .", "W ."), 1)]
    assert [e.texts for e in load_examples(get_task("mnli"), "dev", tmp_path)] == [("M .", "N .")]
    assert [e.texts for e in load_examples(mm, "train", tmp_path)] == [("A .", "B .")]  # MNLI's train
    assert mm.headline_metric == "accuracy_mm" != get_task("mnli").headline_metric
    assert glue_metrics(mm.metrics, [2, 0], [e.label for e in dev]) == {"accuracy_mm": 50.0}
