"""The library's commands: `de3bert list | train | eval | predict | serve` (the console entry,
`benchmarks.cli`, adds `run | report | check-regression | export`; `python -m de3bert` has these alone).

Flags of `train`/`eval` are generated from the `TrainConfig` dataclass (names, types, defaults
and the one-line docstring of each field), so the CLI and the config cannot drift apart.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import inspect
import os
import shlex
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
    """One flag per dataclass field, with its type, default and docstring as help."""
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
    """The dataclass `cls` built from parsed flags (the inverse of `add_dataclass_flags`)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def cmd_list(args) -> int:
    """Print every registered method (with -v: recipe, knob, ablation, description)."""
    from .registry import all_methods

    for name, m in all_methods().items():
        print(f"{name}\t{m.recipe}\t{m.policy.knob.name}\t{m.description}" if args.verbose else name)
    return 0


def cmd_train(args) -> int:
    """Train one multi-exit model (the recipe of --method, or --recipe)."""
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
    from .engine import record_signals, run_live
    from .grid import evaluate_grid
    from .registry import get_method
    from .speedup import layer_speedup
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
    res = evaluate_grid(policy, rec, task, [float(v) for v in args.knob] if args.knob else None)
    L = model.num_layers
    print(f"{method.name} on {task.name} ({len(ds)} dev samples, {L} layers)")
    print(f"{policy.knob.name:>10}  {task.headline_metric:>8}  speedup_layers  mean_exit")
    for k, v in enumerate(res.values):
        print(f"{v:>10.4g}  {res.metrics[k][task.headline_metric]:>8.2f}  {res.speedups[k]:>14.3f}"
              f"  {res.exits[k].float().mean().item():>9.3f}")
    if args.live is not None:
        loader = make_loader(ds, 32, False, pad_token_id=tok.pad_token_id or 0)
        live = run_live(model, policy, args.live, loader)
        rep = policy.replay(rec, [args.live])[0]
        agree = bool(torch.equal(live.exit_layers, rep))
        print(f"live run at {policy.knob.name}={args.live}: speedup_layers "
              f"{layer_speedup(live.exit_layers, L):.3f}, replay agrees: {agree}")
    return 0


def cmd_predict(args) -> int:
    """Label raw texts (arguments, --file or stdin) with a saved folder; JSON Lines on stdout."""
    from .predict import load_predictor, predict_lines, write_jsonl

    if args.texts and args.file:
        raise ValueError("give texts as arguments or --file, not both")
    if args.file and not os.path.isfile(args.file):
        raise FileNotFoundError(f"input file {args.file} does not exist")
    predictor = load_predictor(args.model, target=args.target, knob=args.knob, method=args.method,
                               max_length=args.max_length)
    if args.texts:
        lines = list(args.texts)
    else:  # bytes, split on newlines only: one row out per line in, however the line is encoded
        raw = open(args.file, "rb").read() if args.file else sys.stdin.buffer.read()
        lines = [ln.removesuffix(b"\r") for ln in raw.split(b"\n")]
        if lines and lines[-1] == b"":
            lines.pop()  # the final newline ends the last line; it does not start another
    rows = predict_lines(predictor, lines, strict=args.strict, batch_size=args.batch_size,
                         progress=bool(args.file) and not args.no_progress)
    write_jsonl(rows, sys.stdout)
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser of the library's commands, and its subparsers (for the benchmark layer's)."""
    ap = argparse.ArgumentParser(prog="de3bert", description="DE³-BERT and the early-exit baselines")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
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
    p.add_argument("--strict", action="store_true",
                   help="an empty or undecodable line is an error (exit 2) instead of an error row")
    p.set_defaults(fn=cmd_predict)
    from .server import add_serve_parser

    add_serve_parser(sub)
    return ap, sub


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse and run one command; bad input exits 2 with `error: ...` before any work."""
    args = (parser or build_parser()[0]).parse_args(argv)
    if getattr(args, "no_progress", False) or getattr(args, "progress", True) is False:
        quiet_libraries()
    try:
        return args.fn(args)
    except (KeyError, ValueError, FileNotFoundError, ConnectionError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        need = getattr(err, "space_needed", "")
        print(f"error: disk full while writing {err.filename or 'a file'}"
              + (f" ({need})" if need else "") + "; everything written before is intact: free "
              f"space and run the same command again to resume ({resume_command(argv)})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # one line, the shell's code for SIGINT; nothing written is lost
        print(f"interrupted: everything finished so far is kept; to resume, run the same command "
              f"again: {resume_command(argv)}", file=sys.stderr)
        return 130
    except Exception as err:  # anything unforeseen: one line (the traceback with --debug)
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err} (`de3bert --debug ...` shows the traceback)",
              file=sys.stderr)
        return 1


def resume_command(argv: list[str] | None) -> str:
    """The command line that was run (the one that resumes it)."""
    return " ".join(shlex.quote(a) for a in ["de3bert", *(sys.argv[1:] if argv is None else argv)])


def quiet_libraries() -> None:
    """`--no-progress` silences the libraries' bars too (transformers' "Loading weights", the
    Hub's downloads), here and in every worker this process starts (through the environment)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())



