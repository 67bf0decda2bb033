"""The claims report: each claim of the DE³-BERT paper checked against the data, with intervals.

``build_claims(results)`` computes the claims (a dict of rows, intervals and verdicts);
``markdown_claims.claims_markdown`` and ``jsonout`` render it; ``write_claims(results, out)`` is the one
writer of ``claims.md`` and ``claims.json`` (the run's report calls it too). Only records and exit
arrays are read (no model run). ``python -m benchmarks.report.claims --results FILE --out DIR``
writes the report for a results structure saved as JSON.

Input shape (plain dict; arrays may be lists or numpy arrays)::

    {
      "protocol": "crossfit",                 # optional (crossfit | dev | train-holdout)
      "indicator_pairs": [["de3", "de3-entropy"]],   # claim 2: AUROC a − b per layer
      (per task, optional) "baselines": [...]  # claim 1's baselines (default: not de3*, not oracle)
      "overhead": [{"task": ..., "flops_vs_layer_%": ..., "params_vs_layer_%": ...}],  # optional,
                                              #   rows as benchmarks.report.analysis.overhead() gives
      "tasks": {
        "<task>": {
          "metric": "accuracy",               # headline metric: accuracy | f1 | mcc | pearson
          "n_layers": 6,
          "labels": [N],                      # dev labels
          "targets": [1.5, 2.0],              # layer speed-up targets
          "full_model": "full-model",         # name of the one-knob full-depth record in "methods"
          "full_scores": {"f1": 86.0, "accuracy": 80.1},  # optional; else from the full-model record
          "seeds": {
            "<seed>": {
              "methods": {"<method>": {"exits": [K, N], "preds": [K, N], "holdout_exits": [K, H]}},
              "indicators": {"<name>": {"score": [L, N], "correct": [L, N]}},   # optional
            }
          }
        }
      }
    }

Claim 1 compares DE³ with every baseline at every target (BH across the whole claim); the verdict
is given against the best baseline (highest point estimate). Several seeds → hierarchical bootstrap.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from de3bert.record import atomic_write_text

from ..stats import bootstrap as st
from ..stats.seedsplit import SeedSplit, pool_seeds
from .jsonout import json_text
from .markdown_claims import claims_markdown

NOT_BASELINES = ("oracle",)  # used only when the input names no `baselines` (hand-made inputs)


def verdict(c: st.Comparison, alpha: float) -> str:
    """supported / contradicted when significant after FDR, else 'not distinguishable'."""
    if not np.isfinite(c.interval.estimate) or not c.significant(alpha):
        return "not distinguishable"
    return "supported" if c.interval.estimate > 0 else "contradicted"


def _records(seed_block: Mapping) -> dict[str, st.MethodRecord]:
    """MethodRecords of one seed from the input dict."""
    out = {}
    for name, r in seed_block["methods"].items():
        hold = r.get("holdout_exits")
        out[name] = st.MethodRecord(
            np.asarray(r["exits"]), np.asarray(r["preds"]), None if hold is None else np.asarray(hold)
        )
    return out


def _pooled(analyses: Sequence[st.Analysis], seed: int) -> st.Analysis | SeedSplit:
    """One seed as is; several through the hierarchical bootstrap (`pool_seeds`: methods on
    the first seed only are analysed on it, with every comparison involving them)."""
    return pool_seeds(analyses, seed=seed)


def _learned(task: Mapping, seeds: Mapping[str, dict]) -> st.Verdict:
    """The full model against the task's bar (mean over seeds when computed from the records)."""
    labels, headline = np.asarray(task["labels"]), task["metric"]
    scores = dict(task.get("full_scores") or {})
    if not scores:
        full = task.get("full_model", "full-model")
        names = [headline] + (["accuracy"] if headline == "f1" else [])
        for name in names:
            vals = [st.METRICS[name](recs[full].preds[0], labels) for recs in seeds.values() if full in recs]
            if vals:
                scores[name] = float(np.mean(vals))
    if headline not in scores:
        return st.Verdict(False, ("no full-model score or record given",), {})
    return st.learned(scores, labels, headline)


NOT_LEARNED = "not learned (training)"
SPEEDUP_MATCH = 0.05  # achieved speed-ups more than 5% apart (relative) are not compared


def model_checks(task: Mapping) -> dict[str, dict]:
    """Each method's own trained model at its deepest exit against the task's learned bar:
    {method: {"learned": Verdict, "per_layer": [metric per layer, mean over seeds]}}. Read from
    the per-layer predictions `layers` [L, N] a method carries (methods without them are skipped),
    so a model that never learned is told apart from a method that is worse (issue 25)."""
    labels, headline = np.asarray(task["labels"]), task["metric"]
    names = [headline] + (["accuracy"] if headline == "f1" else [])
    per_method: dict[str, list[np.ndarray]] = {}
    for block in task["seeds"].values():
        for m, r in block["methods"].items():
            if r.get("layers") is not None:
                per_method.setdefault(m, []).append(np.asarray(r["layers"]))
    out = {}
    for m, runs in per_method.items():
        per_layer = np.mean([[st.METRICS[headline](p, labels) for p in layers] for layers in runs], 0)
        deepest = {n: float(np.mean([st.METRICS[n](layers[-1], labels) for layers in runs])) for n in names}
        out[m] = {"learned": st.learned(deepest, labels, headline),
                  "per_layer": [round(float(v), 2) for v in per_layer]}
    return out


def precheck(row: dict, models: Mapping[str, dict], de3: str) -> str | None:
    """The verdict a claim-1 row gets before any test, or None: a model that did not learn
    (either side) is a failed training, and speed-ups more than `SPEEDUP_MATCH` apart (a cliff
    in one method's curve) are not the equal-speed-up comparison the claim is about."""
    for m in (de3, row["baseline"]):
        if m in models and not models[m]["learned"].learned:
            return NOT_LEARNED
    a, b = row["de3_speedup"].estimate, row["baseline_speedup"].estimate
    if np.isfinite(a) and np.isfinite(b) and abs(a - b) > SPEEDUP_MATCH * min(a, b):
        return f"speed-up not matched ({a:.2f}× vs {b:.2f}×)"
    return None


def _task_analysis(name: str, task: Mapping, protocol: str, n_boot: int, seed: int,
                   ci: str = "percentile") -> dict:
    """Paired (and, with several seeds, hierarchical) bootstrap of one task's methods and indicators."""
    seeds = {s: _records(b) for s, b in task["seeds"].items()}
    s_max = min(st.common_s_max(recs, int(task["n_layers"])) for recs in seeds.values())  # one curve grid
    runs = [
        st.paired_bootstrap(
            recs,
            task["labels"],
            n_layers=int(task["n_layers"]),
            metric=task["metric"],
            targets=task["targets"],
            protocol=protocol,
            n_boot=n_boot,
            seed=seed + i,
            fold_seed=seed + i,
            s_max=s_max,
            ci=ci,
        )
        for i, recs in enumerate(seeds.values())
    ]
    ind_runs = []
    for i, block in enumerate(task["seeds"].values()):
        ind = {
            k: (np.asarray(v["score"]), np.asarray(v["correct"]))
            for k, v in block.get("indicators", {}).items()
        }
        if ind:
            ind_runs.append(st.auroc_bootstrap(ind, n_boot=n_boot, seed=seed + i))
    ind = _pooled(ind_runs, seed) if ind_runs and len(ind_runs) == len(runs) else None
    return {
        "analysis": _pooled(runs, seed),
        "indicators": ind,
        "learned": _learned(task, seeds),
        "models": model_checks(task),
        "n_seeds": len(runs),
        "summary": st.seed_summary(runs),
    }


def _claim1_rows(name: str, task: Mapping, a: st.Analysis, de3: str) -> list[dict]:
    """DE³ − every baseline at every target of one task (q-values attached later, across tasks)."""
    full = task.get("full_model", "full-model")
    if "baselines" in task:  # declared by the run loader from the registry (family, report_only)
        bases = [m for m in task["baselines"] if m in a.methods]
    else:
        bases = [m for m in a.methods if not m.startswith(de3) and m != full and m not in NOT_BASELINES]
    rows = []
    for t in task["targets"]:
        est = {m: a.point[a.row(m, "metric", t)] for m in bases}
        best = max(est, key=est.get) if est else None
        for b in bases:
            src = _source(a, de3, b)  # cells from the analysis the difference is made on
            rows.append(
                {
                    "task": name,
                    "target": float(t),
                    "baseline": b,
                    "best": b == best,
                    "comparison": src.difference(de3, b, "metric", t),
                    "de3": src.interval(de3, "metric", t),
                    "baseline_cell": src.interval(b, "metric", t),
                    "de3_speedup": src.interval(de3, "speedup", t),
                    "baseline_speedup": src.interval(b, "speedup", t),
                    "reached": float(
                        min(src.reached[src.row(de3, "metric", t)], src.reached[src.row(b, "metric", t)])
                    ),
                }
            )
    return rows


def _source(a: st.Analysis | SeedSplit, *methods: str) -> st.Analysis:
    """The analysis a comparison of `methods` is made on (a SeedSplit's pooled or first-seed part),
    so that a row's cells and its difference come from the same seeds."""
    return a.source(*methods) if isinstance(a, SeedSplit) else a


def _claim2_rows(name: str, ind: st.Analysis | None, pairs: Sequence[Sequence[str]]) -> list[dict]:
    """EDR − entropy AUROC per layer for every indicator pair present."""
    if ind is None:
        return []
    have = set(ind.methods)
    rows = []
    for a, b in pairs:
        if a in have and b in have:
            layers = sorted({n[2] for n in ind.names if n[0] == a} & {n[2] for n in ind.names if n[0] == b})
            src = _source(ind, a, b)
            rows += [
                {
                    "task": name,
                    "pair": f"{a} − {b}",
                    "layer": int(lay),
                    "comparison": src.difference(a, b, "auroc", lay),
                    "a": src.interval(a, "auroc", lay),
                    "b": src.interval(b, "auroc", lay),
                }
                for lay in layers
            ]
    return rows


def _adjust_rows(rows: list[dict], alpha: float) -> list[dict]:
    """BH across one claim's comparisons, then a verdict per row; rows that already carry a
    verdict (`precheck`) are neither tested nor counted in the correction."""
    tested = [r for r in rows if not r.get("verdict")]
    adjusted = st.adjust([r["comparison"] for r in tested])
    for r, c in zip(tested, adjusted, strict=True):
        r["comparison"], r["verdict"] = c, verdict(c, alpha)
    return rows


def _claim1(per: Mapping[str, dict], results: Mapping, ok: list[str], de3: str, alpha: float) -> list[dict]:
    """Claim 1's rows over the learned tasks, prechecked, then BH-adjusted."""
    rows = []
    for n in ok:
        if de3 in per[n]["analysis"].methods:
            for r in _claim1_rows(n, results["tasks"][n], per[n]["analysis"], de3):
                r["verdict"] = precheck(r, per[n].get("models", {}), de3)
                rows.append(r)
    return _adjust_rows(rows, alpha)


def _cannot_decide(rows: list[dict], what: str) -> str:
    """A plain sentence on how many cells the data decides, and how large a resolvable gap is."""
    if not rows:
        return f"No data for {what}: the input holds no comparable results, so this claim cannot be checked."
    counts = {
        v: sum(r["verdict"] == v for r in rows) for v in ("supported", "contradicted", "not distinguishable")
    }
    failed = sum(r["verdict"] == NOT_LEARNED for r in rows)
    unmatched = sum(r["verdict"].startswith("speed-up not matched") for r in rows)
    tested = [r for r in rows if r["verdict"] in counts]
    widths = [r["comparison"].interval.half_width for r in tested]
    hw = float(np.nanmedian(widths)) if widths else float("nan")
    text = (
        f"{what}: supported in {counts['supported']}, contradicted in {counts['contradicted']}, "
        f"not distinguishable in {counts['not distinguishable']} of {len(rows)} comparisons "
        f"(median 95% half-width ±{hw:.2f})."
    )
    if failed or unmatched:
        text += (f" Not tested: {failed} with a model that did not learn ({NOT_LEARNED}), {unmatched} "
                 f"whose achieved speed-ups differ by more than {SPEEDUP_MATCH:.0%}.")
    if tested and counts["not distinguishable"] == len(tested):
        text += (
            f" The data cannot decide this claim: every interval contains 0, so differences smaller "
            f"than about ±{hw:.1f} cannot be resolved on these dev sets."
        )
    return text


def analyse_tasks(results: Mapping, n_boot: int = 1000, seed: int = 0,
                  ci: str = "percentile") -> dict[str, dict]:
    """`_task_analysis` of every task (the report's tables and the claims share these)."""
    protocol = results.get("protocol", "crossfit")
    return {n: _task_analysis(n, t, protocol, n_boot, seed, ci) for n, t in results["tasks"].items()}


def build_claims(
    results: Mapping, de3: str = "de3", alpha: float = 0.05, n_boot: int = 1000, seed: int = 0,
    analyses: Mapping[str, dict] | None = None,
) -> dict:
    """Every claim's rows, verdicts and plain-language summaries, from the results structure."""
    protocol = results.get("protocol", "crossfit")
    per = analyses if analyses is not None else analyse_tasks(results, n_boot, seed)
    ok = [n for n in per if per[n]["learned"].learned]
    c1 = _claim1(per, results, ok, de3, alpha)
    pairs = results.get("indicator_pairs", [])
    c2 = _adjust_rows([r for n in ok for r in _claim2_rows(n, per[n]["indicators"], pairs)], alpha)
    c4 = [
        {"task": n, "target": float(t), "headroom": per[n]["analysis"].difference("oracle", de3, "metric", t)}
        for n in ok
        if {"oracle", de3} <= set(per[n]["analysis"].methods)
        for t in results["tasks"][n]["targets"]
    ]
    any_a = next(iter(per.values()))["analysis"] if per else None
    return {
        "protocol": protocol,
        "protocol_label": st.PROTOCOL_LABELS.get(protocol, protocol),
        "precision": results.get("precision", "not recorded"),
        "ci": any_a.ci if any_a else None,
        "n_boot": n_boot,
        "alpha": alpha,
        "tasks": {
            n: {
                "metric": results["tasks"][n]["metric"],
                "learned": p["learned"].learned,
                "reasons": list(p["learned"].reasons),
                "trivial": p["learned"].trivial,
                "n_seeds": p["n_seeds"],
                "note": p["analysis"].note,
                "models": {m: {"learned": v["learned"].learned, "reasons": list(v["learned"].reasons),
                               "per_layer": v["per_layer"]} for m, v in p.get("models", {}).items()},
            }
            for n, p in per.items()
        },
        "claim1": c1,
        "claim1_best": [r for r in c1 if r["best"]],
        "claim2": c2,
        "claim3": list(results.get("overhead") or []),
        "claim4": c4,
        "summary": {
            "claim1": _cannot_decide([r for r in c1 if r["best"]], "DE³ vs the best baseline"),
            "claim1_all": _cannot_decide(c1, "DE³ vs every baseline"),
            "claim2": _cannot_decide(c2, "EDR vs entropy AUROC"),
        },
    }


def write_claims(results: Mapping, out: str | Path, cost: Mapping | None = None, **kwargs) -> list[Path]:
    """Write claims.md and claims.json under ``out`` (their one writer); kwargs go to
    ``build_claims``; `cost` (seconds of the analysis and of one recording pass) is stored with them."""
    claims = build_claims(results, **kwargs)
    if cost is not None:
        claims["cost"] = dict(cost)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "claims.md", out / "claims.json"
    atomic_write_text(md, claims_markdown(claims) + "\n")
    atomic_write_text(js, json_text(claims))
    return [md, js]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m benchmarks.report.claims --results FILE --out DIR`: the report for a results
    structure saved as JSON (the input shape above; arrays as lists)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True, help="a JSON file holding the input shape")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    for p in write_claims(json.loads(args.results.read_text()), args.out, n_boot=args.n_boot):
        print(p)


if __name__ == "__main__":
    main()
