"""Kill-anywhere equivalence (issue 27): SIGKILL the smoke profile at seeded points in every phase
(training, recording, the FLOPs and timing-model caches, replay with live timing, report writing),
resume each time, and compare the final results.jsonl with an uninterrupted run's in every field
but timing and provenance. Not in the default test run (minutes); `.ci/run` runs it.

    .venv/bin/python tests/kill_anywhere.py --kills 20 [--seed 0] [--work DIR]

Where the kills land: the uninterrupted reference run leaves a timeline of files (each trained
model, record, cache, exits file and report file, by modification time). Each kill targets one
of those files, drawn stratified by phase (the same number per phase, seeded); the resumed run is
watched, and once every file before the target exists (so the run is now working on the target),
it is killed at a seeded fraction of the time the reference spent on that file. Each kill prints
its phase and file, so the spread is visible. Prints N/N rows equal and exits 1 on any difference.
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: fields that record when, where and how fast, not what was computed
VOLATILE = {"date", "git_commit", "host", "versions", "cpu", "wallclock", "wallclock_b32",
            "speedup_wallclock", "speedup_wallclock_b32", "speedup_wallclock_model", "train_seconds",
            "data_dir", "out_dir", "first_stage_dir"}
PHASES = ("training", "recording", "caches", "replay+timing", "report")


@dataclass(frozen=True)
class Event:
    """A file of the reference run: when it was finished and how long the run worked on it."""

    path: str
    phase: str
    done_at: float
    window: float


def command(out: Path) -> list[str]:
    """The smoke profile into `out`, quiet."""
    exe = str(REPO / ".venv" / "bin" / "de3bert")
    return [exe, "run", "--profile", "smoke", "--out", str(out), "--no-progress"]


def phase_of(rel: str) -> str | None:
    """Which phase writes this run file (None: a file that marks no phase, like a lock)."""
    if rel.startswith("models/") and rel.endswith("final/model.safetensors"):
        return "training"
    if rel.startswith("records/") and rel.endswith(".safetensors"):
        return "recording"
    if rel.startswith("models/") and rel.endswith(("flops.json", "times.json")):
        return "caches"
    if rel.startswith("exits/"):
        return "replay+timing"
    if rel.startswith(("tables/", "plots/")) and not rel.endswith(".tmp"):
        return "report"
    return None


def timeline(ref: Path, started: float) -> list[Event]:
    """The reference run's files in the order it finished them, each with its working window."""
    found = sorted((p.stat().st_mtime, str(p.relative_to(ref))) for p in ref.rglob("*") if p.is_file())
    events, last = [], started
    for mtime, rel in found:
        phase = phase_of(rel)
        if phase:
            events.append(Event(rel, phase, mtime, max(mtime - last, 0.0)))
            last = mtime
    return events


def targets(events: list[Event], kills: int, rng: random.Random) -> list[Event]:
    """`kills` files to kill on, the same number per phase (as far as each phase has files),
    in the reference's order (a resumed run only moves forward)."""
    per_phase = {p: [e for e in events if e.phase == p and e.window > 0.05] for p in PHASES}
    present = [p for p in PHASES if per_phase[p]]
    chosen: list[Event] = []
    for i in range(kills):
        pool = [e for e in per_phase[present[i % len(present)]] if e not in chosen]
        if pool:
            chosen.append(rng.choice(pool))
    return sorted(chosen, key=lambda e: e.done_at)


def started_work(out: Path, launched: float) -> bool:
    """Whether this attempt is past its start-up (imports, planning): the runner rewrites
    profile.json when it starts working."""
    profile = out / "profile.json"
    return profile.is_file() and profile.stat().st_mtime >= launched - 0.01


def kill_during(out: Path, events: list[Event], target: Event, fraction: float, env: dict) -> str:
    """Resume the run; once every file before `target` exists, wait `fraction` of its window and
    SIGKILL the run's process group. What happened, in words."""
    before = [e.path for e in events if e.done_at < target.done_at]
    launched = time.time()
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    while proc.poll() is None and not (started_work(out, launched)
                                       and all((out / p).is_file() for p in before)):
        time.sleep(0.02)
    if proc.poll() is None:
        time.sleep(fraction * target.window)
    if proc.poll() is not None:
        return "finished before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = "already written" if (out / target.path).is_file() else "not yet written"
    return f"killed in {target.phase}: {target.path} ({state})"


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


def compare(ref: Path, got: Path) -> tuple[int, int, list[str]]:
    """(rows equal, reference rows, lines describing each difference)."""
    a, b = rows(ref / "results.jsonl"), rows(got / "results.jsonl")
    equal = sum(b.get(k) == v for k, v in a.items())
    notes = []
    for k in [k for k, v in a.items() if b.get(k) != v][:10] + sorted(set(b) - set(a))[:10]:
        x, y = a.get(k, {}), b.get(k, {})
        notes.append(f"  differs: {k}: {sorted(f for f in set(x) | set(y) if x.get(f) != y.get(f))}")
    return equal, len(a), notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="kill-anywhere-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.time()
    subprocess.run(command(work / "reference"), check=True, env=env, stdout=subprocess.DEVNULL)
    events = timeline(work / "reference", started)
    rng = random.Random(args.seed)
    killed, landed = work / "killed", {p: 0 for p in PHASES}
    for i, target in enumerate(targets(events, args.kills, rng)):
        what = kill_during(killed, events, target, rng.random(), env)
        landed[target.phase] += what.startswith("killed")
        print(f"kill {i + 1}/{args.kills}: {what}", flush=True)
    subprocess.run(command(killed), check=True, env=env, stdout=subprocess.DEVNULL)
    equal, total, notes = compare(work / "reference", killed)
    spread = ", ".join(f"{p} {n}" for p, n in landed.items())
    print(f"{sum(landed.values())}/{args.kills} kills landed ({spread}); {equal}/{total} rows equal "
          f"after them (reference run {events[-1].done_at - started:.0f} s)", *notes, sep="\n")
    return 0 if equal == total and not notes and sum(landed.values()) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
