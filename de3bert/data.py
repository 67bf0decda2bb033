"""GLUE tasks: the task registry, loaders (local `glue_data/` or the Hub), the synthetic smoke task,
tokenisation and dynamic padding.

Data never reaches a policy: this module produces tokenised batches for the model and labels for
the metrics, nothing else.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .tasks import TASKS, TaskSpec  # the registry: de3bert/tasks.yaml

csv.field_size_limit(1 << 24)


class DataError(ValueError):
    """Missing, empty or malformed data; the message names the file and line."""


_ALIASES = ({t.folder.lower().replace("-", ""): k for k, t in TASKS.items() if t.folder and not t.train_task}
            | {k.lower().replace("-", ""): k for k in TASKS}
            | {"mnlimatched": "mnli", "mnlim": "mnli", "mnlimismatched": "mnli-mm"})


def get_task(name: str) -> TaskSpec:
    """Look a task up by any common spelling (SST-2, sst2, STS-B, ...)."""
    key = _ALIASES.get(str(name).lower().replace("-", "").replace("_", ""))
    if key is None:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[key]


@dataclass
class Example:
    """One labelled input: one text (single-sentence tasks) or two (pairs)."""

    texts: tuple[str, ...]
    label: float | int


def _parse_label(task: TaskSpec, raw: str, where: str) -> float | int:
    """One label cell as a class index or a float score; `where` (file:line) names bad values."""
    raw = raw.strip()
    if task.is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{where}: label {raw!r} is not a number") from None
        if value != value:
            raise DataError(f"{where}: label is NaN")
        return value
    if task.labels:
        if raw not in task.labels:
            raise DataError(f"{where}: label {raw!r} is not one of {list(task.labels)}")
        return task.labels.index(raw)
    try:
        value = int(raw)
    except ValueError:
        raise DataError(f"{where}: label {raw!r} is not an integer class") from None
    if not 0 <= value < task.num_labels:
        raise DataError(f"{where}: label {value} outside the task's classes 0..{task.num_labels - 1}")
    return value


def read_tsv(task: TaskSpec, path: Path) -> list[Example]:
    """Read one classic GLUE TSV (no quoting, tab-separated); every row must have exactly the
    header's number of fields (CoLA: 4). Errors name the file and line."""
    if not path.is_file():
        raise DataError(f"missing data file {path} for task {task.name}")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.has_header:
        if not rows:
            raise DataError(f"{path}: empty file (no header)")
        header, body, first_line = rows[0], rows[1:], 2
        missing = [c for c in (*task.text_fields, task.label_field) if c not in header]
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {missing}; header is {header}")
        idx = [header.index(c) for c in task.text_fields]
        lab = header.index(task.label_field)
        width = len(header)
    else:
        body, first_line = rows, 1
        idx = [int(c) for c in task.text_fields]
        lab = int(task.label_field)
        width = task.columns or max(max(idx), lab) + 1
    out = []
    for n, row in enumerate(body, start=first_line):
        where = f"{path}:{n}"
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != width:  # more fields = a stray tab: the columns would be misaligned
            raise DataError(f"{where}: malformed row with {len(row)} fields, expected {width} "
                            f"({'a stray tab?' if len(row) > width else 'missing fields'})")
        out.append(Example(tuple(row[i] for i in idx), _parse_label(task, row[lab], where)))
    if not out:
        raise DataError(f"{path}: no data rows (empty split)")
    return out


def synthetic_examples(split: str, n: int, seed: int) -> list[Example]:
    """A deterministic two-class task with easy and hard samples (so early exit has work to do).

    Class 1 sentences contain more 'good' than 'bad' words; some samples are near-ties, and 10% of
    labels are flipped so no model reaches 100% and metric regressions stay visible.
    """
    rng = random.Random(f"{seed}-{split}")
    filler = ["the", "a", "movie", "plot", "was", "very", "quite", "and", "it", "story", "cast"]
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        margin = rng.choice([1, 1, 2, 3, 4])
        good, bad = (margin, 0) if label else (0, margin)
        bad += rng.randint(0, 1) if label else 0
        good += 0 if label else rng.randint(0, 1)
        if good == bad:
            good, bad = (good + 1, bad) if label else (good, bad + 1)
        words = ["good"] * good + ["bad"] * bad + rng.choices(filler, k=rng.randint(3, 12))
        rng.shuffle(words)
        if rng.random() < 0.1:
            label = 1 - label
        out.append(Example((" ".join(words),), label))
    return out


#: a local copy found inside the checkout (`scripts/setup.sh` links the one beside it here)
REPO_GLUE = Path(__file__).resolve().parents[1] / "glue_data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str | None:
    """The local glue_data/ folder: the given one, else $GLUE_DIR, else `glue_data/` in the
    checkout, else None (the Hub).

    The one place data is resolved, so `de3bert run`, `run_all.sh`, `de3bert train/eval`, the
    runner, the tests and the benchmarks find the same copy (issue 27)."""
    found = data_dir or os.environ.get("GLUE_DIR") or (REPO_GLUE if REPO_GLUE.is_dir() else None)
    return str(found) if found else None


def _parser(task: TaskSpec):
    """The reader of a task's files: its registered `parser` ("module:function"), else GLUE TSV."""
    if not task.parser:
        return read_tsv
    import importlib

    module, _, attr = task.parser.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_examples(task: TaskSpec, split: str, data_dir: str | os.PathLike | None = None,
                  limit: int | None = None, seed: int = 0) -> list[Example]:
    """Load `train` or `dev` examples: local dir (`data_dir` or $GLUE_DIR), else the Hub.

    `limit` subsamples deterministically (seeded), as the default profile does for SST-2.
    """
    if split not in ("train", "dev"):
        raise ValueError(f"unknown split {split!r}; valid: train, dev")
    path = data_file(task, split, data_dir)
    if task.name == "synthetic":
        examples = synthetic_examples(split, 800 if split == "train" else 400, seed)
    elif path is not None:
        examples = _parser(task)(task, path)
    else:
        examples = _load_hub(task, split)
    if limit is not None and 0 < limit < len(examples):
        rng = random.Random(seed)
        keep = sorted(rng.sample(range(len(examples)), limit))
        examples = [examples[i] for i in keep]
    return examples


def local_rows(task: TaskSpec, split: str, data_dir: str | os.PathLike | None) -> int | None:
    """Rows of the local file of `split` (a line count less its header: malformed rows count), or
    None when it is not here (no data dir yet: an estimate, not a load)."""
    try:
        path = data_file(task, split, data_dir)
    except DataError:
        path = None
    if path is None or not path.is_file():
        return None
    with path.open("rb") as f:
        return sum(1 for _ in f) - int(task.has_header)


def train_size(task: TaskSpec, data_dir: str | os.PathLike | None = None) -> int:
    """Training rows: the local file's, else the published size (the dry-run estimate)."""
    rows = local_rows(task, "train", data_dir)
    return task.train_rows if rows is None else rows


def dev_size(task: TaskSpec, data_dir: str | os.PathLike | None = None) -> int:
    """Dev rows: the local file's, else the published size (the dry-run estimate)."""
    rows = local_rows(task, "dev", data_dir)
    return task.dev_rows if rows is None else rows


def data_file(task: TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local TSV `load_examples` reads (`data_dir`, else $GLUE_DIR); None for the Hub/synthetic."""
    if split not in ("train", "dev"):
        raise ValueError(f"unknown split {split!r}; valid: train, dev")
    data_dir = resolve_data_dir(data_dir)
    if task.name == "synthetic" or not data_dir:
        return None
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data dir {root} does not exist")
    return root / task.folder / ("train.tsv" if split == "train" else task.dev_file)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, cached on (path, size, mtime)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of one file (hashed once while its size and mtime are unchanged)."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def examples_sha256(examples: list[Example]) -> str:
    """SHA-256 of the (texts, label) rows, for data that is not one local file."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([list(e.texts), e.label]).encode())
    return h.hexdigest()


def source_identity(task: TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> dict:
    """Where a split comes from and a SHA-256 of it: the local file's bytes, else the rows read
    (the synthetic generator, the Hub dataset); before any subsampling."""
    path = data_file(task, split, data_dir)
    if path is not None:
        if not path.is_file():
            raise DataError(f"missing data file {path} for task {task.name}")
        return {"data_source": str(path.resolve()), "data_sha256": file_sha256(path)}
    if task.name == "synthetic":
        rows = synthetic_examples(split, 800 if split == "train" else 400, 0)
        return {"data_source": "synthetic", "data_sha256": examples_sha256(rows)}
    if not task.hub_config:
        raise DataError(f"task {task.name} has no Hub copy: give its local folder "
                        f"{task.folder or task.name}/ with --data-dir or $GLUE_DIR")
    hub_split = "train" if split == "train" else task.hub_dev_split
    return {"data_source": f"hub:nyu-mll/glue/{task.hub_config}/{hub_split}",
            "data_sha256": examples_sha256(_load_hub(task, split))}


def _load_hub(task: TaskSpec, split: str) -> list[Example]:
    """The Hub dataset `nyu-mll/glue` through `datasets` (needs network or a warm cache)."""
    from datasets import load_dataset

    if not task.hub_config:
        raise DataError(f"task {task.name} has no Hub copy: give its local folder "
                        f"{task.folder or task.name}/ with --data-dir or $GLUE_DIR")
    hub_split = "train" if split == "train" else task.hub_dev_split
    ds = load_dataset("nyu-mll/glue", task.hub_config, split=hub_split)
    out = []
    for i, row in enumerate(ds):
        label = row["label"]
        if not task.is_regression and not 0 <= int(label) < task.num_labels:
            raise DataError(f"nyu-mll/glue/{task.hub_config}/{hub_split} row {i}: label {label} invalid")
        out.append(Example(tuple(row[f] for f in task.hub_fields),
                           float(label) if task.is_regression else int(label)))
    if not out:
        raise DataError(f"nyu-mll/glue/{task.hub_config}/{hub_split}: empty split")
    return out


class EncodedDataset(torch.utils.data.Dataset):
    """Tokenised examples (truncated to `max_seq_length`, unpadded); `collate` pads per batch."""

    def __init__(self, examples: list[Example], tokenizer, max_seq_length: int, regression: bool):
        """Tokenise every example once (pairs as pairs)."""
        self.regression = regression
        texts = list(zip(*[e.texts for e in examples], strict=True))
        enc = tokenizer(*texts, truncation=True, max_length=max_seq_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(examples))]
        self.labels = [e.label for e in examples]

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        """Features, label and the example's index (so records come back in dataset order)."""
        return {**self.features[i], "labels": self.labels[i], "index": i}

    def lengths(self) -> list[int]:
        """Token count of every example (FLOPs and timing per sample)."""
        return [len(f["input_ids"]) for f in self.features]


def collate(items: list[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest sequence in the batch."""
    width = max(len(it["input_ids"]) for it in items)
    batch: dict[str, torch.Tensor] = {}
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        if key not in items[0]:
            continue
        pad = pad_token_id if key == "input_ids" else 0
        batch[key] = torch.tensor([it[key] + [pad] * (width - len(it[key])) for it in items])
    labels = [it["labels"] for it in items]
    batch["labels"] = torch.tensor(labels, dtype=torch.float if isinstance(labels[0], float) else torch.long)
    batch["index"] = torch.tensor([it["index"] for it in items])
    return batch


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int,
                           megabatch: int = 50) -> list[list[int]]:
    """Batches of similar length, in the manner of HF's `LengthGroupedSampler`: a seeded
    permutation cut into megabatches of `megabatch` × `batch_size` examples, each sorted by length
    (so a batch pads to little more than its own examples), then the batches' order shuffled with
    the same generator. Every example appears once per epoch; the order depends only on `seed`."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    size = max(1, megabatch) * batch_size
    batches = []
    for start in range(0, len(order), size):
        mega = sorted(order[start:start + size], key=lambda i: -lengths[i])
        batches += [mega[i:i + batch_size] for i in range(0, len(mega), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def sorted_loader(ds: EncodedDataset, batch_size: int, pad_token_id: int = 0) -> torch.utils.data.DataLoader:
    """Batches of examples sorted by length (longest first): the least padding for a pass whose
    consumer puts rows back in dataset order by their `index` (records, live exits)."""
    order = sorted(range(len(ds)), key=lambda i: -len(ds.features[i]["input_ids"]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, generator=torch.Generator().manual_seed(0),
                                       collate_fn=lambda items: collate(items, pad_token_id))


def make_loader(ds: EncodedDataset, batch_size: int, shuffle: bool, seed: int = 0,
                pad_token_id: int = 0, group_by_length: int = 0) -> torch.utils.data.DataLoader:
    """A loader with dynamic padding; shuffled by its own seeded generator (reproducible order).
    `group_by_length` > 0 (with `shuffle`) draws length-grouped batches from megabatches of that
    many batches (`length_grouped_batches`): less padding, hence less compute per epoch."""
    collate_fn = lambda items: collate(items, pad_token_id)  # noqa: E731
    gen = torch.Generator().manual_seed(seed)  # also keeps the loader off the global RNG (resumes)
    if shuffle and group_by_length > 0:
        batches = length_grouped_batches(ds.lengths(), batch_size, seed, group_by_length)
        return torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=collate_fn, generator=gen)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       collate_fn=collate_fn)
