"""Markdown rendering of claims.md: the tasks, each claim's table, verdicts and summaries.

Rendering only (the claims are computed by `claims.build_claims`); cells come from `cells`. Kept
apart from `markdown` so the claims report (`claims.write_claims`) needs nothing of the run's
other tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import cells


def pipe_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain pipe table (no column padding): header, separator, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def _claims_tasks(claims: dict) -> list[str]:
    """Which tasks were learned (and so enter the claims)."""
    rows = [[n, t["metric"], str(t["n_seeds"]), "yes" if t["learned"] else "**not learned**",
             "; ".join(t["reasons"]), str(t["note"])] for n, t in claims["tasks"].items()]
    header = ["task", "metric", "seeds", "learned", "bar check", "intervals"]
    out = ["## Tasks", "", *pipe_table(header, rows)]
    excluded = [n for n, t in claims["tasks"].items() if not t["learned"]]
    if excluded:
        out += ["", f"Not learned, so left out of every claim: {', '.join(excluded)}."]
    return out + [""]


def _claim1(claims: dict) -> list[str]:
    """Claim 1 table: DE³ vs the best baseline per task and target."""
    rows = []
    for r in claims["claim1_best"]:
        c = r["comparison"]
        warn = " (target not reached on the selection data: fastest knob)" if r["reached"] < 0.5 else ""
        rows.append([r["task"], cells.target(r["target"]),
                     cells.at_speedup(cells.interval(r["de3"]), r["de3_speedup"].estimate),
                     f"{r['baseline']} " + cells.at_speedup(cells.interval(r["baseline_cell"]),
                                                            r["baseline_speedup"].estimate),
                     cells.difference(c), cells.q(c), f"{r['verdict']}{warn}"])
    header = ["task", "target", "DE³ (achieved ×)", "best baseline (achieved ×)", "DE³ − baseline [95% CI]",
              "q", "verdict"]
    return ["## Claim 1: at equal speed-up, DE³-BERT ≥ the baselines", "", *pipe_table(header, rows),
            "", claims["summary"]["claim1"], "", claims["summary"]["claim1_all"], "", *_not_learned(claims)]


def _not_learned(claims: dict) -> list[str]:
    """The trained models below their task's learned bar at the deepest exit, with their
    per-layer figures: their comparisons read 'not learned (training)', never a verdict on the method."""
    rows = [[n, m, cells.per_layer(v["per_layer"]), "; ".join(v["reasons"])]
            for n, t in claims["tasks"].items() for m, v in t.get("models", {}).items() if not v["learned"]]
    if not rows:
        return []
    header = ["task", "method", "metric per layer (1 → L)", "bar check at the deepest exit"]
    return ["### Models that did not learn (training failures, not method verdicts)", "",
            *pipe_table(header, rows), ""]


def _claim2(claims: dict) -> list[str]:
    """Claim 2 table: per-layer AUROC of EDR against entropy."""
    rows = [[r["task"], r["pair"], str(r["layer"]), cells.interval(r["a"], 3), cells.interval(r["b"], 3),
             cells.difference(r["comparison"], 3), cells.q(r["comparison"]), r["verdict"]]
            for r in claims["claim2"]]
    header = ["task", "pair", "layer", "AUROC a", "AUROC b", "a − b [95% CI]", "q", "verdict"]
    return ["## Claim 2: EDR estimates correctness better than entropy (AUROC per layer)", "",
            *pipe_table(header, rows), "", claims["summary"]["claim2"], ""]


def _claims34(claims: dict) -> list[str]:
    """Claim 3 (overhead, measured not tested) and the oracle's head-room."""
    out = ["## Claim 3: the overhead is minimal", ""]
    if claims["claim3"]:
        keys = list(claims["claim3"][0])
        out += pipe_table(keys, [[str(row.get(k, "")) for k in keys] for row in claims["claim3"]])
        out += ["", "A measured cost, not a sampled quantity: no interval; read it against one layer (100%)."]
    else:
        out.append("No overhead measurements in the input: this claim cannot be checked here.")
    out += ["", "## Claim 4: the oracle's head-room", ""]
    if claims["claim4"]:
        out += pipe_table(["task", "target", "oracle − DE³ [95% CI]"],
                          [[r["task"], cells.target(r["target"]), cells.difference(r["headroom"])]
                           for r in claims["claim4"]])
    else:
        out.append("No oracle (or no DE³) record in the input.")
    return out + [""]


def claims_markdown(claims: dict) -> str:
    """claims.md: every claim's table, verdicts and plain-language summary."""
    head = [
        "# DE³-BERT's claims, checked against the data",
        "",
        f"Operating points: `{claims['protocol']}` — {claims['protocol_label']}. Intervals: 95% "
        f"{claims['ci']} bootstrap, {claims['n_boot']} paired replicates over dev samples with the knob "
        f"re-chosen in each; p-values two-sided from the bootstrap, Benjamini–Hochberg within each claim "
        f"(α = {claims['alpha']:g}). Cells: estimate ±half-width. Training precision: "
        f"{claims.get('precision', 'not recorded')}.",
        "",
    ]
    return "\n".join(head + _claims_tasks(claims) + _claim1(claims) + _claim2(claims) + _claims34(claims))

