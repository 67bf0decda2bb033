"""Kill-anywhere equivalence (issue 27): SIGKILL the smoke profile at seeded random points, resume
each time, and compare the final results.jsonl with an uninterrupted run's in every field but
timing and provenance. Not in the default test run (minutes); `.ci/run` runs it.

    .venv/bin/python tests/kill_anywhere.py --kills 20 [--seed 0] [--work DIR]

The kill points are drawn uniformly over the uninterrupted run's measured duration, so they fall
in training, recording, replay, timing and report writing alike; each kill's phase is read from
the last line the run printed. Prints N/N equal and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: fields that record when, where and how fast, not what was computed
VOLATILE = {"date", "git_commit", "host", "versions", "cpu", "wallclock", "wallclock_b32",
            "speedup_wallclock", "speedup_wallclock_b32", "speedup_wallclock_model", "train_seconds",
            "data_dir", "out_dir", "first_stage_dir"}


def command(out: Path) -> list[str]:
    """The smoke profile into `out`, quiet."""
    exe = str(REPO / ".venv" / "bin" / "de3bert")
    return [exe, "run", "--profile", "smoke", "--out", str(out), "--no-progress"]


def stable(value):
    """`value` without its volatile fields, recursively (what must be equal after any kill)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def rows(path: Path) -> dict[str, dict]:
    """results.jsonl keyed by (task, method, seed, knob)."""
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[f"{r['task']}/{r['method']}/s{r['seed']}/{r['knob']['value']}"] = stable(r)
    return out


def run_and_kill(out: Path, delay: float, env: dict) -> str:
    """Start the run, SIGKILL it (its whole process group) after `delay` s; the phase it was in."""
    log = out.parent / "kill.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(command(out), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=delay)
            return "finished before the kill"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return lines[-1][:100] if lines else "(start-up)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="kill-anywhere-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run(command(work / "reference"), check=True, env=env, stdout=subprocess.DEVNULL)
    duration = time.perf_counter() - t0
    # kill points spread over the run's own work: sorted uniform points in [0, duration], each
    # attempt runs the gap to the next point plus the start-up it repeats (imports, planning)
    t0 = time.perf_counter()
    subprocess.run(command(work / "reference")[:2] + ["--profile", "smoke", "--dry-run", "--out",
                   str(work / "startup")], env=env, stdout=subprocess.DEVNULL, check=True)
    startup = time.perf_counter() - t0
    rng = random.Random(args.seed)
    points = sorted(rng.uniform(0, duration) for _ in range(args.kills))
    killed, landed, last = work / "killed", 0, 0.0
    for i, point in enumerate(points):
        delay, last = startup + point - last, point
        phase = run_and_kill(killed, delay, env)
        landed += phase != "finished before the kill"
        print(f"kill {i + 1}/{args.kills} at {point:.1f} s of work (attempt ran {delay:.1f} s): {phase}",
              flush=True)
    subprocess.run(command(killed), check=True, env=env, stdout=subprocess.DEVNULL)
    ref, got = rows(work / "reference" / "results.jsonl"), rows(killed / "results.jsonl")
    equal = sum(got.get(k) == v for k, v in ref.items())
    extra = sorted(set(got) - set(ref))
    print(f"{landed}/{args.kills} kills landed before the run's end; "
          f"{equal}/{len(ref)} rows equal after them (reference run {duration:.0f} s); "
          f"{len(extra)} rows not in the reference")
    for k in [k for k, v in ref.items() if got.get(k) != v][:10] + extra[:10]:
        a, b = ref.get(k, {}), got.get(k, {})
        diff = {f for f in set(a) | set(b) if a.get(f) != b.get(f)}
        print(f"  differs: {k}: {sorted(diff)}")
    return 0 if equal == len(ref) and not extra and landed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
