"""Pooling seeds when not every method ran on every seed (a profile's `method_seeds`).

The hierarchical bootstrap (`stats.hierarchical_bootstrap`) needs the same methods on every
seed. When a profile trains some recipes on the first seed only (the CPU budget), the honest
analysis has two parts: the methods present on every seed are pooled over seeds (intervals
include seed variance), and every cell or comparison that involves a first-seed-only method is
made on the first seed alone (sample-level and exactly paired: both sides on the same dev
resamples). `SeedSplit` is that pair seen as one analysis: the same `names`/`point`/`row`/
`interval`/`difference` the tables and claims read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bootstrap import Analysis, Comparison, Interval, hierarchical_bootstrap


def subset(a: Analysis, methods: Sequence[str]) -> Analysis:
    """The rows of `methods` only (same replicates, so differences stay paired)."""
    return rows(a, [n for n in a.names if n[0] in set(methods)])


def rows(a: Analysis, names: Sequence[tuple]) -> Analysis:
    """Exactly the rows `names`, in that order (seeds pooled row by row must list the same rows)."""
    index = {n: i for i, n in enumerate(a.names)}
    keep = [index[n] for n in names]
    stat = a.statistic
    return Analysis([a.names[i] for i in keep], a.point[keep], a.reps[keep], a.reached[keep], a.protocol,
                    a.ci, a.note, a.indices, None if a.seed_points is None else a.seed_points[:, keep],
                    None if stat is None else (lambda idx, _s=stat: _s(idx)[keep]))


@dataclass
class SeedSplit:
    """Methods on every seed from `pooled`; the rest (first seed only) from `first`."""

    pooled: Analysis
    first: Analysis

    def __post_init__(self):
        own = set(self.pooled.methods)
        self._extra = [i for i, n in enumerate(self.first.names) if n[0] not in own]
        self.names = self.pooled.names + [self.first.names[i] for i in self._extra]
        self.point = np.concatenate([self.pooled.point, self.first.point[self._extra]])
        self.reached = np.concatenate([self.pooled.reached, self.first.reached[self._extra]])
        self.protocol, self.ci = self.pooled.protocol, self.pooled.ci
        extra = [m for m in self.first.methods if m not in own]
        self.note = (f"{self.pooled.note} for methods on every seed; first seed only (sample-level) for "
                     f"{', '.join(extra)} and every comparison involving them")

    @property
    def methods(self) -> list[str]:
        """Methods in input order (every-seed ones first)."""
        return list(dict.fromkeys(n[0] for n in self.names))

    def row(self, method: str, quantity: str = "metric", target: float | None = None) -> int:
        """Index of one quantity in `names` / `point` / `reached`."""
        key = (method, quantity, None if target is None else float(target))
        if key not in self.names:
            raise KeyError(f"no row {key}; methods: {sorted(self.methods)}")
        return self.names.index(key)

    def source(self, *methods: str) -> Analysis:
        """The analysis a cell or comparison of `methods` is made on."""
        return self.pooled if all(m in self.pooled.methods for m in methods) else self.first

    def interval(self, method: str, quantity: str = "metric", target: float | None = None,
                 level: float = 0.95) -> Interval:
        """95% interval of one cell, from the part that holds the method."""
        return self.source(method).interval(method, quantity, target, level)

    def difference(self, a: str, b: str, quantity: str = "metric", target: float | None = None,
                   level: float = 0.95) -> Comparison:
        """'a − b' pooled over seeds when both ran on every seed, else on the first seed."""
        return self.source(a, b).difference(a, b, quantity, target, level)

    def curve(self, method: str, level: float = 0.95) -> dict[str, np.ndarray]:
        """The method's scored trade-off curve with its band."""
        return self.source(method).curve(method, level)


def pool_seeds(runs: Sequence[Analysis], seed: int = 0) -> Analysis | SeedSplit:
    """One analysis over seeds: hierarchical when every seed has the same rows (in any order),
    else a `SeedSplit` (the rows every seed has pooled, the other methods from the first seed)."""
    runs = list(runs)
    common = [n for n in runs[0].names if all(n in set(r.names) for r in runs)]
    aligned = [rows(r, common) for r in runs]
    if all(len(r.names) == len(common) for r in runs):
        return hierarchical_bootstrap(aligned, seed=seed)
    return SeedSplit(hierarchical_bootstrap(aligned, seed=seed), runs[0])
