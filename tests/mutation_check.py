"""A small mutation check: does the test suite (and the smoke golden) catch real bugs?

Applies one single-line mutation at a time to the engine, policies, speed-up/operating-point code,
FLOPs, metrics and data loading, runs the tests that cover that code (and, with `--smoke`, the
smoke profile against its golden file), restores the file, and prints which mutants survived.
Not part of the default test run (minutes of CPU):

    .venv/bin/python tests/mutation_check.py            # tests only (~5-10 min on 2 cores)
    .venv/bin/python tests/mutation_check.py --smoke    # also the smoke golden per mutant
    .venv/bin/python tests/mutation_check.py -k f1      # the mutants whose name contains `f1`

Exit 1 if any mutant survives.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass(frozen=True)
class Mutant:
    """One single-line change and the tests expected to catch it."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "threshold < becomes <=",
        "de3bert/policy.py",
        "return s > k if self.exit_above else s < k",
        "return s > k if self.exit_above else s <= k",
        ("tests/test_policies.py", "tests/test_baselines_extra.py"),
    ),
    Mutant(
        "stateful heads skipped below the first exit layer",
        "de3bert/engine.py",
        "first = 1 if start.head_state else min(policy.first_exit_layer(knobs), num_layers)",
        "first = min(policy.first_exit_layer(knobs), num_layers)",
        ("tests/test_policies.py",),
    ),
    Mutant(
        "fixed-layer rule skips its own exit layer",
        "de3bert/indicators.py",
        "return int(knobs.min().clamp(1, self.num_layers))",
        "return int(knobs.min().clamp(1, self.num_layers)) + 1",
        ("tests/test_policies.py",),
    ),
    Mutant(
        "selection min becomes max",
        "de3bert/speedup.py",
        "return int(knob[0]) if reached[0] else None",
        "return int(np.argmax(speedups)) if reached[0] else None",
        ("tests/test_speedup.py",),
    ),
    Mutant(
        "live exit layer off by one",
        "de3bert/engine.py",
        "            exit_layer[gone] = layer\n",
        "            exit_layer[gone] = layer + 1\n",
        ("tests/test_policies.py",),
    ),
    Mutant(
        "replay exit layer off by one",
        "de3bert/policy.py",
        "exit_layer[decide] = layer",
        "exit_layer[decide] = layer - 1",
        ("tests/test_policies.py",),
    ),
    Mutant(
        "head FLOPs dropped",
        "de3bert/flops.py",
        "np.cumsum(lay + hd, axis=0)",
        "np.cumsum(lay, axis=0)",
        ("tests/test_flops.py",),
    ),
    Mutant(
        "r1/r2 swapped in DR",
        "de3bert/de3.py",
        "torch.addcdiv(ONE, r1 - r2,",
        "torch.addcdiv(ONE, r2 - r1,",
        ("tests/test_de3.py",),
    ),
    Mutant(
        "macro instead of binary F1",
        "de3bert/metrics.py",
        "f1_score(y, p, zero_division=0.0)",
        "f1_score(y, p, average='macro', zero_division=0.0)",
        ("tests/test_metrics_exact.py",),
    ),
    Mutant(
        "CoLA header skipped",
        "de3bert/tasks.yaml",
        "metrics: [mcc], has_header: false,",
        "metrics: [mcc], has_header: true,",
        ("tests/test_data.py", "tests/test_data_strict.py"),
    ),
    Mutant(
        "layer speed-up with L-1",
        "de3bert/speedup.py",
        "return num_layers * e.shape[-1] / e.sum(-1)",
        "return (num_layers - 1) * e.shape[-1] / e.sum(-1)",
        ("tests/test_speedup.py",),
    ),
    Mutant(
        "PABEE patience > instead of >=",
        "baselines/pabee.py",
        'return (t > 0) & (state["count"] >= t)',
        'return (t > 0) & (state["count"] > t)',
        ("tests/test_policies.py", "tests/test_baselines_extra.py"),
    ),
    Mutant(
        "entropy not normalised by log C",
        "de3bert/policy.py",
        "(entropy(logits) * (1.0 / math.log(logits.shape[-1])))",
        "(entropy(logits) * 1.0)",
        ("tests/test_policies.py", "tests/test_de3.py"),
    ),
    Mutant(
        "golden speed-up check always passes",
        "benchmarks/regression.py",
        'sp == g["speedup_layers"]),',
        "True),",
        ("tests/test_regression_check.py",),
    ),
    Mutant(
        "near ties tolerate twice the moves they can explain",
        "benchmarks/regression.py",
        "len(r[\"exit_histogram\"]) == L and moved <= ties)",
        "len(r[\"exit_histogram\"]) == L and moved <= 2 * ties)",
        ("tests/test_regression_check.py",),
    ),
    Mutant(
        "near-tie band ten times too wide",
        "de3bert/ties.py",
        "lower = (k - eps).clamp(min=policy.knob.low)",
        "lower = (k - 10 * eps).clamp(min=policy.knob.low)",
        ("tests/test_ties.py",),
    ),
)


def _run(cmd: list[str], timeout: int) -> tuple[bool, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, "timeout"
    return p.returncode == 0, p.stdout + p.stderr


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("FAILED ") or line.startswith("ERROR "):
            return line.split(" ", 1)[1].split(" - ")[0]
    return "(non-zero exit)"


def check(m: Mutant, smoke: bool, smoke_only: bool = False) -> tuple[bool, str]:
    """(killed, by what) for one mutant; the file is always restored. `smoke_only`: the smoke
    golden check alone (does the tolerant check by itself still see the mutant?)."""
    path = REPO / m.path
    original = path.read_text()
    if original.count(m.old) != 1:
        raise SystemExit(f"mutant {m.name!r}: {m.old!r} must occur exactly once in {m.path}")
    path.write_text(original.replace(m.old, m.new))
    try:
        if not smoke_only:
            ok, out = _run([PY, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests], 1200)
            if not ok:
                return True, _first_failure(out)
        if smoke or smoke_only:
            with tempfile.TemporaryDirectory() as tmp:
                ok, _ = _run(
                    [PY, "-m", "benchmarks", "run", "--profile", "smoke", "--out", tmp, "--no-progress"], 1800
                )
                ok, out = (
                    _run(
                        [
                            PY,
                            "-m",
                            "benchmarks",
                            "check-regression",
                            "--golden",
                            "results/golden/smoke.json",
                            "--results",
                            f"{tmp}/results.jsonl",
                        ],
                        300,
                    )
                    if ok
                    else (False, "smoke run failed")
                )
                if not ok:
                    return True, "smoke golden check"
                if smoke_only:  # did the mutant change the results at all, or were they tolerated?
                    ok, _ = _run([PY, "-m", "benchmarks", "check-regression", "--golden",
                                  "results/golden/smoke.json", "--results", f"{tmp}/results.jsonl",
                                  "--exact"], 300)
                    same = "results identical to the golden: the mutant changes no replayed row"
                    return False, f"SURVIVED ({same if ok else 'differences tolerated as near ties'})"
        return False, "SURVIVED"
    finally:
        path.write_text(original)


def main(argv: list[str] | None = None) -> int:
    """Run every (selected) mutant; print a table; exit 1 if any survived."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="also run the smoke golden check per mutant")
    ap.add_argument("--smoke-only", action="store_true",
                    help="only the smoke golden check per mutant (no tests): what the check alone kills")
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    args = ap.parse_args(argv)
    rows = []
    for m in MUTANTS:
        if args.k and args.k not in m.name:
            continue
        killed, by = check(m, args.smoke, args.smoke_only)
        rows.append((m.name, m.path, "killed" if killed else "SURVIVED", by))
        print(f"{m.name:<40} {m.path:<26} {rows[-1][2]:<8} {by}", flush=True)
    survived = [r for r in rows if r[2] != "killed"]
    print(f"{len(rows) - len(survived)}/{len(rows)} mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
