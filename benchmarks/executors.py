"""Executors: where the runner's jobs run. `local` (the default) runs them in this process, one after
another, exactly as the runner always did; `ray` runs each job as a Ray core task (`ray.remote` with
CPU/GPU requests, results collected with `ray.wait`) on a local instance or an existing cluster.

A job is a call of a module-level generator function; what it yields (a training job's stats, an
evaluation job's result groups) reaches the driver's `emit` callback in the driver process, which
alone writes `results.jsonl`. Jobs exchange artefacts (models, records, FLOPs and timing caches)
through the run folder, which every Ray worker must see (the run folder on shared storage); only
small outputs (rows, stats) travel back through Ray's object store. A job starts after the jobs in
its `after` list: Ray resolves that dependency itself (their results are passed as arguments).

Under Ray every attempt of a job appends `start` (node, host, pid, GPU ids, time) and `end` events
to `<out>/jobs/<job>.jsonl`; the driver turns them into status lines (queued / running on which
node / done / retried) and the tests use them to kill a worker and to check that timing jobs never
share a GPU.
"""

from __future__ import annotations

import json
import os
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

EXECUTORS = ("local", "ray")
# environment a Ray worker needs to behave like the driver (offline hub, data dir, threads)
FORWARDED_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_DATASETS_OFFLINE", "HF_HOME", "GLUE_DIR", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class Job:
    """One unit of work the driver hands to an executor: `fn(*args)` yields outputs for the driver."""

    key: str
    """Unique name, e.g. `train-mrpc-de3-s42`; also the file name of its event log."""
    kind: str
    """`train` (train + record + caches of one model) or `eval` (replay + live timing of one task, seed)."""
    fn: Callable[..., Iterator]
    """A module-level generator function (picklable), run in the driver (local) or a worker (ray)."""
    args: tuple
    """Its arguments: small, picklable values (profile, paths, names), never models."""
    after: tuple[str, ...] = ()
    """Keys of the jobs that must finish first (their artefacts are read from the run folder)."""
    gpus: float = 0.0
    """GPU share the job requests under Ray (fractional for training; whole for timing)."""
    cpus: float = 1.0
    """CPU cores the job requests under Ray."""
    label: str = ""
    """Human-readable description for status lines."""
    fresh_worker: bool = False
    """Run it in a fresh Ray worker process: set for GPU jobs on CUDA, which binds a process to the
    devices it first saw (a CPU-only job reuses a worker and skips its ~10 s of imports)."""


@dataclass
class Progress:
    """One tqdm bar over jobs plus one status line per job event (queued, running, done, retried)."""

    total: int
    enabled: bool = True
    desc: str = "jobs"
    bar: tqdm = field(init=False)

    def __post_init__(self):
        self.bar = tqdm(total=self.total, desc=self.desc, unit="job", disable=not self.enabled)

    def status(self, job: Job, state: str, where: str = "", always: bool = False) -> None:
        """Print `[job] <state> <job> [on <where>]` (retries are printed even without progress);
        `where` starting with `(` is a note, not a place."""
        if self.enabled or always:
            note = f" {where}" if where.startswith("(") else f" on {where}" if where else ""
            tqdm.write(f"[job] {state:<8} {job.label or job.key}{note}")
        if state == "running":
            self.bar.set_postfix_str(job.label or job.key)

    def done(self, job: Job, where: str = "") -> None:
        """A job finished: one status line and one tick of the bar."""
        self.status(job, "done", where)
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


class Executor(ABC):
    """Runs a list of jobs (in dependency order) and hands every output to `emit` in the driver."""

    name = ""

    @abstractmethod
    def run(self, jobs: list[Job], emit: Callable[[Job, object], None], progress: Progress) -> None:
        """Run every job; `emit(job, output)` is called in the driver for each output; an exception
        of any job (after its retries) stops the run and is raised here."""


class LocalExecutor(Executor):
    """Today's behaviour: every job in this process, in list order; outputs emitted as they come
    (so a result group is written as soon as it is computed)."""

    name = "local"

    def run(self, jobs, emit, progress):
        for job in jobs:
            progress.status(job, "running", "local")
            for out in job.fn(*job.args):
                emit(job, out)
            progress.done(job)


def append_event(path: Path, event: dict) -> None:
    """Append one JSON event line to a job's log (one attempt writes at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_events(path: Path) -> list[dict]:
    """Every complete event of a job's log (a torn last line is ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def run_logged(log: str, run_id: str, kind: str, fn, args, *_after) -> list:
    """Inside a Ray worker: log `start` (node, pid, GPU ids), run the job to the end, log `end`.
    `_after` are the results of the jobs this one waits for (Ray resolves them first; unused)."""
    import ray

    ctx = ray.get_runtime_context()
    where = {"run": run_id, "kind": kind, "node": ctx.get_node_id(), "host": platform.node(),
             "pid": os.getpid(), "gpus": [str(g) for g in ray.get_gpu_ids()]}
    append_event(Path(log), {"event": "start", "t": time.time(), **where})
    outs = list(fn(*args))
    append_event(Path(log), {"event": "end", "t": time.time(), **where})
    return outs


class RayExecutor(Executor):
    """Each job a Ray task with its CPU/GPU request and bounded retries; the driver waits with
    `ray.wait` and emits each job's outputs when it finishes."""

    name = "ray"

    def __init__(self, log_dir: Path, address: str | None = None, max_retries: int = 3,
                 poll_seconds: float = 0.5):
        self.log_dir, self.address, self.max_retries = Path(log_dir), address, max_retries
        self.poll_seconds = poll_seconds
        self.run_id = f"{platform.node()}-{os.getpid()}-{time.time():.0f}"
        self.seen: dict[str, int] = {}  # job key → start events of this run already reported

    def connect(self):
        """Use the process's Ray connection, else connect to `address`, else start a local instance."""
        import ray

        if not ray.is_initialized():
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            ray.init(address=self.address or None, runtime_env={"env_vars": env} if env else None,
                     include_dashboard=False, logging_level="warning")
        return ray

    def _gpu_scale(self, ray, jobs: list[Job]) -> bool:
        """Whether GPU requests can be honoured: a cluster without GPUs gets CPU-only requests."""
        have = ray.cluster_resources().get("GPU", 0)
        if have or not any(j.gpus for j in jobs):
            return True
        tqdm.write("[ray] the cluster has no GPU: jobs request CPUs only (timing jobs may share a node)")
        return False

    def _submit(self, ray, jobs: list[Job], use_gpus: bool) -> dict:
        """One Ray task per job; a job's `after` results are passed as arguments, so Ray starts it
        only when they are done. A `fresh_worker` job runs in a new process (`max_calls=1`, Ray's
        own default for GPU tasks): Ray sets CUDA_VISIBLE_DEVICES per task, and CUDA keeps the
        devices a process first saw."""
        reused, fresh = ray.remote(run_logged), ray.remote(max_calls=1)(run_logged)
        refs: dict[str, object] = {}
        for job in jobs:  # jobs come in dependency order
            deps = [refs[k] for k in job.after if k in refs]
            remote = fresh if job.fresh_worker else reused
            refs[job.key] = remote.options(
                num_cpus=job.cpus, num_gpus=job.gpus if use_gpus else 0, max_retries=self.max_retries,
                retry_exceptions=False, name=job.key,
            ).remote(str(self.log_dir / f"{job.key}.jsonl"), self.run_id, job.kind, job.fn, job.args, *deps)
        return refs

    def _report_starts(self, jobs: dict, progress: Progress) -> None:
        """Status lines from the jobs' event logs: running on which node, retried."""
        for key, job in jobs.items():
            starts = [e for e in read_events(self.log_dir / f"{key}.jsonl")
                      if e.get("event") == "start" and e.get("run") == self.run_id]
            for n, e in enumerate(starts[self.seen.get(key, 0):], start=self.seen.get(key, 0)):
                where = f"node {e['node'][:8]} ({e['host']}, pid {e['pid']}, gpus {e['gpus']})"
                if n == 0:
                    progress.status(job, "running", where)
                else:
                    progress.status(job, "retried", f"{where}, attempt {n + 1}", always=True)
            self.seen[key] = len(starts)

    def run(self, jobs, emit, progress):
        ray = self.connect()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        use_gpus = self._gpu_scale(ray, jobs)
        refs = self._submit(ray, jobs, use_gpus)
        by_key = {j.key: j for j in jobs}
        for job in jobs:
            gpus = job.gpus if use_gpus else 0
            progress.status(job, "queued", f"(requests {job.cpus:g} CPU, {gpus:g} GPU)")
        pending = {ref: by_key[key] for key, ref in refs.items()}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_seconds)
                self._report_starts({j.key: j for j in pending.values()}, progress)
                for ref in ready:
                    job = pending.pop(ref)
                    for out in ray.get(ref):
                        emit(job, out)
                    progress.done(job)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
