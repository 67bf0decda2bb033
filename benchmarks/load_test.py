"""Load test: serve synthetic samples through the live early-exit engine and watch memory.

    python -m benchmarks.load_test                      # 10,000 samples at batch 1 and batch 32
    python -m benchmarks.load_test --samples 2000 --batch-sizes 32 --max-growth-mb 30

Each request is tokenised, padded and run through `engine.live_batch` (exited samples leave the
batch) with the tiny random 4-layer BERT of the smoke profile. For every batch size the script
reports the resident set size (current and peak) at the start, after the first `--mark` samples
and at the end, the throughput and the exit histogram; it exits with status 1 if the RSS grew by
more than `--max-growth-mb` between the mark and the end (a leak per request shows up there; the
first requests may legitimately grow the allocator's pools).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from de3bert.backbone import TINY_RANDOM, load_tokenizer
from de3bert.data import Example, collate, synthetic_examples
from de3bert.engine import live_batch
from de3bert.model import MultiExitModel, build_model
from de3bert.registry import get_method

MB = 1024 * 1024


def rss_mb() -> float:
    """Current resident set size in MB (psutil when installed, else /proc/self/statm)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / MB
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


@dataclass
class LoadResult:
    """One load-test run: throughput and memory at a batch size."""

    batch_size: int
    samples: int
    seconds: float
    rss: dict[str, float]  # start, mark, end (MB)
    peak: dict[str, float]
    exit_histogram: list[int] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Samples per second."""
        return self.samples / self.seconds

    @property
    def growth_mb(self) -> float:
        """RSS growth between the mark and the end (current and peak, whichever is larger)."""
        return max(self.rss["end"] - self.rss["mark"], self.peak["end"] - self.peak["mark"])


def tiny_model(method: str = "pabee", seed: int = 0) -> tuple[MultiExitModel, object]:
    """The smoke profile's tiny random BERT with the heads of `method`'s recipe, in eval mode."""
    torch.manual_seed(seed)
    recipe = get_method(method).recipe
    model = build_model(TINY_RANDOM, recipe, 2, "mean").eval()
    return model, load_tokenizer(TINY_RANDOM)


def serve(model: MultiExitModel, policy, knob: float, tokenizer, examples: list[Example], batch_size: int,
          mark: int, max_seq_length: int = 64,
          on_batch: Callable[[int], None] | None = None) -> LoadResult:
    """Serve `examples` in requests of `batch_size`: tokenise, pad, `live_batch`, keep exit layers."""
    knobs = policy.knob.validate([knob])
    pad = tokenizer.pad_token_id or 0
    n = len(examples)
    exits = torch.empty(n, dtype=torch.long)
    rss, peak = {"start": rss_mb()}, {"start": peak_rss_mb()}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            chunk = examples[start:start + batch_size]
            enc = tokenizer([e.texts[0] for e in chunk], truncation=True, max_length=max_seq_length)
            items = [{**{k: enc[k][i] for k in enc.keys()}, "labels": e.label, "index": start + i}
                     for i, e in enumerate(chunk)]
            ex, _ = live_batch(model, policy, knobs, collate(items, pad))
            exits[start:start + len(chunk)] = ex
            if on_batch is not None:
                on_batch(start + len(chunk))
            if "mark" not in rss and start + len(chunk) >= mark:
                rss["mark"], peak["mark"] = rss_mb(), peak_rss_mb()
    seconds = time.perf_counter() - t0
    rss["end"], peak["end"] = rss_mb(), peak_rss_mb()
    rss.setdefault("mark", rss["end"])
    peak.setdefault("mark", peak["end"])
    hist = torch.bincount(exits - 1, minlength=model.num_layers).tolist()
    return LoadResult(batch_size, n, seconds, rss, peak, hist)


def leak_hook(mark: int, kb_per_sample: float, kept: list) -> Callable[[int], None]:
    """A deliberate leak for checking the detector: keep `kb_per_sample` KB per sample after `mark`."""
    last = [0]

    def hook(done: int) -> None:
        new = max(0, done - max(mark, last[0]))
        last[0] = done
        if new:
            kept.append(torch.ones(int(new * kb_per_sample * 256)))  # float32, written: resident

    return hook


def table(results: list[LoadResult]) -> str:
    """The load test's results as a fixed-width table."""
    head = (f"{'batch':>5}  {'samples':>7}  {'seconds':>7}  {'samples/s':>9}  {'rss start':>9}  "
            f"{'rss mark':>8}  {'rss end':>7}  {'peak start':>10}  {'peak mark':>9}  {'peak end':>8}  "
            f"{'growth':>6}  exit histogram")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.batch_size:>5}  {r.samples:>7}  {r.seconds:>7.1f}  {r.throughput:>9.0f}  "
                     f"{r.rss['start']:>9.1f}  {r.rss['mark']:>8.1f}  {r.rss['end']:>7.1f}  "
                     f"{r.peak['start']:>10.1f}  {r.peak['mark']:>9.1f}  {r.peak['end']:>8.1f}  "
                     f"{r.growth_mb:>6.1f}  {r.exit_histogram}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Serve samples at batch 1 and 32; exit 1 if memory grows."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.load_test", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--mark", type=int, default=1000, help="memory is compared from this sample on")
    ap.add_argument("--method", default="pabee", help="registered method (its recipe's heads, its policy)")
    ap.add_argument("--knob", type=float, default=None,
                    help="knob value (default: the grid's first; for pabee, patience 1: most samples "
                         "leave early, so batches shrink)")
    ap.add_argument("--max-growth-mb", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--leak-kb", type=float, default=0.0,
                    help="self-check of the detector: keep this many KB per sample served after the mark")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = tiny_model(args.method, args.seed)
    policy = get_method(args.method).make_policy(2, model.num_layers)
    grid = policy.grid()
    knob = args.knob if args.knob is not None else grid[0]
    examples = synthetic_examples("dev", args.samples, args.seed)
    print(f"load test: {args.samples} synthetic samples, tiny random BERT ({model.num_layers} layers), "
          f"{args.method} at {policy.knob.name}={knob}, {args.threads} thread(s); memory in MB")
    kept: list[torch.Tensor] = []  # only with --leak-kb
    results = []
    for bs in args.batch_sizes:
        hook = leak_hook(args.mark, args.leak_kb, kept) if args.leak_kb > 0 else None
        results.append(serve(model, policy, knob, tok, examples, bs, args.mark, on_batch=hook))
    print(table(results))
    bad = [r for r in results if r.growth_mb > args.max_growth_mb]
    for r in bad:
        print(f"FAIL batch {r.batch_size}: RSS grew {r.growth_mb:.1f} MB between sample {args.mark} and "
              f"the end (limit {args.max_growth_mb} MB)")
    if not bad:
        print(f"ok: RSS growth after sample {args.mark} within {args.max_growth_mb} MB at every batch size")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
