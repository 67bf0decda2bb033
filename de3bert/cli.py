"""`de3bert list | train | eval | predict | run | report | check-regression | export`.

Flags of `train`/`eval` are generated from the `TrainConfig` dataclass (names, types, defaults
and the one-line docstring of each field), so the CLI and the config cannot drift apart.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import sys
import textwrap

from .train import TrainConfig


def field_docs(cls) -> dict[str, str]:
    """The string literal under each dataclass field (PEP 257 attribute docstrings)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, docs = tree.body[0].body, {}
    for a, b in zip(body, body[1:], strict=False):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = str(b.value.value)
    return docs


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=docs.get(f.name, ""))
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default, help=docs.get(f.name, ""))


def config_from(args, cls):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def cmd_list(args) -> int:
    from .registry import all_methods

    for name, m in all_methods().items():
        print(f"{name}\t{m.recipe}\t{m.policy.knob.name}\t{m.description}" if args.verbose else name)
    return 0


def cmd_train(args) -> int:
    from .registry import get_method

    cfg = config_from(args, TrainConfig)
    if args.method:
        cfg.recipe = get_method(args.method).recipe
    model = __import__("de3bert.train", fromlist=["train"]).train(cfg)
    print(f"trained {cfg.task} with recipe {cfg.recipe} → {cfg.out_dir}/final "
          f"({model.meta.get('train_seconds', 0):.0f} s)")
    return 0


def cmd_eval(args) -> int:
    """Train (or reuse) the method's model, record the dev set, replay the knob grid, print a table."""
    import torch

    from .backbone import load_tokenizer
    from .data import EncodedDataset, get_task, load_examples, make_loader
    from .engine import record_signals, replay_predictions, run_live
    from .metrics import glue_metrics
    from .registry import get_method
    from .train import train

    cfg = config_from(args, TrainConfig)
    method = get_method(args.method)
    task = get_task(cfg.task)
    ok, why = method.supports(task.num_labels)
    if not ok:
        raise ValueError(f"method {method.name} cannot run {task.name}: {why}")
    # bad knob values and missing dev data fail here, before any training
    if args.knob:
        method.policy.knob.validate(args.knob)
    if args.live is not None:
        method.policy.knob.validate([args.live])
    dev_examples = load_examples(task, "dev", cfg.data_dir or None)
    cfg.recipe = method.recipe
    model = train(cfg)
    tok = load_tokenizer(cfg.backbone)
    ds = EncodedDataset(dev_examples, tok, cfg.max_seq_length, task.is_regression)
    loader = make_loader(ds, 64, shuffle=False, pad_token_id=tok.pad_token_id or 0)
    rec = record_signals(model, loader)
    policy = method.make_policy(task.num_labels, model.num_layers)
    grid = [float(v) for v in args.knob] if args.knob else policy.grid()
    exits = policy.replay(rec, grid)
    preds = replay_predictions(rec, exits)
    L = model.num_layers
    print(f"{method.name} on {task.name} ({len(ds)} dev samples, {L} layers)")
    print(f"{policy.knob.name:>10}  {task.headline_metric:>8}  speedup_layers  mean_exit")
    for k, v in enumerate(grid):
        m = glue_metrics(task.metrics, preds[k], rec["labels"])
        print(f"{v:>10.4g}  {m[task.headline_metric]:>8.2f}  {L * len(ds) / exits[k].sum().item():>14.3f}"
              f"  {exits[k].float().mean().item():>9.3f}")
    if args.live is not None:
        loader = make_loader(ds, 32, False, pad_token_id=tok.pad_token_id or 0)
        live = run_live(model, policy, args.live, loader)
        rep = policy.replay(rec, [args.live])[0]
        agree = bool(torch.equal(live.exit_layers, rep))
        print(f"live run at {policy.knob.name}={args.live}: speedup_layers "
              f"{L * len(ds) / live.exit_layers.sum().item():.3f}, replay agrees: {agree}")
    return 0


def cmd_predict(args) -> int:
    """Label raw texts (arguments, --file or stdin) with a saved folder; JSON Lines on stdout."""
    from .predict import load_predictor, write_jsonl

    if args.texts and args.file:
        raise ValueError("give texts as arguments or --file, not both")
    if args.file and not os.path.isfile(args.file):
        raise FileNotFoundError(f"input file {args.file} does not exist")
    predictor = load_predictor(args.model, target=args.target, knob=args.knob, method=args.method,
                               max_length=args.max_length)
    if args.texts:
        lines = list(args.texts)
    elif args.file:
        with open(args.file, encoding="utf-8") as fh:
            lines = [line for line in fh.read().splitlines() if line.strip()]
    else:
        lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    rows = predictor.predict(lines, batch_size=args.batch_size,
                             progress=bool(args.file) and not args.no_progress)
    write_jsonl(rows, sys.stdout)
    return 0


def cmd_run(args) -> int:
    from benchmarks.profiles import Profile
    from benchmarks.report import write_reports
    from benchmarks.runner import Runner

    profile = Profile.load(args.profile)
    out = args.out or f"results/{profile.name}"
    runner = Runner(profile, out, data_dir=args.data_dir, progress=not args.no_progress)
    plan = runner.plan()
    if args.dry_run:
        for s in plan:
            what = s.get("recipe") if s["kind"] == "train" else s["method"]
            note = f"  (skip: {s['skip']})" if s["skip"] else ""
            print(f"{s['kind']:<7} {s['task']:<10} seed {s['seed']:<4} {what}{note}")
        n_train = sum(s["kind"] == "train" for s in plan)
        n_rep = sum(s["kind"] == "replay" and not s["skip"] for s in plan)
        print(f"{n_train} training runs, {n_rep} replay groups; estimated "
              f"{runner.estimate_seconds(plan) / 60:.0f} min on this machine's profile")
        return 0
    runner.run()
    paths = write_reports(out, plots_dir=args.plots_dir)
    print("\n".join(["", f"results: {out}/results.jsonl", *[f"report:  {p}" for p in paths]]))
    return 0


def cmd_report(args) -> int:
    from benchmarks.report import write_reports

    for p in write_reports(args.out, plots_dir=args.plots_dir):
        print(p)
    return 0


def cmd_check(args) -> int:
    from benchmarks.regression import check_benchmarks, check_regression

    if bool(args.results) == bool(args.benchmark_json):
        raise ValueError("give exactly one of --results (a run's results.jsonl) or --benchmark-json")
    if args.benchmark_json:
        return check_benchmarks(args.golden, args.benchmark_json, update=args.update,
                                allow_missing=args.allow_missing)
    return check_regression(args.golden, args.results, update=args.update, verbose=args.verbose)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="de3bert", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="print every registered method, one per line")
    p.add_argument("-v", "--verbose", action="store_true", help="also show recipe, knob and description")
    p.set_defaults(fn=cmd_list)
    for name, fn, hlp in (("train", cmd_train, "train one multi-exit model"),
                          ("eval", cmd_eval, "train or reuse, then sweep a method's knob on the dev set")):
        p = sub.add_parser(name, help=hlp)
        add_dataclass_flags(p, TrainConfig)
        p.add_argument("--method", required=(name == "eval"), default="",
                       help="registered method (sets the recipe); see `de3bert list`")
        if name == "eval":
            p.add_argument("--knob", nargs="*", type=float, help="knob values (default: the policy's grid)")
            p.add_argument("--live", type=float, default=None,
                           help="also run live layer-by-layer at this knob and compare with replay")
        p.set_defaults(fn=fn)
    p = sub.add_parser("predict", help="label raw texts with a saved model folder (JSON Lines out)")
    p.add_argument("texts", nargs="*", help="texts to label (pair tasks: the two texts tab-separated)")
    p.add_argument("--model", required=True, help="folder written by save_pretrained / export, or a Hub id")
    p.add_argument("--file", default="", help="one input per line (default: the arguments, else stdin)")
    p.add_argument("--target", type=float, default=None, help="target speed-up (default: the saved one)")
    p.add_argument("--knob", type=float, default=None, help="knob value instead of a target's")
    p.add_argument("--method", default=None, help="another method on the same recipe (needs --knob)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per batch (exited ones leave it)")
    p.add_argument("--max-length", type=int, default=None, help="tokens kept (default: the training length)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on --file")
    p.set_defaults(fn=cmd_predict)
    p = sub.add_parser("run", help="run a benchmark profile (smoke, default, paper or a YAML path)")
    p.add_argument("--profile", default="default")
    p.add_argument("--out", default="", help="output directory (default: results/<profile>)")
    p.add_argument("--data-dir", default=None, help="local glue_data/ (default: $GLUE_DIR, else the Hub)")
    p.add_argument("--plots-dir", default=None, help="where plots go (default: <out>/plots)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and an estimate, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("report", help="(re)write tables and plots from <out>/results.jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--plots-dir", default=None)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("check-regression", help="compare results with a golden file; non-zero on regression")
    p.add_argument("--golden", required=True)
    p.add_argument("--results", default="", help="results.jsonl of the run to check (e.g. the smoke profile)")
    p.add_argument("--benchmark-json", nargs="+", default=[],
                   help="pytest-benchmark JSON to check against ratio bounds (see README); with "
                        "--update, one or more runs: bounds from the worst of them")
    p.add_argument("--update", action="store_true", help="refresh the golden file from these results")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --benchmark-json: skip bounded ratios the run lacks (a -k subset)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every check, not only failures")
    p.set_defaults(fn=cmd_check)
    from benchmarks.artefacts import add_export_parser  # lazy, as cmd_run: stdlib-only at import

    add_export_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (KeyError, ValueError, FileNotFoundError, ConnectionError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())



