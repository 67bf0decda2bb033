"""`--executor ray` on a real local Ray instance (2 CPUs, 4 logical GPUs), no mocks.

- the smoke profile through Ray equals the local executor in every field except timing and
  provenance fields;
- a training task whose worker is SIGKILLed mid-training is retried, resumes from its own
  checkpoint, and the run ends with the rows of an uninterrupted run;
- the driver SIGKILLed mid-run, then the same command rerun: no duplicate or partial group, and no
  job that had finished is started again (counted from the jobs' event logs);
- timing jobs never overlap on one logical GPU (start/end and GPU ids of every attempt).

The two fault runs use a cut-down smoke profile (DeeBERT only: the `single` and `two-stage` models,
seeds 0 and 1) run by a separate driver process (`de3bert run --executor ray --ray-address ...`)
attached to this module's Ray instance; their seed-0 rows are checked against the local smoke run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from benchmarks.executors import read_events  # noqa: E402
from benchmarks.profiles import PROFILE_DIR, Profile  # noqa: E402
from benchmarks.runner import Runner  # noqa: E402

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent
# fields that say when, where and how fast a row was made, not what it found
TIMING = {"speedup_wallclock", "speedup_wallclock_b32", "speedup_wallclock_model", "wallclock",
          "wallclock_b32"}
PROVENANCE = {"date", "versions", "git_commit", "host", "cpu", "device", "threads", "dtype"}
FAULT_METHODS = ["deebert"]


def comparable(path: Path) -> dict[tuple, dict]:
    """Every row without its timing and provenance fields, keyed by (task, method, seed, knob);
    fails on a duplicate row. The run folder's path and the training time inside the config are
    provenance and timing too."""
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        key = (r["task"], r["method"], r["seed"], json.dumps(r["knob"], sort_keys=True))
        assert key not in out, f"duplicate row {key}"
        r = {k: v for k, v in r.items() if k not in TIMING | PROVENANCE}
        r["config"]["train"].pop("out_dir", None)
        r["config"]["train"].pop("first_stage_dir", None)  # a path in the run folder, like out_dir
        r["config"]["model"].pop("train_seconds", None)
        out[key] = r
    return out


def assert_complete_groups(path: Path) -> None:
    """Every (task, method, seed) group has exactly `group_size` rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    sizes = Counter((r["task"], r["method"], r["seed"]) for r in rows)
    assert all(sizes[r["task"], r["method"], r["seed"]] == r["group_size"] for r in rows)


def events(out: Path) -> dict[str, list[dict]]:
    """Job key → its start/end events (every attempt, every driver run)."""
    return {p.stem: read_events(p) for p in sorted((out / "jobs").glob("*.jsonl"))}


def attempts(evs: list[dict]) -> list[dict]:
    """One dict per attempt: start event + `end` time (None if the attempt died)."""
    out = []
    for e in evs:
        if e["event"] == "start":
            out.append({**e, "end": None})
        elif out and out[-1]["pid"] == e["pid"]:
            out[-1]["end"] = e["t"]
    return out


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance for the module: 2 CPUs, 4 logical GPUs; yields its address."""
    tmp = tempfile.mkdtemp(prefix="r17", dir="/tmp")  # short: Ray's socket paths live under it
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level="warning", _temp_dir=tmp)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _run(out: Path, **execution) -> float:
    """The smoke profile into `out` in this process; seconds."""
    profile = Profile.load("smoke")
    for k, v in execution.items():
        setattr(profile, k, v)
    t0 = time.perf_counter()
    Runner(profile, out, progress=False).run()
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("local") / "out"
    return out, _run(out)


@pytest.fixture(scope="module")
def ray_smoke(cluster, local_smoke, tmp_path_factory) -> tuple[Path, float]:
    """The smoke profile through Ray (after the local run: never two timing runs at once);
    training jobs ask for half a GPU, so two can share one."""
    out = tmp_path_factory.mktemp("ray") / "out"
    return out, _run(out, executor="ray", gpus_per_train=0.5)


def fault_profile(path: Path) -> Path:
    """The smoke profile cut to DeeBERT (models single + two-stage) and seeds 0, 1."""
    data = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    data.update(methods=FAULT_METHODS, seeds=[0, 1])
    path.write_text(yaml.safe_dump(data))
    return path


def driver(profile: Path, out: Path, address: str, log: Path) -> subprocess.Popen:
    """`de3bert run --executor ray` in its own process, attached to the module's Ray instance
    (the environment is read now: `ray.init` above set Ray's authentication mode in it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "benchmarks", "run", "--profile", str(profile),
                                 "--out", str(out), "--executor", "ray", "--ray-address", address],
                                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)


def wait_for(ready, proc: subprocess.Popen, log: Path, timeout: float = 400.0):
    """Poll `ready()` until it returns something truthy; fail if the driver ended first."""
    t0 = time.monotonic()
    while not (found := ready()):
        if proc.poll() is not None:
            pytest.fail(f"driver ended ({proc.returncode}) before the kill point: {log.read_text()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("kill point not reached in time")
        time.sleep(0.05)
    return found


def gone(pids, timeout: float = 60.0) -> None:
    """Wait until every pid has exited (Ray kills a dead driver's workers)."""
    t0 = time.monotonic()
    for pid in pids:
        while time.monotonic() - t0 < timeout:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def reference_rows(local_smoke, seeds=(0,)) -> dict:
    rows = comparable(local_smoke[0] / "results.jsonl")
    return {k: v for k, v in rows.items() if k[1] in (*FAULT_METHODS, "full-model") and k[2] in seeds}


@pytest.fixture(scope="module")
def worker_killed(cluster, ray_smoke, tmp_path_factory) -> dict:
    """Run the fault profile; SIGKILL the worker of `train two-stage seed 0` once its stage-1
    checkpoint is on disk; let the driver finish."""
    tmp = tmp_path_factory.mktemp("worker")
    out, log = tmp / "out", tmp / "driver.log"
    ckpt = out / "models" / "synthetic" / "two-stage-s0" / "checkpoint" / "progress.json"
    job_log = out / "jobs" / "train-synthetic-two-stage-s0.jsonl"
    t0 = time.perf_counter()
    proc = driver(fault_profile(tmp / "fault.yaml"), out, cluster, log)

    def kill_point():
        starts = [e for e in read_events(job_log) if e["event"] == "start"]
        if starts and ckpt.is_file() and json.loads(ckpt.read_text())["stage"] == 1:
            return starts[-1]["pid"]
        return None

    pid = wait_for(kill_point, proc, log)
    at_kill = json.loads(ckpt.read_text())
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return {"out": out, "log": log.read_text(), "pid": pid, "checkpoint": at_kill,
            "seconds": time.perf_counter() - t0}


def seed_groups(results: Path) -> dict[int, set[str]]:
    """Seed → methods whose group is in a results file."""
    out: dict[int, set[str]] = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            out.setdefault(r["seed"], set()).add(r["method"])
    return out


@pytest.fixture(scope="module")
def driver_killed(cluster, worker_killed, tmp_path_factory) -> dict:
    """Run the fault profile; SIGKILL the driver as soon as seed 0's result groups are written;
    rerun the same command to the end. A job counts as finished before the kill if its end event
    was logged (training: artefacts on disk) and, for an evaluation, its groups were written."""
    tmp = tmp_path_factory.mktemp("driver")
    out, log, results = tmp / "out", tmp / "driver.log", tmp / "out" / "results.jsonl"
    profile = fault_profile(tmp / "fault.yaml")
    proc = driver(profile, out, cluster, log)
    wanted = {*FAULT_METHODS, "full-model"}
    wait_for(lambda: wanted <= seed_groups(results).get(0, set()), proc, log)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = events(out)
    gone([a["pid"] for evs in before.values() for a in attempts(evs) if a["end"] is None])
    written = seed_groups(results)
    finished = {k for k, evs in before.items() if any(e["event"] == "end" for e in evs)
                and (k.startswith("train-") or wanted <= written.get(int(k.rpartition("-s")[2]), set()))}
    first_run = {e["run"] for evs in before.values() for e in evs}
    rows_at_kill = len(results.read_text().splitlines())
    proc = driver(profile, out, cluster, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    after = events(out)
    started_again = {k for k, evs in after.items()
                     if any(e["event"] == "start" and e["run"] not in first_run for e in evs)}
    return {"out": out, "finished": finished, "started_again": started_again, "rows_at_kill": rows_at_kill,
            "all_jobs": set(after), "log": log.read_text()}


# ---- tests -----------------------------------------------------------------------------------
def test_smoke_through_ray_equals_local(local_smoke, ray_smoke):
    (local, t_local), (remote, t_ray) = local_smoke, ray_smoke
    print(f"\nsmoke: local {t_local:.1f} s, ray {t_ray:.1f} s")
    assert_complete_groups(remote / "results.jsonl")
    a, b = comparable(local / "results.jsonl"), comparable(remote / "results.jsonl")
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, (differ[:3], [{f: (a[k][f], b[k].get(f)) for f in a[k] if a[k][f] != b[k].get(f)}
                                     for k in differ[:1]])
    run = json.loads((remote / "run.json").read_text())
    assert run["executor"] == "ray" and run["jobs"] == len(events(remote))


def test_killed_training_worker_is_retried_and_resumes(worker_killed, local_smoke):
    out = worker_killed["out"]
    tries = attempts(events(out)["train-synthetic-two-stage-s0"])
    print(f"\nworker kill: pid {worker_killed['pid']} at {worker_killed['checkpoint']}; attempts "
          f"{[(a['pid'], a['end'] is not None) for a in tries]}; run {worker_killed['seconds']:.1f} s")
    assert len(tries) == 2 and tries[0]["pid"] == worker_killed["pid"] and tries[0]["end"] is None
    assert tries[1]["end"] is not None and tries[1]["pid"] != tries[0]["pid"]
    assert "retried" in worker_killed["log"]
    assert "resuming from its checkpoint (stage 1" in worker_killed["log"]
    results = out / "results.jsonl"
    assert_complete_groups(results)
    rows = comparable(results)
    reference = reference_rows(local_smoke)
    assert {k: v for k, v in rows.items() if k[2] == 0} == reference
    assert {k[2] for k in rows} == {0, 1}
    assert not list(out.rglob("checkpoint*")), "training checkpoints left behind"


def test_driver_killed_then_rerun_skips_finished_work(driver_killed, worker_killed, local_smoke):
    d = driver_killed
    print(f"\ndriver kill: {len(d['all_jobs'])} jobs, {len(d['finished'])} finished before the kill "
          f"({sorted(d['finished'])}), {d['rows_at_kill']} rows on disk; started again: "
          f"{sorted(d['started_again'])}")
    assert d["finished"] and d["started_again"], "the kill came too early or too late"
    assert not d["finished"] & d["started_again"], "finished jobs were recomputed"
    results = d["out"] / "results.jsonl"
    assert_complete_groups(results)
    rows = comparable(results)  # fails on a duplicate row
    assert rows == comparable(worker_killed["out"] / "results.jsonl")
    assert {k: v for k, v in rows.items() if k[2] == 0} == reference_rows(local_smoke)


def test_timing_jobs_never_share_a_gpu(ray_smoke, worker_killed, driver_killed):
    timed = []
    for out in (ray_smoke[0], worker_killed["out"], driver_killed["out"]):
        for key, evs in events(out).items():
            for a in attempts(evs):
                if key.startswith("eval-"):
                    assert len(a["gpus"]) == 1, (key, a["gpus"])  # a whole GPU, alone
                    if a["end"] is not None:
                        timed.append((a["gpus"][0], a["t"], a["end"], key))
    assert len(timed) >= 3
    for gpu, start, end, key in timed:
        for gpu2, start2, end2, key2 in timed:
            if (key, start) != (key2, start2) and gpu == gpu2:
                assert end <= start2 or end2 <= start, f"{key} and {key2} overlapped on GPU {gpu}"


def test_executor_settings_are_checked(tmp_path, capsys):
    """Bad executor settings stop before any work, from the command line or a profile."""
    from benchmarks.cli import main

    out = tmp_path / "o"
    for flags, message in ((["--gpus-per-timing", "0"], "gpus_per_timing must be a whole number"),
                           (["--gpus-per-train", "1.5"], "gpus_per_train must be a share"),
                           (["--max-retries", "-1"], "max_retries must be an integer")):
        try:
            code = main(["run", "--profile", "smoke", "--out", str(out), "--executor", "ray", *flags])
        except SystemExit as exc:
            code = exc.code
        assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()
    data = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**data, "executor": "dask"}))
    with pytest.raises(ValueError, match="unknown executor 'dask'; valid: local, ray"):
        Profile.load(str(tmp_path / "p.yaml"))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**data, "executor": "ray", "gpus_per_train": 0.25,
                                                     "ray_address": "auto", "max_retries": 1}))
    profile = Profile.load(str(tmp_path / "p.yaml"))
    runner = Runner(profile, tmp_path / "r", progress=False)
    assert (runner.executor.name, runner.executor.address, runner.executor.max_retries) == ("ray", "auto", 1)
    assert Runner(Profile.load("smoke"), tmp_path / "l", progress=False).executor.name == "local"
