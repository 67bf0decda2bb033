"""Wall-clock measurement: the full model against live early exit, on the same samples.

Batch 1 (latency) and batch 32 with batch shrinking (throughput); warm-up first, then the two
sides *interleaved* chunk by chunk (full, early exit, full, ...) because this machine's speed
drifts over minutes; medians reported with the thread count. `interleave` is the one alternation
primitive: `compare_wallclock` (the runner) and the pytest-benchmark targets both call it, the
latter with pytest-benchmark's `pedantic` as the driver. Also a per-component timing model
(embeddings, each layer, each head) calibrated from real batch-1 runs, to price replayed
operating points. On a GPU the batches are copied to it once, outside the timed calls, and each
call is timed with CUDA events read after a synchronise (`DeviceClock`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .data import collate
from .engine import live_batch, to_device
from .model import LayerPass, MultiExitModel
from .policy import ExitPolicy

#: `driver(candidate, setup=reference, rounds=n)` runs `reference` then `candidate`, `n` times
#: (pytest-benchmark's `benchmark.pedantic` has this signature; `alternate` is the plain loop).
Driver = Callable[..., object]


@torch.inference_mode()
def full_forward(model: MultiExitModel, batch: dict) -> torch.Tensor:
    """The plain model: embeddings, every layer, only the last head."""
    passes = model.layer_pass(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                              heads="last")
    *_, (_, signals, _) = passes
    return signals["logits"]


def batches_of(items: list[dict], size: int, pad_token_id: int = 0) -> list[dict]:
    """Padded batches of `size` in order (timing runs the same batches for both models)."""
    return [collate(items[i:i + size], pad_token_id) for i in range(0, len(items), size)]


def alternate(candidate: Callable[[], object], setup: Callable[[], object], rounds: int) -> None:
    """The plain driver of `interleave`: `setup` then `candidate`, `rounds` times."""
    for _ in range(rounds):
        setup()
        candidate()


class DeviceClock:
    """Seconds a call takes on `device`: `perf_counter` on the CPU; on a GPU, CUDA events around
    the call, read after a synchronise (kernels run asynchronously, so the host clock would stop
    before the work is done)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"

    def now(self) -> float:
        """`perf_counter` once the device's queued work is done (a synchronise first on a GPU): for
        timing stretches between points inside one call, where events around it do not fit."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def measure(self, fn: Callable[[object], object], arg: object) -> tuple[float, object]:
        """`(seconds, fn(arg))`."""
        if not self.cuda:
            t0 = time.perf_counter()
            out = fn(arg)
            return time.perf_counter() - t0, out
        torch.cuda.synchronize()  # nothing earlier lands inside this measurement
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(arg)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0, out  # elapsed_time is in milliseconds


@dataclass
class Interleaved:
    """Per-chunk seconds of both sides of `interleave` (`[chunk][round]`) and the candidate's
    outputs of its last round over each chunk."""

    reference: list[list[float]]
    candidate: list[list[float]]
    outputs: list[object] = field(default_factory=list)

    def seconds(self, side: str) -> float:
        """Σ over chunks of the median seconds of `side` ("reference" or "candidate")."""
        return sum(statistics.median(t) for t in getattr(self, side))

    def paired(self) -> list[float]:
        """reference ÷ candidate seconds of every (chunk, round) pair."""
        return [r / c for tr, tc in zip(self.reference, self.candidate, strict=True)
                for r, c in zip(tr, tc, strict=True)]


def interleave(chunks: Sequence, reference: Callable[[object], object], candidate: Callable[[object], object],
               repeats: int, clock: DeviceClock, driver: Driver = alternate) -> Interleaved:
    """Time `reference(chunk)` and `candidate(chunk)` alternately, chunk after chunk, `repeats` times
    over all chunks, so a burst of load from another process cannot land on one side only.

    `clock` is the device's (`DeviceClock(device)`, no default: a host clock would stop before a
    GPU's queued kernels finish). `driver` decides how the rounds run (`alternate`, or
    `benchmark.pedantic` so pytest-benchmark also records the candidate's rounds); if it ran
    fewer rounds than there are chunks (`--benchmark-disable` runs one), the remaining chunks
    are run once more here.
    """
    out = Interleaved([[] for _ in chunks], [[] for _ in chunks], [None] * len(chunks))
    turn = {"reference": 0, "candidate": 0}

    def side(name: str, fn: Callable[[object], object]) -> Callable[[], None]:
        def run() -> None:
            c = turn[name] % len(chunks)
            turn[name] += 1
            seconds, result = clock.measure(fn, chunks[c])
            getattr(out, name)[c].append(seconds)
            if name == "candidate":
                out.outputs[c] = result
        return run

    run_reference, run_candidate = side("reference", reference), side("candidate", candidate)
    driver(run_candidate, setup=run_reference, rounds=repeats * len(chunks))
    while turn["candidate"] < len(chunks):
        run_reference()
        run_candidate()
    return out


@torch.inference_mode()
def live_wallclock(full_model: MultiExitModel, model: MultiExitModel, policy: ExitPolicy,
                   knobs: torch.Tensor, batches: list[dict], chunk: int, repeats: int, warmup: int,
                   driver: Driver = alternate) -> tuple[Interleaved, torch.Tensor]:
    """The full model against live early exit over `batches`, alternating every `chunk` batches.

    Returns the interleaved timings and the live exit layers `[N]` of all batches, in order.
    """
    full_model.eval()
    model.eval()
    device = next(model.parameters()).device
    batches = [to_device(b, model) for b in batches]  # copied once, outside the timed calls
    for b in batches[:warmup]:
        full_forward(full_model, b)
        live_batch(model, policy, knobs, b)
    step = max(1, chunk)
    chunks = [batches[i:i + step] for i in range(0, len(batches), step)]

    def run_full(part: list[dict]) -> None:
        for b in part:
            full_forward(full_model, b)

    def run_exit(part: list[dict]) -> list[torch.Tensor]:
        return [live_batch(model, policy, knobs, b)[0] for b in part]  # concatenated untimed, below

    timings = interleave(chunks, run_full, run_exit, repeats, DeviceClock(device), driver)
    return timings, torch.cat([e for out in timings.outputs for e in out])


def compare_wallclock(full_model: MultiExitModel, model: MultiExitModel, policy: ExitPolicy, knob: float,
                      items: list[dict], batch_size: int = 1, repeats: int = 3, warmup: int = 3) -> dict:
    """Median seconds of the full model and of early exit over `items`, and their ratio."""
    batches = batches_of(items, batch_size)
    knobs = policy.knob.validate([knob])
    timings, exits = live_wallclock(full_model, model, policy, knobs, batches, len(batches), repeats, warmup)
    full, early = timings.seconds("reference"), timings.seconds("candidate")
    return {"seconds_full": full, "seconds_exit": early, "speedup": full / early,
            "batch_size": batch_size, "repeats": repeats, "samples": len(items),
            "threads": torch.get_num_threads(), "exit_layers": exits.tolist()}


@torch.inference_mode()
def component_times(model: MultiExitModel, items: list[dict], repeats: int = 3) -> dict:
    """Median batch-1 seconds per sample of embeddings, each layer and each head (timing model)."""
    model.eval()
    L = model.num_layers
    emb, layers, heads = [], [[] for _ in range(L)], [[] for _ in range(L)]
    for _ in range(repeats):
        for b in batches_of(items, 1):
            ids, attn, tokens = b["input_ids"], b["attention_mask"], b.get("token_type_ids")
            t0 = time.perf_counter()
            lp = LayerPass(model, ids, attn, tokens)
            emb.append(time.perf_counter() - t0)
            passes = model.layer_pass(ids, attn, tokens, heads="none", start=lp)
            for i in range(L):
                t1 = time.perf_counter()
                next(passes)
                t2 = time.perf_counter()
                model.heads.forward_layer(i + 1, lp.hidden, lp.attention_mask, lp.head_state)
                layers[i].append(t2 - t1)
                heads[i].append(time.perf_counter() - t2)
    med = statistics.median
    return {"embed": med(emb), "layers": [med(x) for x in layers], "heads": [med(x) for x in heads]}
