"""Indicator analysis and exit-head overhead, from records already on disk (no model run).

- AUROC per layer of every threshold method's indicator for "this layer's prediction is
  correct", on the record of the method's own recipe: any registered method whose policy scores
  samples (`ThresholdPolicy.score`) is picked up, so DE³'s EDR, its entropy-only and DR-only
  ablations (same model) and every baseline indicator are compared without naming any of them.
- The oracle's head-room (from results rows).
- Each recipe's exit-head parameters and FLOPs per layer against one transformer layer, and the
  extra over the `weighted` recipe's plain classifiers (DE³'s prototype branch, FastBERT's
  attention head, ...).

Computing only: `analyse` returns the frames; `markdown.indicators_markdown` renders them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from de3bert.data import get_task
from de3bert.metrics import glue_metrics, indicator_auroc
from de3bert.model import MultiExitModel
from de3bert.policy import ThresholdPolicy, predictions
from de3bert.record import load_record, record_meta
from de3bert.registry import all_methods, get_method
from de3bert.weights import WEIGHTS, CorruptModel, parameter_count

from ..layout import RunLayout
from ..results import read_rows


def indicator_methods(recipe: str) -> dict:
    """Registered deployable methods on `recipe` whose policy thresholds a per-sample score."""
    return {name: m for name, m in all_methods().items()
            if m.recipe == recipe and not m.report_only and issubclass(m.policy, ThresholdPolicy)}


def _layer_signals(rec: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    return {k: v if k == "labels" else v[layer - 1] for k, v in rec.items()}


def indicator_scores(recipe: str, rec: dict[str, torch.Tensor]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{method: (score [L-1, N], correct [L-1, N])} of every threshold method on one record; low
    score = confident (an `exit_above` policy's score is negated), as AUROC expects."""
    out = {}
    L, C = rec["logits"].shape[0], rec["logits"].shape[-1]
    for name, method in indicator_methods(recipe).items():
        policy = method.make_policy(C, L)
        if any(k not in rec for k in policy.needs):
            continue
        scores, correct = [], []
        for layer in range(1, L):
            sig = _layer_signals(rec, layer)
            score = policy.score(layer, sig).double()
            scores.append((-score if policy.exit_above else score).numpy())
            correct.append((predictions(sig["logits"]) == rec["labels"]).numpy())
        out[name] = (np.stack(scores), np.stack(correct))
    return out


def indicator_rows(task: str, recipe: str, rec: dict[str, torch.Tensor]) -> list[dict]:
    """AUROC rows (task, indicator, layer) of every threshold method on one record."""
    rows = []
    for name, (score, correct) in indicator_scores(recipe, rec).items():
        policy_name = get_method(name).policy.name
        rows += [{"task": task, "indicator": f"{name} ({policy_name})", "layer": layer + 1,
                  "auroc": indicator_auroc(score[layer], correct[layer])} for layer in range(len(score))]
    return rows


def indicator_table(layout: RunLayout) -> pd.DataFrame:
    """Rows (task, indicator), columns layer 1..L-1: AUROC (mean over seeds)."""
    rows = []
    for ref in layout.records():
        rec = load_record(ref.path)
        if rec["logits"].shape[-1] > 1:
            rows += indicator_rows(ref.task, ref.recipe, rec)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    return df.pivot_table(index=["task", "indicator"], columns="layer", values="auroc").round(3)


def per_layer_table(layout: RunLayout) -> pd.DataFrame:
    """Headline dev metric of every layer's own classifier, per (task, recipe)."""
    rows = []
    for ref in layout.records():
        task, rec = get_task(ref.task), load_record(ref.path)
        L = rec["logits"].shape[0]
        for layer in range(L):
            if ref.recipe == "single" and layer < L - 1:
                continue  # the plain fine-tune has only its last classifier trained
            m = glue_metrics(task.metrics, predictions(rec["logits"][layer]), rec["labels"])
            rows.append({"task": task.name, "recipe": ref.recipe, "layer": layer + 1,
                         "score": m[task.headline_metric]})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot_table(index=["task", "recipe"], columns="layer", values="score").round(1)


def _params(model_dir: Path, part: str) -> int:
    """Parameters of the saved model whose names contain `part`: from the safetensors header (no
    weights read), else (weights deleted by `keep_models: none`, or a damaged file) from the
    architecture its saved config rebuilds; a report never needs the weights themselves."""
    try:
        return parameter_count(model_dir / "final" / WEIGHTS, part)
    except (FileNotFoundError, CorruptModel):
        model = MultiExitModel.load(model_dir / "final", weights=False)
        return sum(p.numel() for name, p in model.named_parameters() if part in name)


def overhead_row(layout: RunLayout, task: str, recipe: str, seed: int, length: float) -> dict | None:
    """Exit-head FLOPs and parameters per layer of one trained recipe, at a sequence length."""
    d = layout.model_dir(task, recipe, seed)
    if not (d / "flops.json").is_file():
        return None
    flops = json.loads((d / "flops.json").read_text())
    basis = np.array([1.0, length, length * length])
    layer = float(np.mean(np.array(flops["layers"]) @ basis))
    heads = float(np.mean(np.array(flops["heads"]) @ basis))
    base_path = layout.model_dir(task, "weighted", seed) / "flops.json"
    base = (float(np.mean(np.array(json.loads(base_path.read_text())["heads"]) @ basis))
            if base_path.is_file() else np.nan)
    L = len(flops["layers"])
    head_params, layer_params = _params(d, "heads.") / L, _params(d, "encoder.layer.0.")
    return {"task": task, "recipe": recipe, "seq_len": round(length, 1),
            "head_mflops_per_layer": heads / 1e6, "head_flops_vs_layer_%": 100 * heads / layer,
            "extra_vs_weighted_mflops": (heads - base) / 1e6,
            "extra_vs_weighted_%": 100 * (heads - base) / layer,
            "head_params_per_layer": int(head_params),
            "head_params_vs_layer_%": 100 * head_params / max(1, layer_params)}


def overhead(layout: RunLayout) -> pd.DataFrame:
    """`overhead_row` of every recorded recipe except the plain fine-tune, at the mean dev length."""
    rows = []
    for ref in layout.records():
        if ref.recipe == "single":
            continue
        row = overhead_row(layout, ref.task, ref.recipe, ref.seed,
                           float(record_meta(ref.path).get("mean_length", 64)))
        if row is not None:
            rows.append(row)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).drop_duplicates(["task", "recipe"]).round(4)


def oracle_table(layout: RunLayout) -> pd.DataFrame:
    """The oracle's metric and layer speed-up per task (head-room of any exit rule)."""
    if not layout.results.is_file():
        return pd.DataFrame()
    rows = [r for r in read_rows(layout.results) if r.get("report_only")]
    return pd.DataFrame([{"task": r["task"], "method": r["method"],
                          "metric": r["metric"][r["headline_metric"]],
                          "layer speed-up": round(r["speedup_layers"], 3)} for r in rows])


@dataclass(frozen=True)
class AnalysisTables:
    """The tables of indicators.md, each empty when the run has nothing for it."""

    per_layer: pd.DataFrame
    indicators: pd.DataFrame
    oracle: pd.DataFrame
    overhead: pd.DataFrame


def analyse(layout: RunLayout) -> AnalysisTables:
    """Per-layer metrics, indicator AUROCs, the oracle's head-room and exit-head overheads of a run."""
    return AnalysisTables(per_layer_table(layout), indicator_table(layout), oracle_table(layout),
                          overhead(layout))
