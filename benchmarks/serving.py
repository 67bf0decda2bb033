"""The fourth speed-up: early exit in a server under load (`de3bert serve-bench`).

For one task of a finished run (models kept), the full model and every chosen method at its
operating points (the knobs in the run's results rows) are served by each scheduler of
`de3bert.serving` to an open-loop stream of requests: Poisson arrivals (seeded) at offered loads
given as fractions of the full model's measured capacity (its batch-1 closed-loop throughput on
this machine), over the run's dev samples at their natural lengths. Time is real: requests become
available at their arrival times on the wall clock while the server loop runs, and a request's
latency is its completion − its arrival. Per point: p50/p95/p99 latency, achieved throughput and
mean batch; per (contender, scheduler): the sustainable throughput (the highest load whose p99
stays under the SLO) and the serving speed-up (÷ the full model's under the same scheduler), next
to the limit the exits allow (layer speed-up × the full model's sustainable throughput).

Every served request is also checked against replay of the run's record at the same knob (exit
layer and prediction, near ties excepted), so a load run doubles as a live = replay check on real
rows. Writes `serving.jsonl` (run folder); the report renders `tables/serving.md` and `serving_<task>.png`.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from de3bert.data import EncodedDataset, get_task, load_examples, resolve_data_dir
from de3bert.engine import replay_predictions
from de3bert.model import MultiExitModel
from de3bert.record import atomic_write_text, load_record
from de3bert.registry import all_methods, get_method
from de3bert.serving import Done, Request, Scheduler, ServingEngine, make_scheduler, precise_sleep, serve
from de3bert.ties import exit_ties, prediction_ties

from .layout import DEV_SUBSET_SEED, RunLayout
from .results import FULL
from .serving_settings import ServingSettings, parse_settings


@dataclass
class Contender:
    """A model, a policy and a knob to serve: the full model or a method at an operating point."""

    method: str
    target: float | None
    knob: float
    model: MultiExitModel
    policy: object
    recipe: str
    speedup_layers: float

    @property
    def label(self) -> str:
        """How tables and plots name it."""
        return self.method if self.target is None else f"{self.method}@{self.target:g}x"


# ---- what a run provides -------------------------------------------------------------------------
def _run_profile(layout: RunLayout) -> dict:
    path = layout.out / "profile.json"
    if not path.is_file():
        raise FileNotFoundError(f"{layout.out} is not a finished run: no profile.json")
    return json.loads(path.read_text())


def _operating_points(layout: RunLayout, task: str, seed: int, settings: ServingSettings) -> list[dict]:
    """One results row per (method, target) to serve: its knob and layer speed-up."""
    chosen = {n for n, m in all_methods().items() if settings.chooses(m)}
    out: dict[tuple, dict] = {}
    for line in layout.results.read_text().splitlines():
        r = json.loads(line)
        if r.get("task") != task or r.get("seed") != seed or r.get("method") not in chosen:
            continue
        for t in r.get("operating_point") or []:
            if any(math.isclose(t, x) for x in settings.targets):
                out.setdefault((r["method"], float(t)), r)
    return [{**r, "_target": t} for (_, t), r in sorted(out.items())]


def dev_requests(profile: dict, task: str, data_dir: str | None) -> tuple[list[dict], list[str]]:
    """The run's dev rows (its `dev_limit` subsample, in record order), tokenised, unpadded; and
    their first texts (for the HTTP round trips: single-sentence tasks)."""
    from de3bert.backbone import load_tokenizer

    spec = get_task(task)
    limit = profile.get("dev_limit") or None
    length = {**profile.get("train", {}), **profile.get("task_train", {}).get(task, {})}.get(
        "max_seq_length", 128)
    examples = load_examples(spec, "dev", data_dir, limit, DEV_SUBSET_SEED)
    ds = EncodedDataset(examples, load_tokenizer(profile["backbone"]), length, spec.is_regression)
    return ds.features, [e.texts[0] for e in examples]


def contenders(layout: RunLayout, task: str, seed: int, settings: ServingSettings) -> list[Contender]:
    """The full model (fixed exit at L: heads at the last layer only) and every chosen method at
    each target, models loaded once per recipe."""
    spec, models = get_task(task), {}

    def model(recipe: str) -> MultiExitModel:
        if recipe not in models:
            path = layout.model_dir(task, recipe, seed) / "final"
            if not path.is_dir():
                raise FileNotFoundError(f"{path}: no kept model (the run used keep_models: none?)")
            models[recipe] = MultiExitModel.load(path).eval()
        return models[recipe]

    full = model("single")
    out = [Contender(FULL, None, full.num_layers, full,
                     get_method("fixed-exit").make_policy(spec.num_labels, full.num_layers), "single", 1.0)]
    for r in _operating_points(layout, task, seed, settings):
        method = get_method(r["method"])
        m = model(method.recipe)
        out.append(Contender(method.name, r["_target"], float(r["knob"]["value"]), m,
                             method.make_policy(spec.num_labels, m.num_layers), method.recipe,
                             float(r["speedup_layers"])))
    return out


# ---- one load point -----------------------------------------------------------------------------
def poisson_requests(pool: list[dict], rate: float, duration: float, max_requests: int,
                     seed: int) -> tuple[list[Request], list[int]]:
    """Arrivals at `rate`/s for `duration` s (at most `max_requests`, at least one), each carrying a
    dev sample drawn with the same seed; also the dev index of every request."""
    rng, t, reqs, index = random.Random(seed), 0.0, [], []
    while len(reqs) < max_requests:
        t += rng.expovariate(rate)
        if t > duration and reqs:
            break
        i = rng.randrange(len(pool))
        reqs.append(Request(len(reqs), pool[i], t))
        index.append(i)
    return reqs, index


def _engine(c: Contender, pad: int) -> ServingEngine:
    return ServingEngine(c.model, c.policy, c.knob, pad)


def warm_up(c: Contender, pool: list[dict], n: int, pad: int) -> float:
    """Serve `n` requests closed-loop at batch 1; their mean service time (s)."""
    if n == 0:
        return 0.0
    reqs = [Request(i, pool[i % len(pool)], 0.0) for i in range(n)]
    stats = serve(make_scheduler("batch1", _engine(c, pad)), reqs)
    return stats.seconds / n


def point(c: Contender, scheduler: str, settings: ServingSettings, reqs: list[Request],
          pad: int) -> tuple[dict, list]:
    """Serve one load point; its latency percentiles, throughput and batch statistics, and the
    completions (for the replay check)."""
    eng = _engine(c, pad)
    stats = serve(make_scheduler(scheduler, eng, settings.limits), reqs, sleep=precise_sleep)
    lat = np.array([d.latency for d in stats.completions]) * 1000
    span = max(d.finish for d in stats.completions) - min(r.arrival for r in reqs)
    return {"n": len(reqs), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean()), "achieved_rps": len(reqs) / max(span, 1e-9),
            "mean_batch": stats.rows / max(stats.steps, 1), "steps": stats.steps,
            "merges": eng.merges, "idle_s": stats.idle, "wall_s": stats.seconds,
            "engine_s": dict(eng.seconds)}, stats.completions


def replay_check(c: Contender, record: dict | None, done: list, index: list[int]) -> dict:
    """Served exits and predictions against replay of the run's record at the same knob:
    disagreements in all, and those that are not near ties (`de3bert.ties`; must be 0)."""
    if record is None:
        return {"checked": 0}
    replayed = c.policy.replay(record, [c.knob])
    preds = replay_predictions(record, replayed)[0]
    ties = (exit_ties(c.policy, record, [c.knob], replayed) | prediction_ties(record, replayed))[0]
    differ = unexplained = 0
    for d in done:
        i = index[d.rid]
        if d.exit_layer != int(replayed[0, i]) or d.prediction != preds[i].item():
            differ += 1
            unexplained += int(not ties[i])
    return {"checked": len(done), "differ": differ, "differ_not_tie": unexplained}


class NoOpScheduler(Scheduler):
    """Finishes every request the moment it is admitted: what the driver costs by itself."""

    name = "noop"

    def __init__(self):
        """A stand-in engine with the counters `serve` reads."""
        super().__init__(SimpleNamespace(steps=0, rows=0, num_layers=1))

    def wait(self, now: float) -> float | None:
        """Work whenever a request waits."""
        return 0.0 if self.queue else None

    def step(self, now: float) -> list[Done]:
        r = self.queue.popleft()
        self.engine.steps, self.engine.rows = self.engine.steps + 1, self.engine.rows + 1
        return [Done(r.rid, 0, torch.zeros(1), 0.0, r.arrival)]


def generator_overhead(pool: list[dict], rate: float, duration: float, max_requests: int,
                       seed: int) -> dict:
    """The load generator against a no-op model at `rate`: its latencies are the driver's own
    (waking up for an arrival, admitting, stamping)."""
    reqs, _ = poisson_requests(pool, rate, duration, max_requests, seed)
    stats = serve(NoOpScheduler(), reqs, sleep=precise_sleep)
    lat = np.array([d.latency for d in stats.completions]) * 1e6
    return {"n": len(reqs), "mean_us": float(lat.mean()), "p50_us": float(np.percentile(lat, 50)),
            "p99_us": float(np.percentile(lat, 99))}


def _http_rows(layout: RunLayout, task: str, found: list[Contender], texts: list[str],
               progress: bool) -> list[dict]:
    """The HTTP overhead of the first method at an operating point (single-sentence tasks)."""
    points = [c for c in found if c.target is not None]
    if not points or len(get_task(task).text_fields) != 1:
        return []
    c = points[0]
    row = http_overhead(layout, task, c.method, c.target, texts[:200], torch.get_num_threads())
    if progress:
        print(f"  HTTP over loopback, {c.label}: round trip p50 {row['round_trip_p50_ms']:.2f} ms, server "
              f"{row['server_p50_ms']:.2f} ms, overhead {row['overhead_p50_ms']:.2f} ms", flush=True)
    return [row]


def http_overhead(layout: RunLayout, task: str, method: str, target: float, texts: list[str],
                  threads: int = 1) -> dict:
    """Round trips over loopback, one request at a time, to `de3bert serve` (batch 1) on the method's
    exported folder: the client-measured time minus the server's own latency (submit → exit) is
    what HTTP, JSON and tokenisation add to a request."""
    import http.client
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    from .artefacts import export_from_run

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        folder = export_from_run(layout.out, task, method, target, Path(tmp) / "model")
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        server = subprocess.Popen([sys.executable, "-m", "de3bert", "serve", "--model", str(folder), "--port",
                                   str(port), "--scheduler", "batch1", "--threads", str(threads),
                                   "--target", str(target)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            conn = _connect(http.client, port)
            trips, inside = [], []
            for text in texts:
                t = time.perf_counter()
                conn.request("POST", "/predict", json.dumps({"text": text}),
                             {"Content-Type": "application/json"})
                body = json.loads(conn.getresponse().read())
                trips.append((time.perf_counter() - t) * 1000)
                inside.append(body["latency_ms"])
        finally:
            server.terminate()
            server.wait(20)
    extra = np.array(trips[8:]) - np.array(inside[8:])  # the first few warm the server up
    return {"kind": "http", "task": task, "method": method, "target": target, "n": len(extra),
            "round_trip_p50_ms": float(np.percentile(trips[8:], 50)),
            "server_p50_ms": float(np.percentile(inside[8:], 50)),
            "overhead_p50_ms": float(np.percentile(extra, 50)), "overhead_mean_ms": float(extra.mean())}


def _connect(client, port: int, timeout: float = 120.0):
    """A keep-alive connection to the server on loopback once `/health` answers."""
    deadline = time.time() + timeout
    while True:
        conn = client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
            return conn
        except OSError:
            conn.close()
            if time.time() > deadline:
                raise
            time.sleep(0.2)


# ---- sweeps -------------------------------------------------------------------------------------
@dataclass
class Bench:
    """One task's load benchmark: the run, the dev pool, the settings and what was measured."""

    layout: RunLayout
    task: str
    seed: int
    settings: ServingSettings
    pool: list[dict]
    pad: int
    capacity: float = 0.0
    slo_ms: float = 0.0
    rows: list[dict] = field(default_factory=list)
    records: dict = field(default_factory=dict)

    def record(self, recipe: str) -> dict | None:
        """The run's dev record of `recipe` (None if absent or of another dev set)."""
        if recipe not in self.records:
            path = self.layout.record(self.task, recipe, self.seed)
            rec = load_record(path) if path.is_file() else None
            ok = rec is not None and rec["labels"].shape[0] == len(self.pool)
            self.records[recipe] = rec if ok else None
        return self.records[recipe]

    def calibrate(self, full: Contender) -> None:
        """The full model's batch-1 capacity (closed loop over the pool) and the SLO."""
        warm_up(full, self.pool, self.settings.warmup, self.pad)
        n = min(len(self.pool), 200)
        service = warm_up(full, self.pool[:n], n, self.pad)
        self.capacity = 1.0 / service
        self.slo_ms = self.settings.slo_ms or 10 * service * 1000

    def sweep(self, c: Contender, scheduler: str, progress: bool = True) -> None:
        """Every load of one (contender, scheduler), lowest first, stopping after the first load
        whose p99 misses the SLO (higher loads only queue more); then `refine` loads bisecting
        between the highest load that met the SLO and that first miss."""
        s, passed, missed = self.settings, None, None
        for k, load in enumerate(sorted(s.loads)):
            if not self.measure(c, scheduler, load, s.seed + k, progress):
                missed = load
                break
            passed = load
        for k in range(s.refine if passed is not None and missed is not None else 0):
            mid = (passed + missed) / 2
            if self.measure(c, scheduler, mid, s.seed + 1000 + k, progress):
                passed = mid
            else:
                missed = mid

    def measure(self, c: Contender, scheduler: str, load: float, seed: int, progress: bool) -> bool:
        """One load point (arrivals seeded by `seed`) into `rows`; whether its p99 met the SLO."""
        s = self.settings
        rate = load * self.capacity
        reqs, index = poisson_requests(self.pool, rate, s.duration_s, s.max_requests, seed)
        row, done = point(c, scheduler, s, reqs, self.pad)
        row.update(self._keys(c, scheduler), load=load, offered_rps=rate,
                   meets_slo=row["p99_ms"] <= self.slo_ms,
                   replay=replay_check(c, self.record(c.recipe), done, index))
        self.rows.append(row)
        if progress:
            print(f"  {c.label:>22} {scheduler:>8} load {load:4.2f}: p50 {row['p50_ms']:7.2f} "
                  f"p99 {row['p99_ms']:8.2f} ms, {row['achieved_rps']:7.1f} rps, batch "
                  f"{row['mean_batch']:.1f}, busy {1 - row['idle_s'] / row['wall_s']:.0%}, merge "
                  f"{row['engine_s']['merge'] / row['wall_s']:.1%}, replay differs "
                  f"{row['replay'].get('differ', '-')}", flush=True)
        return row["meets_slo"]

    def _keys(self, c: Contender, scheduler: str) -> dict:
        return {"kind": "point", "task": self.task, "seed": self.seed, "method": c.method,
                "target": c.target, "knob": c.knob, "recipe": c.recipe, "scheduler": scheduler,
                "limits": asdict(self.settings.limits), "speedup_layers": c.speedup_layers,
                "capacity_rps": self.capacity, "slo_ms": self.slo_ms}


def summarize(rows: list[dict]) -> list[dict]:
    """Per (method, target, scheduler): sustainable throughput, serving speed-up (÷ the full model's
    under the same scheduler) and the fraction of the limit (layer speed-up × the full model's)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("kind") == "point":
            groups.setdefault((r["task"], r["method"], r["target"], r["scheduler"]), []).append(r)
    best = {k: max([r["offered_rps"] for r in g if r["meets_slo"]], default=0.0) for k, g in groups.items()}
    out = []
    for (task, method, target, sched), g in groups.items():
        full = best.get((task, FULL, None, sched), 0.0)
        sus, sp = best[(task, method, target, sched)], g[0]["speedup_layers"]
        at_half = [r for r in g if math.isclose(r["load"], 0.5)]
        top = max((r for r in g if r["meets_slo"]), key=lambda r: r["load"], default={})
        out.append({"kind": "summary", "task": task, "method": method, "target": target,
                    "scheduler": sched, "knob": g[0]["knob"], "speedup_layers": sp,
                    "sustainable_rps": sus, "serving_speedup": sus / full if full else None,
                    "limit_rps": sp * full, "of_limit": sus / (sp * full) if full else None,
                    "p99_at_half_ms": at_half[0]["p99_ms"] if at_half else None,
                    "slo_ms": g[0]["slo_ms"], "capacity_rps": g[0]["capacity_rps"],
                    "loads_tested": max(r["load"] for r in g), "batch_at_sustainable": top.get("mean_batch"),
                    "busy_at_sustainable": 1 - top["idle_s"] / top["wall_s"] if top else None,
                    "replay_differ_not_tie": sum(r["replay"].get("differ_not_tie", 0) for r in g)})
    return out


def machine() -> dict:
    """Where the figures were measured."""
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ---- a whole task, its files, the command -------------------------------------------------------
def run_bench(layout: RunLayout, task: str, settings: ServingSettings, data_dir: str | None = None,
              progress: bool = True, http: bool = False) -> list[dict]:
    """Calibrate on the full model, then sweep every contender × scheduler; rows and summaries
    (`http`: also the HTTP overhead of the first method at an operating point, over loopback)."""
    from de3bert.backbone import load_tokenizer

    profile = _run_profile(layout)
    seeds = profile.get("seeds") or [0]
    seed = seeds[0]
    pool, texts = dev_requests(profile, task, data_dir)
    pad = load_tokenizer(profile["backbone"]).pad_token_id or 0
    bench = Bench(layout, task, seed, settings, pool, pad)
    found = contenders(layout, task, seed, settings)
    bench.calibrate(found[0])
    service_us = 1e6 / bench.capacity
    over = generator_overhead(pool, 0.5 * bench.capacity, settings.duration_s, settings.max_requests,
                              settings.seed)
    bench.rows.append({"kind": "overhead", "task": task, **over, "service_us": service_us,
                       "share_of_service": over["mean_us"] / service_us})
    if progress:
        print(f"{task}: {len(pool)} dev samples, capacity {bench.capacity:.1f} req/s at batch 1, "
              f"SLO p99 ≤ {bench.slo_ms:.1f} ms, {len(found)} contenders; load generator overhead "
              f"{over['mean_us']:.0f} µs mean ({100 * over['mean_us'] / service_us:.2f}% of a "
              "request's batch-1 service time)", flush=True)
    for c in found:
        warm_up(c, pool, settings.warmup, pad)
        for scheduler in settings.schedulers:
            bench.sweep(c, scheduler, progress)
    if http:
        bench.rows += _http_rows(layout, task, found, texts, progress)
    info = {"machine": machine(), "settings": asdict(settings)}
    return [{**r, **info} for r in bench.rows + summarize(bench.rows)]


def phase_key(layout: RunLayout, task: str, settings: ServingSettings) -> str:
    """What a task's load benchmark depends on: the settings and every served operating point
    (method, target, knob, layer speed-up), so a resumed run re-measures only what changed."""
    seed = (_run_profile(layout).get("seeds") or [0])[0]
    points = [(r["method"], r["_target"], r["knob"], r["speedup_layers"])
              for r in _operating_points(layout, task, seed, settings)]
    text = json.dumps({"settings": asdict(settings), "points": points}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_phase(layout: RunLayout, settings: ServingSettings, data_dir: str | None,
              progress: bool = True) -> None:
    """`de3bert run`'s load benchmark: each of `settings.tasks` not already measured for the same
    settings and operating points, with `settings.threads` torch threads; rows to serving.jsonl."""
    before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        for task in settings.tasks:
            key = phase_key(layout, task, settings)
            old = [json.loads(x) for x in layout.serving.read_text().splitlines()] \
                if layout.serving.is_file() else []
            if any(r["task"] == task and r.get("phase_key") == key for r in old):
                print(f"[serving] {task}: already measured for these settings and operating points")
                continue
            print(f"[serving] {task}: load benchmark ({len(settings.schedulers)} schedulers, loads "
                  f"{settings.loads}, {settings.duration_s:g} s each, {settings.threads} thread(s))",
                  flush=True)
            rows = run_bench(layout, task, settings, data_dir, progress=progress)
            write_outputs([{**r, "phase_key": key} for r in rows], layout.out, layout.plots, task)
    finally:
        torch.set_num_threads(before)


def equivalence(layout: RunLayout, task: str, settings: ServingSettings, data_dir: str | None = None,
                progress: bool = True) -> list[dict]:
    """Every chosen method at every target, every scheduler: the whole dev set arrives at once
    (so batches fill and rebatching merges) and each served request is compared with replay."""
    from de3bert.backbone import load_tokenizer

    profile = _run_profile(layout)
    seed = (profile.get("seeds") or [0])[0]
    pool, _ = dev_requests(profile, task, data_dir)
    pad = load_tokenizer(profile["backbone"]).pad_token_id or 0
    bench, rows = Bench(layout, task, seed, settings, pool, pad), []
    for c in contenders(layout, task, seed, settings):
        for scheduler in settings.schedulers:
            eng = _engine(c, pad)
            reqs = [Request(i, f, 0.0) for i, f in enumerate(pool)]
            stats = serve(make_scheduler(scheduler, eng, settings.limits), reqs)
            check = replay_check(c, bench.record(c.recipe), stats.completions, list(range(len(pool))))
            rows.append({"kind": "equivalence", "task": task, "method": c.method, "target": c.target,
                         "knob": c.knob, "scheduler": scheduler, "limits": asdict(settings.limits),
                         "merges": eng.merges, "mean_batch": stats.rows / max(stats.steps, 1), **check})
            if progress:
                print(f"  {c.label:>22} {scheduler:>8}: {check['checked']} served, replay differs "
                      f"{check.get('differ')} ({check.get('differ_not_tie')} not near ties), "
                      f"{eng.merges} merges", flush=True)
    return rows


def write_outputs(rows: list[dict], out: Path, plots: Path, task: str) -> list[Path]:
    """Rows into `<out>/serving.jsonl` (this task's earlier rows of the same kinds replaced), then
    the report's serving table and figures (`benchmarks.report.writers.write_serving`)."""
    from .report.writers import write_serving

    layout = RunLayout(out, plots)
    kinds, kept = {r.get("kind") for r in rows}, []
    if layout.serving.is_file():
        kept = [r for r in map(json.loads, layout.serving.read_text().splitlines())
                if r["task"] != task or r.get("kind") not in kinds]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.serving, "".join(json.dumps(r) + "\n" for r in kept + rows))
    return [layout.serving, *write_serving(layout)]


def cmd_serve_bench(args) -> int:
    """`de3bert serve-bench`: the load benchmark of one task of a finished run."""
    layout = RunLayout.for_run("", args.run, args.plots_dir)
    block = _run_profile(layout).get("serving") or {}
    flags = {k: getattr(args, k) for k in ("loads", "slo_ms", "duration_s", "max_requests", "max_batch",
                                           "max_wait_ms", "order", "schedulers", "methods", "targets",
                                           "seed", "warmup", "threads", "refine")
             if getattr(args, k) is not None}
    if isinstance(flags.get("methods"), list) and flags["methods"] in (["all"], ["main"]):
        flags["methods"] = flags["methods"][0]
    settings = parse_settings({**block, **flags}, "serving")
    torch.set_num_threads(settings.threads)
    data_dir = resolve_data_dir(args.data_dir)
    if args.equivalence:
        rows = equivalence(layout, args.task, settings, data_dir, progress=not args.no_progress)
    else:
        rows = run_bench(layout, args.task, settings, data_dir, progress=not args.no_progress, http=args.http)
    out = Path(args.out) if args.out else layout.out
    plots = Path(args.plots_dir) if args.plots_dir else (out / "plots" if args.out else layout.plots)
    for p in write_outputs(rows, out, plots, args.task):
        print(p)
    return 0


def add_serve_bench_parser(sub) -> None:
    """The `serve-bench` subcommand (flags override the run's `serving:` block)."""
    p = sub.add_parser("serve-bench", help="latency and throughput under load per method and scheduler")
    p.add_argument("--run", required=True, help="a finished run folder (models kept)")
    p.add_argument("--task", required=True)
    p.add_argument("--out", default="", help="where serving.jsonl and tables/ go (default: the run)")
    p.add_argument("--plots-dir", default=None, help="where the plot goes (default: the run's plots)")
    p.add_argument("--data-dir", default=None,
                   help="local glue_data/ (default: $GLUE_DIR, else the checkout's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server (default: "
                   "the block's `threads`, 1)")
    p.add_argument("--loads", type=float, nargs="+", default=None, help="fractions of capacity")
    p.add_argument("--slo-ms", type=float, default=None, help="p99 objective (0: 10 × batch-1 service)")
    p.add_argument("--duration-s", type=float, default=None, help="seconds of arrivals per load")
    p.add_argument("--max-requests", type=int, default=None, help="requests per load at most")
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--max-wait-ms", type=float, default=None)
    p.add_argument("--order", default=None, help="rebatching queue order: fullest or deepest")
    p.add_argument("--schedulers", nargs="+", default=None, help="batch1 dynamic rebatch")
    p.add_argument("--methods", nargs="+", default=None, help="all, main or method names")
    p.add_argument("--targets", type=float, nargs="+", default=None, help="operating points (1.5 2.0)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--refine", type=int, default=None,
                   help="extra loads bisecting between the last that met the SLO and the first miss")
    p.add_argument("--equivalence", action="store_true",
                   help="instead of the load sweep: serve the whole dev set with every scheduler for "
                        "every chosen method and target, and compare each request with replay")
    p.add_argument("--http", action="store_true",
                   help="also time round trips to `de3bert serve` over loopback (the HTTP overhead)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_serve_bench)
