"""Max-prob (confidence) baseline: exit when the top class probability exceeds c."""

from __future__ import annotations

from de3bert.method import Method
from de3bert.policy import Knob, ThresholdPolicy, finite_logits


class MaxProbPolicy(ThresholdPolicy):
    """Exit when max_k p_k > c. Smaller c exits earlier."""

    name = "max-prob"
    knob = Knob("c", 0.0, 1.0, "smaller")
    exit_above = True

    def grid(self):
        lo = 1.0 / self.num_labels
        return [round(lo + (1 - lo) * i / 40, 6) for i in range(41)]

    def score(self, layer, signals):
        return finite_logits(signals["logits"]).softmax(-1).max(-1).values


METHOD = Method("maxprob", "weighted", MaxProbPolicy, "Max-prob: exit when max p > c (weighted recipe)")
