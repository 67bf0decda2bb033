"""A full disk loses nothing (issue 27), two ways, on the smoke profile:

- `--tmpfs` (a real full disk; needs permission to mount): the run writes into a size-limited
  tmpfs that fills up mid-run, at sizes spread over what the run writes in all; then the tmpfs is
  grown (space freed) and the same command resumes;
- injection (anywhere): ENOSPC at the N-th atomic write (every write site of the suite ends in one
  `os.replace`), for N spread over the whole run.

Each fault must end the run with one line naming the path (exit 1), leave only files that read
back (results lines, JSON, records and models against their checksums), and the resumed run must
give the rows of an uninterrupted run. Not in the default test run; `.ci/run` runs it.

    .venv/bin/python tests/full_disk.py [--tmpfs] [--faults 8] [--seed 0] [--work DIR]
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


def check_fault(proc: subprocess.CompletedProcess, run: Path, what: str) -> bool:
    """One fault's outcome: exit 1 with the one-line disk-full error, every file valid."""
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    bad = invalid_files(run)
    good = proc.returncode == 1 and last.startswith("error: disk full while writing ") and not bad
    print(f"{what}: exit {proc.returncode}, {last[:160]!r}, {len(bad)} invalid file(s)"
          f"{'' if good else ' — FAILED'}", flush=True)
    for b in bad[:5]:
        print(f"  invalid: {b}")
    return good


def tmpfs_faults(work: Path, env: dict, faults: int) -> tuple[int, int] | None:
    """Real full disks: the run's folder on a tmpfs of 1/(faults+1) ... faults/(faults+1) of the
    reference run's size, grown to twice that size after each fault (space freed) and resumed.
    None when this machine does not allow mounting one."""
    need = sum(p.stat().st_size for p in (work / "reference").rglob("*") if p.is_file())
    mnt = work / "tmpfs"
    mnt.mkdir(parents=True, exist_ok=True)
    ok = 0
    for k in range(1, faults + 1):
        size = max(need * k // (faults + 1), 1 << 20)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True).returncode != 0:
            return None
        try:
            run = mnt / "run"
            proc = subprocess.run(command(run), env=env, capture_output=True, text=True)
            what = f"tmpfs of {size / 1e6:.1f} MB of the {need / 1e6:.1f} MB the run writes"
            ok += check_fault(proc, run, what)
            subprocess.run(["mount", "-o", f"remount,size={2 * need}", str(mnt)], check=True)
            subprocess.run(command(run), check=True, env=env, stdout=subprocess.DEVNULL)
            equal, total = rows_equal(work / "reference", run)
            print(f"  resumed with space freed: {equal}/{total} rows equal to an uninterrupted run")
            ok -= equal != total
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    return ok, faults


def rows_equal(ref: Path, run: Path) -> tuple[int, int]:
    """(rows equal to the reference's, reference rows); 0 equal when the row keys differ."""
    a, b = rows(ref / "results.jsonl"), rows(run / "results.jsonl")
    return (sum(b.get(k) == v for k, v in a.items()) if set(a) == set(b) else 0), len(a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="")
    ap.add_argument("--tmpfs", action="store_true", help="real full disks on a size-limited tmpfs")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.child:
        return child(args.child, rest)
    work = Path(args.work or tempfile.mkdtemp(prefix="full-disk-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    writes = count_writes(work / "reference", env)
    if args.tmpfs:
        got = tmpfs_faults(work, env, args.faults)
        if got is None:
            print("tmpfs: this machine does not allow mounting one (needs root or CAP_SYS_ADMIN); skipped")
            return 0
        print(f"{got[0]}/{got[1]} real full disks ended cleanly and resumed to equal rows")
        return 0 if got[0] == got[1] else 1
    points = sorted(random.Random(args.seed).sample(range(1, writes + 1), args.faults))
    run, ok, prev = work / "full", 0, 0
    for at in points:
        # each attempt resumes the same folder: it writes profile.json, redoes the write that
        # failed last time, then goes on; so the fault that the uninterrupted run would meet at
        # write `at` is this attempt's write `at - prev + 2`
        nth = at if prev == 0 else at - prev + 2
        prev = at
        proc = subprocess.run([sys.executable, __file__, "--child", str(nth), *command(run)[1:]], env=env,
                              capture_output=True, text=True)
        ok += check_fault(proc, run, f"ENOSPC at write {at}/{writes} (this attempt's write {nth})")
    subprocess.run(command(run), check=True, env=env, stdout=subprocess.DEVNULL)
    equal, total = rows_equal(work / "reference", run)
    print(f"{ok}/{len(points)} faults ended cleanly; after resuming, {equal}/{total} rows equal "
          "to an uninterrupted run")
    return 0 if ok == len(points) and equal == total else 1


if __name__ == "__main__":
    sys.exit(main())
