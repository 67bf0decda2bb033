"""Wall-clock measurement: the full model against live early exit, on the same samples.

Batch 1 (latency) and batch 32 with batch shrinking (throughput); warm-up first, then repeats
*interleaved* (full, early exit, full, ...) because this machine's speed drifts over minutes;
medians reported with the thread count. Also a per-component timing model (embeddings, each layer,
each head) calibrated from real batch-1 runs, to price replayed operating points.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from .data import collate
from .engine import live_batch
from .model import LayerPass, MultiExitModel
from .policy import ExitPolicy


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


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.inference_mode()
def compare_wallclock(full_model: MultiExitModel, model: MultiExitModel, policy: ExitPolicy, knob: float,
                      items: list[dict], batch_size: int = 1, repeats: int = 3, warmup: int = 3) -> dict:
    """Median seconds of the full model and of early exit over `items`, and their ratio."""
    full_model.eval()
    model.eval()
    batches = batches_of(items, batch_size)
    knobs = policy.knob.validate([knob])

    def run_full():
        for b in batches:
            full_forward(full_model, b)

    exits: list[torch.Tensor] = []

    def run_exit():
        exits.clear()
        for b in batches:
            exits.append(live_batch(model, policy, knobs, b)[0])

    for b in batches[:warmup]:
        full_forward(full_model, b)
        live_batch(model, policy, knobs, b)
    t_full, t_exit = [], []
    for _ in range(repeats):
        t_full.append(_time(run_full))
        t_exit.append(_time(run_exit))
    full, early = statistics.median(t_full), statistics.median(t_exit)
    return {"seconds_full": full, "seconds_exit": early, "speedup": full / early,
            "batch_size": batch_size, "repeats": repeats, "samples": len(items),
            "threads": torch.get_num_threads(), "exit_layers": torch.cat(exits).tolist()}


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
