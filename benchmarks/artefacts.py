"""`de3bert export`: a benchmark run's trained model → a Hugging Face-style folder (+ a program).

Reads the run's `results.jsonl` (the method's rows whose `operating_point` lists the targets), the
trained model under `models/<task>/<recipe>-s<seed>/final` and, when present, the dev record under
`records/<task>/<recipe>-s<seed>.safetensors` (for the card's per-layer metrics). Every input is
checked before anything is loaded or written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .layout import RunLayout
from .results import FULL, read_rows


def _rows(run: Path) -> list[dict]:
    """The complete rows of a run; a clear error when the run folder or its results are missing."""
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist (a `de3bert run --out` directory)")
    layout = RunLayout.for_run("", run)
    if not layout.results.is_file():
        raise FileNotFoundError(f"{layout.results} does not exist: {run} is not a finished benchmark run")
    return read_rows(layout.results)


def _pick_seed(rows: list[dict], task: str, method: str, seed: int | None) -> int:
    """The requested seed, or the run's only (else smallest) seed for this task and method."""
    seeds = sorted({r["seed"] for r in rows if r["task"] == task and r["method"] == method})
    if not seeds:
        methods = sorted({r["method"] for r in rows if r["task"] == task and r["method"] != FULL})
        tasks = sorted({r["task"] for r in rows})
        raise ValueError(f"the run has no rows for {method} on {task}; methods on {task}: "
                         f"{', '.join(methods) or 'none'}; tasks: {', '.join(tasks)}")
    if seed is None:
        return seeds[0]
    if seed not in seeds:
        raise ValueError(f"seed {seed} not in the run for {method} on {task}; valid seeds: {seeds}")
    return seed


def operating_points(rows: list[dict]) -> list[dict]:
    """One dict per target speed-up (sorted): the knob and the dev figures of its row."""
    points = []
    for r in rows:
        for target in r.get("operating_point") or []:
            points.append({"target": float(target), "knob": r["knob"]["value"], "metric": r["metric"],
                           "speedup_layers": r["speedup_layers"], "speedup_flops": r.get("speedup_flops"),
                           "speedup_wallclock": r.get("speedup_wallclock"),
                           "mean_exit_layer": r.get("mean_exit_layer"), "n_samples": r.get("n_samples")})
    return sorted(points, key=lambda p: p["target"])


def resolve_export(run_dir: str | Path, task: str, method: str, target: float,
                   seed: int | None = None) -> dict:
    """Validate every input and locate the files; raises naming the valid values."""
    from de3bert.data import get_task
    from de3bert.registry import get_method

    run = Path(run_dir)
    spec, m = get_task(task), get_method(method)
    if m.report_only:
        raise ValueError(f"method {method!r} is report-only (it reads gold labels) and cannot be exported")
    rows = _rows(run)
    seed = _pick_seed(rows, spec.name, m.name, seed)
    mine = [r for r in rows if r["task"] == spec.name and r["method"] == m.name and r["seed"] == seed]
    points = operating_points(mine)
    if not any(abs(p["target"] - float(target)) < 1e-9 for p in points):
        valid = ", ".join(f"{p['target']:g}" for p in points) or "none"
        raise ValueError(f"target {float(target):g} has no operating point for {m.name} on {spec.name} "
                         f"(seed {seed}); valid targets: {valid}")
    layout = RunLayout.for_run("", run)
    model_dir = layout.model_dir(spec.name, m.recipe, seed) / "final"
    if not (model_dir / "multiexit.json").is_file():
        raise FileNotFoundError(f"trained model {model_dir} is missing (recipe {m.recipe}, seed {seed})")
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"the weights of {model_dir} were deleted after evaluation (profile "
                                f"keep_models: none); rerun the profile with keep_models: all (it retrains "
                                f"{m.recipe} on {spec.name} seed {seed}) to export it")
    full = [r for r in rows if r["task"] == spec.name and r["method"] == FULL and r["seed"] == seed]
    return {"task": spec.name, "method": m.name, "recipe": m.recipe, "seed": seed, "points": points,
            "model_dir": model_dir, "full_metric": full[0]["metric"] if full else None,
            "record": layout.record(spec.name, m.recipe, seed)}


def export_from_run(run_dir: str | Path, task: str, method: str, target: float, out: str | Path,
                    seed: int | None = None, program: bool = False, onnx: bool = False) -> Path:
    """Write `out` (config.json, weights, tokenizer, card); optionally `program.pt2` / `model.onnx`."""
    from de3bert.hub import per_layer_metrics
    from de3bert.model import MultiExitModel
    from de3bert.record import CorruptRecord, load_record

    where = resolve_export(run_dir, task, method, target, seed)
    if onnx:
        from de3bert.export import onnx_available

        if not onnx_available():
            raise FileNotFoundError('--onnx needs onnx and onnxscript: pip install -e ".[export]"')
    model = MultiExitModel.load(where["model_dir"])
    card: dict = {"full_model": where["full_metric"]}
    try:
        record = load_record(where["record"])
        card |= {"per_layer": per_layer_metrics(record, where["task"]),
                 "n_dev": int(record["labels"].numel())}
    except (FileNotFoundError, CorruptRecord):
        pass  # the card then lacks per-layer metrics; the trade-off table comes from results.jsonl
    out = model.save_pretrained(out, method=where["method"], operating_points=where["points"],
                                target=float(target), task=where["task"], card=card)
    if program or onnx:
        _write_programs(out, float(target), program, onnx)
    return Path(out)


def _write_programs(folder: Path, target: float, program: bool, onnx: bool) -> None:
    """The batch-1 exported program (and ONNX) at `target`, next to the weights."""
    from transformers import AutoTokenizer

    from de3bert.export import export_onnx, export_program, save_program
    from de3bert.hub import from_pretrained, load_policy

    model = from_pretrained(folder)
    policy, knob = load_policy(folder, target=target)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if program:
        save_program(export_program(model, policy, knob, tok), folder / "program.pt2")
    if onnx:
        export_onnx(model, policy, knob, tok, folder / "model.onnx")


def cmd_export(args: argparse.Namespace) -> int:
    """CLI entry: export, then print where the folder went."""
    out = export_from_run(args.run, args.task, args.method, args.target, args.out, seed=args.seed,
                          program=args.program, onnx=args.onnx)
    print(f"exported {args.method} on {args.task} at {args.target:g}× → {out}")
    for name in sorted(p.name for p in out.iterdir()):
        print(f"  {name}")
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Register `export` on a CLI's subparsers (the de3bert CLI now, a benchmarks CLI later)."""
    p = subparsers.add_parser("export", help="a benchmark run's model → a Hugging Face-style folder")
    p.add_argument("--run", required=True, help="benchmark run folder (results.jsonl, models/, records/)")
    p.add_argument("--task", required=True, help="task of the run (e.g. mrpc)")
    p.add_argument("--method", required=True, help="registered method (`de3bert list`)")
    p.add_argument("--target", type=float, required=True, help="target layer speed-up (an operating point)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=None, help="seed of the run (default: its only/smallest)")
    p.add_argument("--program", action="store_true", help="also write program.pt2 (batch-1 torch.export)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs the `export` extra)")
    p.set_defaults(fn=cmd_export)
    return p
