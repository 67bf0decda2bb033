"""DeeBERT (Xin et al., ACL 2020): raw entropy (nats) of an off-ramp below S; two-stage recipe."""

from __future__ import annotations

import math

from de3bert.policy import Knob, ThresholdPolicy, entropy, threshold_grid
from de3bert.registry import register_method


class EntropyPolicy(ThresholdPolicy):
    """Exit when H(p_i) = −Σ p log p (nats) < S. Larger S exits earlier."""

    name = "entropy"
    knob = Knob("S", 0.0, math.inf, "larger")

    def grid(self):
        return threshold_grid(math.log(self.num_labels))

    def score(self, layer, signals):
        return entropy(signals["logits"])


register_method("deebert", "two-stage", EntropyPolicy,
                "DeeBERT: entropy (nats) < S on off-ramps trained after the backbone (two-stage)")
