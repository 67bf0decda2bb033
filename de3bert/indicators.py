"""Exit rules shared by several methods (the core provides them so no baseline imports another)."""

from __future__ import annotations

import math

from .policy import Knob, ThresholdPolicy, entropy, threshold_grid


class EntropyPolicy(ThresholdPolicy):
    """Exit when H(p_i) = −Σ p log p (nats) < S (DeeBERT's rule; Past-Future's on its gated
    logits). Larger S exits earlier."""

    name = "entropy"
    knob = Knob("S", 0.0, math.inf, "larger")

    def grid(self):
        return threshold_grid(math.log(self.num_labels))

    def score(self, layer, signals):
        return entropy(signals["logits"])
