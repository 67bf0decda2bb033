"""Demo data for the claims tests: a synthetic results structure (the input shape documented in
`benchmarks.report.claims`), one learned task and one at chance, built from seeded random arrays.

Test data, not product: the tests of the claims report plant failures into it
(tests/test_claims_checks.py, tests/test_stats.py).
"""

from __future__ import annotations

import numpy as np


def demo_results(n: int = 800, seed: int = 0, n_seeds: int = 2) -> dict:
    """A synthetic results structure (one learned task, one at chance) to show the report's shape."""
    rng = np.random.default_rng(seed)
    L, K = 6, 40
    labels = rng.integers(0, 2, n)
    thr = np.linspace(0, 1, K)[:, None]

    def method(skill: float) -> dict:
        """One policy: exits monotone in the knob, per-layer predictions."""
        u = rng.random(n)
        exits = np.clip(L - np.floor(thr * 1.6 * L * u[None]), 1, L).astype(int)
        layer_pred = np.where(
            rng.random((L, n)) < skill - 0.04 * (L - np.arange(1, L + 1))[:, None], labels, 1 - labels
        )
        return {
            "exits": exits,
            "preds": layer_pred[exits - 1, np.arange(n)],
            "correct": layer_pred == labels,
            "entropy": rng.random((L, n)),
        }

    def task(skills: dict[str, float]) -> dict:
        """One task with every method per seed and EDR/entropy indicators on the de3 record."""
        seeds = {}
        for s in range(n_seeds):
            ms = {m: method(k) for m, k in skills.items()}
            c = ms["de3"]["correct"]
            ind = {
                "de3": {"score": np.where(c, 0.0, 0.6) + rng.random(c.shape), "correct": c},
                "de3-entropy": {"score": np.where(c, 0.0, 0.3) + rng.random(c.shape), "correct": c},
            }
            full = {"exits": np.full((1, n), L), "preds": ms["de3"]["preds"][:1]}
            seeds[str(s)] = {
                "methods": {
                    "full-model": full,
                    **{m: {k: v[k] for k in ("exits", "preds")} for m, v in ms.items()},
                },
                "indicators": ind,
            }
        return {
            "metric": "accuracy",
            "n_layers": L,
            "labels": labels,
            "targets": [1.5, 2.0],
            "full_model": "full-model",
            "seeds": seeds,
        }

    return {
        "protocol": "crossfit",
        "indicator_pairs": [["de3", "de3-entropy"]],
        "tasks": {
            "learned-task": task({"de3": 0.93, "pabee": 0.9, "deebert": 0.89}),
            "chance-task": task({"de3": 0.5, "pabee": 0.5, "deebert": 0.5}),
        },
    }

