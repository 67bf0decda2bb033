"""Inference: the full-depth recording pass and the live layer-by-layer early-exit engine.

Live inference drops a sample from the batch as soon as its policy says exit (batch shrinking),
so a batch of N gives exactly the exits of N runs at batch size 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .model import LayerPass, MultiExitModel
from .policy import ExitPolicy, predictions


@dataclass
class LiveResult:
    """What a live early-exit run returns, in dataset order."""

    exit_layers: torch.Tensor  # [N] 1-based, in dataset order
    predictions: torch.Tensor  # [N] class ids or regression values


def _inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")


def to_device(batch: dict, model: torch.nn.Module) -> dict:
    """Move a batch to the model's device (a no-op on CPU)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


@torch.inference_mode()
def record_signals(model: MultiExitModel, loader, progress: bool = True) -> dict[str, torch.Tensor]:
    """One full-depth pass: every signal of every layer, `[L, N, ...]`, plus `labels` `[N]`.

    Rows are in dataset order (the `index` field of each batch), whatever the loader's order.
    """
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    index, labels = [], []
    for batch in tqdm(loader, desc="record", disable=not progress, leave=False):
        signals = model(*_inputs(to_device(batch, model)))
        for name in signals[0]:
            chunks.setdefault(name, []).append(torch.stack([s[name].float().cpu() for s in signals]))
        index.append(batch["index"])
        labels.append(batch["labels"])
    order = torch.argsort(torch.cat(index))
    rec = {name: torch.cat(parts, dim=1)[:, order].contiguous() for name, parts in chunks.items()}
    rec["labels"] = torch.cat(labels)[order]
    return rec


@torch.inference_mode()
def run_live(model: MultiExitModel, policy: ExitPolicy, knob: float, loader,
             progress: bool = False) -> LiveResult:
    """Layer-by-layer inference that stops computing for exited samples."""
    model.eval()
    knobs = policy.knob.validate([knob])
    exits: dict[int, int] = {}
    preds: dict[int, float] = {}
    for batch in tqdm(loader, desc=f"live {policy.name}", disable=not progress, leave=False):
        ex, pr = live_batch(model, policy, knobs, batch)
        for i, e, p in zip(batch["index"].tolist(), ex.tolist(), pr.tolist(), strict=True):
            exits[i], preds[i] = e, p
    order = sorted(exits)
    return LiveResult(torch.tensor([exits[i] for i in order]), torch.tensor([preds[i] for i in order]))


def live_batch(model: MultiExitModel, policy: ExitPolicy, knobs: torch.Tensor,
               batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit layers and predictions `[B]` for one batch, computing only rows still running.

    The model runs on its device; policies and bookkeeping run on the CPU on the few signals
    they need (on a GPU that is one small copy per layer, which the exit decision needs anyway).
    `knobs` holds one value (`Knob.validate([knob])`): a live pass takes one exit per sample.
    """
    if len(knobs) != 1:
        raise ValueError(f"live inference runs one knob value at a time; got {len(knobs)} "
                         f"({knobs.tolist()}); replay sweeps several")
    batch = to_device(batch, model)
    input_ids, attn, token_types = _inputs(batch)
    n, num_layers = input_ids.shape[0], model.num_layers
    start = LayerPass(model, input_ids, attn, token_types)
    # heads that carry state across layers (`init_state`) run at every layer; others only from
    # the first layer the policy can exit at (a fixed-layer rule needs one head, not k)
    first = 1 if start.head_state else min(policy.first_exit_layer(knobs), num_layers)
    pol_state = policy.new_state(n, knobs)
    alive = torch.arange(n)
    exit_layer = torch.full((n,), num_layers, dtype=torch.long)
    pred: torch.Tensor | None = None
    labels = batch["labels"].cpu()
    wanted = (*policy.needs, "logits")
    on_cpu = input_ids.device.type == "cpu"
    for layer, signals, lp in model.layer_pass(input_ids, attn, token_types, heads=first, start=start):
        if signals is None:
            continue
        signals = {k: v if on_cpu else v.cpu() for k, v in signals.items() if k in wanted}
        if layer == num_layers:
            pred = _place(pred, alive, predictions(signals["logits"]), n)
            break
        if "labels" in policy.needs:
            signals["labels"] = labels[alive]
        leave = policy.step(layer, signals, pol_state, knobs)[0]
        if leave.any():  # predictions only where a sample leaves: one kernel less per layer
            gone = alive[leave]
            exit_layer[gone] = layer
            pred = _place(pred, gone, predictions(signals["logits"])[leave], n)
            keep = (~leave).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive = alive[keep]
            pol_state = {k: v.index_select(1, keep) for k, v in pol_state.items()}
            lp.keep(keep)
    return exit_layer, pred


def _place(pred: torch.Tensor | None, rows: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Write `values` into rows `rows` of the prediction vector (made on first use, in their dtype)."""
    pred = pred if pred is not None else torch.zeros(n, dtype=values.dtype)
    pred[rows] = values
    return pred


def replay_predictions(record: dict[str, torch.Tensor], exit_layers: torch.Tensor) -> torch.Tensor:
    """Predictions `[K, N]` at the given exit layers, read from the record's logits."""
    preds = predictions(record["logits"])  # [L, N]
    return torch.gather(preds, 0, exit_layers - 1)
