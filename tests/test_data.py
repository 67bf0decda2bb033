"""Task registry, GLUE loaders (real rows and malformed files), collation, subsampling, synthetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from de3bert.data import (
    TASKS,
    DataError,
    EncodedDataset,
    collate,
    get_task,
    load_examples,
    make_loader,
    read_tsv,
    synthetic_examples,
)

# ---- the task registry --------------------------------------------------------------------------


@pytest.mark.parametrize("alias, name", [("SST-2", "sst2"), ("sst2", "sst2"), ("sst-2", "sst2"),
                                         ("STS-B", "stsb"), ("stsb", "stsb"), ("sts_b", "stsb"),
                                         ("CoLA", "cola"), ("MRPC", "mrpc"), ("rte", "rte"),
                                         ("MNLI", "mnli"), ("synthetic", "synthetic")])
def test_task_aliases(alias, name):
    assert get_task(alias).name == name


def test_task_properties():
    assert get_task("STS-B").is_regression and get_task("STS-B").num_labels == 1
    assert not get_task("SST-2").is_regression
    assert get_task("MRPC").headline_metric == "f1"
    assert get_task("mnli").num_labels == 3
    assert {n for n, t in TASKS.items() if t.folder} == set(TASKS) - {"synthetic"}


def test_unknown_task_lists_valid_names():
    with pytest.raises(KeyError) as err:
        get_task("imdb")
    msg = str(err.value)
    assert "imdb" in msg
    for name in ("cola", "sst2", "mrpc", "stsb", "rte", "synthetic"):
        assert name in msg


def test_unknown_split():
    with pytest.raises(ValueError, match="train, dev"):
        load_examples(get_task("synthetic"), "test")


# ---- real GLUE rows ------------------------------------------------------------------------------


@pytest.mark.parametrize("task, rows", [("MRPC", 408), ("RTE", 277), ("CoLA", 1043), ("STS-B", 1500),
                                        ("SST-2", 872)])
def test_real_glue_dev_row_counts(glue_dir, task, rows):
    spec = get_task(task)
    if not (glue_dir / spec.folder / spec.dev_file).is_file():
        pytest.skip(f"{task} dev file not in {glue_dir}")
    examples = load_examples(spec, "dev", glue_dir)
    assert len(examples) == rows
    assert all(len(e.texts) == len(spec.text_fields) for e in examples)
    if spec.is_regression:
        assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in examples)
    else:
        labels = {e.label for e in examples}
        assert labels == set(range(spec.num_labels))


def test_real_glue_via_env(glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert len(load_examples(get_task("rte"), "dev")) == 277


def test_cola_has_no_header(glue_dir):
    path = glue_dir / "CoLA" / "dev.tsv"
    first = path.read_text(encoding="utf-8").splitlines()[0].split("\t")
    examples = read_tsv(get_task("cola"), path)
    # the first physical line is a data row, not a header: it is the first example
    assert examples[0].texts == (first[3],)
    assert examples[0].label == int(first[1])


def test_mrpc_header_bom_is_stripped(glue_dir):
    path = glue_dir / "MRPC" / "dev.tsv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality")
    examples = read_tsv(get_task("mrpc"), path)
    assert len(examples) == 408
    assert {e.label for e in examples} == {0, 1}


def test_rte_string_labels(glue_dir):
    ex = load_examples(get_task("rte"), "dev", glue_dir)
    # RTE's label column holds the strings entailment / not_entailment, mapped in that order
    raw = (glue_dir / "RTE" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")[-1]
    assert ex[0].label == ("entailment", "not_entailment").index(raw)


# ---- malformed files: errors name the file and the line -----------------------------------------


def _write(root: Path, task: str, split_file: str, text: str) -> Path:
    d = root / get_task(task).folder
    d.mkdir(parents=True, exist_ok=True)
    path = d / split_file
    path.write_text(text, encoding="utf-8")
    return path


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_missing_file_names_the_file(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(DataError) as err:
        load_examples(get_task("rte"), "dev", tmp_path)
    assert str(tmp_path / "RTE" / "dev.tsv") in str(err.value)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(get_task("rte"), "dev", tmp_path / "nope")


def test_malformed_row_names_file_and_line(tmp_path):
    path = _write(tmp_path, "rte", "dev.tsv",
                  RTE_HEADER + "0\ta b\tc d\tentailment\n1\tonly two fields\n")
    with pytest.raises(DataError) as err:
        load_examples(get_task("rte"), "dev", tmp_path)
    assert f"{path}:3" in str(err.value)
    assert "malformed" in str(err.value)


def test_label_outside_classes(tmp_path):
    path = _write(tmp_path, "rte", "dev.tsv",
                  RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\tcontradiction\n")
    with pytest.raises(DataError) as err:
        load_examples(get_task("rte"), "dev", tmp_path)
    assert f"{path}:3" in str(err.value) and "contradiction" in str(err.value)

    path = _write(tmp_path, "sst2", "dev.tsv", "sentence\tlabel\nfine\t1\nodd\t2\n")
    with pytest.raises(DataError) as err:
        load_examples(get_task("sst2"), "dev", tmp_path)
    assert f"{path}:3" in str(err.value) and "0..1" in str(err.value)


def test_non_numeric_regression_label(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tg\tf\t2012\t0\tnone\tnone\tA man.\tA person.\t{}\n"
    path = _write(tmp_path, "stsb", "dev.tsv", header + row.format("3.5") + row.format("high"))
    with pytest.raises(DataError) as err:
        load_examples(get_task("STS-B"), "dev", tmp_path)
    assert f"{path}:3" in str(err.value) and "not a number" in str(err.value)


def test_empty_split_header_only(tmp_path):
    path = _write(tmp_path, "rte", "dev.tsv", RTE_HEADER)
    with pytest.raises(DataError) as err:
        load_examples(get_task("rte"), "dev", tmp_path)
    assert str(path) in str(err.value) and "empty" in str(err.value)


def test_header_lacking_a_column(tmp_path):
    path = _write(tmp_path, "rte", "dev.tsv", "index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(DataError) as err:
        load_examples(get_task("rte"), "dev", tmp_path)
    assert f"{path}:1" in str(err.value) and "sentence2" in str(err.value)


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path):
    path = _write(tmp_path, "rte", "dev.tsv", RTE_HEADER + "0\ta\tb\tentailment\n\n1\tc\td\tbad\n")
    with pytest.raises(DataError) as err:
        load_examples(get_task("rte"), "dev", tmp_path)
    assert f"{path}:4" in str(err.value)


# ---- collation, subsampling, the synthetic task --------------------------------------------------


def test_collate_pads_to_longest_in_batch(tokenizer):
    examples = load_examples(get_task("synthetic"), "dev")[:8]
    ds = EncodedDataset(examples, tokenizer, max_seq_length=128, regression=False)
    lengths = ds.lengths()
    assert len(set(lengths)) > 1
    batch = collate([ds[i] for i in range(8)], pad_token_id=tokenizer.pad_token_id)
    width = max(lengths)
    assert width < 128  # dynamic, not padded to max_seq_length
    assert batch["input_ids"].shape == (8, width)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert batch["input_ids"][i, :n].tolist() == ds[i]["input_ids"]
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert (batch["attention_mask"][i, n:] == 0).all()
    assert batch["labels"].dtype == torch.long
    assert batch["index"].tolist() == list(range(8))
    # a sub-batch is padded only to its own longest sequence
    short = sorted(range(8), key=lambda i: lengths[i])[:2]
    sub = collate([ds[i] for i in short], tokenizer.pad_token_id)
    assert sub["input_ids"].shape[1] == max(lengths[i] for i in short)


def test_collate_regression_labels_are_float(tokenizer):
    from de3bert.data import Example

    ds = EncodedDataset([Example(("a b", "c"), 1.5), Example(("d", "e f g"), 4.0)], tokenizer, 32, True)
    batch = collate([ds[0], ds[1]])
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [1.5, 4.0]
    assert "token_type_ids" in batch  # sentence pairs keep their segment ids


def test_truncation(tokenizer):
    examples = load_examples(get_task("synthetic"), "dev")[:16]
    ds = EncodedDataset(examples, tokenizer, max_seq_length=6, regression=False)
    assert max(ds.lengths()) == 6


def test_loader_shuffle_is_seeded(tokenizer):
    ds = EncodedDataset(load_examples(get_task("synthetic"), "dev")[:40], tokenizer, 32, False)

    def order(seed):
        return torch.cat([b["index"] for b in make_loader(ds, 8, shuffle=True, seed=seed)]).tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == list(range(40))


def test_limit_subsampling_is_deterministic(tmp_path):
    rows = "".join(f"sentence number {i}\t{i % 2}\n" for i in range(100))
    _write(tmp_path, "sst2", "train.tsv", "sentence\tlabel\n" + rows)
    task = get_task("sst2")
    full = load_examples(task, "train", tmp_path)
    a = load_examples(task, "train", tmp_path, limit=10, seed=7)
    b = load_examples(task, "train", tmp_path, limit=10, seed=7)
    c = load_examples(task, "train", tmp_path, limit=10, seed=8)
    assert len(full) == 100 and len(a) == 10
    assert a == b
    assert a != c
    # a subset of the original rows, in the original order
    idx = [int(e.texts[0].split()[-1]) for e in a]
    assert idx == sorted(idx) and all(full[i] == e for i, e in zip(idx, a, strict=True))
    # limit >= size or 0 keeps everything
    assert load_examples(task, "train", tmp_path, limit=100) == full
    assert load_examples(task, "train", tmp_path, limit=0) == full


def test_synthetic_task_is_deterministic():
    a = synthetic_examples("train", 50, seed=0)
    assert a == synthetic_examples("train", 50, seed=0)
    assert a != synthetic_examples("train", 50, seed=1)
    assert a != synthetic_examples("dev", 50, seed=0)
    task = get_task("synthetic")
    train, dev = load_examples(task, "train"), load_examples(task, "dev")
    assert (len(train), len(dev)) == (800, 400)
    assert load_examples(task, "dev") == dev
    assert {e.label for e in dev} == {0, 1}
    # learnable but noisy: the words give the label except for ~10% flipped labels
    agree = [(e.texts[0].split().count("good") > e.texts[0].split().count("bad")) == (e.label == 1)
             for e in dev]
    assert 0.85 <= sum(agree) / len(agree) <= 0.95


def test_train_size_counts_the_local_file_else_the_published_size(tmp_path):
    from de3bert.data import train_size

    _write(tmp_path, "sst2", "train.tsv", "sentence\tlabel\nfine\t1\nbad\t0\nok\t1\n")
    _write(tmp_path, "cola", "train.tsv", "s\t1\t\ta\ns\t0\t\tb\n")  # CoLA has no header
    assert train_size(get_task("sst2"), tmp_path) == 3
    assert train_size(get_task("cola"), tmp_path) == 2
    assert train_size(get_task("mrpc"), tmp_path) == 3668  # no local file: GLUE's published size
    assert train_size(get_task("synthetic"), tmp_path) == 800
    assert train_size(get_task("sst2"), tmp_path / "missing") == 67349  # no such dir: published size
