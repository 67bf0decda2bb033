"""`python -m benchmarks.gpu_check`: run the `gpu-check` profile and write one JSON with each
method's layer and wall-clock speed-ups at 2× (batch 1, and batch 32 with shrinking) and whether
the GPU goals hold: wall-clock ÷ layer speed-up ≥ 0.90 at batch 1 and ≥ 0.85 at batch 32.

`--device cpu --backbone tiny-random` runs the same path on a CPU (the test suite does), so the
script is known to work before it meets its first GPU; CUDA timing itself (events read after a
synchronise) is tested with faked events in tests/test_timing.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from de3bert.precision import resolve_precision

from .layout import RunLayout
from .profiles import Profile
from .results import read_rows
from .runner import Runner, versions

GOALS = {"batch_1": 0.90, "batch_32": 0.85}  # wall-clock / layer speed-up at 2×, per method


def summary(results: Path, profile: Profile, device: str) -> dict:
    """One record of the check: the device, precision, and per method its 2× point's speed-ups."""
    methods = {}
    for r in read_rows(results):
        if 2.0 not in (r.get("operating_point") or []) or not r.get("speedup_wallclock"):
            continue
        layers = r["speedup_layers"]
        ratios = {"batch_1": r["speedup_wallclock"] / layers, "batch_32": r["speedup_wallclock_b32"] / layers}
        methods[r["method"]] = {"knob": r["knob"], "speedup_layers": layers,
                                "speedup_wallclock_b1": r["speedup_wallclock"],
                                "speedup_wallclock_b32": r["speedup_wallclock_b32"],
                                "ratio": ratios, "goal_met": {k: v >= GOALS[k] for k, v in ratios.items()},
                                "live_agrees": r.get("live_agrees")}
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return {"device": name, "backbone": profile.backbone, "threads": profile.threads,
            "precision": resolve_precision(profile.train.get("precision", "auto"), device, warn=False),
            "goals": GOALS, "methods": methods, "versions": versions()}


def main(argv: list[str] | None = None) -> int:
    """Run the check into `--out` and write `<out>/gpu_check.json`; exit 1 if a goal is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/gpu_check",
                    help="run folder (its gpu_check.json is the result)")
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the path)")
    ap.add_argument("--backbone", default=None, help="override the profile's (tiny-random for a CPU run)")
    ap.add_argument("--epochs", type=float, default=None, help="override the profile's 8 epochs (200 steps)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; use --device cpu to exercise the path on a CPU", file=sys.stderr)
        return 2
    profile = Profile.load("gpu-check")
    train = {**profile.train, **({"epochs": args.epochs} if args.epochs else {})}
    profile = dataclasses.replace(profile, device=args.device, train=train,
                                  backbone=args.backbone or profile.backbone,
                                  threads=profile.threads if args.device.startswith("cuda") else 1)
    layout = RunLayout.for_run(profile.name, args.out)
    Runner(profile, layout, progress=False).run()
    report = summary(layout.results, profile, args.device)
    path = Path(args.out) / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2))
    for name, m in report["methods"].items():
        r = m["ratio"]
        print(f"{name:<12} layers {m['speedup_layers']:.2f}×  wall b1 {m['speedup_wallclock_b1']:.2f}× "
              f"({r['batch_1']:.2f})  b32 {m['speedup_wallclock_b32']:.2f}× ({r['batch_32']:.2f})")
    print(f"{path}: device {report['device']}, precision {report['precision']}")
    return 0 if all(all(m["goal_met"].values()) for m in report["methods"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
