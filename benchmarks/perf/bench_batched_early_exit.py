"""Target 3, batched early exit: batch-32 throughput speed-up (batch shrinking) ≥ 0.7 × the layer
speed-up, at the same operating points and on the same samples as the wall-clock fidelity target.

Full model and live early exit alternate every batch (`de3bert.timing`'s interleaving, driven by
pytest-benchmark).
"""

from __future__ import annotations

import pytest

from .common import DEPLOYABLE, GOAL_BATCHED, live_vs_full, operating_point_or_skip, point_info, record_result


@pytest.mark.parametrize("method", DEPLOYABLE)
def test_batched_early_exit(benchmark, cfg, models, timed_items, operating_points, method):
    """Batch 32 with batch shrinking: throughput speed-up ≥ 0.7 × layer speed-up."""
    op = operating_point_or_skip(benchmark, operating_points, method)
    r = live_vs_full(benchmark, cfg, models, timed_items, op, cfg.throughput_batch, cfg.rounds_throughput,
                     1, 1)
    passed = record_result(benchmark, cfg, "batched early exit", r.pop("ratio"), GOAL_BATCHED, True,
                           **point_info(models, method, op), **r)
    if not cfg.tiny:
        assert passed, (f"{method}: batch-{cfg.throughput_batch} throughput {r['wallclock_speedup']:.3f}× "
                        f"vs layer {r['layer_speedup']:.3f}× (goal ≥ {GOAL_BATCHED} of it)")
