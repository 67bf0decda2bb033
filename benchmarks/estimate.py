"""`--dry-run` costs measured on this machine: a few real training steps, one batched and one
batch-1 inference pass per task shape, in seconds. Constants measured on one CPU were 4.6× off on
another (issue 24); a profile may still pin `step_seconds` (a GPU plan priced on a CPU machine).

The estimate of a run is built from these per-task costs (`Runner.estimate`): optimizer steps ×
step time × each stage's relative cost; a dev record = dev rows × batched pass per row; a timed
group = per operating point one live pass over the dev set plus the batch-1 and batch-32 timing.
"""

from __future__ import annotations

import random
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from de3bert.backbone import default_pooling, load_tokenizer
from de3bert.data import EncodedDataset, collate, get_task, load_examples, local_rows
from de3bert.model import build_model
from de3bert.precision import autocast_dtype, resolve_precision
from de3bert.recipes import task_loss
from de3bert.registry import get_method

#: rows drawn to find a typical batch (sorted by length, the middle batch: what length-grouped
#: training and sorted recording see most)
SAMPLE_ROWS = 256
#: where the timed training batches sit in the length distribution; their mean step time stands
#: for a length-grouped epoch's (one median-length batch was 0.4-1.8x off per task, issue 24)
LENGTH_QUANTILES = (1 / 6, 1 / 2, 5 / 6)


@dataclass
class TaskCosts:
    """Seconds per unit of work for one task shape, and where they came from."""

    step: float
    """One full fine-tune optimizer step (forward, backward, AdamW) at the profile's batch size."""
    row_batched: float
    """One dev row's share of a batch-32 inference pass (records, live checks, batched timing)."""
    row_single: float
    """One dev row at batch 1 (batch-1 timing)."""
    source: str
    """`measured` (this machine, with its precision and data) or `pinned` (the profile's)."""


def _length_batches(task_name: str, cfg: dict, data_dir: str | None, tok) -> list[dict]:
    """Batches of `batch_size` real training rows at the length quantiles `LENGTH_QUANTILES`
    (training draws length-grouped batches, so an epoch's steps span the length distribution);
    without local data, rows of the synthetic generator's (`--dry-run` says which tasks)."""
    task = get_task(task_name)
    try:
        rows = load_examples(task, "train", data_dir, SAMPLE_ROWS, seed=0)
    except (OSError, ValueError):  # no local data (and no Hub): synthetic text, same batch shape
        rows = load_examples(get_task("synthetic"), "train", None, SAMPLE_ROWS, seed=0)
        rows = [type(r)(r.texts * len(task.text_fields),
                        float(r.label) if task.is_regression else int(r.label) % task.num_labels)
                for r in rows]
    ds = EncodedDataset(rows, tok, int(cfg.get("max_seq_length", 128)), task.is_regression)
    order = sorted(range(len(ds)), key=lambda i: len(ds[i]["input_ids"]))
    size = int(cfg.get("batch_size", 32))
    last = max(0, len(order) - size)
    starts = [min(max(0, int(q * len(order)) - size // 2), last) for q in LENGTH_QUANTILES]
    return [collate([ds[i] for i in order[a:a + size]], tok.pad_token_id or 0) for a in starts]


@contextmanager
def library_bars_off():
    """transformers' "Loading weights" bar off while the dry-run builds models it only measures
    (one bar per model would bury the estimate), restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_task(profile, task_name: str, data_dir: str | None, steps: int = 2) -> TaskCosts:
    """Time `steps` training steps (after one warm-up) of the `single` recipe on each of the
    length-quantile batches, and one batched and one batch-1 inference pass on the median one,
    on this machine, at the profile's precision and threads."""
    torch.set_num_threads(profile.threads)
    cfg = profile.train_overrides(task_name)
    task = get_task(task_name)
    torch.manual_seed(0)
    random.seed(0)
    tok = load_tokenizer(profile.backbone)
    batches = _length_batches(task_name, cfg, data_dir, tok)
    pooling = cfg.get("pooling") or default_pooling(profile.backbone)
    with library_bars_off():
        model = build_model(profile.backbone, "single", task.num_labels, pooling)
    dtype = autocast_dtype(resolve_precision(cfg.get("precision", "auto"), "cpu", warn=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=bool(cfg.get("fused_adamw", True)))

    def train_step(batch: dict) -> None:
        inputs = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = task_loss(model(*inputs)[-1]["logits"], batch["labels"])  # what `single` optimises
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step = statistics.mean(_median_seconds(lambda b=b: train_step(b), steps) for b in batches)
    model.eval()
    mid = batches[len(batches) // 2]
    inputs = (mid["input_ids"], mid["attention_mask"], mid.get("token_type_ids"))
    with torch.inference_mode():
        batched = _median_seconds(lambda: model(*inputs), 2) / len(mid["input_ids"])
        one = tuple(t[:1] if t is not None else None for t in inputs)
        single = _median_seconds(lambda: model(*one), 3)
    return TaskCosts(step, batched, single, "measured")


#: seconds of a trained model's FLOPs count and timing-model caches beyond its dev pass
RECORD_FIXED_SECONDS = 2.0
#: seconds of tables, bootstrap statistics and plots per replay group (measured: 14.7 s for the
#: 35 groups of a two-task MiniLM run, `de3bert report`, this 2-core CPU)
REPORT_SECONDS_PER_GROUP = 0.45


def pinned(profile, task: str) -> bool:
    """Whether the profile pins this task's step time (`step_seconds`: the task or `default`)."""
    return task in profile.step_seconds or "default" in profile.step_seconds


def task_costs(profile, tasks: list[str], data_dir: str | None, say=print) -> dict[str, TaskCosts]:
    """Per task: the profile's pinned costs, else costs measured here (one line says which)."""
    out = {}
    for task in tasks:
        if pinned(profile, task):
            step = float(profile.step_seconds.get(task, profile.step_seconds.get("default")))
            out[task] = TaskCosts(step, 0.0, 0.0, "pinned")
            continue
        t0 = time.perf_counter()
        out[task] = measure_task(profile, task, data_dir)
        c = out[task]
        say(f"[dry-run] measured {task} on this machine in {time.perf_counter() - t0:.1f} s: "
            f"train step {c.step:.3f} s, batched pass {c.row_batched * 1e3:.2f} ms/row, "
            f"batch 1 {c.row_single * 1e3:.1f} ms/row")
    return out


def record_seconds(profile, task: str, costs: TaskCosts, dev_rows: int) -> float:
    """One trained model's dev record, FLOPs and timing caches."""
    if costs.source == "pinned":
        return float(profile.record_seconds.get(task, profile.record_seconds.get("default", 5.0)))
    return dev_rows * costs.row_batched + 96 * costs.row_single + RECORD_FIXED_SECONDS


def timed_seconds(profile, task: str, costs: TaskCosts, dev_rows: int) -> float:
    """One timed replay group: per operating point at speed-up t, a live pass over the dev set
    (its whole-dev check, ~1/t of a full pass), and the batch-1 and batched timings of the full
    model and the method (1 + 1/t passes over the timing samples per repeat)."""
    if costs.source == "pinned":
        return float(profile.timed_seconds.get(task, profile.timed_seconds.get("default", 20.0)))
    t = profile.timing
    samples, repeats, warmup = int(t.get("samples", 64)), int(t.get("repeats", 3)), int(t.get("warmup", 4))
    total = 0.0
    for target in profile.speedup_targets:
        both = 1 + 1 / target  # the full model, then early exit at about 1/target of its layers
        total += (dev_rows * costs.row_batched / target
                  + both * (samples * repeats + warmup) * costs.row_single
                  + both * samples * (repeats + 1) * costs.row_batched)
    return total


def _point_seconds(load: float, speedup: float, service: float, s) -> float:
    """One load point: its arrivals' span, or its batch-1 work at `speedup` if that is longer."""
    n = min(load / service * s.duration_s, s.max_requests)
    return max(n * service / load, n * service / speedup)


def serving_seconds(runner, plan: list[dict], costs: dict[str, TaskCosts]) -> dict[str, float]:
    """The load benchmark of each `serving.tasks` task, at most: every load of every contender
    (the full model, each chosen method at each target) under every scheduler, each point lasting
    its arrivals or its batch-1 work at the method's speed-up, whichever is longer (the sweep
    stops at the first load that misses the SLO, so this is an upper bound)."""
    from .serving_settings import parse_settings

    s = parse_settings(runner.p.serving or {}, "serving")
    out = {}
    for task in s.tasks:
        service = costs[task].row_single * runner.p.threads / s.threads  # one thread: slower
        seed = runner.p.seeds_for(task)[0]
        methods = {x["method"] for x in plan if x["kind"] == "replay" and x["task"] == task
                   and x["seed"] == seed and not x["skip"] and s.chooses(get_method(x["method"]))}
        speedups = [1.0] + [t for _ in methods for t in s.targets]
        total = (200 + s.warmup) * service + s.duration_s  # capacity calibration, generator overhead
        for sp in speedups:
            total += s.warmup * service / sp
            per_scheduler = (sum(_point_seconds(load, sp, service, s) for load in s.loads)
                             + s.refine * _point_seconds(max(s.loads), sp, service, s))
            total += len(s.schedulers) * per_scheduler
        out[task] = total
    return out


def _plan_lines(plan: list[dict]) -> None:
    """One line per training run and replay group (skips with their reason)."""
    for s in plan:
        what = s.get("recipe") if s["kind"] == "train" else s["method"]
        note = f"  (skip: {s['skip']})" if s["skip"] else ""
        print(f"{s['kind']:<7} {s['task']:<10} seed {s['seed']:<4} {what}{note}")


def _data_note(runner, tasks: list[str]) -> None:
    """Which tasks are sized from local files and which from the published split sizes."""
    absent = [t for t in tasks
              if t != "synthetic" and local_rows(get_task(t), "train", runner.data_dir) is None]
    if absent:
        print(f"[dry-run] no local data for {', '.join(absent)}: using the published split sizes "
              "(de3bert.data.TASKS)")


def _model_bytes(profile, recipe: str, num_labels: int, cache: dict) -> int | None:
    """fp32 bytes of one saved model (parameters × 4), built once per (recipe, labels); None when
    the backbone cannot be built here (a Hub backbone offline)."""
    key = (recipe, num_labels)
    if key not in cache:
        try:
            pooling = profile.train.get("pooling") or default_pooling(profile.backbone)
            with library_bars_off():
                model = build_model(profile.backbone, recipe, num_labels, pooling)
            cache[key] = 4 * sum(p.numel() for p in model.parameters())
        except (OSError, ValueError, KeyError):
            cache[key] = None
    return cache[key]


def print_disk(runner, plan: list[dict]) -> None:
    """The disk the plan writes: its models (kept unless `keep_models: none`), the largest
    checkpoint while one trains (weights + AdamW moments), and the dev records."""
    cache: dict = {}
    trains = [s for s in plan if s["kind"] == "train"]
    sizes = [_model_bytes(runner.p, s["recipe"], get_task(s["task"]).num_labels, cache) for s in trains]
    if not trains or any(b is None for b in sizes):
        print("disk: not estimated (the backbone cannot be built on this machine)")
        return
    records = sum(4 * 6 * runner._dev_rows(s["task"]) * (2 * get_task(s["task"]).num_labels + 2)
                  for s in trains)
    models, peak = sum(sizes), 3 * max(sizes)
    kept = "deleted after evaluation (keep_models: none)" if runner.p.keep_models == "none" else "kept"
    print(f"disk: {models / 1e9:.2f} GB of models ({len(sizes)} × about {models / len(sizes) / 1e6:.0f} MB, "
          f"{kept}), {peak / 1e6:.0f} MB more while one trains (its checkpoint), "
          f"{records / 1e6:.1f} MB of records")


def print_dry_run(runner, plan: list[dict], gpus: int) -> None:
    """The plan, then its estimate per task and part, in minutes (GPU-hours for a GPU profile)."""
    _plan_lines(plan)
    tasks = list(dict.fromkeys(s["task"] for s in plan))
    _data_note(runner, tasks)
    for key in runner.p.step_seconds:
        if key != "default" and key not in tasks:
            print(f"[dry-run] warning: step_seconds has {key!r}, a task this profile does not run "
                  f"({', '.join(tasks)})")
    costs = task_costs(runner.p, tasks, runner.data_dir)
    parts = runner.estimate(plan, costs)
    n_train = sum(s["kind"] == "train" for s in plan)
    n_rep = sum(s["kind"] == "replay" and not s["skip"] for s in plan)
    print(f"{n_train} training runs, {n_rep} replay groups")
    gpu = runner.p.device.startswith("cuda")
    unit, scale = ("GPU-h", 3600) if gpu else ("min", 60)
    report = REPORT_SECONDS_PER_GROUP * n_rep
    parts["(report)"] = {"train": 0.0, "record": 0.0, "timed": 0.0, "replay": report}
    print(f"{'task':<10} {'train':>9} {'record':>9} {'timed':>9} {'replay':>9} {'total':>9}  ({unit})")
    for task, p in parts.items():
        print(f"{task:<10} " + " ".join(f"{v / scale:>9.2f}" for v in p.values())
              + f" {sum(p.values()) / scale:>9.2f}")
    total = sum(sum(p.values()) for p in parts.values())
    for task, seconds in serving_seconds(runner, plan, costs).items():
        print(f"{'serving':<10} {task}: at most {seconds / scale:.2f} {unit} (the load benchmark, "
              "`serving.tasks`)")
        total += seconds
    how = ("step times pinned by the profile" if all(c.source == "pinned" for c in costs.values())
           else "costs measured on this machine just now")
    if gpu:
        del parts["(report)"]  # written once at the end, not per GPU
        chains = [sum(sum(p.values()) for p in runner.estimate(
            [s for s in plan if (s["task"], s["seed"]) == ts], costs).values())
            for ts in dict.fromkeys((s["task"], s["seed"]) for s in plan)]
        wall = max(total / gpus, max(chains, default=0.0)) / 3600
        print(f"estimated {total / 3600:.1f} GPU-hours on one GPU ({how}); on {gpus} GPUs through "
              f"the Ray executor at least {wall:.1f} h of wall time (all GPUs busy, or the longest "
              "task-and-seed chain, whose training and evaluation jobs run in order)")
    else:
        print(f"estimated {total / 60:.0f} min on this machine ({how})")
    print_disk(runner, plan)
