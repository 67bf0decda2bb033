"""Pilots behind DE³'s DAR defaults (issue 25), on a split of the *training* data only.

The training TSV of a task is shuffled (seeded) and cut into a pilot-train part and a held-out
part written as that task's dev file in a scratch GLUE folder, so no dev set the tables report is
ever read. Each configuration (a recipe + head options) trains with the default profile's budget
for the task and reports, per layer, the held-out headline metric and the share of the majority
prediction (a collapsed model predicts one class). One JSON line per configuration.

    python scripts/dar_pilots.py --task cola --epochs 3 --out runs/pilots/cola.jsonl \
        --config de3 '{}' --config de3 '{"dar_distance": "euclidean"}' --config weighted '{}'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from pathlib import Path

import torch

from de3bert.backbone import load_tokenizer
from de3bert.data import EncodedDataset, get_task, make_loader, resolve_data_dir
from de3bert.engine import record_signals
from de3bert.metrics import glue_metrics
from de3bert.train import TrainConfig, train


def split_training_file(task_name: str, data_dir: str, out: Path, held_out: float, seed: int) -> Path:
    """`out/<Task>/train.tsv` and `<dev file>` cut from the task's training file (header kept)."""
    task = get_task(task_name)
    src = Path(data_dir) / task.folder / "train.tsv"
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    header, body = (lines[:1], lines[1:]) if task.has_header else ([], lines)
    random.Random(seed).shuffle(body)
    cut = int(len(body) * held_out)
    folder = out / task.folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("".join(header + body[cut:]), encoding="utf-8")
    (folder / task.dev_file).write_text("".join(header + body[:cut]), encoding="utf-8")
    return out


def per_layer(task_name: str, model, cfg: TrainConfig) -> dict:
    """Held-out headline metric and majority-prediction share at every layer."""
    from de3bert.data import load_examples

    task = get_task(task_name)
    tok = load_tokenizer(cfg.backbone)
    ds = EncodedDataset(load_examples(task, "dev", cfg.data_dir), tok, cfg.max_seq_length, False)
    rec = record_signals(model, make_loader(ds, 64, shuffle=False, pad_token_id=tok.pad_token_id or 0),
                         progress=False)
    preds = rec["logits"].argmax(-1)
    metric = [round(glue_metrics(task.metrics, p, rec["labels"])[task.headline_metric], 2) for p in preds]
    majority = [round(float(torch.bincount(p).max()) / len(p), 3) for p in preds]
    return {"metric": metric, "majority_share": majority, "held_out_rows": len(ds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="cola")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--held-out", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--config", nargs=2, action="append", metavar=("RECIPE", "OPTIONS"), required=True)
    ap.add_argument("--work", default="runs/pilots")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    data = split_training_file(args.task, resolve_data_dir(None), work / "glue", args.held_out, args.seed)
    for recipe, options in args.config:
        tag = f"{recipe}-{hashlib.sha256(options.encode()).hexdigest()[:8]}"
        cfg = TrainConfig(task=args.task, recipe=recipe, data_dir=str(data), lr=1e-4, batch_size=32,
                          epochs=args.epochs, train_limit=args.train_limit, seed=args.seed,
                          precision=args.precision, head_options=options, progress=False,
                          out_dir=str(work / args.task / tag))
        row = {"task": args.task, "recipe": recipe, "options": json.loads(options), "epochs": args.epochs,
               **per_layer(args.task, train(cfg), cfg)}
        print(json.dumps(row), flush=True)
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
