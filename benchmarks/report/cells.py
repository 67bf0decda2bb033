"""The one place a table cell is formatted.

Every report (results.md/.tex, uncertainty.md, claims.md, operating_points.md) takes its cells
from these functions, so an interval, a difference, a speed-up or a q-value reads the same in
every table, and changing how one looks changes it everywhere. Inputs are duck-typed (anything
with the fields of `benchmarks.stats.bootstrap.Interval` / `Comparison`), so this module imports
nothing of the project.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Protocol

NONE = "–"  # an empty cell: no value (not a number, not applicable)


class IntervalLike(Protocol):
    """A point estimate with its interval (`Interval`)."""

    estimate: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        """Half the interval's width."""


class ComparisonLike(Protocol):
    """`a − b` with its interval and BH q-value (`Comparison`)."""

    interval: IntervalLike
    q: float | None


def number(x: float, digits: int = 1) -> str:
    """'81.7': a metric (or any plain estimate) to `digits` decimals."""
    return f"{x:.{digits}f}"


def interval(iv: IntervalLike, digits: int = 1) -> str:
    """'81.7 ±1.1': the estimate and the half-width of its 95% interval."""
    return f"{iv.estimate:.{digits}f} ±{iv.half_width:.{digits}f}"


def difference(cmp: ComparisonLike, digits: int = 1) -> str:
    """'+2.3 [+0.5, +4.1]': a signed difference with its 95% interval."""
    i = cmp.interval
    return f"{i.estimate:+.{digits}f} [{i.lo:+.{digits}f}, {i.hi:+.{digits}f}]"


def q(cmp: ComparisonLike) -> str:
    """The BH-adjusted q, or '–' for a comparison that was not tested."""
    return NONE if cmp.q is None else f"{cmp.q:.3f}"


def speedup(x: float) -> str:
    """'1.52×': an achieved speed-up."""
    return f"{x:.2f}×"


def at_speedup(text: str, x: float) -> str:
    """'81.7 ±1.1 (1.52×)': a cell followed by the speed-up it was achieved at."""
    return f"{text} ({speedup(x)})"


def target(t: float) -> str:
    """'1.5×': a speed-up target, as headings and target columns print it."""
    return f"{t:g}×"


def marked(text: str, best: str = "", near_full: bool = False) -> str:
    """A cell with its significance markers: best = 'bold' (**cell**: significantly best) or
    'tie' (best point estimate only); `near_full`: ' ≈full' (not distinguishable from the full model)."""
    out = f"**{text}**" if best == "bold" else f"{text} tie" if best == "tie" else text
    return out + (" ≈full" if near_full else "")


def knob(k: Mapping | None) -> str:
    """'tau=0.1152': a knob's name and value (4 significant digits); '–' for a knob-less row (the
    full model, the oracle: knob 'none')."""
    if not k or k.get("value") is None or k.get("name") == "none":
        return NONE
    value = k["value"]
    shown = f"{value:.4g}" if isinstance(value, Real) and not isinstance(value, bool) else str(value)
    return f"{k['name']}={shown}"


def per_layer(values: Iterable[float], digits: int = 1) -> str:
    """'50.0, 61.2, 80.3': one value per layer, first to last."""
    return ", ".join(f"{x:.{digits}f}" for x in values)
