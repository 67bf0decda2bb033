"""Fixed exit: every sample stops at layer k of the jointly trained weighted model.

This was called `static` before; the literature's static baseline (BERT-kL, a k-layer model
fine-tuned on its own) is `static-kl` (baselines/static_kl.py).
"""

from __future__ import annotations

from de3bert.indicators import FixedLayerPolicy
from de3bert.method import Method


class FixedExitPolicy(FixedLayerPolicy):
    """Exit at layer k for every sample."""

    name = "fixed-exit"


METHOD = Method("fixed-exit", "weighted", FixedExitPolicy,
                "Fixed exit: all samples exit at layer k of the weighted (jointly trained) model")
