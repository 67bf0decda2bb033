"""`de3bert check-regression`: compare a run's results with a committed golden file.

Red exactly when behaviour changed, on any CPU: another machine's kernels move recorded scores by
~10⁻⁶, which flips only samples whose score lies that close to a knob or whose top-two logits are
that close (near ties, counted in every row: `de3bert.ties`). A row with no near ties must match
the golden exactly (exit histogram, layer speed-up; metrics within `metric_points`). A row with T
near ties (the larger of the golden's and the run's count) may move at most T samples: exit
histogram within T moves, total exit layers within T·(L−1), metrics within `metric_points` +
T·200/n (one flip moves accuracy by 100/n and F1 or MCC by at most about twice that). More moves
than near ties is a regression. Optional floors guard benchmark ratios. Prints one line per check
with expected, observed and verdict; returns 1 on any regression. `--update` rewrites the golden
file from the given results (on purpose only).
"""

from __future__ import annotations

import json
from pathlib import Path

from de3bert.ties import tie_count

from .results import group_key, read_rows

METRIC_TOLERANCE = 0.5  # points of the headline metric (percent)
SCHEMA = 2  # 2: rows carry near-tie counts and sample counts (tolerant comparison across CPUs)
PER_TIE_POINTS = 200.0  # metric points one near-tie sample may move, × 1/n (see the module doc)
REFRESH = ("refresh the golden file on purpose: rerun the profile, then `de3bert check-regression "
           "--golden FILE --results RESULTS --update` and commit it with a note saying why")


def _key(row: dict) -> str:
    v = row["knob"]["value"]
    value = "none" if v is None else f"{float(v):.6g}"
    return f"{row['task']}/{row['method']}/{row['knob']['name']}={value}/seed{row['seed']}"


def _group(row: dict) -> str:
    task, method, seed = group_key(row)
    return f"{task}/{method}/seed{seed}"


def _rows(results: str | Path) -> dict[str, dict]:
    return {_key(r): r for r in read_rows(results)}


def _operating_points(rows: dict[str, dict]) -> dict[str, dict]:
    """{"task/method/seedS@target": knob, achieved layer speed-up, headline metric}."""
    out = {}
    for r in rows.values():
        for target in r.get("operating_point") or []:
            out[f"{_group(r)}@{target:g}"] = {"knob": r["knob"]["value"],
                                              "speedup_layers": round(r["speedup_layers"], 6),
                                              "metric": r["metric"][r["headline_metric"]],
                                              "ties": tie_count(r), "n_samples": r.get("n_samples"),
                                              "num_layers": len(r["exit_histogram"])}
    return dict(sorted(out.items()))


def make_golden(results: str | Path, tolerance: float = METRIC_TOLERANCE, floors: dict | None = None) -> dict:
    """The golden file of a run: every group, row and operating point it must reproduce."""
    rows = _rows(results)
    return {
        "schema": SCHEMA,
        "tolerance": {"metric_points": tolerance, "per_tie_points": PER_TIE_POINTS},
        "floors": floors or {},
        "groups": sorted({_group(r) for r in rows.values()}),
        "operating_points": _operating_points(rows),
        "rows": {k: {"speedup_layers": round(r["speedup_layers"], 6), "exit_histogram": r["exit_histogram"],
                     "metric": r["metric"], "near_ties": r.get("near_ties"), "n_samples": r.get("n_samples")}
                 for k, r in sorted(rows.items())},
    }


def _group_checks(golden: dict, rows: dict[str, dict]) -> list[tuple[str, str, str, bool]]:
    """A result group the golden file does not know fails, and so does a golden group that is missing."""
    have = {_group(r) for r in rows.values()}
    want = set(golden.get("groups") or {k.rsplit("/", 2)[0] + "/" + k.rsplit("/", 1)[1]
                                       for k in golden["rows"]})
    checks = [(f"{g} group", "in the golden file", "new (no golden counterpart; " + REFRESH + ")", False)
              for g in sorted(have - want)]
    checks += [(f"{g} group", "present", "missing from the results", False) for g in sorted(want - have)]
    return checks


def _point_checks(golden: dict, rows: dict[str, dict], tol: float) -> list[tuple[str, str, str, bool]]:
    """Each pinned operating point: same knob, same achieved speed-up, metric within tolerance."""
    if "operating_points" not in golden:
        return []
    want, have = golden["operating_points"], _operating_points(rows)
    checks = []
    for key, g in want.items():
        h = have.get(key)
        if h is None:
            checks.append((f"{key} operating point", f"knob {g['knob']}", "missing", False))
            continue
        ties = max(g.get("ties", 0), h["ties"])  # a tie may move the point to a neighbouring knob
        same_knob = h["knob"] == g["knob"] or (h["knob"] is not None and g["knob"] is not None
                                               and f"{h['knob']:.6g}" == f"{g['knob']:.6g}")
        checks.append((f"{key} operating point knob", f"{g['knob']}" + (f" (≤ {ties} ties)" if ties else ""),
                       f"{h['knob']}", same_knob or ties > 0))
        n, L = g.get("n_samples") or h["n_samples"] or 1, g.get("num_layers") or h["num_layers"]
        shift = abs(_exit_layers_total(h["speedup_layers"], n, L)
                    - _exit_layers_total(g["speedup_layers"], n, L))
        checks.append((f"{key} operating point speedup_layers", f"{g['speedup_layers']}",
                       f"{h['speedup_layers']}", h["speedup_layers"] == g["speedup_layers"]
                       or (ties > 0 and shift <= ties * (L - 1) + 1e-3)))
        mtol = tol + ties * PER_TIE_POINTS / n
        checks.append((f"{key} operating point metric", f"{g['metric']:.2f} ± {mtol:.3g}",
                       f"{h['metric']:.2f}", abs(h["metric"] - g["metric"]) <= mtol))
    known = set(golden.get("groups", []))  # points of unknown groups already fail as a group
    checks += [(f"{key} operating point", "in the golden file", "new (" + REFRESH + ")", False)
               for key in sorted(set(have) - set(want)) if key.rsplit("@", 1)[0] in known]
    return checks


def _moves(golden_hist: list[int], hist: list[int]) -> int:
    """The fewest samples that must have changed exit layer to turn one histogram into the other."""
    return sum(abs(a - b) for a, b in zip(golden_hist, hist, strict=False)) // 2


def _exit_layers_total(speedup: float, n: int, num_layers: int) -> float:
    """Σ exit layers over the n samples, from a layer speed-up (L·n / Σ)."""
    return num_layers * n / speedup


def _row_checks(golden: dict, rows: dict[str, dict], tol: float) -> list[tuple[str, str, str, bool]]:
    """Each golden row: exit histogram and layer speed-up exact, metrics within `tol`, unless the
    row has near ties, which may move (module doc)."""
    checks = []
    for key, g in golden["rows"].items():
        r = rows.get(key)
        if r is None:
            checks.append((key, "present", "missing", False))
            continue
        ties = max(tie_count(g), tie_count(r))
        checks += _speed_checks(key, g, r, ties)
        n = g.get("n_samples") or sum(g["exit_histogram"])
        mtol = tol + ties * golden["tolerance"].get("per_tie_points", PER_TIE_POINTS) / n
        for name, v in g["metric"].items():
            obs = r["metric"].get(name)
            shown = "missing" if obs is None else f"{obs:.2f}"
            ok = obs is not None and abs(obs - v) <= mtol
            checks.append((f"{key} {name}", f"{v:.2f} ± {mtol:.3g}", shown, ok))
    return checks


def _speed_checks(key: str, g: dict, r: dict, ties: int) -> list[tuple[str, str, str, bool]]:
    """Exit histogram and layer speed-up: equal, or within what `ties` near-tie samples can move."""
    sp = round(r["speedup_layers"], 6)
    if not ties:
        return [(f"{key} speedup_layers", f"{g['speedup_layers']}", f"{sp}", sp == g["speedup_layers"]),
                (f"{key} exit_histogram", str(g["exit_histogram"]), str(r["exit_histogram"]),
                 r["exit_histogram"] == g["exit_histogram"])]
    L, n = len(g["exit_histogram"]), g.get("n_samples") or sum(g["exit_histogram"])
    moved = _moves(g["exit_histogram"], r["exit_histogram"])
    shift = abs(_exit_layers_total(sp, n, L) - _exit_layers_total(g["speedup_layers"], n, L))
    return [(f"{key} speedup_layers", f"{g['speedup_layers']} (≤ {ties} ties)", f"{sp}",
             shift <= ties * (L - 1) + 1e-3),
            (f"{key} exit_histogram", f"{g['exit_histogram']} (≤ {ties} moves)",
             f"{r['exit_histogram']} ({moved} moves)", len(r["exit_histogram"]) == L and moved <= ties)]


def compare(golden: dict, rows: dict[str, dict]) -> list[tuple[str, str, str, bool]]:
    """(check, expected, observed, ok) for every group, row, operating point and floor."""
    if golden.get("schema") != SCHEMA:
        raise ValueError(f"golden file schema {golden.get('schema', 1)} predates near-tie counts "
                         f"(schema {SCHEMA}): it cannot tell a kernel's rounding from a regression; "
                         + REFRESH)
    tol = golden.get("tolerance", {}).get("metric_points", METRIC_TOLERANCE)
    checks = _group_checks(golden, rows) + _row_checks(golden, rows, tol) + _point_checks(golden, rows, tol)
    for name, floor in golden.get("floors", {}).items():
        observed = _observed_ratio(rows, name)
        checks.append((f"floor {name}", f"≥ {floor}", "n/a" if observed is None else f"{observed:.3f}",
                       observed is not None and observed >= floor))
    return checks


def _observed_ratio(rows: dict[str, dict], name: str) -> float | None:
    """Floors on results rows: `wallclock_fidelity/<method>` = speedup_wallclock / speedup_layers at 2×."""
    kind, _, method = name.partition("/")
    for r in rows.values():
        if (
            r["method"] == method
            and isinstance(r.get("operating_point"), list)
            and 2.0 in r["operating_point"]
        ):
            if kind == "wallclock_fidelity" and r.get("speedup_wallclock"):
                return r["speedup_wallclock"] / r["speedup_layers"]
    return None


def print_checks(checks: list[tuple[str, str, str, bool]], verbose: bool) -> None:
    """The failing checks (every check with `verbose`), then a per-method summary and the verdict."""
    failed = [c for c in checks if not c[3]]
    width = max((len(c[0]) for c in checks), default=5)
    shown = checks if verbose else failed
    if shown:
        print(f"{'check':<{width}}  {'expected':>22}  {'observed':>22}  verdict")
        for name, exp, obs, ok in shown:
            print(f"{name:<{width}}  {exp:>22}  {obs:>22}  {'ok' if ok else 'REGRESSION'}")
        print()
    groups: dict[str, list[bool]] = {}
    for name, _, _, ok in checks:
        parts = name.split("/")
        groups.setdefault(parts[1] if len(parts) > 2 else parts[0], []).append(ok)
    print(f"{'group':<24}  {'checks':>7}  {'failed':>7}  verdict")
    for group, oks in groups.items():
        bad = oks.count(False)
        print(f"{group:<24}  {len(oks):>7}  {bad:>7}  {'REGRESSION' if bad else 'ok'}")
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed"
          + (" — REGRESSION (failing checks listed above)" if failed else " — no regression"))


def _without_ties(golden: dict, rows: dict[str, dict]) -> tuple[dict, dict[str, dict]]:
    """Golden file and rows with every near-tie count set to 0: the exact comparison."""
    none = {"exit": 0, "prediction": 0}
    g = {**golden, "rows": {k: {**r, "near_ties": none} for k, r in golden["rows"].items()},
         "operating_points": {k: {**p, "ties": 0} for k, p in golden.get("operating_points", {}).items()}}
    return g, {k: {**r, "near_ties": none} for k, r in rows.items()}


def check_regression(golden: str | Path, results: str | Path, update: bool = False,
                     verbose: bool = False, exact: bool = False) -> int:
    """Compare a run's results with the golden file (exit 1 on any regression), or refresh it.
    `exact` tolerates no near ties (the machine that made the golden file, or a mutation check
    asking whether a mutant changed anything at all)."""
    golden = Path(golden)
    if update:
        old = json.loads(golden.read_text()) if golden.is_file() else {}
        g = make_golden(results, old.get("tolerance", {}).get("metric_points", METRIC_TOLERANCE),
                        old.get("floors"))
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(g, indent=1, sort_keys=True) + "\n")
        print(f"golden file {golden} refreshed from {results} ({len(g['rows'])} rows, "
              f"{len(g['operating_points'])} operating points)")
        return 0
    if not golden.is_file():
        raise FileNotFoundError(f"no golden file at {golden}; create one with --update")
    want, have = json.loads(golden.read_text()), _rows(results)
    if exact:
        want, have = _without_ties(want, have)
    checks = compare(want, have)
    print_checks(checks, verbose)
    return 1 if any(not c[3] for c in checks) else 0


def ratio_key(info: dict) -> str:
    """`target[, task][/method or recipe]`: one key per measured ratio. The task is added when the
    target's name does not already say it (training throughput runs per task and per recipe)."""
    key = info["target"]
    task = info.get("task")
    if task and task not in key:
        key += f", {task}"
    subject = info.get("method") or info.get("recipe")
    return key + (f"/{subject}" if subject else "")


def benchmark_ratios(path: str | Path) -> dict[str, tuple[float, bool]]:
    """{`ratio_key`: (ratio, higher_is_better)} from a pytest-benchmark JSON (`extra_info`)."""
    data = json.loads(Path(path).read_text())
    out = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "ratio" not in info or "target" not in info or info.get("tiny"):
            continue
        out[ratio_key(info)] = (float(info["ratio"]), str(info.get("goal", ">=")).startswith(">"))
    return out


def update_bounds(golden: Path, files: list, margin: float, merge: bool) -> int:
    """Write each ratio's bound from the worst of `files` ∓ `margin`; with `merge`, on top of the
    bounds (and the list of runs) already in `golden`."""
    worst: dict[str, tuple[float, bool]] = {}
    for ratios in (benchmark_ratios(f) for f in files):
        for k, (r, hi) in ratios.items():
            if k not in worst or (r < worst[k][0] if hi else r > worst[k][0]):
                worst[k] = (r, hi)
    new = {k: ({"min": round(r * (1 - margin), 4)} if hi else {"max": round(r * (1 + margin), 4)})
           for k, (r, hi) in worst.items()}
    old = json.loads(golden.read_text()) if merge and golden.is_file() else {"bounds": {}, "runs": []}
    bounds = {**old["bounds"], **new}
    runs = list(dict.fromkeys([*old["runs"], *(Path(f).name for f in files)]))
    text = json.dumps({"margin": margin, "runs": runs, "bounds": dict(sorted(bounds.items()))},
                      indent=1, sort_keys=True)
    golden.parent.mkdir(parents=True, exist_ok=True)
    golden.write_text(text + "\n")
    replaced = len(new.keys() & old["bounds"].keys())
    print(f"benchmark bounds {golden} refreshed from {len(files)} run(s) ({len(bounds)} ratios: "
          f"{len(new) - replaced} new, {replaced} replaced, {len(bounds) - len(new)} kept)")
    return 0


def check_benchmarks(golden: str | Path, bench_json: str | Path | list, update: bool = False,
                     margin: float = 0.15, allow_missing: bool = False, merge: bool = False) -> int:
    """Ratio floors (or ceilings) from a pytest-benchmark run: a regression is a ratio that got
    worse than the committed bound. A bounded ratio absent from the run fails too (a benchmark that
    silently stopped running), unless `allow_missing` (checking a `-k` subset on purpose).
    `update` sets each bound to the worst ratio over the given runs ∓ `margin` (relative): one
    machine's small-kernel costs drift by a quarter between runs, so bounds from one run would
    raise false alarms. `merge` (with `update`) replaces only the bounds of ratios the given runs
    have and keeps the others (a run of some targets: the others' runs are not redone)."""
    files = [bench_json] if isinstance(bench_json, str | Path) else list(bench_json)
    golden = Path(golden)
    if merge and not update:
        raise ValueError("--merge needs --update (it says which bounds an update keeps)")
    if update:
        return update_bounds(golden, files, margin, merge)
    if len(files) != 1:
        raise ValueError(f"check one benchmark run at a time (got {len(files)}); several runs are "
                         "for --update")
    ratios = benchmark_ratios(files[0])
    if not golden.is_file():
        raise FileNotFoundError(f"no benchmark bounds at {golden}; create them with --update")
    bounds = json.loads(golden.read_text())["bounds"]
    failed = skipped = 0
    print(f"{'ratio':<40}  {'bound':>10}  {'observed':>9}  verdict")
    for key, bound in bounds.items():
        obs = ratios.get(key)
        limit = f">= {bound['min']}" if "min" in bound else f"<= {bound['max']}"
        if obs is None and allow_missing:
            skipped += 1
            continue
        ok = obs is not None and (obs[0] >= bound["min"] if "min" in bound else obs[0] <= bound["max"])
        shown = "missing" if obs is None else f"{obs[0]:.3f}"
        failed += not ok
        print(f"{key:<40}  {limit:>10}  {shown:>9}  {'ok' if ok else 'REGRESSION'}")
    checked = len(bounds) - skipped
    if checked == 0:
        raise ValueError(f"{files[0]} has none of the {len(bounds)} bounded ratios in {golden}")
    verdict = " — REGRESSION" if failed else " — no regression"
    note = f" ({skipped} not in this run, skipped)" if skipped else ""
    print(f"{checked - failed}/{checked} ratio checks passed{note}{verdict}")
    return 1 if failed else 0
