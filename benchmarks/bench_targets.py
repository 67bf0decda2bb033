"""Performance targets of the suite, each measured as a ratio inside one pytest-benchmark run.

Run (and keep the JSON next to the other results, named after the commit)::

    export HF_HUB_OFFLINE=1
    .venv/bin/pytest benchmarks/bench_targets.py --benchmark-only \
        --benchmark-json=results/benchmarks/$(git rev-parse --short HEAD).json

Compare with an earlier run (a JSON file written as above)::

    .venv/bin/pytest benchmarks/bench_targets.py --benchmark-only \
        --benchmark-compare=results/benchmarks/<commit>.json

Smoke run in seconds (tiny random backbone, few samples, goals recorded but not asserted)::

    .venv/bin/pytest benchmarks/bench_targets.py --benchmark-only --tiny    # or DE3_BENCH_TINY=1

Targets (ratio, goal):

- replay sweep: every registered method × 100 knob values (`dense_grid(100)`; oracle and fixed-exit:
  their full grid), `replay` + `replay_predictions` over MRPC dev records, ÷ one full-depth record
  pass over the same dev set (batch 64). Goal ≤ 1.2.
- wall-clock fidelity: batch-1 wall-clock speed-up ÷ layer speed-up of the same samples, for each
  deployable method at its 2× operating point, inputs of exactly 128 tokens. Goal ≥ 0.9.
- batched early exit: batch-32 throughput speed-up (batch shrinking) ÷ layer speed-up, same points
  and samples. Goal ≥ 0.7.
- indicator overhead: (DE³ heads' `forward_layer` + `EDRPolicy.step`) − (DeeBERT heads'
  `forward_layer` + `EntropyPolicy.step`), batch 1, 128 tokens, ÷ one transformer layer.
  Goal ≤ 0.03.

Each benchmark's timed function is the early-exit side (replays, live early exit, a pass with DE³
decisions); the reference it is divided by (record pass, full model, a pass with DeeBERT decisions)
runs in pytest-benchmark's untimed `setup` before every round, so the two alternate (this machine's
speed drifts over minutes) and the ratio uses medians of both. Wall-clock rounds alternate every 8
samples (batch 1) or every batch (batch 32); the indicator overhead is timed inside real passes
(each decision right after its layer: small ops cost about 3× more there than in a warm loop, the
warm-loop figures are kept as `isolated_*`), in blocks of consecutive passes of one method (a
deployment runs one method; passes alternating method by method are kept as `alternating_*`). Every
ratio, its goal and pass/fail are in each benchmark's `extra_info` together with the machine (cpu
count, torch threads) and which models were used: trained ones from
`results/default/models/mrpc/<recipe>-s42/final` (or `$DE3_BENCH_MODELS/<recipe>-s42/final`) when
they exist, otherwise the embedded backbone with randomly initialised exit heads (seeded; the
recipe's `after_training` step on 256 MRPC train pairs sets DE³'s prototypes); a recipe without a
trained model falls back alone.

Operating point: the knob whose replayed layer speed-up on the timed samples is the smallest ≥ 2
(grid ∪ dense grid, refined by bisection; if no knob reaches 2, the largest one ≥ 1.5, flagged
`fallback`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from de3bert.backbone import EMBEDDED_BACKBONE, TINY_RANDOM, LayerwiseEncoder, load_encoder, load_tokenizer
from de3bert.data import EncodedDataset, Example, get_task, load_examples, make_loader
from de3bert.engine import live_batch, record_signals, replay_predictions
from de3bert.model import MultiExitModel
from de3bert.policy import ExitPolicy
from de3bert.recipes import get_recipe
from de3bert.registry import all_methods, get_method
from de3bert.timing import batches_of, full_forward

REPO_ROOT = Path(__file__).resolve().parent.parent
#: trained MRPC models (`<recipe>-s42/final`) of the default profile; DE3_BENCH_MODELS overrides
TRAINED_ROOT = Path(os.environ.get("DE3_BENCH_MODELS", REPO_ROOT / "results" / "default" / "models" / "mrpc"))
TRAINED_SEED = 42
SEED = 1234

GOAL_REPLAY = 1.2  # replay sweep ≤ 1.2 × one record pass
GOAL_FIDELITY = 0.9  # batch-1 wall-clock speed-up ≥ 0.9 × layer speed-up
GOAL_BATCHED = 0.7  # batch-32 throughput speed-up ≥ 0.7 × layer speed-up
GOAL_OVERHEAD = 0.03  # DE³ decision − DeeBERT decision ≤ 3% of one layer
TARGET_SPEEDUP, FALLBACK_SPEEDUP = 2.0, 1.5

#: every method that can be deployed (the oracle reads labels: report only, never timed)
DEPLOYABLE = [name for name, m in all_methods().items() if not m.report_only]


@dataclass(frozen=True)
class Config:
    tiny: bool
    backbone: str
    dev_limit: int | None  # MRPC dev pairs for the replay target (None: all 408)
    timed_samples: int  # 128-token inputs timed live
    seq_len: int
    record_batch: int
    throughput_batch: int
    sweep_size: int
    rounds_replay: int
    rounds_latency: int
    rounds_throughput: int
    rounds_overhead: int  # blocks per method (indicator overhead), and passes per side when alternating
    overhead_block: int  # consecutive passes of one method per block; the first is a warm-up
    calls_overhead: int  # decision calls per timed loop
    calls_layer: int  # layer calls per timed loop
    warmup: int
    calibration_pairs: int  # MRPC train pairs for a random-init model's after_training step
    chunk_latency: int  # batch-1 samples per full/early-exit alternation


def make_config(tiny: bool) -> Config:
    common = dict(seq_len=128, record_batch=64, sweep_size=100)
    if tiny:
        return Config(tiny=True, backbone=TINY_RANDOM, dev_limit=32, timed_samples=8, throughput_batch=4,
                      rounds_replay=2, rounds_latency=2, rounds_throughput=2, rounds_overhead=3,
                      overhead_block=2, calls_overhead=20, calls_layer=5, warmup=1, calibration_pairs=32,
                      chunk_latency=4, **common)
    return Config(tiny=False, backbone=EMBEDDED_BACKBONE, dev_limit=None, timed_samples=64,
                  throughput_batch=32, rounds_replay=3, rounds_latency=5, rounds_throughput=5,
                  rounds_overhead=30, overhead_block=6, calls_overhead=200, calls_layer=20, warmup=3,
                  calibration_pairs=256, chunk_latency=8, **common)


# ---- helpers ------------------------------------------------------------------------------------
def machine_info() -> dict:
    return {"nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def timed(fn: Callable[[], object], sink: list[float]) -> Callable[[], None]:
    """`fn` wrapped so that every call appends its duration (seconds) to `sink`."""

    def run():
        t0 = time.perf_counter()
        fn()
        sink.append(time.perf_counter() - t0)

    return run


def record_result(benchmark, cfg: Config, target: str, ratio: float, goal: float, higher_is_better: bool,
                  **info) -> bool:
    passed = ratio >= goal if higher_is_better else ratio <= goal
    benchmark.extra_info.update({
        "target": target, "ratio": ratio, "goal": f"{'>=' if higher_is_better else '<='} {goal}",
        "goal_value": goal, "passed": bool(passed), "asserted": not cfg.tiny, "tiny": cfg.tiny,
        "backbone": cfg.backbone, "machine": machine_info(), **info})
    return passed


def fixed_length_items(examples: list[Example], tokenizer, n: int, length: int) -> list[dict]:
    """`n` inputs of exactly `length` tokens, no padding: MRPC pair i's first sentence, then its
    second sentence continued by the following pairs' sentences, truncated to `length`."""
    items = []
    for i in range(n):
        first = examples[i % len(examples)].texts[0]
        rest, j = list(examples[i % len(examples)].texts[1:]), i
        while True:
            enc = tokenizer(first, " ".join(rest), truncation="longest_first", max_length=length)
            if len(enc["input_ids"]) >= length:
                break
            j += 1
            rest.extend(examples[j % len(examples)].texts)
        item = {k: list(v) for k, v in enc.items()}
        assert len(item["input_ids"]) == length and all(item["attention_mask"])
        items.append({**item, "labels": examples[i % len(examples)].label, "index": i})
    return items


def sweep_values(name: str, policy: ExitPolicy, n: int) -> list[float]:
    """The benchmark's sweep: `dense_grid(n)`; oracle and fixed-exit use their (smaller) full grid."""
    grid = policy.grid()
    if name in ("oracle", "fixed-exit") or min(grid) == max(grid):
        return grid
    return policy.dense_grid(n)


@dataclass
class OperatingPoint:
    method: str
    knob: float
    layer_speedup: float  # replayed on the timed samples
    exits: list[int]
    kind: str  # "target" (smallest ≥ 2) or "fallback" (largest ≥ 1.5)


def operating_point(name: str, policy: ExitPolicy, record: dict) -> OperatingPoint | None:
    """The knob whose replayed layer speed-up is the smallest ≥ 2 (else the largest ≥ 1.5).

    Candidates: the default grid ∪ `dense_grid(100)`, then, for a real-valued knob, a bisection
    inside every pair of neighbouring candidates whose speed-ups straddle 2 (a coarse grid can jump
    from 1.8× to 6× when many samples have nearly the same score)."""
    L, n = policy.num_layers, record["labels"].shape[0]

    def sweep(vals: list[float]) -> tuple[torch.Tensor, list[float]]:
        exits = policy.replay(record, vals)
        return exits, (L * n / exits.sum(1).double()).tolist()

    values = sorted(set(policy.grid()) | set(policy.dense_grid(100)))
    exits, speedups = sweep(values)
    cands = [(s, v, exits[i]) for i, (v, s) in enumerate(zip(values, speedups, strict=True))]
    if not policy.knob.integer:
        for i in range(len(values) - 1):
            if (speedups[i] >= TARGET_SPEEDUP) == (speedups[i + 1] >= TARGET_SPEEDUP):
                continue
            below, above = ((values[i], values[i + 1]) if speedups[i] < TARGET_SPEEDUP
                            else (values[i + 1], values[i]))
            for _ in range(40):
                mid = 0.5 * (below + above)
                e, s = sweep([mid])
                if s[0] >= TARGET_SPEEDUP:
                    above = mid
                    cands.append((s[0], mid, e[0]))
                else:
                    below = mid
    ok = [c for c in cands if c[0] >= TARGET_SPEEDUP - 1e-9]
    if ok:
        best, kind = min(ok, key=lambda c: c[0]), "target"
    else:
        ok = [c for c in cands if c[0] >= FALLBACK_SPEEDUP - 1e-9]
        if not ok:
            return None
        best, kind = max(ok, key=lambda c: c[0]), "fallback"
    return OperatingPoint(name, float(best[1]), best[0], best[2].tolist(), kind)


# ---- fixtures (module scope: built once per run) --------------------------------------------------
@pytest.fixture(scope="module")
def cfg(bench_tiny) -> Config:
    # 2 threads as in the default profile; the tiny smoke run gains nothing from intra-op threads
    torch.set_num_threads(1 if bench_tiny else min(2, os.cpu_count() or 1))
    return make_config(bench_tiny)


@pytest.fixture(scope="module")
def tokenizer(cfg):
    return load_tokenizer(cfg.backbone)


@pytest.fixture(scope="module")
def models(cfg, glue_dir, tokenizer) -> tuple[dict[str, MultiExitModel], dict[str, str]]:
    """Every recipe's model (plus `single`, the full-model reference) and where it came from.

    A random-init model still gets its recipe's `after_training` step on a few MRPC train pairs
    (DE³: prototypes = class means of the projected features; a no-op for the other recipes), so
    that DE³'s distance ratio is not a constant 0.5 from all-zero prototypes.
    """
    recipes = sorted({m.recipe for m in all_methods().values()} | {"single"})
    models, sources, shared, calib = {}, {}, None, None
    for i, recipe in enumerate(recipes):
        path = TRAINED_ROOT / f"{recipe}-s{TRAINED_SEED}" / "final"
        if not cfg.tiny and (path / "model.safetensors").is_file():
            models[recipe] = MultiExitModel.load(path)
            sources[recipe] = f"trained: {path}"
            continue
        if shared is None:  # random-init heads share one (pre-trained or tiny random) encoder
            torch.manual_seed(SEED)
            shared = LayerwiseEncoder(load_encoder(cfg.backbone))
            train = load_examples(get_task("mrpc"), "train", glue_dir, cfg.calibration_pairs, seed=0)
            calib = make_loader(EncodedDataset(train, tokenizer, 128, regression=False), 32, shuffle=False,
                                pad_token_id=tokenizer.pad_token_id or 0)
        torch.manual_seed(SEED + i)
        meta = {"backbone": cfg.backbone, "num_labels": 2, "pooling": "mean"}
        model = get_recipe(recipe).build(shared, meta).eval()
        get_recipe(recipe).after_training(model, calib)
        models[recipe] = model.eval()
        sources[recipe] = (f"random-init heads on {cfg.backbone} (seed {SEED + i}); after_training on "
                           f"{cfg.calibration_pairs} MRPC train pairs")
    return models, sources


@pytest.fixture(scope="module")
def dev_examples(cfg, glue_dir) -> list[Example]:
    return load_examples(get_task("mrpc"), "dev", glue_dir, cfg.dev_limit, seed=0)


@pytest.fixture(scope="module")
def dev_loader(cfg, dev_examples, tokenizer):
    ds = EncodedDataset(dev_examples, tokenizer, 128, regression=False)
    return make_loader(ds, cfg.record_batch, shuffle=False, pad_token_id=tokenizer.pad_token_id or 0)


@pytest.fixture(scope="module")
def dev_records(models, dev_loader) -> dict[str, dict]:
    return {r: record_signals(m, dev_loader, progress=False) for r, m in models[0].items()}


@pytest.fixture(scope="module")
def timed_items(cfg, glue_dir, tokenizer) -> list[dict]:
    examples = load_examples(get_task("mrpc"), "dev", glue_dir)
    return fixed_length_items(examples, tokenizer, cfg.timed_samples, cfg.seq_len)


@pytest.fixture(scope="module")
def operating_points(cfg, models, timed_items) -> dict[str, OperatingPoint | None]:
    """Per deployable method: its 2× point, replayed on a record of the timed samples."""
    records = {r: record_signals(m, batches_of(timed_items, cfg.throughput_batch), progress=False)
               for r, m in models[0].items()}
    points = {}
    for name in DEPLOYABLE:
        method = get_method(name)
        policy = method.make_policy(2, models[0][method.recipe].num_layers)
        points[name] = operating_point(name, policy, records[method.recipe])
    return points


def _point_info(models, name: str, op: OperatingPoint) -> dict:
    method = get_method(name)
    return {"method": name, "recipe": method.recipe, "model": models[1][method.recipe],
            "full_model": models[1]["single"], "knob": op.knob, "operating_point": op.kind,
            "replayed_layer_speedup": op.layer_speedup}


# ---- 1. replay sweep ------------------------------------------------------------------------------
def test_replay_sweep(benchmark, cfg, models, dev_loader, dev_records):
    """All methods × 100 knob values replayed on the dev records ≤ 1.2 × one record pass."""
    sweeps = []
    for name, method in all_methods().items():
        rec = dev_records[method.recipe]
        policy = method.make_policy(2, models[0][method.recipe].num_layers)
        sweeps.append((name, policy, sweep_values(name, policy, cfg.sweep_size), rec))

    def replay_all():
        for _, policy, values, rec in sweeps:
            replay_predictions(rec, policy.replay(rec, values))

    reference = models[0]["de3"]
    t_pass, t_replay = [], []
    replay_all()  # warm-up (the record fixture already warmed the model)
    benchmark.pedantic(timed(replay_all, t_replay), rounds=cfg.rounds_replay,
                       setup=timed(lambda: record_signals(reference, dev_loader, progress=False), t_pass))
    ratio = statistics.median(t_replay) / statistics.median(t_pass)
    passed = record_result(
        benchmark, cfg, "replay sweep", ratio, GOAL_REPLAY, higher_is_better=False,
        seconds_replay_all=statistics.median(t_replay), seconds_one_record_pass=statistics.median(t_pass),
        record_pass_model="de3", record_batch=cfg.record_batch, n_samples=len(dev_loader.dataset),
        methods=len(sweeps), knob_values=sum(len(v) for _, _, v, _ in sweeps),
        per_method_knobs={name: len(v) for name, _, v, _ in sweeps},
        models=models[1])
    if not cfg.tiny:
        assert passed, f"replay sweep took {ratio:.3f}× one record pass (goal ≤ {GOAL_REPLAY})"


# ---- 2./3. live early exit against the full model ---------------------------------------------------
def _wallclock(benchmark, cfg, models, timed_items, op: OperatingPoint, batch_size: int, repeats: int,
               warmup: int, chunk: int) -> dict:
    """Full model vs live early exit on the same samples, alternating every `chunk` batches.

    One pytest-benchmark round = live early exit over one chunk (timed), preceded by the full model
    over the same chunk (setup); chunks cycle `repeats` times. Speed-up = Σ_chunks median full time
    / Σ_chunks median early-exit time: short alternations keep a burst of load from another process
    from landing on one side only.
    """
    method = get_method(op.method)
    model, full = models[0][method.recipe], models[0]["single"]
    policy = method.make_policy(2, model.num_layers)
    knobs = policy.knob.validate([op.knob])
    batches = batches_of(timed_items, batch_size)
    chunks = [batches[i:i + chunk] for i in range(0, len(batches), chunk)]
    exits: dict[int, torch.Tensor] = {}
    t_full: list[list[float]] = [[] for _ in chunks]
    t_exit: list[list[float]] = [[] for _ in chunks]
    turn = {"full": 0, "exit": 0}

    def run_full():
        c = turn["full"] % len(chunks)
        turn["full"] += 1
        t0 = time.perf_counter()
        for b in chunks[c]:
            full_forward(full, b)
        t_full[c].append(time.perf_counter() - t0)

    def run_exit():
        c = turn["exit"] % len(chunks)
        turn["exit"] += 1
        t0 = time.perf_counter()
        out = [live_batch(model, policy, knobs, b)[0] for b in chunks[c]]
        t_exit[c].append(time.perf_counter() - t0)
        exits[c] = torch.cat(out)

    with torch.inference_mode():
        for b in batches[:warmup]:
            full_forward(full, b)
            live_batch(model, policy, knobs, b)
        benchmark.pedantic(run_exit, setup=run_full, rounds=repeats * len(chunks))
        while turn["exit"] < len(chunks):  # --benchmark-disable runs one round only
            run_full()
            run_exit()
    live = torch.cat([exits[c] for c in range(len(chunks))])
    layer_speedup = float(model.num_layers * len(live) / live.sum())
    med = statistics.median
    seconds_full = sum(med(t) for t in t_full)
    seconds_exit = sum(med(t) for t in t_exit)
    wall = seconds_full / seconds_exit
    paired = [f / e for tf, te in zip(t_full, t_exit, strict=True) for f, e in zip(tf, te, strict=True)]
    return {"wallclock_speedup": wall, "layer_speedup": layer_speedup, "ratio": wall / layer_speedup,
            "seconds_full": seconds_full, "seconds_exit": seconds_exit,
            "paired_chunk_speedup_median": med(paired),
            "live_agrees_with_replay": live.tolist() == op.exits, "batch_size": batch_size,
            "n_samples": len(timed_items), "seq_len": cfg.seq_len, "repeats": repeats,
            "chunks": len(chunks), "batches_per_chunk": chunk,
            "exit_histogram": torch.bincount(live - 1, minlength=model.num_layers).tolist()}


def _operating_point_or_skip(benchmark, operating_points, method: str):
    """The method's operating point; skip (with a recorded reason) when no knob reaches 1.5×."""
    op = operating_points[method]
    if op is None:
        benchmark.extra_info.update({"method": method, "passed": None, "reason": "no knob reaches 1.5×"})
        pytest.skip(f"{method}: no knob value reaches a layer speed-up of {FALLBACK_SPEEDUP}")
    return op


@pytest.mark.parametrize("method", DEPLOYABLE)
def test_wallclock_fidelity(benchmark, cfg, models, timed_items, operating_points, method):
    """Batch 1: wall-clock speed-up ≥ 0.9 × layer speed-up of the same samples."""
    op = _operating_point_or_skip(benchmark, operating_points, method)
    r = _wallclock(benchmark, cfg, models, timed_items, op, 1, cfg.rounds_latency, cfg.warmup,
                   cfg.chunk_latency)
    passed = record_result(benchmark, cfg, "wall-clock fidelity", r.pop("ratio"), GOAL_FIDELITY, True,
                           **_point_info(models, method, op), **r)
    if not cfg.tiny:
        assert passed, (f"{method}: batch-1 wall-clock {r['wallclock_speedup']:.3f}× vs layer "
                        f"{r['layer_speedup']:.3f}× (goal ≥ {GOAL_FIDELITY} of it)")


@pytest.mark.parametrize("method", DEPLOYABLE)
def test_batched_early_exit(benchmark, cfg, models, timed_items, operating_points, method):
    """Batch 32 with batch shrinking: throughput speed-up ≥ 0.7 × layer speed-up."""
    op = _operating_point_or_skip(benchmark, operating_points, method)
    r = _wallclock(benchmark, cfg, models, timed_items, op, cfg.throughput_batch, cfg.rounds_throughput, 1,
                   1)
    passed = record_result(benchmark, cfg, "batched early exit", r.pop("ratio"), GOAL_BATCHED, True,
                           **_point_info(models, method, op), **r)
    if not cfg.tiny:
        assert passed, (f"{method}: batch-{cfg.throughput_batch} throughput {r['wallclock_speedup']:.3f}× "
                        f"vs layer {r['layer_speedup']:.3f}× (goal ≥ {GOAL_BATCHED} of it)")


# ---- 4. indicator overhead --------------------------------------------------------------------------
def test_indicator_overhead(benchmark, cfg, models, timed_items):
    """(DE³ heads + EDR step) − (DeeBERT heads + entropy step) ≤ 3% of one transformer layer.

    Measured inside real passes (batch 1, 128 tokens): embeddings, then every layer followed by the
    decision under test (layers 1..L−1; the last layer is never asked), each layer and decision
    timed on its own. A deployment runs one method, so each round is a block of consecutive passes
    of one method (the first an untimed warm-up), DE³ blocks (timed by pytest-benchmark)
    alternating with DeeBERT blocks; the ratio is (median DE³ decision − median DeeBERT decision)
    / median layer. Also recorded: the same with the two methods alternating after every pass
    (`alternating_*`: each pass then starts with the other method's code in the caches) and the
    decisions timed in isolation on warm caches (`isolated_*`). Small kernels right after a layer
    cost several times what they cost in a warm loop (see docs/performance.md).
    """
    de3_m, dee_m = get_method("de3"), get_method("deebert")
    de3, dee = models[0][de3_m.recipe], models[0][dee_m.recipe]
    p_de3, p_dee = de3_m.make_policy(2, de3.num_layers), dee_m.make_policy(2, dee.num_layers)
    g3, gd = p_de3.grid(), p_dee.grid()
    k_de3, k_dee = p_de3.knob.validate([g3[len(g3) // 2]]), p_dee.knob.validate([gd[len(gd) // 2]])
    b = batches_of(timed_items[:1], 1)[0]
    ids, attn, types = b["input_ids"], b["attention_mask"], b.get("token_type_ids")
    L = de3.num_layers
    clock = time.perf_counter

    def one_pass(model, policy, knobs, t_decision: list, t_layer: list):
        hidden, mask = model.encoder.embed(ids, attn, types)
        head_state, pol_state = model.heads.init_state(1, ids.device), policy.init_state(1, knobs)
        for i in range(L):
            t0 = clock()
            hidden = model.encoder.layer(i, hidden, mask)
            t1 = clock()
            t_layer.append(t1 - t0)
            if i + 1 < L:
                signals = model.heads.forward_layer(i + 1, hidden, attn, head_state)
                policy.step(i + 1, signals, pol_state, knobs)
                t_decision.append(clock() - t1)

    def block(model, policy, knobs, t_decision: list, t_layer: list):
        one_pass(model, policy, knobs, [], [])  # warm-up: this method's code back in the caches
        for _ in range(cfg.overhead_block - 1):
            one_pass(model, policy, knobs, t_decision, t_layer)

    d_de3, d_dee, lay = [], [], []
    a_de3, a_dee, a_lay = [], [], []
    med = statistics.median
    with torch.inference_mode():
        for _ in range(cfg.warmup):
            one_pass(de3, p_de3, k_de3, [], [])
            one_pass(dee, p_dee, k_dee, [], [])
        benchmark.pedantic(lambda: block(de3, p_de3, k_de3, d_de3, lay),
                           setup=lambda: block(dee, p_dee, k_dee, d_dee, lay), rounds=cfg.rounds_overhead)
        for _ in range(cfg.rounds_overhead):
            one_pass(dee, p_dee, k_dee, a_dee, a_lay)
            one_pass(de3, p_de3, k_de3, a_de3, a_lay)
        isolated = _isolated_decisions(cfg, de3, dee, p_de3, p_dee, k_de3, k_dee, ids, attn, types)
    per_de3, per_dee, per_layer = med(d_de3), med(d_dee), med(lay)
    ratio = (per_de3 - per_dee) / per_layer
    passed = record_result(
        benchmark, cfg, "indicator overhead", ratio, GOAL_OVERHEAD, higher_is_better=False,
        measured="inside real passes (decision right after its layer), blocks of consecutive passes",
        seconds_de3_decision=per_de3, seconds_deebert_decision=per_dee, seconds_layer=per_layer,
        de3_decision_vs_layer=per_de3 / per_layer, deebert_decision_vs_layer=per_dee / per_layer,
        alternating_ratio=(med(a_de3) - med(a_dee)) / med(a_lay),
        alternating_seconds_de3_decision=med(a_de3), alternating_seconds_deebert_decision=med(a_dee),
        **isolated, batch_size=1, seq_len=cfg.seq_len, blocks_per_side=cfg.rounds_overhead,
        passes_per_block=cfg.overhead_block, models={"de3": models[1][de3_m.recipe],
                                                     "deebert": models[1][dee_m.recipe]})
    if not cfg.tiny:
        assert passed, (f"DE³ decision costs {100 * ratio:.2f}% of a layer more than DeeBERT's inside a "
                        f"real pass (goal ≤ {100 * GOAL_OVERHEAD:g}%; isolated: "
                        f"{100 * isolated['isolated_ratio']:.2f}%)")


def _isolated_decisions(cfg, de3, dee, p_de3, p_dee, k_de3, k_dee, ids, attn, types) -> dict:
    """The same decisions and one middle layer, each called repeatedly on warm caches (interleaved
    rounds, medians): the lower bound of their cost."""
    layer = max(1, de3.num_layers // 2)
    hidden, mask = de3.encoder.embed(ids, attn, types)
    for i in range(layer - 1):
        hidden = de3.encoder.layer(i, hidden, mask)
    h_in = hidden
    hidden = de3.encoder.layer(layer - 1, h_in, mask)
    hs3, hsd = de3.heads.init_state(1, ids.device), dee.heads.init_state(1, ids.device)
    ps3, psd = p_de3.init_state(1, k_de3), p_dee.init_state(1, k_dee)
    calls = {"de3": cfg.calls_overhead, "deebert": cfg.calls_overhead, "layer": cfg.calls_layer}
    fns = {"de3": lambda: p_de3.step(layer, de3.heads.forward_layer(layer, hidden, attn, hs3), ps3, k_de3),
           "deebert": lambda: p_dee.step(layer, dee.heads.forward_layer(layer, hidden, attn, hsd), psd,
                                         k_dee),
           "layer": lambda: de3.encoder.layer(layer - 1, h_in, mask)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(cfg.rounds_overhead + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[k]):
                fn()
            if r:  # round 0 is the warm-up
                times[k].append((time.perf_counter() - t0) / calls[k])
    m = {k: statistics.median(v) for k, v in times.items()}
    return {"isolated_ratio": (m["de3"] - m["deebert"]) / m["layer"],
            "isolated_seconds_de3_decision": m["de3"], "isolated_seconds_deebert_decision": m["deebert"],
            "isolated_seconds_layer": m["layer"]}
