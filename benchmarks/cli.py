"""The console entry `de3bert`: the library's commands (list, train, eval, ...) plus the benchmark
layer's `run | report | check-regression`. The only module that starts the benchmark layer."""

from __future__ import annotations

import sys

from de3bert.cli import build_parser
from de3bert.cli import main as library_main


def cmd_run(args) -> int:
    """Run a profile (or print its plan with --dry-run), then write tables and plots."""
    from .layout import RunLayout
    from .profiles import Profile
    from .report import write_reports
    from .runner import Runner
    from .sanity import run_sanity

    profile = with_execution(Profile.load(args.profile), args)
    layout = RunLayout.for_run(profile.name, args.out or None, args.plots_dir)
    runner = Runner(profile, layout, data_dir=args.data_dir, progress=not args.no_progress)
    plan = runner.plan()
    if args.dry_run:
        from .estimate import print_dry_run

        print_dry_run(runner, plan, args.gpus)
        return 0
    runner.run()
    paths = write_reports(layout)
    print("\n".join(["", "sanity (each model's deepest exit vs single):",
                     *[f"  {r.line()}" for r in run_sanity(layout)],
                     "", f"results: {layout.results}", *[f"report:  {p}" for p in paths]]))
    return 0


def with_execution(profile, args):
    """The profile with the executor flags given on the command line applied (flags win)."""
    import dataclasses

    given = {k: getattr(args, k) for k in ("executor", "ray_address", "gpus_per_train", "gpus_per_timing",
                                            "max_retries") if getattr(args, k) is not None}
    profile = dataclasses.replace(profile, **given)
    profile.check_execution()
    return profile


def cmd_report(args) -> int:
    """Rewrite tables and plots of a finished run from its results and records."""
    from .layout import RunLayout
    from .report import write_reports

    for p in write_reports(RunLayout.for_run("", args.out, args.plots_dir)):
        print(p)
    return 0


def cmd_check(args) -> int:
    """Compare a run (or a benchmark JSON) with a golden file; exit 1 on a regression."""
    from .regression import check_benchmarks, check_regression

    if bool(args.results) == bool(args.benchmark_json):
        raise ValueError("give exactly one of --results (a run's results.jsonl) or --benchmark-json")
    if args.benchmark_json:
        return check_benchmarks(args.golden, args.benchmark_json, update=args.update,
                                allow_missing=args.allow_missing, merge=args.merge)
    return check_regression(args.golden, args.results, update=args.update, verbose=args.verbose,
                            exact=args.exact)


def add_commands(sub) -> None:
    """The benchmark layer's subcommands."""
    p = sub.add_parser("run", help="run a benchmark profile (smoke, default, paper or a YAML path)")
    p.add_argument("--profile", default="default")
    p.add_argument("--out", default="", help="output directory (default: results/<profile>)")
    p.add_argument("--data-dir", default=None, help="local glue_data/ (default: $GLUE_DIR, else the Hub)")
    p.add_argument("--plots-dir", default=None,
                   help="where figures go (default: plots/<profile> for the default --out, else <out>/plots)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and an estimate, run nothing")
    p.add_argument("--gpus", type=int, default=8,
                   help="with --dry-run of a GPU profile: also price the plan on this many GPUs (Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--executor", choices=["local", "ray"], default=None,
                   help="where jobs run: local (default; this process) or ray (Ray tasks; README: Scale-out)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray instance)")
    p.add_argument("--gpus-per-train", type=float, default=None,
                   help="GPU share per training job under Ray, fractional allowed (default 1)")
    p.add_argument("--gpus-per-timing", type=int, default=None,
                   help="whole GPUs per replay+timing job under Ray (default 1: timings never share one)")
    p.add_argument("--max-retries", type=int, default=None,
                   help="retries of a Ray job whose worker died (default 3)")
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
    p.add_argument("--merge", action="store_true",
                   help="with --update --benchmark-json: replace only the bounds of ratios these runs "
                        "have, keep the others")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --benchmark-json: skip bounded ratios the run lacks (a -k subset)")
    p.add_argument("--exact", action="store_true",
                   help="with --results: tolerate no near ties (same machine as the golden file)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every check, not only failures")
    p.set_defaults(fn=cmd_check)
    from .artefacts import add_export_parser
    from .serving import add_serve_bench_parser

    add_export_parser(sub)
    add_serve_bench_parser(sub)


def main(argv: list[str] | None = None) -> int:
    """`de3bert ...`: every command, library and benchmark layer alike."""
    parser, sub = build_parser()
    add_commands(sub)
    return library_main(argv, parser)


if __name__ == "__main__":
    sys.exit(main())
