"""Speed-ups and operating points: the only place either is computed.

- Layer speed-up = L·N / Σ exit layers (1-based), the protocol's headline measure.
- FLOPs speed-up = FLOPs of the plain model / FLOPs spent under early exit (per-sample lengths).
- Modelled wall-clock speed-up from per-component batch-1 times (`de3bert.timing.component_times`).
- Operating point for a target = the knob value whose layer speed-up is the smallest ≥ target
  (ties: the first in grid order); `refine_grid` bisects a knob grid so such a point lies close
  to every target.
Runner, CLI, reports and benchmarks all call these; nothing else divides by a sum of exit layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from .ties import TIE_EPS

_EPS = 1e-9  # a speed-up this close below a target counts as reaching it


class _Replayable(Protocol):
    num_layers: int
    knob: object

    def replay(self, record: dict, knobs) -> torch.Tensor: ...


def speedups_along_last_axis(exit_layers, num_layers: int) -> np.ndarray:
    """L·n / Σ exit layers along the last axis of exits `[..., N]` (one value per knob value);
    numpy or torch input. Every other speed-up helper, and the bootstrap, calls this."""
    e = exit_layers.double().numpy() if isinstance(exit_layers, torch.Tensor) else exit_layers
    e = np.asarray(e, dtype=np.float64)
    return num_layers * e.shape[-1] / e.sum(-1)


def layer_speedup(exit_layers, num_layers: int) -> float:
    """L·N / Σ exit layers for exits `[N]` (1-based)."""
    return float(speedups_along_last_axis(exit_layers, num_layers))


def layer_speedups(exit_layers, num_layers: int) -> list[float]:
    """`layer_speedup` of every row of exits `[K, N]` (one per knob value)."""
    return speedups_along_last_axis(exit_layers, num_layers).tolist()


def flops_speedup(exit_layers: np.ndarray, lengths: np.ndarray, method, full) -> tuple[float, float]:
    """(FLOPs speed-up, mean GFLOPs per sample) for exits `[N]` against the plain model.

    `method` and `full` are `de3bert.flops.DepthFlops` of the early-exit and the plain model.
    """
    cum = method.cumulative(lengths)  # [L, N]
    spent = cum[np.asarray(exit_layers) - 1, np.arange(len(lengths))]
    total_full = full.full_model(lengths).sum()
    return float(total_full / spent.sum()), float(spent.mean() / 1e9)


def modelled_speedup(times: dict, full_times: dict, exit_layers) -> float:
    """Wall-clock speed-up predicted by the per-component timing model for exits `[N]`."""
    e = np.asarray(exit_layers)
    cum = times["embed"] + np.cumsum(np.asarray(times["layers"]) + np.asarray(times["heads"]))
    full = full_times["embed"] + sum(full_times["layers"]) + full_times["heads"][-1]
    return float(full * len(e) / cum[e - 1].sum())


def choose_knobs(speedups: np.ndarray, targets: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Knob index per target: smallest speed-up ≥ target (first on ties), else the fastest knob.

    ``speedups`` [..., K] → (knobs [..., T], reached [..., T]). One stable sort per row and one
    ``searchsorted`` over all rows (offset so rows never overlap) keep thousands of replicates cheap.
    """
    sp = np.asarray(speedups, dtype=np.float64)
    K = sp.shape[-1]
    flat = sp.reshape(-1, K)
    t = np.asarray(targets, dtype=np.float64)
    finite = flat[np.isfinite(flat)]
    cap = max(finite.max(initial=1.0), t.max(initial=1.0)) + 1.0  # above every real value: +inf → cap
    v = np.where(np.isnan(flat), -1.0, np.minimum(flat, cap)) + 1.0  # in [0, cap + 1]
    order = np.argsort(v, axis=1, kind="stable")
    off = np.arange(flat.shape[0])[:, None] * (cap + 3.0)
    rows = (np.take_along_axis(v, order, 1) + off).ravel()
    pos = np.searchsorted(rows, (t[None] + 1.0 - _EPS + off).ravel())
    pos = pos.reshape(flat.shape[0], t.size) - np.arange(flat.shape[0])[:, None] * K
    reached = pos < K
    knob = np.take_along_axis(order, np.minimum(pos, K - 1), 1)
    knob = np.where(reached, knob, v.argmax(1)[:, None])
    return knob.reshape(*sp.shape[:-1], t.size), reached.reshape(*sp.shape[:-1], t.size)


def operating_point(speedups: Sequence[float], target: float) -> int | None:
    """Index of the smallest speed-up ≥ `target` (the first on ties); None if none reaches it."""
    if len(speedups) == 0:
        return None
    knob, reached = choose_knobs(np.asarray(speedups, dtype=np.float64), [target])
    return int(knob[0]) if reached[0] else None


def operating_points(speedups: Sequence[float], targets: Sequence[float]) -> dict[float, int]:
    """{target: index} for every target some knob value reaches (see `operating_point`)."""
    found = {t: operating_point(speedups, t) for t in targets}
    return {t: i for t, i in found.items() if i is not None}


def _straddling_pair(sp: dict[float, float], target: float) -> tuple[float, float] | None:
    """Neighbouring knob values whose speed-ups straddle `target`: of all such pairs, the one
    whose member nearer the target has the smallest speed-up."""
    values = sorted(sp)
    pairs = [(a, b) for a, b in zip(values, values[1:], strict=False)
             if (sp[a] - target) * (sp[b] - target) < 0]
    if not pairs:
        return None
    return min(pairs, key=lambda ab: min(sp[ab[0]], sp[ab[1]], key=lambda s: abs(s - target)))


NEIGHBOUR_STEP = 0.01  # neighbouring knobs near a target differ by less than 1% in speed-up
NEIGHBOUR_BAND = 0.15  # ... within ±15% of the target (where cross-fitted folds choose)


def _densify(policy: _Replayable, record: dict, sp: dict[float, float], target: float,
             budget: int) -> None:
    """Bisect neighbouring knobs whose speed-ups both touch [t/(1+b), t·(1+b)] and differ by more
    than `NEIGHBOUR_STEP` (relative), so a cross-fitted fold finds a knob close to the target and
    two methods compare at matched speed-ups. A pair closer than 2·TIE_EPS is a cliff in the
    method's curve (no knob can match there), left as it is: below that, which side a sample
    falls on is rounding noise (`de3bert.ties`), and the grid itself would differ across CPUs."""
    lo, hi, L = target / (1 + NEIGHBOUR_BAND), target * (1 + NEIGHBOUR_BAND), policy.num_layers
    cliffs: set[tuple[float, float]] = set()
    for _ in range(budget):
        values = sorted(sp)
        gaps = [(a, b) for a, b in zip(values, values[1:], strict=False) if (a, b) not in cliffs
                and max(sp[a], sp[b]) >= lo and min(sp[a], sp[b]) <= hi
                and abs(sp[a] - sp[b]) > NEIGHBOUR_STEP * min(sp[a], sp[b])]
        if not gaps:
            return
        a, b = max(gaps, key=lambda ab: abs(sp[ab[0]] - sp[ab[1]]))
        mid = (a + b) / 2
        if b - a < 2 * TIE_EPS or mid in sp:  # closer knobs sit in each other's near-tie band
            cliffs.add((a, b))
            continue
        sp[mid] = layer_speedups(policy.replay(record, [mid]), L)[0]


def refine_grid(policy: _Replayable, record: dict[str, torch.Tensor], grid: list[float],
                targets: list[float], rounds: int = 12, tolerance: float = 0.02,
                neighbours: int = 48) -> list[float]:
    """Add knob values (by bisection) where the layer speed-up jumps over a target.

    A fixed grid can step from 1.25× straight to 4× when a model's scores bunch up; bisecting
    between the two neighbouring knob values finds an operating point within `tolerance` of the
    target (or stops after `rounds`); then up to `neighbours` more knobs per target make
    neighbouring speed-ups near it differ by < 1% wherever the scores allow (`_densify`).
    Integer knobs are left alone. Returns the sorted grid.
    """
    if getattr(policy.knob, "integer", False) or len(grid) < 2:
        return list(grid)
    L = policy.num_layers
    sp = dict(zip(grid, layer_speedups(policy.replay(record, list(grid)), L), strict=True))
    for target in targets:
        for _ in range(rounds):
            above = [s for s in sp.values() if s >= target]
            if not above or min(above) <= target * (1 + tolerance):
                break
            pair = _straddling_pair(sp, target)
            if pair is None:
                break
            mid = round((pair[0] + pair[1]) / 2, 12)
            if mid in sp:
                break
            sp[mid] = layer_speedups(policy.replay(record, [mid]), L)[0]
        _densify(policy, record, sp, target, neighbours)
    return sorted(sp)
