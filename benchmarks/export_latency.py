"""Batch-1 latency of the exported early-exit program against the eager live engine (a script).

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.export_latency --samples 64 --repeats 3 [--onnx]

DE³ on the embedded all-MiniLM-L6-v2 at its 2× layer speed-up operating point on MRPC dev rows:
the trained model from `results/default/models/mrpc/de3-s42/final` when it exists, otherwise the
backbone with seeded random exit heads and prototypes from 256 MRPC train pairs (as
`bench_targets.py` does). Routes, each over the same samples, one at a time, interleaved per repeat
(this machine's speed drifts): the full model (every layer, last head), the eager live engine
(`live_batch` at batch 1), the `torch.export` program and, with `--onnx`, ONNX Runtime. Prints a
table of median milliseconds per sample, speed-ups against the full model and how many exit layers
equal the replayed ones. Not a unit test: numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from de3bert.backbone import load_tokenizer
from de3bert.data import EncodedDataset, collate, get_task, load_examples, make_loader, resolve_data_dir
from de3bert.engine import live_batch, record_signals
from de3bert.export import ExitProgram, export_onnx, export_program
from de3bert.model import MultiExitModel, build_model
from de3bert.registry import get_method
from de3bert.speedup import layer_speedups, operating_point, refine_grid
from de3bert.timing import full_forward

TRAINED = Path("results/default/models/mrpc/de3-s42/final")


def load_model(data_dir: str) -> tuple[MultiExitModel, str]:
    """The trained DE³ MRPC model if the default run left one, else seeded heads + real prototypes."""
    if (TRAINED / "multiexit.json").is_file():
        return MultiExitModel.load(TRAINED), f"trained ({TRAINED})"
    torch.manual_seed(0)
    model = build_model("embedded:all-MiniLM-L6-v2", "de3", 2, "mean").eval()
    tok = load_tokenizer("embedded:all-MiniLM-L6-v2")
    train = EncodedDataset(load_examples(get_task("mrpc"), "train", data_dir, 256, 0), tok, 128, False)
    model.heads.recompute(model, make_loader(train, 32, shuffle=False, pad_token_id=tok.pad_token_id or 0))
    return model, "random heads (seed 0) + prototypes from 256 MRPC train pairs"


def knob_at(policy, record: dict, target: float) -> tuple[float, float]:
    """The runner's operating point: the knob whose layer speed-up is the smallest ≥ target."""
    grid = refine_grid(policy, record, sorted({*policy.grid(), *policy.dense_grid(100)}), [target])
    speedups = layer_speedups(policy.replay(record, grid), policy.num_layers)
    i = operating_point(speedups, target)
    if i is None:
        raise ValueError(f"no knob reaches {target}× on these samples (max {max(speedups):.2f}×)")
    return grid[i], speedups[i]


def never_exits(policy) -> float:
    """The knob value at the slow end of the range: the same program, every layer run."""
    return policy.knob.low if policy.knob.faster == "larger" else policy.knob.high


def _onnx_route(model, policy, knob: float, tok) -> Callable[[dict], int]:
    """An ONNX Runtime session of the exported program, on as many threads as torch."""
    import onnxruntime as ort

    path = export_onnx(model, policy, knob, tok, Path("/tmp") / f"de3-export-{os.getpid()}-{knob:g}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options)
    return lambda b: int(session.run(None, {k: v.numpy() for k, v in _inputs(b).items()})[1])


def routes(model, policy, knob: float, tok, onnx: bool) -> dict[str, Callable[[dict], int | None]]:
    """Each route as a function of one unpadded batch-1 input, returning its exit layer (or None)."""
    knobs = policy.knob.validate([knob])
    program = export_program(model, policy, knob, tok).module()
    slow = export_program(model, policy, never_exits(policy), tok).module()
    eager_program = ExitProgram(model, policy, knob)

    def full(b: dict) -> None:
        """The plain model: every layer, only the last head (no exit decision)."""
        full_forward(model, b)

    out = {
        "full model (eager)": full,
        "live engine (eager)": lambda b: int(live_batch(model, policy, knobs, b)[0][0]),
        "nested cond, not exported (eager)": lambda b: int(eager_program(**_inputs(b))[1]),
        "torch.export program, full depth": lambda b: int(slow(**_inputs(b))[1]) and None,
        "torch.export program": lambda b: int(program(**_inputs(b))[1]),
    }
    if onnx:
        slow_onnx = _onnx_route(model, policy, never_exits(policy), tok)
        out["ONNX Runtime, full depth"] = lambda b: slow_onnx(b) and None
        out["ONNX Runtime"] = _onnx_route(model, policy, knob, tok)
    return out


def _inputs(batch: dict) -> dict:
    """The program's inputs from a collated batch of one (no attention mask: nothing is padded)."""
    return {k: batch[k] for k in ("input_ids", "token_type_ids") if k in batch}


@torch.inference_mode()
def measure(fns: dict, batches: list[dict], repeats: int) -> tuple[dict, dict]:
    """Median ms per sample of each route (routes interleaved per repeat) and each route's exits."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    exits: dict[str, list] = {}
    for name, fn in fns.items():  # warm-up on a few samples, then one pass for the exit layers
        for b in batches[:4]:
            fn(b)
        exits[name] = [fn(b) for b in batches]
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for b in batches:
                fn(b)
            times[name].append((time.perf_counter() - t0) * 1000 / len(batches))
    return {k: statistics.median(v) for k, v in times.items()}, exits


def main(argv: list[str] | None = None) -> int:
    """Build, pick the 2× point, export, time every route and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=resolve_data_dir())
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--target", type=float, default=2.0)
    ap.add_argument("--onnx", action="store_true", help="also ONNX Runtime (needs the `export` extra)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, origin = load_model(args.data_dir)
    tok = load_tokenizer("embedded:all-MiniLM-L6-v2")
    dev = EncodedDataset(load_examples(get_task("mrpc"), "dev", args.data_dir, args.samples, 0), tok,
                         args.max_length, False)
    record = record_signals(model, make_loader(dev, 32, False, pad_token_id=tok.pad_token_id or 0), False)
    policy = get_method("de3").make_policy(2, model.num_layers)
    knob, speedup = knob_at(policy, record, args.target)
    replayed = policy.replay(record, [knob])[0].tolist()
    batches = [collate([dev[i]], tok.pad_token_id or 0) for i in range(len(dev))]
    medians, exits = measure(routes(model, policy, knob, tok, args.onnx), batches, args.repeats)
    full = medians["full model (eager)"]
    print(f"DE³ on MRPC dev ({len(dev)} samples, mean {sum(dev.lengths()) / len(dev):.0f} tokens), "
          f"MiniLM-L6, {origin}; tau = {knob:.6g}, layer speed-up {speedup:.2f}×, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats} interleaved repeats\n")
    print("| route | ms / sample | speed-up vs eager full model | vs the same runtime at full depth "
          "| exit layers = replay |\n|---|---|---|---|---|")
    for name, ms in medians.items():
        same = sum(a == b for a, b in zip(exits[name], replayed, strict=True))
        agree = "–" if exits[name][0] is None else f"{same}/{len(replayed)}"
        base = {"torch.export program": "torch.export program, full depth", "ONNX Runtime":
                "ONNX Runtime, full depth", "live engine (eager)": "full model (eager)"}.get(name)
        own = f"{medians[base] / ms:.2f}×" if base in medians else "–"
        print(f"| {name} | {ms:.2f} | {full / ms:.2f}× | {own} | {agree} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
