"""The benchmark runner: plan → train → record → replay → live timing → rows → reports.

Each (task, recipe, seed) is trained once and recorded once (one full-depth dev pass); every method
on that recipe is then replayed over its whole knob grid from the record. Rows are written per
(task, method, seed) group by rewriting `results.jsonl` atomically, so a killed run resumes
without duplicate or partial rows. The runner never looks inside a method: it asks the registry
for a recipe and a policy and reads signals.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from de3bert.backbone import load_tokenizer
from de3bert.data import (
    TASK_DIRS,
    DataError,
    EncodedDataset,
    get_task,
    load_examples,
    make_loader,
    resolve_data_dir,
)
from de3bert.engine import record_signals, replay_predictions
from de3bert.flops import DepthFlops, depth_flops
from de3bert.metrics import glue_metrics
from de3bert.model import MultiExitModel
from de3bert.record import CorruptRecord, atomic_write_text, load_record, save_record
from de3bert.registry import get_method
from de3bert.speedup import flops_speedup, layer_speedup, modelled_speedup, operating_points, refine_grid
from de3bert.timing import compare_wallclock, component_times
from de3bert.train import TrainConfig, train

from .layout import RunLayout
from .profiles import Profile
from .results import FULL, Results


def versions() -> dict:
    """Package versions every row records (results say how they were made)."""
    import accelerate
    import datasets
    import sklearn
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__, "scikit-learn": sklearn.__version__}


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


class Runner:
    """Runs one profile into one output directory."""

    def __init__(self, profile: Profile, out: str | Path | RunLayout, data_dir: str | None = None,
                 progress: bool = True):
        self.layout = out if isinstance(out, RunLayout) else RunLayout.for_run(profile.name, out)
        self.p, self.out, self.progress = profile, self.layout.out, progress
        self.data_dir = resolve_data_dir(data_dir)
        self.results = Results(self.layout.results)
        self.meta = {"versions": versions(), "git_commit": git_commit(), "device": profile.device,
                     "threads": profile.threads, "dtype": "float32", "host": platform.node(),
                     "cpu": platform.processor() or platform.machine()}
        self.stats: dict[str, dict] = {}  # per task: replay cost against one recording pass

    # ---- the plan ------------------------------------------------------------------------------
    def plan(self) -> list[dict]:
        """Every training run and every replay group, in order, with why a pair is skipped."""
        steps = []
        for task_name in self.p.tasks:
            task = get_task(task_name)
            for seed in self.p.seeds:
                recipes, replays = ["single"], []
                for name in self.p.methods_for(task.name):
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

    def estimate_seconds(self, plan: list[dict]) -> float:
        """Rough time: training steps × seconds per step, plus a recording/timing allowance."""
        total = 0.0
        for s in plan:
            if s["kind"] != "train":
                total += 20.0 if not s["skip"] else 0.0
                continue
            cfg = self.train_config(s["task"], s["recipe"], s["seed"])
            n = cfg.train_limit or 5000
            stages = 2 if s["recipe"] in ("two-stage", "self-distill") else 1
            per_step = self.p.step_seconds.get(s["task"], self.p.step_seconds.get("default", 1.4))
            total += stages * np.ceil(n / cfg.batch_size) * cfg.epochs * per_step + 15.0
        return total

    # ---- stages --------------------------------------------------------------------------------
    def train_config(self, task: str, recipe: str, seed: int) -> TrainConfig:
        base, _ = self.p.recipe_train(task, recipe, seed, self.data_dir)  # train_settings hook
        if isinstance(base.get("head_options"), dict):
            base["head_options"] = json.dumps(base["head_options"])
        return TrainConfig(task=task, recipe=recipe, backbone=self.p.backbone, data_dir=self.data_dir or "",
                           seed=seed, out_dir=str(self.layout.model_dir(task, recipe, seed)),
                           progress=self.progress, **base)

    def trained_model(self, task: str, recipe: str, seed: int) -> MultiExitModel:
        """Train (or load the finished training of) one (task, recipe, seed), on the run's device."""
        return train(self.train_config(task, recipe, seed)).to(self.device)

    @property
    def device(self) -> str:
        if self.p.device.startswith("cuda") and not torch.cuda.is_available():
            tqdm.write(f"[runner] profile asks for {self.p.device} but none is available; using the CPU")
            return "cpu"
        return self.p.device

    def dev_set(self, task_name: str, seed: int):
        task = get_task(task_name)
        cfg = self.train_config(task_name, "single", seed)
        tok = load_tokenizer(self.p.backbone)
        ex = load_examples(task, "dev", self.data_dir, self.p.dev_limit or None, seed)
        return EncodedDataset(ex, tok, cfg.max_seq_length, task.is_regression), tok

    def record(self, task: str, recipe: str, seed: int, model: MultiExitModel, ds, tok) -> dict:
        """The dev record of one trained model: loaded if intact, rebuilt if missing or corrupt."""
        path = self.layout.record(task, recipe, seed)
        try:
            return load_record(path)
        except FileNotFoundError:
            pass
        except CorruptRecord as err:
            tqdm.write(f"[runner] {err}; rebuilding the record")
        loader = make_loader(ds, 64, shuffle=False, pad_token_id=tok.pad_token_id or 0)
        t0 = time.perf_counter()
        rec = record_signals(model, loader, progress=self.progress)
        self._stat(task, "record_seconds", time.perf_counter() - t0)
        self._stat(task, "records", 1)
        save_record(rec, path, {"task": task, "recipe": recipe, "seed": seed,
                                "seconds": time.perf_counter() - t0,
                                "mean_length": float(np.mean(ds.lengths()))})
        return rec

    def flops(self, task: str, recipe: str, seed: int) -> DepthFlops:
        path = self.layout.model_dir(task, recipe, seed) / "flops.json"
        if path.is_file():
            d = json.loads(path.read_text())
            return DepthFlops(np.array(d["embed"]), np.array(d["layers"]), np.array(d["heads"]))
        eager = MultiExitModel.load(path.parent / "final", attn_implementation="eager")
        f = depth_flops(eager)
        atomic_write_text(path, json.dumps({"embed": f.embed.tolist(), "layers": f.layers.tolist(),
                                            "heads": f.heads.tolist()}))
        return f

    def times(self, task: str, recipe: str, seed: int, model, items) -> dict:
        path = self.layout.model_dir(task, recipe, seed) / "times.json"
        if path.is_file():
            return json.loads(path.read_text())
        t = component_times(model, items[: min(len(items), 24)], repeats=2)
        atomic_write_text(path, json.dumps(t))
        return t

    def _stat(self, task: str, key: str, value: float) -> None:
        st = self.stats.setdefault(task, {})
        st[key] = st.get(key, 0) + value

    # ---- rows ----------------------------------------------------------------------------------
    def base_row(self, task, method, recipe, seed, model) -> dict:
        return {"task": task, "method": method, "recipe": recipe, "seed": seed,
                "backbone": self.p.backbone, "profile": self.p.name,
                "num_layers": model.num_layers,
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
                if not (root / TASK_DIRS[spec.name] / fname).is_file():
                    raise DataError(f"missing data file {root / TASK_DIRS[spec.name] / fname} "
                                    f"for task {spec.name}")

    def run(self) -> None:
        torch.set_num_threads(self.p.threads)
        plan = self.plan()
        self.check_data()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "profile.json", json.dumps(asdict(self.p), indent=2))
        bar = tqdm(total=len(plan), desc=f"profile {self.p.name}", disable=not self.progress)
        t_start = time.perf_counter()
        for task in dict.fromkeys(get_task(t).name for t in self.p.tasks):
            for seed in self.p.seeds:
                steps = [s for s in plan if s["task"] == task and s["seed"] == seed]
                self.run_task(task, seed, steps, bar)
        bar.close()
        elapsed = time.perf_counter() - t_start
        for st in self.stats.values():
            if st.get("records") and st.get("replay_groups"):
                one_pass = st["record_seconds"] / st["records"]
                st["replay_vs_one_pass"] = st["replay_seconds"] / one_pass
        run = {"seconds": elapsed, "replay_stats": self.stats, **self.meta}
        atomic_write_text(self.out / "run.json", json.dumps(run, indent=2))

    def run_task(self, task: str, seed: int, steps: list[dict], bar) -> None:
        spec = get_task(task)
        replays = [s for s in steps if s["kind"] == "replay"]
        todo = [s for s in replays if not s["skip"] and not self.results.done(task, s["method"], seed)]
        for s in replays:
            if s["skip"]:
                tqdm.write(f"[runner] skip {task} × {s['method']}: {s['skip']}")
        need_full = not self.results.done(task, FULL, seed)
        if not todo and not need_full:
            bar.update(len(steps))
            return
        models = {}
        for s in steps:
            if s["kind"] == "train":
                bar.set_postfix_str(f"train {task} {s['recipe']}")
                models[s["recipe"]] = self.trained_model(task, s["recipe"], seed)
                bar.update(1)
        ds, tok = self.dev_set(task, seed)
        lengths = np.array(ds.lengths())
        items = [ds[i] for i in range(min(len(ds), int(self.p.timing.get("samples", 64))))]
        full = models["single"]
        full_rec = self.record(task, "single", seed, full, ds, tok)
        full_flops = self.flops(task, "single", seed)
        full_times = self.times(task, "single", seed, full, items)
        if need_full:
            metric = glue_metrics(spec.metrics, replay_predictions(full_rec, torch.tensor(
                [[full.num_layers] * len(ds)]))[0], full_rec["labels"])
            row = self.base_row(task, FULL, "single", seed, full) | {
                "knob": {"name": "none", "value": None}, "metric": metric,
                "headline_metric": spec.headline_metric, "speedup_layers": 1.0, "speedup_flops": 1.0,
                "speedup_wallclock": 1.0, "speedup_wallclock_b32": 1.0, "speedup_wallclock_model": 1.0,
                "mean_exit_layer": float(full.num_layers),
                "exit_histogram": [0] * (full.num_layers - 1) + [len(ds)],
                "gflops_per_sample": float(full_flops.full_model(lengths).mean() / 1e9),
                "operating_point": None, "n_samples": len(ds)}
            self.results.add_group([row])
        for s in replays:
            if s["skip"] or self.results.done(task, s["method"], seed):
                bar.update(1)
                continue
            bar.set_postfix_str(f"replay {task} {s['method']}")
            model = models[s["recipe"]]
            rec = self.record(task, s["recipe"], seed, model, ds, tok)
            rows = self.replay_method(task, seed, s["method"], model, rec, lengths,
                                      self.flops(task, s["recipe"], seed), full_flops,
                                      self.times(task, s["recipe"], seed, model, items), full_times,
                                      full, items)
            self.results.add_group(rows)
            bar.update(1)

    def replay_method(self, task, seed, name, model, rec, lengths, flops, full_flops, times, full_times,
                      full_model, items) -> list[dict]:
        spec, method = get_task(task), get_method(name)
        policy = method.make_policy(spec.num_labels, model.num_layers)
        t0 = time.perf_counter()
        grid = refine_grid(policy, rec, policy.grid(), self.p.speedup_targets)
        exits = policy.replay(rec, grid)  # [K, N]
        preds = replay_predictions(rec, exits)
        L, n = model.num_layers, exits.shape[1]
        rows = []
        for k, value in enumerate(grid):
            e = exits[k].numpy()
            sp_flops, gflops = flops_speedup(e, lengths, flops, full_flops)
            hist = np.bincount(e - 1, minlength=L).tolist()
            rows.append(self.base_row(task, name, method.recipe, seed, model) | {
                "knob": {"name": policy.knob.name, "value": value},
                "metric": glue_metrics(spec.metrics, preds[k], rec["labels"]),
                "headline_metric": spec.headline_metric,
                "speedup_layers": layer_speedup(e, L), "speedup_flops": sp_flops,
                "speedup_wallclock": None, "speedup_wallclock_b32": None,
                "speedup_wallclock_model": modelled_speedup(times, full_times, e),
                "mean_exit_layer": float(e.mean()), "exit_histogram": hist, "gflops_per_sample": gflops,
                "operating_point": None, "n_samples": n, **method.describe()})
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
            if rows[i]["speedup_wallclock"] is None and self.timed(name):
                rows[i].update(self.time_live(name, policy, rows[i]["knob"]["value"], model, full_model,
                                              items, exits[i, : len(items)].tolist()))

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
