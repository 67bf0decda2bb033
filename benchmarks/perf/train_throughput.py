"""Training throughput: this suite's recipes against a plain Hugging Face `Trainer` fine-tune.

Both sides start from the same raw rows (a seeded subsample of a GLUE task's training set) and
end with a trained model: tokenisation, model construction and the whole training call are
timed, as a user would feel them. The HF side is `AutoModelForSequenceClassification` + `Trainer`
with `train_sampling_strategy="group_by_length"` (HF's `LengthGroupedSampler`), no checkpoints,
no evaluation, its default (fused) AdamW; the suite side is `de3bert.train.train` into a fresh
directory (so nothing is reused), with the same batch, learning rate, epochs and threads.

Run alone (`python -m benchmarks.perf.train_throughput --task mrpc`) or through
`bench_train_throughput.py` (pytest-benchmark; the ratios go to `extra_info`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass

import torch

from de3bert.backbone import load_tokenizer, resolve_backbone
from de3bert.data import get_task, load_examples, resolve_data_dir
from de3bert.train import TrainConfig, first_stage_config, train

#: the recipes whose throughput the goal covers (`single` is the full-model reference)
RECIPES = ("single", "weighted", "de3", "two-stage")


@dataclass(frozen=True)
class Budget:
    """One comparison's size: the same for both sides."""

    task: str = "mrpc"
    rows: int = 320
    batch_size: int = 32
    lr: float = 1e-4
    max_seq_length: int = 128
    backbone: str = "embedded:all-MiniLM-L6-v2"
    seed: int = 42


def hf_trainer_seconds(b: Budget, data_dir: str | None, sampling: str = "group_by_length") -> float:
    """Wall time of a plain HF fine-tune of `b`: tokenise, build, `Trainer.train()` (one epoch)."""
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    task = get_task(b.task)
    t0 = time.perf_counter()
    examples = load_examples(task, "train", data_dir, b.rows, b.seed)
    tok = load_tokenizer(b.backbone)
    texts = list(zip(*[e.texts for e in examples], strict=True))
    enc = tok(*texts, truncation=True, max_length=b.max_seq_length)
    rows = [{**{k: enc[k][i] for k in enc.keys()}, "labels": e.label} for i, e in enumerate(examples)]
    model = AutoModelForSequenceClassification.from_pretrained(resolve_backbone(b.backbone),
                                                               num_labels=task.num_labels)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=b.batch_size, learning_rate=b.lr,
                                 num_train_epochs=1, train_sampling_strategy=sampling, save_strategy="no",
                                 eval_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                                 disable_tqdm=True, logging_strategy="no", seed=b.seed, warmup_steps=0.1,
                                 weight_decay=0.01)
        collator = DataCollatorWithPadding(tok)
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()
    return time.perf_counter() - t0


def suite_seconds(b: Budget, recipe: str, data_dir: str | None, **overrides) -> float:
    """Wall time of `de3bert.train.train` for `recipe` on `b` into a fresh directory (one epoch
    per stage, no checkpoint inside the run, the final model written as always). A recipe with a
    shared first stage (two-stage) gets it trained beforehand, untimed, as a runner shares it."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(task=b.task, recipe=recipe, backbone=b.backbone, data_dir=data_dir or "",
                          max_seq_length=b.max_seq_length, batch_size=b.batch_size, lr=b.lr, epochs=1.0,
                          train_limit=b.rows, seed=b.seed, checkpoint_every=10**9, out_dir=f"{out}/run",
                          progress=False, **overrides)
        shared = first_stage_config(cfg)
        if shared is not None:
            train(shared)
        t0 = time.perf_counter()
        train(cfg)
        return time.perf_counter() - t0


def compare(b: Budget, data_dir: str | None, recipes=RECIPES, **overrides) -> dict:
    """HF (random and length-grouped sampling) and every recipe, interleaved once, with the
    examples/s of each and each recipe's ratio to HF `group_by_length` (higher = the suite faster).
    Two-stage is timed for its own (second) stage; its first is the shared `single` run."""
    hf = hf_trainer_seconds(b, data_dir)
    hf_random = hf_trainer_seconds(b, data_dir, sampling="random")
    out = {"task": b.task, "rows": b.rows, "hf_group_by_length_s": hf, "hf_random_s": hf_random,
           "recipes": {}}
    for r in recipes:
        s = suite_seconds(b, r, data_dir, **overrides)
        out["recipes"][r] = {"seconds": s, "examples_per_s": b.rows / s, "ratio_vs_hf_grouped": hf / s}
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: print one comparison as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mrpc")
    ap.add_argument("--rows", type=int, default=320)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    res = compare(Budget(task=args.task, rows=args.rows), resolve_data_dir(args.data_dir),
                  recipes=args.recipes.split(","))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
