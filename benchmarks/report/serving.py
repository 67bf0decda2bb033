"""Rendering of the load benchmark's rows (`serving.jsonl`, `benchmarks.serving`) as
tables/serving.md: per (task, contender, scheduler) latency at 50% load, sustainable throughput,
serving speed-up and the fraction of the limit the exits allow; then the overheads and the
served = replay checks. Computing happens in `benchmarks.serving.summarize`; this module only
formats, through `cells` and `pipe_table` like every other table.
"""

from __future__ import annotations

import math

from ..results import FULL
from . import cells
from .markdown_claims import pipe_table

INTRO = ("Open-loop Poisson arrivals on a real clock; loads are fractions of the full model's "
         "batch-1 capacity. Sustainable = the highest load whose p99 meets the SLO; speed-up = "
         "÷ the full model's sustainable throughput under the same scheduler; limit = layer "
         "speed-up × that. `replay ≠` counts served requests whose exit or prediction differs "
         "from replay and is not a near tie (must be 0).")


def _opt(v, spec: str = ".2f") -> str:
    """A value that may be absent (a load not reached, no full-model row)."""
    return cells.NONE if v is None else format(v, spec)


def contender_name(r: dict) -> str:
    """`method @t×` for a method at an operating point, the method alone for the full model."""
    return r["method"] if r["target"] is None else f"{r['method']} @{r['target']:g}×"


def _context_lines(rows: list[dict]) -> list[str]:
    """Machine, limits, HTTP and load-generator overheads, as measured in the same run."""
    first = next((r for r in rows if r.get("kind") == "point"), {})
    m = first.get("machine", {})
    out = [f"Machine: {m.get('cpu', '?')}, {m.get('threads', '?')} torch thread(s), torch "
           f"{m.get('torch', '?')}; limits {first.get('limits')}.", ""]
    for h in (r for r in rows if r.get("kind") == "http"):
        out += [f"HTTP over loopback ({h['task']}, {h['method']} @{h['target']:g}×, batch 1, {h['n']} "
                f"sequential requests): round trip p50 {h['round_trip_p50_ms']:.2f} ms, of which the "
                f"server's own latency {h['server_p50_ms']:.2f} ms; HTTP + JSON + tokenisation add "
                f"{h['overhead_p50_ms']:.2f} ms (p50).", ""]
    for o in (r for r in rows if r.get("kind") == "overhead"):
        out += [f"Load generator alone ({o['task']}, no-op model, 50% load): {o['mean_us']:.0f} µs mean, "
                f"{o['p99_us']:.0f} µs p99 = {100 * o['share_of_service']:.2f}% of the full model's "
                f"batch-1 service time ({o['service_us'] / 1000:.2f} ms).", ""]
    return out


def _summary_rows(rows: list[dict]) -> list[list[str]]:
    """One table line per summary row, the full model first within each task."""
    half = {(r["task"], r["method"], r["target"], r["scheduler"]): r for r in rows
            if r.get("kind") == "point" and math.isclose(r["load"], 0.5)}
    summ = sorted((r for r in rows if r.get("kind") == "summary"), key=lambda r: (
        r["task"], r["method"] != FULL, r["method"], r["target"] or 0, r["scheduler"]))
    out = []
    for r in summ:
        p = half.get((r["task"], r["method"], r["target"], r["scheduler"]), {})
        out.append([r["task"], contender_name(r), r["scheduler"], f"{r['speedup_layers']:.2f}",
                    _opt(p.get("p50_ms")), _opt(p.get("p99_ms")), f"{r['slo_ms']:.1f}",
                    f"{r['sustainable_rps']:.1f}", _opt(r["serving_speedup"]), _opt(r["of_limit"]),
                    _opt(r.get("batch_at_sustainable"), ".1f"), _opt(r.get("busy_at_sustainable"), ".0%"),
                    str(r["replay_differ_not_tie"])])
    return out


def equivalence_lines(rows: list[dict]) -> list[str]:
    """The served = replay table (`--equivalence`): per task, method, target and scheduler."""
    eq = [r for r in rows if r.get("kind") == "equivalence"]
    if not eq:
        return []
    header = ["task", "contender", "scheduler", "served", "differ", "not near ties", "merges", "mean batch"]
    body = [[r["task"], contender_name(r), r["scheduler"], str(r["checked"]),
             str(r.get("differ", cells.NONE)), str(r.get("differ_not_tie", cells.NONE)),
             str(r["merges"]), f"{r['mean_batch']:.1f}"] for r in eq]
    return ["", "## Served = replay (whole dev set at once)", "", *pipe_table(header, body)]


def serving_markdown(rows: list[dict]) -> str:
    """tables/serving.md from every row of `serving.jsonl`."""
    if not any(r.get("kind") == "summary" for r in rows):
        return "\n".join(["# Serving under load", *equivalence_lines(rows)]) + "\n"
    header = ["task", "contender", "scheduler", "layer sp.", "p50 @50% (ms)", "p99 @50% (ms)", "SLO (ms)",
              "sustainable (req/s)", "serving sp.", "of limit", "batch there", "busy there", "replay ≠"]
    lines = ["# Serving under load", "", INTRO, "", *_context_lines(rows),
             *pipe_table(header, _summary_rows(rows))]
    return "\n".join(lines + equivalence_lines(rows)) + "\n"
