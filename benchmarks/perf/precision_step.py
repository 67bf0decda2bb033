"""The cost of a training precision on this CPU: MiniLM training steps (6 layers, hidden 384,
batch 32, 64 tokens, AdamW) in fp32 and bf16, interleaved in one process (a burst of load from
another job lands on both sides), median of the per-round ratios. What `precision: auto` avoids
on CPUs without native bf16 (issue 24 measured 4.6 on an AVX2 EPYC; see docs/performance.md).

    python -m benchmarks.perf.precision_step                       # this CPU's kernels
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.perf.precision_step
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from de3bert.model import build_model
from de3bert.precision import autocast_dtype, native_precision


def step_seconds(model, optimizer, batch: dict, precision: str, steps: int) -> float:
    """Median seconds of `steps` optimizer steps of the last exit's cross-entropy."""
    dtype = autocast_dtype(precision)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(batch["input_ids"], batch["attention_mask"])[-1]["logits"]
        torch.nn.functional.cross_entropy(logits.float(), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Print fp32 and bf16 step times per round and the median bf16/fp32 ratio (JSON last)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side and round (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("embedded:all-MiniLM-L6-v2", "single", 2, "mean").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = {"input_ids": torch.randint(1000, 9000, (32, 64)), "labels": torch.randint(0, 2, (32,)),
             "attention_mask": torch.ones(32, 64, dtype=torch.long)}
    for p in ("fp32", "bf16"):
        step_seconds(model, optimizer, batch, p, 1)  # warm-up of each side's kernels
    ratios = []
    for r in range(args.rounds):
        fp32 = step_seconds(model, optimizer, batch, "fp32", args.steps)
        bf16 = step_seconds(model, optimizer, batch, "bf16", args.steps)
        ratios.append(bf16 / fp32)
        print(f"round {r + 1}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, bf16/fp32 {ratios[-1]:.2f}")
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "auto": native_precision("cpu"),
           "threads": args.threads, "ratio_bf16_over_fp32": statistics.median(ratios), "rounds": ratios}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
