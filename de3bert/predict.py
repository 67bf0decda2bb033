"""Predict on raw text with a saved early-exit model: label, score and exit layer per input.

Inputs are tokenised with the folder's own tokenizer, sorted by length (less padding), batched and
run through the live engine (`engine.live_batch`: exited samples leave the batch), so a sample's
exit layer is the one it would get alone. Pair tasks take the two texts separated by a tab.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import torch
from tqdm.auto import tqdm

from .data import collate
from .engine import live_batch
from .model import ExitHeads, MultiExitModel
from .policy import ExitPolicy

TAP_ROW = "_tap_row"  # head-state key: the batch row each running sample came from


class ScoreTap(ExitHeads):
    """Wraps a model's heads to keep each sample's logits at every layer it runs.

    Head state is batch-first and the live engine drops exited rows from it, so a row-id tensor in
    the state tells which samples are still running at each layer, without changing the engine.
    """

    def __init__(self, heads: ExitHeads, num_layers: int):
        """Share (not copy) the wrapped heads; logits are kept per batch on the CPU."""
        super().__init__()
        self.inner, self.num_layers = heads, num_layers
        self.logits: torch.Tensor | None = None  # [N, L, C] of the current batch
        self._rows = 0

    def init_state(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The wrapped heads' state plus the row ids, which the engine shrinks with the batch."""
        state = self.inner.init_state(batch_size, device)
        state[TAP_ROW] = torch.arange(batch_size, device=device)
        self.logits, self._rows = None, batch_size
        return state

    def forward_layer(self, layer, hidden, attention_mask, state):
        """The wrapped heads' signals, unchanged; their logits are kept for the running rows."""
        signals = self.inner.forward_layer(layer, hidden, attention_mask, state)
        logits = signals["logits"].detach().float().cpu()
        if self.logits is None:
            self.logits = torch.zeros(self._rows, self.num_layers, logits.shape[-1])
        self.logits[state[TAP_ROW].cpu(), layer - 1] = logits
        return signals


def split_input(line: str, pair: bool) -> tuple[str, ...]:
    """One input: a sentence, or (for pair tasks) two sentences separated by a tab."""
    line = line.rstrip("\r\n")
    if not pair:
        return (line,)
    parts = line.split("\t")
    if len(parts) != 2:
        raise ValueError(f"this model's task takes sentence pairs: separate the two texts by a tab "
                         f"(got {len(parts)} field(s) in {line[:60]!r})")
    return parts[0], parts[1]


class Predictor:
    """A loaded folder (model, policy, knob, tokenizer, labels) that labels raw texts."""

    def __init__(self, model: MultiExitModel, policy: ExitPolicy, knob: float, tokenizer,
                 labels: list[str], max_length: int = 128, pair: bool = False):
        """Hold everything `predict` needs; the tapped model shares the model's modules."""
        self.model, self.policy, self.tokenizer = model.eval(), policy, tokenizer
        self.knobs = policy.knob.validate([knob])
        self.labels, self.max_length, self.pair = labels, max_length, pair
        self.tap = ScoreTap(model.heads, model.num_layers)
        self.tapped = MultiExitModel(model.encoder, self.tap, model.meta)

    def _features(self, inputs: list[tuple[str, ...]]) -> list[dict]:
        """Tokenised, unpadded features in input order (`collate` pads per batch)."""
        columns = list(zip(*inputs, strict=True))
        enc = self.tokenizer(*columns, truncation=True, max_length=self.max_length)
        return [{**{k: enc[k][i] for k in enc.keys()}, "labels": 0, "index": i} for i in range(len(inputs))]

    def _row(self, text: tuple[str, ...], logits: torch.Tensor, layer: int) -> dict:
        """One output record: the input, the label (or value), its score and the exit layer."""
        if logits.shape[-1] == 1:
            value = float(logits[0])
            return {"text": list(text) if self.pair else text[0], "label": value, "score": value,
                    "exit_layer": layer}
        probs = logits.softmax(-1)
        k = int(probs.argmax())
        return {"text": list(text) if self.pair else text[0], "label": self.labels[k],
                "score": round(float(probs[k]), 6), "exit_layer": layer}

    @torch.inference_mode()
    def predict(self, inputs: Iterable[str | tuple[str, ...]], batch_size: int = 32,
                progress: bool = False) -> list[dict]:
        """Predictions in input order; each sample's exit layer is the live engine's."""
        items = []
        for n, x in enumerate(inputs, start=1):
            try:
                items.append(split_input(x, self.pair) if isinstance(x, str) else tuple(x))
            except ValueError as err:
                raise ValueError(f"input {n}: {err}") from None
        if not items:
            return []
        features = self._features(items)
        order = sorted(range(len(items)), key=lambda i: len(features[i]["input_ids"]))
        pad = self.tokenizer.pad_token_id or 0
        out: list[dict | None] = [None] * len(items)
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc="predict", disable=not progress, unit="batch", file=sys.stderr):
            rows = order[s: s + batch_size]
            batch = collate([features[i] for i in rows], pad)
            exits, _ = live_batch(self.tapped, self.policy, self.knobs, batch)
            for j, (i, layer) in enumerate(zip(rows, exits.tolist(), strict=True)):
                out[i] = self._row(items[i], self.tap.logits[j, layer - 1], layer)
        return out


def check_line(raw: bytes | str, pair: bool) -> tuple[tuple[str, ...] | None, str]:
    """(the input, "") for a usable line; (None, why) for an empty, undecodable or malformed one."""
    try:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 ({err.reason} at byte {err.start})"
    if not line.strip():
        return None, "empty input"
    try:
        return split_input(line, pair), ""
    except ValueError as err:
        return None, str(err)


def predict_lines(predictor: Predictor, lines: list[bytes | str], strict: bool = False,
                  batch_size: int = 32, progress: bool = False) -> list[dict]:
    """Exactly one row per input line, in order: a prediction, or `{"line", "error"}` for a line
    that cannot be labelled (`strict`: a ValueError naming the first such line instead)."""
    checked = [check_line(raw, predictor.pair) for raw in lines]
    bad = [(n, why) for n, (item, why) in enumerate(checked, start=1) if item is None]
    if strict and bad:
        raise ValueError(f"input line {bad[0][0]}: {bad[0][1]}")
    good = predictor.predict([item for item, _ in checked if item is not None], batch_size, progress)
    it = iter(good)
    return [next(it) if item is not None else {"line": n, "error": why}
            for n, (item, why) in enumerate(checked, start=1)]


def load_predictor(folder: str | Path, target: float | None = None, knob: float | None = None,
                   method: str | None = None, max_length: int | None = None) -> Predictor:
    """Everything `predict` needs from a saved folder (local or Hub), checked before any text is read."""
    from transformers import AutoTokenizer

    from .data import get_task
    from .hub import SECTION, from_pretrained, load_policy, read_config, resolve_folder

    d = resolve_folder(folder)
    config = read_config(d)
    policy, knob = load_policy(d, target=target, knob=knob, method=method)
    section = config[SECTION]
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    task, texts = section.get("task"), section.get("texts")
    if texts is None and task is not None:  # a folder written before `texts` was recorded
        texts = len(get_task(task).text_fields)
    pair = texts == 2
    length = max_length or int(section.get("train_config", {}).get("max_seq_length", 128))
    model = from_pretrained(d)
    return Predictor(model, policy, knob, AutoTokenizer.from_pretrained(str(d)), labels, length, pair)


def write_jsonl(rows: Iterable[dict], fh: TextIO) -> None:
    """One JSON object per line (UTF-8 text kept readable)."""
    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    fh.flush()
