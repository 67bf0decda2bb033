"""Side by side: the same profile trained in two precisions (issue 24). Per task and recipe the
dev metric at every layer (from the records), and every DE³ claim verdict, from two run folders.

    .venv/bin/python scripts/precision_compare.py RUN_A RUN_B > docs/default_run/precision.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from de3bert.data import get_task
from de3bert.engine import replay_predictions
from de3bert.metrics import glue_metrics
from de3bert.record import load_record


def per_layer(task: str, recipe_file: Path) -> list[float]:
    """The task's headline dev metric at each layer of one recorded model."""
    rec = load_record(recipe_file)
    spec = get_task(task)
    L, n = rec["logits"].shape[:2]
    exits = torch.arange(1, L + 1)[:, None].expand(L, n)
    preds = replay_predictions(rec, exits)
    return [glue_metrics(spec.metrics, preds[k], rec["labels"])[spec.headline_metric] for k in range(L)]


def precision_of(run: Path) -> str:
    """The training precision recorded in a run's rows."""
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]
    return ", ".join(sorted({r.get("train_precision", "?") for r in rows}))


def layer_table(a: Path, b: Path) -> list[str]:
    """Rows `task | recipe | layers (A) | layers (B) | max |Δ|`."""
    pa, pb = precision_of(a), precision_of(b)
    out = [f"| task | recipe | per-layer dev metric, {pa} | per-layer dev metric, {pb} "
           "| largest difference |", "|---|---|---|---|---|"]
    for rec_a in sorted((a / "records").glob("*/*.safetensors")):
        task, name = rec_a.parent.name, rec_a.name.removesuffix(".safetensors")
        rec_b = b / "records" / task / rec_a.name
        if not rec_b.is_file():
            continue
        la, lb = per_layer(task, rec_a), per_layer(task, rec_b)
        diff = max(abs(x - y) for x, y in zip(la, lb, strict=True))
        fmt = lambda v: " / ".join(f"{x:.1f}" for x in v)  # noqa: E731
        out.append(f"| {task} | {name.rsplit('-s', 1)[0]} | {fmt(la)} | {fmt(lb)} | {diff:.1f} |")
    return out


def verdicts(run: Path) -> dict[tuple, str]:
    """{(task, target, baseline): verdict} of claim 1 (DE³ against each baseline)."""
    c = json.loads((run / "tables" / "claims.json").read_text())
    return {(r["task"], r["target"], r["baseline"]): r["verdict"] for r in c["claim1"]}


def verdict_table(a: Path, b: Path) -> list[str]:
    """Claim 1 verdicts side by side, the differing ones marked, and a count."""
    va, vb = verdicts(a), verdicts(b)
    pa, pb = precision_of(a), precision_of(b)
    out = [f"| task | target | DE³ vs | {pa} | {pb} | same |", "|---|---|---|---|---|---|"]
    same = 0
    for key in sorted(va.keys() | vb.keys()):
        x, y = va.get(key, "–"), vb.get(key, "–")
        same += x == y
        out.append(f"| {key[0]} | {key[1]:g}× | {key[2]} | {x} | {y} | {'yes' if x == y else '**no**'} |")
    out += ["", f"{same} of {len(va.keys() | vb.keys())} claim-1 verdicts are the same in both precisions."]
    return out


def main(a: str, b: str) -> int:
    """Print the Markdown comparison of run folders `a` and `b`."""
    ra, rb = Path(a), Path(b)
    print("\n".join(["## Per-layer dev metric of every trained model", "", *layer_table(ra, rb), "",
                     "## DE³ against each baseline (claim 1, cross-fitted operating points)", "",
                     *verdict_table(ra, rb)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
