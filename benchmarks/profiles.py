"""Run profiles (`smoke`, `default`, `paper`): YAML files mapped onto one dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from de3bert.data import get_task, load_examples
from de3bert.options import parse_options
from de3bert.precision import check_precision
from de3bert.recipes import settings_for
from de3bert.registry import METHODS, get_recipe, unknown_name

from .serving_settings import parse_settings

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class TimingSettings:
    """The profile's `timing:` block (live wall-clock runs at the operating points)."""

    samples: int = 64
    """Dev samples every live timing uses (the first ones)."""
    repeats: int = 3
    """Timed repetitions (the median is reported)."""
    warmup: int = 4
    """Untimed passes first."""
    batch_size: int = 32
    """Batch of the batched (shrinking) timing."""
    methods: str | list = "all"
    """`all`, `main` (methods that are not ablations) or a list of method names."""
    seeds: str = "all"
    """`all` or `first` (time each task's first seed only)."""


@dataclass(frozen=True)
class BootstrapSettings:
    """The profile's `bootstrap:` block (how the uncertainty tables and claims are computed)."""

    replicates: int = 1000
    """Bootstrap replicates."""
    seed: int = 0
    """Seed of the resampling and of the cross-fit folds."""
    ci: str = "percentile"
    """Interval method: percentile or BCa."""
    alpha: float = 0.05
    """Significance level after Benjamini–Hochberg control."""
    subject: str = "de3"
    """The method whose claims the report checks."""


_MIN = {"samples": 1, "repeats": 1, "warmup": 0, "batch_size": 1, "replicates": 1, "train_limit": 0,
        "grad_accum_steps": 1, "max_seq_length": 8, "checkpoint_every": 1, "group_by_length": 0}
_POSITIVE = ("lr", "epochs")
KEEP_MODELS = ("all", "none")
#: TrainConfig fields the runner sets for every model (a profile's `train:` may not)
RUNNER_OWNED = ("task", "recipe", "seed", "backbone", "out_dir", "data_dir", "first_stage_dir", "progress")


def _typed(cls: type, values, where: str):
    """`values` as an instance of `cls`: unknown keys (with did-you-mean), wrong types and values
    below their minimum fail with the key named (`de3bert.options.parse_options`)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}")
    opts = parse_options(cls, values, where)
    for key in values:
        value = getattr(opts, key)
        if key in _MIN and isinstance(value, int) and value < _MIN[key]:
            raise ValueError(f"{where}: {key}={value} must be ≥ {_MIN[key]}")
        if key in _POSITIVE and not value > 0:
            raise ValueError(f"{where}: {key}={value} must be > 0")
    return opts


def _train_fields(values, where: str) -> None:
    """A `train:` (or `task_train.<task>:`) block names TrainConfig fields with valid values;
    `head_options` may be a mapping (checked by the recipe when it trains)."""
    from de3bert.train import TrainConfig

    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping of TrainConfig fields, got {values!r}")
    owned = sorted(set(values) & set(RUNNER_OWNED))
    if owned:
        raise ValueError(f"{where}: {', '.join(owned)} cannot be set here (the runner sets them per "
                         "model; use the profile's top-level `tasks`, `seeds`, `backbone` and `--out`)")
    rest = {k: v for k, v in values.items() if k != "head_options"}
    _typed(TrainConfig, rest, where)
    check_precision(values.get("precision", "auto"))


@dataclass
class Profile:
    """Everything a benchmark run does: which models to train and which methods to replay."""

    name: str
    """Profile name (smoke, default, paper)."""
    backbone: str = "embedded:all-MiniLM-L6-v2"
    """Backbone: Hub id, local path, `embedded:all-MiniLM-L6-v2`, or `tiny-random` (smoke)."""
    tasks: list[str] = field(default_factory=lambda: ["mrpc"])
    """GLUE tasks (or `synthetic`)."""
    methods: list[str] | str = "all"
    """Registered methods to evaluate: `all` (every registered method) or a list (`de3bert list`)."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """One trained model per (task, recipe, seed)."""
    train: dict = field(default_factory=dict)
    """TrainConfig fields shared by every training run (lr, epochs, batch_size, ...)."""
    task_train: dict = field(default_factory=dict)
    """Per-task TrainConfig overrides, e.g. {sst2: {train_limit: 2000}}."""
    method_tasks: dict = field(default_factory=dict)
    """Restrict a method to some tasks, e.g. {fastbert: [mrpc, rte]} (others run everywhere)."""
    task_seeds: dict = field(default_factory=dict)
    """Restrict a task to some of `seeds`, e.g. {stsb: [42]} (others run on every seed)."""
    method_seeds: dict = field(default_factory=dict)
    """Restrict a method to some of `seeds`, e.g. {fastbert: [42]} (others run on every seed)."""
    dev_limit: int = 0
    """Evaluate on this many dev samples (0 = the whole dev split)."""
    speedup_targets: list[float] = field(default_factory=lambda: [1.5, 2.0])
    """Layer speed-ups at which the paper-style table picks each method's operating point."""
    timing: dict = field(default_factory=lambda: {"samples": 64, "repeats": 3, "warmup": 4,
                                                  "batch_size": 32, "methods": "all"})
    """Live wall-clock runs at the operating points: samples, repeats, warmup, batched size,
    methods: `all`, `main` (every method that is not an ablation) or a list, and seeds: `all` or
    `first` (wall-clock is a property of the method, not of the seed: time the first seed only)."""
    threads: int = 2
    """torch threads for every measurement (recorded in the results)."""
    device: str = "cpu"
    """cpu or cuda."""
    step_seconds: dict = field(default_factory=dict)
    """--dry-run only: pinned seconds per full fine-tune step by task (or `default`); empty = time
    a few real steps on this machine (pin them to price a GPU plan on a CPU machine)."""
    record_seconds: dict = field(default_factory=dict)
    """--dry-run with pinned step_seconds: seconds per trained model's dev record and caches (5)."""
    timed_seconds: dict = field(default_factory=dict)
    """--dry-run with pinned step_seconds: seconds per timed replay group (20)."""
    selection: str = "crossfit"
    """Operating-point protocol of the uncertainty tables: crossfit (default) or dev (literature)."""
    bootstrap: dict = field(default_factory=dict)
    """Bootstrap settings: replicates (1000), seed (0), ci (percentile|BCa), alpha (0.05), subject (de3)."""
    executor: str = "local"
    """Where jobs run: `local` (this process, one after another) or `ray` (Ray tasks, to use every GPU)."""
    ray_address: str = ""
    """Ray cluster to join (`auto` or HOST:PORT); empty starts a local Ray instance on this machine."""
    gpus_per_train: float = 1.0
    """GPU share a training job requests under Ray; fractional (0.25) packs small fine-tunes on one GPU."""
    gpus_per_timing: int = 1
    """Whole GPUs a replay + timing job holds under Ray, so that wall-clock timings never share a device."""
    max_retries: int = 3
    """Times Ray retries a job whose worker or node died (it resumes from its own checkpoint)."""
    keep_models: str = "all"
    """`all`: every trained model stays in the run folder (export works any time); `none`: a
    (task, seed)'s model weights are deleted once its evaluation job has written its groups (the
    records and caches stay; `--dry-run` prints the disk either way)."""
    train_settings: str = "equal"
    """`equal`: every recipe trains with `train` (one budget, fair); `original`: each recipe's
    published settings (spec: baselines.md, *Published training settings*) override it."""
    serving: dict = field(default_factory=dict)
    """The load benchmark (`de3bert serve-bench`, docs/serving.md): loads, slo_ms, duration_s,
    max_batch, max_wait_ms, schedulers, ... (`benchmarks.serving_settings.ServingSettings`); empty:
    off (the default)."""

    @classmethod
    def load(cls, name_or_path: str) -> Profile:
        """A profile by name (benchmarks/profiles/NAME.yaml) or path; every key and name checked."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            valid = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"unknown profile {name_or_path!r}; valid profiles: {', '.join(valid)} "
                                    "(or a path to a .yaml file)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from err
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a profile is a YAML mapping of keys {sorted(known)}, "
                             f"got {type(data).__name__}")
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown profile keys {sorted(unknown)}; valid: {sorted(known)}")
        if "name" not in data:
            raise ValueError(f"{path}: the profile needs a `name`")
        for key in ("tasks", "methods", "seeds", "speedup_targets"):  # a bare string would be
            if key in data and not isinstance(data[key], list):  # iterated letter by letter
                if key == "methods" and data[key] == "all":
                    continue
                raise ValueError(f"{path}: `{key}` must be a list, e.g. {key}: [{data[key]}]"
                                 + (" (or `all`)" if key == "methods" else ""))
        profile = cls(**data)
        profile.method_names()  # unknown method names fail here, before any work
        profile.check_values(path)
        profile.check_seeds_and_timing(path)
        profile.check_statistics(path)
        profile.check_execution()
        return profile

    def check_values(self, where: Path | str) -> None:
        """Every nested block typed and every value in range, before any work (issue 26): tasks
        known, seeds unique, targets > 1, limits ≥ 0, `train`/`task_train` TrainConfig fields."""
        for task in self.tasks:
            get_task(task)
        if len(set(self.seeds)) != len(self.seeds) or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError(f"{where}: seeds={self.seeds} must be distinct integers")
        bad = [t for t in self.speedup_targets if not (isinstance(t, int | float) and t > 1)]
        if bad or not self.speedup_targets:
            raise ValueError(f"{where}: speedup_targets={self.speedup_targets}: every target must be a "
                             "speed-up > 1 (e.g. [1.5, 2.0])")
        for key in ("dev_limit", "threads"):
            value, low = getattr(self, key), 0 if key == "dev_limit" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{where}: {key}={value!r} must be an integer ≥ {low}"
                                 + (" (0 = the whole dev split)" if key == "dev_limit" else ""))
        _train_fields(self.train, f"{where}: train")
        for task, values in self.task_train.items():
            if get_task(task).name not in {get_task(t).name for t in self.tasks}:
                raise ValueError(f"{where}: task_train.{task}: not one of the profile's tasks {self.tasks}")
            _train_fields(values, f"{where}: task_train.{task}")
        _typed(TimingSettings, self.timing, f"{where}: timing")
        if self.serving:
            self.check_serving(where)
        if self.keep_models not in KEEP_MODELS:
            raise ValueError(f"{where}: keep_models={self.keep_models!r}; valid: {', '.join(KEEP_MODELS)}")

    def check_serving(self, where: Path | str) -> None:
        """The `serving:` block typed; its tasks the run's (models kept) and its targets the run's."""
        serve = parse_settings(self.serving, f"{where}: serving")
        ours = {get_task(t).name for t in self.tasks}
        if [t for t in serve.tasks if get_task(t).name not in ours]:
            raise ValueError(f"{where}: serving.tasks {serve.tasks}: not among the profile's tasks "
                             f"{self.tasks}")
        if serve.tasks and self.keep_models == "none":
            raise ValueError(f"{where}: serving.tasks needs the models: keep_models: all")
        extra = [t for t in serve.targets if not any(math.isclose(t, x) for x in self.speedup_targets)]
        if extra:
            raise ValueError(f"{where}: serving.targets {extra}: not among speedup_targets "
                             f"{self.speedup_targets} (only those have operating points)")

    def check_statistics(self, where: Path | str) -> None:
        """`selection` and `bootstrap` name known values, so a typo fails before any training."""
        if self.selection not in ("crossfit", "dev"):
            raise ValueError(f"{where}: selection={self.selection!r}; valid: crossfit, dev")
        boot = _typed(BootstrapSettings, self.bootstrap, f"{where}: bootstrap")
        if boot.ci.lower() not in ("percentile", "bca"):
            raise ValueError(f"{where}: bootstrap.ci={boot.ci!r}; valid: percentile, BCa")
        if not 0 < boot.alpha < 1:
            raise ValueError(f"{where}: bootstrap.alpha={boot.alpha} must be in (0, 1)")

    def check_seeds_and_timing(self, where: Path | str) -> None:
        """`method_seeds`/`task_seeds` list seeds of the profile; `timing.seeds` is `all` or `first`."""
        for name, seeds in [*self.method_seeds.items(), *self.task_seeds.items()]:
            if not isinstance(seeds, list) or not set(seeds) <= set(self.seeds):
                key = "method_seeds" if name in self.method_seeds else "task_seeds"
                raise ValueError(f"{where}: {key}.{name}={seeds!r} must be a list of the profile's "
                                 f"seeds {self.seeds}")
        for task in self.task_seeds:
            if task not in self.tasks:
                raise ValueError(f"{where}: task_seeds.{task}: not one of the profile's tasks {self.tasks}")
        if self.timing.get("seeds", "all") not in ("all", "first"):
            raise ValueError(f"{where}: timing.seeds={self.timing['seeds']!r}; valid: all, first")

    def check_execution(self) -> None:
        """Reject an executor setting Ray could not honour, before any work."""
        from .executors import EXECUTORS

        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; valid: {', '.join(EXECUTORS)}")
        g = self.gpus_per_train
        if not (isinstance(g, int | float) and g >= 0 and (g <= 1 or float(g).is_integer())):
            raise ValueError(f"gpus_per_train must be a share ≤ 1 (e.g. 0.25) or a whole number, got {g!r}")
        if not (float(self.gpus_per_timing).is_integer() and self.gpus_per_timing >= 1):
            raise ValueError("gpus_per_timing must be a whole number ≥ 1 (timings never share a GPU), "
                             f"got {self.gpus_per_timing!r}")
        if not (isinstance(self.max_retries, int) and self.max_retries >= 0):
            raise ValueError(f"max_retries must be an integer ≥ 0, got {self.max_retries!r}")

    def method_names(self) -> list[str]:
        """The profile's methods in order: every registered one for `all`; unknown names fail."""
        valid = METHODS.names()
        for name in [*self.method_tasks, *self.method_seeds]:
            if name not in valid:
                raise unknown_name("method", name, valid)
        if self.methods == "all":
            return METHODS.names()
        for name in self.methods:
            if name not in valid:
                raise unknown_name("method", name, valid)
        return list(self.methods)

    def train_overrides(self, task: str) -> dict:
        """TrainConfig fields for `task`: the shared ones, then the task's own."""
        return {**self.train, **self.task_train.get(task, {})}

    def recipe_train(self, task: str, recipe: str, seed: int,
                     data_dir: str | None = None) -> tuple[dict, dict]:
        """TrainConfig fields for one (task, recipe) and what `train_settings` did.

        `original` overrides the profile's budget with the recipe's published settings; settings
        TrainConfig has no field for (gradient clipping, best-checkpoint selection) are returned
        under `not_applied`. Head options the original sets per task or per run (Past-Future's k
        and its step count) are added under the profile's own `head_options`.
        """
        if self.train_settings not in ("equal", "original"):
            raise ValueError(f"unknown train_settings {self.train_settings!r}; valid: equal, original")
        rec = get_recipe(recipe)
        applied, missing = settings_for(rec, task, self.train_settings)
        cfg = {**self.train_overrides(task), **applied}
        head = cfg.get("head_options") or {}
        head = json.loads(head) if isinstance(head, str) else dict(head)

        def steps() -> int:  # optimizer steps per stage, as de3bert.train counts them
            try:
                n = train_size(task, cfg.get("train_limit", 0), data_dir, seed)
            except (OSError, ValueError):  # data not reachable (a dry run): training will say so
                return 0
            return max(1, int(math.ceil(n / cfg.get("batch_size", 32)) * cfg.get("epochs", 3.0)))

        extra = {k: v for k, v in rec.task_options(task, steps).items() if k not in head}
        if extra or head:
            cfg["head_options"] = {**extra, **head}
        return cfg, {"train_settings": self.train_settings, "applied": applied, "not_applied": missing}

    def methods_for(self, task: str, seed: int | None = None) -> list[str]:
        """Methods to evaluate on `task` (and `seed`): `method_tasks` and `method_seeds` may
        restrict a method to some tasks and seeds."""
        return [m for m in self.method_names() if task in self.method_tasks.get(m, [task])
                and (seed is None or seed in self.method_seeds.get(m, [seed]))]

    def seeds_for(self, task: str) -> list[int]:
        """The seeds `task` runs on (`task_seeds` may restrict a task to some of them)."""
        return [s for s in self.seeds if s in self.task_seeds.get(task, self.seeds)]

    def timed_seed(self, task: str, seed: int) -> bool:
        """Whether `seed`'s operating points on `task` are timed live (`timing.seeds`: all, or
        first = the task's first seed)."""
        return self.timing.get("seeds", "all") == "all" or seed == self.seeds_for(task)[0]


@cache
def train_size(task: str, limit: int, data_dir: str | None, seed: int) -> int:
    """Training examples a run uses (after `train_limit`)."""
    return len(load_examples(get_task(task), "train", data_dir or None, limit or None, seed))
