"""Indicator analysis and DE³ overhead, from records already on disk (no model run).

- AUROC per layer of each exit indicator for "this layer's prediction is correct" (low indicator =
  confident): DE³'s entropy / DR / EDR and max-prob on the `de3` record, DeeBERT's raw entropy on
  the `two-stage` record, BERxiT's LTE score on the `alternate-lte` record.
- The oracle's head-room (from results rows).
- The prototype branch's extra parameters and FLOPs per layer against one transformer layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from de3bert.de3 import distance_ratio, edr
from de3bert.metrics import indicator_auroc
from de3bert.policy import entropy, normalized_entropy, predictions
from de3bert.record import load_record


def _indicators(recipe: str, rec: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    logits = rec["logits"][layer]
    out: dict[str, torch.Tensor] = {}
    if recipe == "de3":
        h = normalized_entropy(logits)
        dr = distance_ratio(rec["proto_dist"][layer], logits)
        out = {
            "de3 entropy (λ=0)": h,
            "de3 DR": dr,
            "de3 EDR (λ=1)": edr(h, dr, 1.0),
            "max-prob (de3 model)": -logits.softmax(-1).max(-1).values,
        }
    elif recipe == "two-stage":
        out = {"deebert entropy": entropy(logits)}
    elif recipe == "weighted":
        out = {"entropy (weighted model)": entropy(logits)}
    elif recipe == "alternate-lte" and "lte" in rec:
        out = {"berxit LTE": rec["lte"][layer]}
    return out


def indicator_table(out: str | Path) -> pd.DataFrame:
    """Rows (task, indicator), columns layer 1..L-1: AUROC."""
    rows = []
    for path in sorted(Path(out, "records").glob("*/*.safetensors")):
        task, recipe = path.parent.name, path.stem.rsplit("-s", 1)[0]
        if recipe not in ("de3", "two-stage", "weighted", "alternate-lte"):
            continue
        rec = load_record(path)
        if rec["logits"].shape[-1] == 1:
            continue
        L = rec["logits"].shape[0]
        for layer in range(L - 1):
            correct = predictions(rec["logits"][layer]) == rec["labels"]
            for name, score in _indicators(recipe, rec, layer).items():
                rows.append(
                    {
                        "task": task,
                        "indicator": name,
                        "layer": layer + 1,
                        "auroc": indicator_auroc(score, correct),
                    }
                )
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    return df.pivot_table(index=["task", "indicator"], columns="layer", values="auroc").round(3)


def per_layer_table(out: str | Path) -> pd.DataFrame:
    """Headline dev metric of every layer's own classifier, per (task, recipe)."""
    from de3bert.data import get_task
    from de3bert.metrics import glue_metrics

    rows = []
    for path in sorted(Path(out, "records").glob("*/*.safetensors")):
        task, recipe = get_task(path.parent.name), path.stem.rsplit("-s", 1)[0]
        rec = load_record(path)
        for layer in range(rec["logits"].shape[0]):
            if recipe == "single" and layer < rec["logits"].shape[0] - 1:
                continue  # the plain fine-tune has only its last classifier trained
            m = glue_metrics(task.metrics, predictions(rec["logits"][layer]), rec["labels"])
            rows.append(
                {"task": task.name, "recipe": recipe, "layer": layer + 1, "score": m[task.headline_metric]}
            )
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot_table(index=["task", "recipe"], columns="layer", values="score").round(1)


def overhead(out: str | Path) -> pd.DataFrame:
    """Extra FLOPs (per sample, at the mean dev length) and parameters of DE³'s prototype branch."""
    rows = []
    for flops_path in sorted(Path(out, "models").glob("*/de3-s*/flops.json")):
        task = flops_path.parent.parent.name
        seed = flops_path.parent.name.rsplit("-s", 1)[1]
        weighted = flops_path.parent.parent / f"weighted-s{seed}" / "flops.json"
        rec = Path(out, "records", task, f"de3-s{seed}.safetensors")
        if not weighted.is_file() or not rec.is_file():
            continue
        d, w = json.loads(flops_path.read_text()), json.loads(weighted.read_text())
        meta = json.loads((flops_path.parent / "final" / "multiexit.json").read_text())
        n = float(np.mean(json.loads(Path(str(rec) + ".json").read_text())["meta"].get("mean_length", 64)))
        basis = np.array([1.0, n, n * n])
        layer = float(np.mean(np.array(d["layers"]) @ basis))
        extra = float(np.mean((np.array(d["heads"]) - np.array(w["heads"])) @ basis))
        from safetensors import safe_open

        with safe_open(str(flops_path.parent / "final" / "model.safetensors"), "pt") as f:
            proj = sum(
                f.get_slice(k).get_shape()[0]
                * (f.get_slice(k).get_shape()[1] if len(f.get_slice(k).get_shape()) > 1 else 1)
                for k in f.keys()
                if ".projections." in k
            )
            layer_params = sum(
                np.prod(f.get_slice(k).get_shape())
                for k in f.keys()
                if ".layer.0." in k and k.startswith("encoder.")
            )
        L = len(d["layers"])
        rows.append(
            {
                "task": task,
                "seq_len": round(n, 1),
                "layer_gflops": layer / 1e9,
                "proto_branch_mflops_per_layer": extra / 1e6,
                "flops_vs_layer_%": 100 * extra / layer,
                "proto_params_per_layer": int(proj // L),
                "layer_params": int(layer_params),
                "params_vs_layer_%": 100 * (proj / L) / max(1, layer_params),
                "proto_dim": meta.get("proto_dim") or "hidden",
            }
        )
    return pd.DataFrame(rows).round(4)


def write_analysis(out: str | Path) -> list[Path]:
    out = Path(out)
    dest = out / "tables"
    dest.mkdir(parents=True, exist_ok=True)
    parts = ["# Per-layer metrics, exit indicators and DE³ overhead", ""]
    per_layer = per_layer_table(out)
    if len(per_layer):
        parts += [
            "## Headline dev metric of each layer's classifier (per recipe)",
            "",
            "`single` = the plain fine-tune (one classifier, same budget): only its last layer.",
            "",
            per_layer.to_markdown(),
            "",
        ]
    ind = indicator_table(out)
    if len(ind):
        parts += [
            "## AUROC of each indicator for 'this layer's prediction is correct' (per layer)",
            "",
            "Higher is better; 0.5 = chance. Low indicator = predicted correct.",
            "",
            ind.to_markdown(),
            "",
        ]
    res = out / "results.jsonl"
    if res.is_file():
        rows = [json.loads(x) for x in res.read_text().splitlines() if x.strip()]
        orc = [r for r in rows if r["method"] == "oracle"]
        if orc:
            df = pd.DataFrame(
                [
                    {
                        "task": r["task"],
                        "oracle metric": r["metric"][r["headline_metric"]],
                        "oracle layer speed-up": round(r["speedup_layers"], 3),
                    }
                    for r in orc
                ]
            )
            parts += [
                "## Oracle head-room (first correct layer; uses labels)",
                "",
                df.to_markdown(index=False),
                "",
            ]
    ov = overhead(out)
    if len(ov):
        parts += ["## Prototype branch overhead per layer (DE³)", "", ov.to_markdown(index=False), ""]
    path = dest / "indicators.md"
    path.write_text("\n".join(parts))
    return [path]
