"""The benchmark runner: plan → train → record → replay → live timing → rows → reports.

Each (task, recipe, seed) is trained once and recorded once (one full-depth dev pass); every method
on that recipe is then replayed over its whole knob grid from the record. Rows are written per
(task, method, seed) group by rewriting `results.jsonl` atomically, so a killed run resumes
without duplicate or partial rows. The runner never looks inside a method: it asks the registry
for a recipe and a policy and reads signals.

The work is cut into jobs run by an executor (`benchmarks.executors`: `local` or `ray`):
(a) `train_job` trains, records and caches the FLOPs/timing-model costs of one (task, recipe, seed),
writing everything into the run folder; (b) `eval_job` replays and times one (task, seed) from
those artefacts and yields its result groups. The driver (`Runner.run`) alone writes
`results.jsonl`, one group at a time; a finished model, record or group is never redone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import json
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from de3bert.backbone import load_tokenizer
from de3bert.data import (
    DataError,
    EncodedDataset,
    dev_size,
    get_task,
    load_examples,
    make_loader,
    resolve_data_dir,
    sorted_loader,
    train_size,
)
from de3bert.engine import record_signals, replay_predictions, run_live
from de3bert.flops import DepthFlops, depth_flops
from de3bert.grid import evaluate_grid
from de3bert.metrics import glue_metrics
from de3bert.model import MultiExitModel
from de3bert.record import CorruptRecord, atomic_write_text, load_record, record_meta, save_record
from de3bert.registry import get_method, get_recipe
from de3bert.speedup import flops_speedup, layer_speedup, modelled_speedup, operating_points
from de3bert.ties import TIE_EPS, near_ties, prediction_ties
from de3bert.timing import compare_wallclock, component_times
from de3bert.train import TrainConfig, config_fingerprint, config_hash, first_stage_config, train
from de3bert.weights import WEIGHTS, sidecar

from .executors import Executor, Job, LocalExecutor, Progress, RayExecutor
from .layout import DEV_SUBSET_SEED, RunLayout
from .profiles import Profile
from .results import FULL, Results
from .sanity import check_model
from .serving_settings import parse_settings


def versions() -> dict:
    """Package versions every row records (results say how they were made)."""
    import accelerate
    import datasets
    import sklearn
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__, "scikit-learn": sklearn.__version__}


def train_precision(model) -> str:
    """The precision a model was trained in (`auto` resolved on its training machine)."""
    return model.meta.get("precision") or model.meta.get("train_config", {}).get("precision", "fp32")


def git_commit() -> str | None:
    """The code's commit (with -dirty for local changes), recorded in every row."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def train_job(profile: Profile, layout: RunLayout, data_dir: str | None, progress: bool, task: str,
              recipe: str, seed: int) -> Iterator[tuple[str, object]]:
    """Job (a), run by an executor: train + record + caches of one model into the run folder."""
    runner = Runner(profile, layout, data_dir, progress=progress, driver=False)
    runner.prepare(task, recipe, seed)
    yield "stats", runner.stats


def eval_job(profile: Profile, layout: RunLayout, data_dir: str | None, progress: bool, task: str,
             seed: int, methods: list[str], need_full: bool) -> Iterator[tuple[str, object]]:
    """Job (b), run by an executor: replay + live timing of one (task, seed); yields its groups."""
    runner = Runner(profile, layout, data_dir, progress=progress, driver=False)
    yield from runner.evaluate(task, seed, methods, need_full)
    yield "stats", runner.stats


def merge_run_stats(old: dict | None, new: dict) -> dict:
    """run.json after a (re-)run: a task this run recorded nothing for keeps its earlier record
    and replay statistics (a resumed run reuses the records, so their cost is the earlier one's),
    and the earlier runs' wall times stay listed under `earlier_seconds`."""
    if not old:
        return new
    stats = {**old.get("replay_stats", {})}
    stats.update({t: st for t, st in new["replay_stats"].items() if st.get("records")})
    for t, st in new["replay_stats"].items():
        stats.setdefault(t, st)
    earlier = [*old.get("earlier_seconds", []), old.get("seconds")]
    return {**new, "replay_stats": stats, "earlier_seconds": [s for s in earlier if s is not None]}


def make_executor(profile: Profile, layout: RunLayout) -> Executor:
    """The profile's executor (`local` unless it or `--executor` says `ray`)."""
    if profile.executor == "ray":
        return RayExecutor(layout.jobs, profile.ray_address or None, profile.max_retries)
    return LocalExecutor()


#: dry-run estimate constants (seconds): a replay-only group, a training run's load + save
REPLAY_SECONDS, TRAIN_OVERHEAD_SECONDS = 0.5, 8.0

class Runner:
    """Runs one profile into one output directory (the driver), or one job of it (`driver=False`:
    a worker, which never touches `results.jsonl`)."""

    def __init__(self, profile: Profile, out: str | Path | RunLayout, data_dir: str | None = None,
                 progress: bool = True, executor: Executor | None = None, driver: bool = True):
        self.layout = out if isinstance(out, RunLayout) else RunLayout.for_run(profile.name, out)
        self.p, self.out, self.progress = profile, self.layout.out, progress
        self.data_dir = resolve_data_dir(data_dir)
        self.results = Results(self.layout.results) if driver else None
        self.executor = executor or make_executor(profile, self.layout)
        self.meta = {"versions": versions(), "git_commit": git_commit(), "device": profile.device,
                     "threads": profile.threads, "dtype": "float32", "host": platform.node(),
                     "cpu": platform.processor() or platform.machine()}
        self.stats: dict[str, dict] = {}  # per task: replay cost against one recording pass
        self._keys: dict[tuple, str] = {}
        self._configs: dict[tuple, TrainConfig] = {}
        self._rows: dict[str, int] = {}

    # ---- the plan ------------------------------------------------------------------------------
    def plan(self) -> list[dict]:
        """Every training run and every replay group, in order, with why a pair is skipped."""
        steps = []
        for task_name in self.p.tasks:
            task = get_task(task_name)
            for seed in self.p.seeds_for(task.name):
                recipes, replays = ["single"], []
                for name in self.p.methods_for(task.name, seed):
                    m = get_method(name)
                    ok, why = m.supports(task.num_labels)
                    replays.append({"kind": "replay", "task": task.name, "method": name,
                                    "recipe": m.recipe, "seed": seed, "skip": None if ok else why})
                    if ok and m.recipe not in recipes:
                        recipes.append(m.recipe)
                steps += [{"kind": "train", "task": task.name, "recipe": r, "seed": seed, "skip": None}
                          for r in recipes]
                steps += replays
        return steps

    def estimate(self, plan: list[dict], costs: dict) -> dict[str, dict[str, float]]:
        """Seconds of the plan per task and part (train, record, timed, replay) from per-task
        costs (`benchmarks.estimate`: measured here, or pinned by the profile): every stage's
        optimizer steps × step time × the stage's relative cost (a shared first stage counted
        once), one dev record per trained model, and per replay group its live timing (timed
        groups) or replay alone."""
        from .estimate import record_seconds, timed_seconds

        parts: dict[str, dict[str, float]] = {}
        for s in plan:
            if s["skip"]:
                continue
            task, c = s["task"], costs[s["task"]]
            p = parts.setdefault(task, {"train": 0.0, "record": 0.0, "timed": 0.0, "replay": 0.0})
            dev = self._dev_rows(task)
            if s["kind"] == "train":
                p["train"] += self.train_estimate(task, s["recipe"], s["seed"], c.step)
                p["record"] += record_seconds(self.p, task, c, dev)
            elif self.timed(s["method"]) and self.p.timed_seed(task, s["seed"]):
                p["timed"] += timed_seconds(self.p, task, c, dev)
            else:
                p["replay"] += REPLAY_SECONDS
        return parts

    def train_estimate(self, task: str, recipe: str, seed: int, per_step: float) -> float:
        """Seconds to train one model: steps per stage × seconds per step × the stage's cost,
        plus loading and saving; a first stage shared with another planned run is free here."""
        return self.train_steps(task, recipe, seed, per_step) + TRAIN_OVERHEAD_SECONDS

    def train_steps(self, task: str, recipe: str, seed: int, per_step: float = 1.0) -> float:
        """Optimizer steps of one training (stages weighted by their cost) × `per_step`."""
        cfg = self.train_config(task, recipe, seed)
        n = min(cfg.train_limit or float("inf"), self._train_rows(task))
        steps = np.ceil(n / cfg.batch_size / cfg.grad_accum_steps) * cfg.epochs
        stages = get_recipe(recipe).stages()
        if cfg.first_stage_dir:  # trained (and counted) as its own run
            stages = stages[1:]
        return float(sum(steps * per_step * st.cost for st in stages))

    def _dev_rows(self, task: str) -> int:
        """Dev rows a run evaluates (local file, else published; `dev_limit` applied), counted once."""
        key = f"dev:{task}"
        if key not in self._rows:
            n = dev_size(get_task(task), self.data_dir)
            self._rows[key] = min(n, self.p.dev_limit) if self.p.dev_limit else n
        return self._rows[key]

    def _train_rows(self, task: str) -> int:
        """The task's training-set size (local file, else published), counted once per run."""
        if task not in self._rows:
            self._rows[task] = train_size(get_task(task), self.data_dir)
        return self._rows[task]

    # ---- stages --------------------------------------------------------------------------------
    def train_config(self, task: str, recipe: str, seed: int) -> TrainConfig:
        """The TrainConfig of one (task, recipe, seed): profile budget, train_settings, run-folder
        paths. Made once per key (sharing a first stage hashes data and backbone files); a copy."""
        k = (task, recipe, seed)
        if k not in self._configs:
            self._configs[k] = self._make_train_config(task, recipe, seed)
        return dataclasses.replace(self._configs[k])

    def _make_train_config(self, task: str, recipe: str, seed: int) -> TrainConfig:
        base, _ = self.p.recipe_train(task, recipe, seed, self.data_dir)  # train_settings hook
        if isinstance(base.get("head_options"), dict):
            base["head_options"] = json.dumps(base["head_options"])
        cfg = TrainConfig(task=task, recipe=recipe, backbone=self.p.backbone, data_dir=self.data_dir or "",
                          seed=seed, out_dir=str(self.layout.model_dir(task, recipe, seed)),
                          progress=self.progress, **base)
        return self._share_first_stage(cfg)

    def _share_first_stage(self, cfg: TrainConfig) -> TrainConfig:
        """Point a recipe whose first stage is another recipe's run (two-stage: `single`) at that
        run's folder when this profile trains the identical config there (so it is trained once);
        under other settings (e.g. `train_settings: original`) it keeps its own copy."""
        shared = first_stage_config(cfg)
        if shared is None:
            return cfg
        theirs = self.train_config(cfg.task, shared.recipe, cfg.seed)
        # out_dir is not hashed; the data is the same task's (and need not be here for a dry run)
        if config_fingerprint(shared, with_data=False) == config_fingerprint(theirs, with_data=False):
            return dataclasses.replace(cfg, first_stage_dir=theirs.out_dir)
        return cfg

    def model_key(self, task: str, recipe: str, seed: int) -> str:
        """The config hash of one training (`de3bert.train.config_hash`): keys its record and caches."""
        k = (task, recipe, seed)
        if k not in self._keys:
            self._keys[k] = config_hash(self.train_config(task, recipe, seed))
        return self._keys[k]

    def group_hash(self, task: str, method: str, seed: int) -> str:
        """Hash of everything that determines one result group: the method's model and the full
        model, the method's options, the dev subset, the targets and the timing settings."""
        recipe = "single" if method == FULL else get_method(method).recipe
        options = {} if method == FULL else get_method(method).options
        payload = {"model": self.model_key(task, recipe, seed), "full": self.model_key(task, "single", seed),
                   "method": method, "options": options, "dev_limit": self.p.dev_limit,
                   "targets": self.p.speedup_targets, "timing": self.p.timing}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def _cached_json(self, path: Path, key: str) -> dict | None:
        """A cache file's content if it was made for config `key` (else None: recompute)."""
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        return d if d.get("config_hash") == key else None

    def trained_model(self, task: str, recipe: str, seed: int) -> MultiExitModel:
        """Train (or load the finished training of) one (task, recipe, seed), on the run's device."""
        return train(self.train_config(task, recipe, seed)).to(self.device)

    @property
    def device(self) -> str:
        """The profile's device, or the CPU (with a note) when it asks for a missing GPU."""
        if self.p.device.startswith("cuda") and not torch.cuda.is_available():
            tqdm.write(f"[runner] profile asks for {self.p.device} but none is available; using the CPU")
            return "cpu"
        return self.p.device

    def dev_set(self, task_name: str, seed: int):
        """The encoded dev split (subsampled by `dev_limit`) and its tokenizer."""
        task = get_task(task_name)
        cfg = self.train_config(task_name, "single", seed)
        tok = load_tokenizer(self.p.backbone)
        ex = load_examples(task, "dev", self.data_dir, self.p.dev_limit or None, DEV_SUBSET_SEED)
        return EncodedDataset(ex, tok, cfg.max_seq_length, task.is_regression), tok

    def record_key(self, task: str, recipe: str, seed: int) -> str:
        """The key of a dev record: its model's config hash, and the dev subset when `dev_limit`
        is set (a changed subset must not reuse a record of another one)."""
        key = self.model_key(task, recipe, seed)
        return f"{key}:dev{self.p.dev_limit}" if self.p.dev_limit else key

    def record(self, task: str, recipe: str, seed: int, model: MultiExitModel, ds, tok) -> dict:
        """The dev record of one trained model: loaded if intact, rebuilt if missing or corrupt."""
        path, key = self.layout.record(task, recipe, seed), self.record_key(task, recipe, seed)
        try:
            rec = load_record(path)
            if record_meta(path).get("config_hash") == key:
                return rec
            tqdm.write(f"[runner] {path} was recorded from another configuration; rebuilding it")
        except FileNotFoundError:
            pass
        except CorruptRecord as err:
            tqdm.write(f"[runner] {err}; rebuilding the record")
        loader = sorted_loader(ds, 64, pad_token_id=tok.pad_token_id or 0)  # rows come back in dev order
        t0 = time.perf_counter()
        rec = record_signals(model, loader, progress=self.progress)
        self._stat(task, "record_seconds", time.perf_counter() - t0)
        self._stat(task, "records", 1)
        save_record(rec, path, {"task": task, "recipe": recipe, "seed": seed, "config_hash": key,
                                "seconds": time.perf_counter() - t0,
                                "mean_length": float(np.mean(ds.lengths()))})
        return rec

    def flops(self, task: str, recipe: str, seed: int) -> DepthFlops:
        """FLOPs per component of one trained model (cached next to it, keyed by its config)."""
        path = self.layout.model_dir(task, recipe, seed) / "flops.json"
        key = self.model_key(task, recipe, seed)
        d = self._cached_json(path, key)
        if d is not None:
            return DepthFlops(np.array(d["embed"]), np.array(d["layers"]), np.array(d["heads"]))
        eager = MultiExitModel.load(path.parent / "final", attn_implementation="eager")
        f = depth_flops(eager)
        atomic_write_text(path, json.dumps({"embed": f.embed.tolist(), "layers": f.layers.tolist(),
                                            "heads": f.heads.tolist(), "config_hash": key}))
        return f

    def times(self, task: str, recipe: str, seed: int, model, items) -> dict:
        """Per-component batch-1 times of one trained model (the timing model; cached, keyed)."""
        path = self.layout.model_dir(task, recipe, seed) / "times.json"
        key = self.model_key(task, recipe, seed)
        t = self._cached_json(path, key)
        if t is None:
            t = {**component_times(model, items[: min(len(items), 24)], repeats=2), "config_hash": key}
            atomic_write_text(path, json.dumps(t))
        return t

    def _stat(self, task: str, key: str, value: float) -> None:
        st = self.stats.setdefault(task, {})
        st[key] = st.get(key, 0) + value

    # ---- rows ----------------------------------------------------------------------------------
    def base_row(self, task, method, recipe, seed, model) -> dict:
        """Fields every row of a group shares: what was run, with which configuration, where."""
        return {"task": task, "method": method, "recipe": recipe, "seed": seed,
                "backbone": self.p.backbone, "profile": self.p.name,
                "num_layers": model.num_layers, "config_hash": self.model_key(task, recipe, seed),
                "group_hash": self.group_hash(task, method, seed),
                "full_config_hash": self.model_key(task, "single", seed),
                "operating_point_selection": "dev",  # `operating_point` marks: tuned and scored on dev
                "train_precision": train_precision(model),
                "train_settings": self.p.recipe_train(task, recipe, seed, self.data_dir)[1],
                "config": {"train": model.meta.get("train_config", {}),
                           "model": {k: v for k, v in model.meta.items() if k != "train_config"}},
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **self.meta}

    def check_data(self) -> None:
        """Fail before anything is trained or written when a local task file is missing."""
        for name in dict.fromkeys(get_task(t).name for t in self.p.tasks):
            spec = get_task(name)
            if spec.name == "synthetic" or not self.data_dir:
                continue
            root = Path(self.data_dir)
            if not root.is_dir():
                raise DataError(f"data dir {root} does not exist")
            for fname in ("train.tsv", spec.dev_file):
                if not (root / spec.folder / fname).is_file():
                    raise DataError(f"missing data file {root / spec.folder / fname} "
                                    f"for task {spec.name}")

    def run(self) -> None:
        """Plan, cut the plan into jobs, run them on the executor, write each group as it arrives."""
        torch.set_num_threads(self.p.threads)
        plan = self.plan()
        self.check_data()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "profile.json", json.dumps(asdict(self.p), indent=2))
        jobs = self.jobs(plan)
        progress = Progress(len(jobs), self.progress, f"profile {self.p.name}")
        t_start = time.perf_counter()
        try:
            self.executor.run(jobs, self._emit, progress)
        except OSError as err:
            if err.errno == errno.ENOSPC:  # the CLI's one line says how much more the run needs
                err.space_needed = self.space_needed(plan)
            raise
        finally:
            progress.close()
        self.serve_load()
        elapsed = time.perf_counter() - t_start
        for st in self.stats.values():
            if st.get("records") and st.get("replay_groups"):
                one_pass = st["record_seconds"] / st["records"]
                st["replay_vs_one_pass"] = st["replay_seconds"] / one_pass
        run = {"seconds": elapsed, "executor": self.executor.name, "jobs": len(jobs),
               "replay_stats": self.stats, **self.meta}
        path = self.out / "run.json"
        old = json.loads(path.read_text()) if path.is_file() else None
        atomic_write_text(path, json.dumps(merge_run_stats(old, run), indent=2))

    def serve_load(self) -> None:
        """The profile's load benchmark (`serving.tasks`), after every model is trained and
        recorded: one task at a time in this process, never beside another job (it times)."""
        settings = parse_settings(self.p.serving or {}, "serving")
        if settings.tasks:
            from .serving import run_phase

            run_phase(self.layout, settings, self.data_dir, self.progress)

    def space_needed(self, plan: list[dict]) -> str:
        """What the rest of the plan still writes, from the size of the models saved so far."""
        saved = [self.layout.model_dir(s["task"], s["recipe"], s["seed"]) / "final" / WEIGHTS
                 for s in plan if s["kind"] == "train"]
        todo = [p for p in saved if not p.is_file()]
        sizes = [p.stat().st_size for p in self.out.glob(f"models/*/*/final/{WEIGHTS}")]
        if not sizes:
            return f"{len(todo)} models still to train; `--dry-run` prints the disk the plan needs"
        each = max(sizes)
        if not todo:
            return "every model is trained; the rest writes records, results and tables (a few MB)"
        return (f"about {len(todo) * each / 1e6:.0f} MB more for the {len(todo)} models still to train, "
                f"plus {3 * each / 1e6:.0f} MB while one trains")

    def _emit(self, job: Job, output: tuple[str, object]) -> None:
        """In the driver: a job's result group goes to results.jsonl, its stats to run.json."""
        kind, value = output
        if kind == "group":
            self.results.add_group(value)
            return
        for task, st in value.items():
            for key, v in st.items():
                self._stat(task, key, v)

    def prepared(self, task: str, recipe: str, seed: int) -> bool:
        """Whether job (a) of this model finished *for the current config*: final model, record,
        FLOPs and timing caches, each stamped with the model's config hash."""
        model, rec = self.layout.model_dir(task, recipe, seed), self.layout.record(task, recipe, seed)
        if not all(p.is_file() for p in (model / "final" / "config_hash.json", model / "flops.json",
                                         model / "times.json", rec, rec.with_name(rec.name + ".json"))):
            return False
        key = self.model_key(task, recipe, seed)
        stamps = (json.loads((model / "final" / "config_hash.json").read_text()).get("hash"),
                  (self._cached_json(model / "flops.json", key) or {}).get("config_hash"),
                  (self._cached_json(model / "times.json", key) or {}).get("config_hash"))
        return all(s == key for s in stamps) and record_meta(rec).get("config_hash") == \
            self.record_key(task, recipe, seed)

    def jobs(self, plan: list[dict]) -> list[Job]:
        """The unfinished work as jobs, in dependency order: per (task, seed) the training jobs of
        every model a missing group needs (unless finished), then one evaluation job."""
        jobs = []
        for task in dict.fromkeys(get_task(t).name for t in self.p.tasks):
            for seed in self.p.seeds_for(task):
                steps = [s for s in plan if s["task"] == task and s["seed"] == seed]
                jobs += self.task_jobs(task, seed, steps)
        return jobs

    def task_jobs(self, task: str, seed: int, steps: list[dict]) -> list[Job]:
        """Jobs of one (task, seed); none when every group is already in results.jsonl."""
        replays = [s for s in steps if s["kind"] == "replay"]
        for s in replays:
            if s["skip"]:
                tqdm.write(f"[runner] skip {task} × {s['method']}: {s['skip']}")
        todo = [s for s in replays if not s["skip"]
                and not self.results.done(task, s["method"], seed, self.group_hash(task, s["method"], seed))]
        need_full = not self.results.done(task, FULL, seed, self.group_hash(task, FULL, seed))
        if not todo and not need_full:
            return []
        args = (self.p, self.layout, self.data_dir, self.progress and self.executor.name == "local")
        cpus, cuda = float(self.p.threads), self.p.device.startswith("cuda")
        trains = [Job(f"train-{task}-{r}-s{seed}", "train", train_job, (*args, task, r, seed),
                      gpus=self.p.gpus_per_train, cpus=cpus, label=f"train {task} {r} seed {seed}",
                      fresh_worker=cuda)
                  for r in dict.fromkeys(["single", *(s["recipe"] for s in todo)])
                  if not self.prepared(task, r, seed)]
        methods = [s["method"] for s in todo]
        evaluation = Job(f"eval-{task}-s{seed}", "eval", eval_job, (*args, task, seed, methods, need_full),
                         after=tuple(j.key for j in trains), gpus=self.p.gpus_per_timing, cpus=cpus,
                         label=f"replay+timing {task} seed {seed} ({len(methods)} methods)",
                         fresh_worker=cuda)
        return [*trains, evaluation]

    # ---- the two jobs (run by the executor, in this process or a worker) -------------------------
    def prepare(self, task: str, recipe: str, seed: int) -> None:
        """Job (a): train (resuming from its own checkpoint), record the dev set, cache FLOPs and
        timing-model costs; everything lands in the run folder."""
        torch.set_num_threads(self.p.threads)
        ckpt = self.layout.model_dir(task, recipe, seed) / "checkpoint" / "progress.json"
        if ckpt.is_file():
            at = json.loads(ckpt.read_text())
            tqdm.write(f"[runner] train {task} {recipe} seed {seed}: resuming from its checkpoint "
                       f"(stage {at['stage']}, step {at['global_step']})")
        model = self.trained_model(task, recipe, seed)
        ds, tok = self.dev_set(task, seed)
        rec = self.record(task, recipe, seed, model, ds, tok)
        self.guard(task, recipe, seed, rec)
        self.flops(task, recipe, seed)
        self.times(task, recipe, seed, model, self.timing_items(ds))

    def guard(self, task: str, recipe: str, seed: int, rec: dict) -> None:
        """The sanity guard as the model finishes: a flag line when its deepest exit is more than
        `sanity.GAP` points below `single`'s (when single's record is there already)."""
        single = self.layout.record(task, "single", seed)
        if recipe == "single" or not single.is_file():
            return
        row = check_model(task, recipe, seed, rec, load_record(single))
        if row.flagged:
            tqdm.write(f"[runner] sanity: {row.line()}")

    def timing_items(self, ds) -> list:
        """The dev samples every live timing and timing-model measurement uses (the first few)."""
        return [ds[i] for i in range(min(len(ds), int(self.p.timing.get("samples", 64))))]

    def evaluate(self, task: str, seed: int, methods: list[str], need_full: bool
                 ) -> Iterator[tuple[str, object]]:
        """Job (b): the full model's row (if missing), then each method's group: replayed from its
        record, operating points timed live. Yields ("group", rows) as each group is done."""
        torch.set_num_threads(self.p.threads)
        recipes = dict.fromkeys(["single", *(get_method(m).recipe for m in methods)])
        models = {r: self.trained_model(task, r, seed) for r in recipes}
        ds, tok = self.dev_set(task, seed)
        lengths = np.array(ds.lengths())
        items = self.timing_items(ds)
        self._dev = make_loader(ds, 32, shuffle=False, pad_token_id=tok.pad_token_id or 0)  # check_live
        full = models["single"]
        full_rec = self.record(task, "single", seed, full, ds, tok)
        full_flops = self.flops(task, "single", seed)
        full_times = self.times(task, "single", seed, full, items)
        if need_full:
            yield "group", [self.full_row(task, seed, full, full_rec, full_flops, lengths)]
        for name in methods:
            recipe = get_method(name).recipe
            model = models[recipe]
            rec = self.record(task, recipe, seed, model, ds, tok)
            yield "group", self.replay_method(task, seed, name, model, rec, lengths,
                                              self.flops(task, recipe, seed), full_flops,
                                              self.times(task, recipe, seed, model, items), full_times,
                                              full, items)
        if self.p.keep_models == "none":
            self.drop_weights(task, seed, list(recipes))

    def drop_weights(self, task: str, seed: int, recipes: list[str]) -> None:
        """`keep_models: none`: delete the weights of this (task, seed)'s models, keeping their
        config, records and caches (a later change that needs a model trains it again)."""
        freed = 0
        for recipe in recipes:
            weights = self.layout.model_dir(task, recipe, seed) / "final" / WEIGHTS
            if weights.is_file():
                freed += weights.stat().st_size
                weights.unlink()
                sidecar(weights).unlink(missing_ok=True)
        tqdm.write(f"[runner] keep_models: none: deleted {len(recipes)} model(s) of {task} seed {seed} "
                   f"({freed / 1e6:.0f} MB)")

    def full_row(self, task, seed, full, full_rec, full_flops, lengths) -> dict:
        """The plain fine-tune's one row per (task, seed): every sample at the last layer."""
        spec, n = get_task(task), len(lengths)
        metric = glue_metrics(spec.metrics, replay_predictions(full_rec, torch.tensor(
            [[full.num_layers] * n]))[0], full_rec["labels"])
        return self.base_row(task, FULL, "single", seed, full) | {
            "knob": {"name": "none", "value": None}, "metric": metric,
            "headline_metric": spec.headline_metric, "speedup_layers": 1.0, "speedup_flops": 1.0,
            "speedup_wallclock": 1.0, "speedup_wallclock_b32": 1.0, "speedup_wallclock_model": 1.0,
            "mean_exit_layer": float(full.num_layers),
            "exit_histogram": [0] * (full.num_layers - 1) + [n],
            "gflops_per_sample": float(full_flops.full_model(lengths).mean() / 1e9),
            "operating_point": None, "n_samples": n,
            "near_ties": {"eps": TIE_EPS, "exit": 0, "prediction": int(prediction_ties(  # last layer's
                {"logits": full_rec["logits"][-1:]}, torch.ones(1, n, dtype=torch.long)).sum())}}

    def replay_method(self, task, seed, name, model, rec, lengths, flops, full_flops, times, full_times,
                      full_model, items) -> list[dict]:
        """One method's group: every knob value of its (refined) grid replayed from the record,
        metrics and three speed-ups per row, operating points marked and timed live."""
        spec, method = get_task(task), get_method(name)
        policy = method.make_policy(spec.num_labels, model.num_layers)
        t0 = time.perf_counter()
        result = evaluate_grid(policy, rec, spec, targets=self.p.speedup_targets)
        grid, exits = result.values, result.exits  # exits [K, N]
        ties = near_ties(policy, rec, grid, exits)
        L, n = model.num_layers, exits.shape[1]
        rows = []
        for k, value in enumerate(grid):
            e = exits[k].numpy()
            sp_flops, gflops = flops_speedup(e, lengths, flops, full_flops)
            hist = np.bincount(e - 1, minlength=L).tolist()
            rows.append(self.base_row(task, name, method.recipe, seed, model) | {
                "knob": {"name": policy.knob.name, "value": value},
                "metric": result.metrics[k], "headline_metric": spec.headline_metric,
                "speedup_layers": result.speedups[k], "speedup_flops": sp_flops,
                "speedup_wallclock": None, "speedup_wallclock_b32": None,
                "speedup_wallclock_model": modelled_speedup(times, full_times, e),
                "mean_exit_layer": float(e.mean()), "exit_histogram": hist, "gflops_per_sample": gflops,
                "operating_point": None, "n_samples": n, "near_ties": ties[k], **method.describe()})
        self._stat(task, "replay_seconds", time.perf_counter() - t0)
        self._stat(task, "replay_groups", 1)
        self._stat(task, "knob_values", len(grid))
        self.mark_operating_points(rows, exits, name, policy, model, full_model, items)
        side = self.layout.exits(task, name, seed)
        side.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(side, json.dumps({"knob": policy.knob.name, "values": grid,
                                            "exit_layers": exits.tolist()}))
        return rows

    def timed(self, name: str) -> bool:
        """Whether the profile times `name` live at its operating points (`timing.methods`)."""
        timed = self.p.timing.get("methods", "all")
        method = get_method(name)
        if method.report_only:
            return False
        if timed == "main":
            return not method.ablation_of
        return timed == "all" or name in timed

    def mark_operating_points(self, rows, exits, name, policy, model, full_model, items) -> None:
        """For each target, the knob whose layer speed-up is the smallest ≥ target; time it live."""
        points = operating_points([r["speedup_layers"] for r in rows], self.p.speedup_targets)
        for target, i in points.items():
            rows[i]["operating_point"] = sorted({*(rows[i]["operating_point"] or []), target})
            timed = self.timed(name) and self.p.timed_seed(rows[i]["task"], rows[i]["seed"])
            if rows[i]["speedup_wallclock"] is None and timed:
                knob = rows[i]["knob"]["value"]
                rows[i].update(self.time_live(name, policy, knob, model, full_model, items,
                                              exits[i, : len(items)].tolist()))
                rows[i].update(self.check_live(name, policy, knob, model, exits[i], rows[i]["live_agrees"]))

    def check_live(self, name, policy, knob, model, replayed: torch.Tensor, timed_agree: bool) -> dict:
        """Live early exit over the *whole* dev set at one operating point (batch 32, shrinking)
        against replay: `live_agrees` and the number of samples whose exit layer differs."""
        live = run_live(model, policy, knob, self._dev)
        differ = int((live.exit_layers != replayed).sum())
        if differ:
            tqdm.write(f"[runner] WARNING {name}: live exits differ from replay on {differ} of "
                       f"{replayed.numel()} dev samples at {policy.knob.name}={knob:g}")
        return {"live_agrees": bool(timed_agree and differ == 0), "live_disagreements": differ,
                "live_checked": int(replayed.numel())}

    def time_live(self, name, policy, knob, model, full_model, items, replayed) -> dict:
        """Batch-1 and batched wall-clock speed-ups at one knob, and whether live exits = replay."""
        t = self.p.timing
        repeats = int(t.get("repeats", 3))
        t1 = compare_wallclock(full_model, model, policy, knob, items, 1, repeats, int(t.get("warmup", 4)))
        tb = compare_wallclock(full_model, model, policy, knob, items, int(t.get("batch_size", 32)),
                               repeats, 1)
        agrees = t1["exit_layers"] == replayed and tb["exit_layers"] == replayed
        if not agrees:
            diff = sum(a != b for a, b in zip(t1["exit_layers"], replayed, strict=True))
            tqdm.write(f"[runner] WARNING {name}: live exits differ from replay on {diff} samples")
        return {"speedup_wallclock": t1["speedup"], "speedup_wallclock_b32": tb["speedup"],
                "wallclock": {k: v for k, v in t1.items() if k != "exit_layers"},
                "wallclock_b32": {k: v for k, v in tb.items() if k != "exit_layers"},
                "speedup_layers_timed_subset": layer_speedup(replayed, model.num_layers),
                "live_agrees": agrees}
