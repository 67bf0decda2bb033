"""A full disk loses nothing (issue 27): inject ENOSPC at the N-th atomic write of the smoke
profile (every write site of the suite ends in one `os.replace`), for N spread over the whole run,
then check the run stopped with one line naming the path, left only valid files, and completes on
resume with the rows of an uninterrupted run. Not in the default test run; `.ci/run` runs it.

    .venv/bin/python tests/full_disk.py [--faults 8] [--seed 0] [--work DIR]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kill_anywhere import REPO, command, rows  # noqa: E402


def child(at: int, argv: list[str]) -> int:
    """Run the CLI with `os.replace` failing with ENOSPC at its `at`-th call (the disk fills up)."""
    real, calls = os.replace, [0]

    def replace(src, dst, *a, **k):
        calls[0] += 1
        if calls[0] == at:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **k)

    os.replace = replace
    from benchmarks.cli import main

    return main(argv)


def invalid_files(out: Path) -> list[str]:
    """Files of the run that do not read back: JSON, results lines, records, model weights."""
    from de3bert.record import CorruptRecord, load_record
    from de3bert.weights import CorruptModel, verify_weights

    bad = []
    for path in out.rglob("*"):
        try:
            if path.suffix == ".json" or path.name.endswith(".sha256"):
                json.loads(path.read_text())
            elif path.name == "results.jsonl":
                [json.loads(line) for line in path.read_text().splitlines()]
            elif path.suffix == ".safetensors" and "records" in path.parts:
                load_record(path)
            elif path.name == "model.safetensors":
                verify_weights(path)
        except (ValueError, CorruptRecord, CorruptModel, FileNotFoundError) as err:
            bad.append(f"{path}: {err}")
    return bad


def count_writes(out: Path, env: dict) -> int:
    """Atomic writes of one uninterrupted smoke run (the range fault points are drawn from)."""
    code = ("import os, sys, runpy; n = [0]; r = os.replace\n"
            "def f(*a, **k):\n    n[0] += 1; return r(*a, **k)\n"
            "os.replace = f\nfrom benchmarks.cli import main\nmain(sys.argv[1:])\n"
            "print('WRITES', n[0])")
    done = subprocess.run([sys.executable, "-c", code, *command(out)[1:]], env=env, capture_output=True,
                          text=True, check=True)
    return int(done.stdout.split("WRITES")[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.child:
        return child(args.child, rest)
    work = Path(args.work or tempfile.mkdtemp(prefix="full-disk-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    writes = count_writes(work / "reference", env)
    points = sorted(random.Random(args.seed).sample(range(1, writes + 1), args.faults))
    run, ok = work / "full", 0
    for at in points:
        proc = subprocess.run([sys.executable, __file__, "--child", str(at), *command(run)[1:]], env=env,
                              capture_output=True, text=True)
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        bad = invalid_files(run)
        good = proc.returncode == 1 and last.startswith("error: disk full while writing ") and not bad
        ok += good
        print(f"ENOSPC at write {at}/{writes}: exit {proc.returncode}, {last[:150]!r}, "
              f"{len(bad)} invalid file(s){'' if good else ' — FAILED'}", flush=True)
        for b in bad[:5]:
            print(f"  invalid: {b}")
    subprocess.run(command(run), check=True, env=env, stdout=subprocess.DEVNULL)
    ref, got = rows(work / "reference" / "results.jsonl"), rows(run / "results.jsonl")
    equal = sum(got.get(k) == v for k, v in ref.items()) if set(got) == set(ref) else 0
    print(f"{ok}/{len(points)} faults ended cleanly; after resuming, {equal}/{len(ref)} rows equal "
          "to an uninterrupted run")
    return 0 if ok == len(points) and equal == len(ref) else 1


if __name__ == "__main__":
    sys.exit(main())
