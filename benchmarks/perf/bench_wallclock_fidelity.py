"""Target 2, wall-clock fidelity: batch-1 wall-clock speed-up ≥ 0.9 × the layer speed-up of the
same samples, for each deployable method at its 2× operating point, inputs of exactly 128 tokens.

Full model and live early exit alternate every `chunk_latency` samples (`de3bert.timing`'s
interleaving, driven by pytest-benchmark); the operating point is `de3bert.speedup`'s.
"""

from __future__ import annotations

import pytest

from .common import (
    DEPLOYABLE,
    GOAL_FIDELITY,
    live_vs_full,
    operating_point_or_skip,
    point_info,
    record_result,
)


@pytest.mark.parametrize("method", DEPLOYABLE)
def test_wallclock_fidelity(benchmark, cfg, models, timed_items, operating_points, method):
    """Batch 1: wall-clock speed-up ≥ 0.9 × layer speed-up of the same samples."""
    op = operating_point_or_skip(benchmark, operating_points, method)
    r = live_vs_full(benchmark, cfg, models, timed_items, op, 1, cfg.rounds_latency, cfg.warmup,
                     cfg.chunk_latency)
    passed = record_result(benchmark, cfg, "wall-clock fidelity", r.pop("ratio"), GOAL_FIDELITY, True,
                           **point_info(models, method, op), **r)
    if not cfg.tiny:
        assert passed, (f"{method}: batch-1 wall-clock {r['wallclock_speedup']:.3f}× vs layer "
                        f"{r['layer_speedup']:.3f}× (goal ≥ {GOAL_FIDELITY} of it)")
