"""The run folder: where every artefact of a benchmark run lives (the only place paths are built).

```
<out>/profile.json  run.json  results.jsonl  serving.jsonl (the load benchmark's rows)
<out>/models/<task>/<recipe>-s<seed>/{final/, flops.json, times.json}
<out>/records/<task>/<recipe>-s<seed>.safetensors (+ .json sidecar)
<out>/exits/<task>/<method>-s<seed>.json
<out>/jobs/<job>.jsonl   start/end events of every attempt of a job (`--executor ray` only)
<out>/tables/            results.md/.tex, operating_points.md, indicators.md, uncertainty.md/.json,
                         claims.md/.json, serving.md (`benchmarks.report`)
plots/<name>/            figures (the product's plots/ folder) when out = results/<name>;
                         otherwise <out>/plots/; --plots-dir overrides both
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the seed of the `dev_limit` subsample: one subset for every training seed (so seeds pair) and
#: for the load benchmark (so served requests match the records)
DEV_SUBSET_SEED = 0


@dataclass(frozen=True)
class RecordRef:
    """A record file and what it records."""

    path: Path
    task: str
    recipe: str
    seed: int


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder; `plots` is where figures go."""

    out: Path
    plots: Path

    @classmethod
    def for_run(cls, profile: str, out: str | Path | None = None,
                plots: str | Path | None = None) -> RunLayout:
        """Default out = results/<profile>, whose figures go to plots/<profile> (the product's
        plots/ folder); any other out keeps its figures inside it (<out>/plots); `plots` overrides."""
        root = Path(out) if out else Path("results") / profile
        if plots:
            return cls(root, Path(plots))
        in_product = root.parent == Path("results")
        return cls(root, Path("plots") / root.name if in_product else root / "plots")

    @property
    def results(self) -> Path:
        """The run's rows (`benchmarks.results`)."""
        return self.out / "results.jsonl"

    @property
    def serving(self) -> Path:
        """The load benchmark's rows (`benchmarks.serving`: points, summaries, overheads); their
        own file because a serving row measures a server, not a (method, knob) on the dev set."""
        return self.out / "serving.jsonl"

    @property
    def tables(self) -> Path:
        """Markdown/LaTeX tables, AUROCs, uncertainty and claims."""
        return self.out / "tables"

    @property
    def jobs(self) -> Path:
        """Event logs of Ray jobs (node, pid, GPUs, start/end of every attempt)."""
        return self.out / "jobs"

    def model_dir(self, task: str, recipe: str, seed: int) -> Path:
        """Training output of one (task, recipe, seed): checkpoints, `final/`, flops/times caches."""
        return self.out / "models" / task / f"{recipe}-s{seed}"

    def record(self, task: str, recipe: str, seed: int) -> Path:
        """The dev record of one trained model (safetensors + checksum sidecar)."""
        return self.out / "records" / task / f"{recipe}-s{seed}.safetensors"

    def exits(self, task: str, method: str, seed: int) -> Path:
        """Per-sample exit layers of every knob value of one method (the statistics read these)."""
        return self.out / "exits" / task / f"{method}-s{seed}.json"

    def records(self) -> list[RecordRef]:
        """Every record of the run, parsed from its path."""
        refs = []
        for path in sorted((self.out / "records").glob("*/*.safetensors")):
            recipe, _, seed = path.stem.rpartition("-s")
            refs.append(RecordRef(path, path.parent.name, recipe, int(seed)))
        return refs
