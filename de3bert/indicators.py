"""Exit rules shared by several methods (the core provides them so no baseline imports another)."""

from __future__ import annotations

import math

from .policy import ExitPolicy, Knob, ThresholdPolicy, entropy, threshold_grid


class EntropyPolicy(ThresholdPolicy):
    """Exit when H(p_i) = −Σ p log p (nats) < S (DeeBERT's rule; Past-Future's on its gated
    logits). Larger S exits earlier."""

    name = "entropy"
    knob = Knob("S", 0.0, math.inf, "larger")

    def grid(self):
        return threshold_grid(math.log(self.num_labels))

    def score(self, layer, signals):
        return entropy(signals["logits"])


class FixedLayerPolicy(ExitPolicy):
    """Every sample exits at layer k (the knob): no adaptivity; shared by the fixed-exit rule on a
    jointly trained model and by BERT-kL (static-kl), whose model has only k trained layers."""

    name = "fixed-layer"
    knob = Knob("k", 1, 1000, "smaller", integer=True)
    supports_regression = True

    def grid(self):
        return list(range(1, self.num_layers + 1))

    def first_exit_layer(self, knobs):
        """Layer k itself (the smallest k of `knobs`, within 1..L): nothing exits before it."""
        return int(knobs.min().clamp(1, self.num_layers))

    def step(self, layer, signals, state, knobs):
        n = signals["logits"].shape[0]
        return (knobs[:, None] <= layer).expand(len(knobs), n)

    def replay(self, record, knobs):
        knobs = self.knob.validate(knobs)
        n = record["labels"].shape[0]
        return knobs.long().clamp(1, self.num_layers)[:, None].expand(len(knobs), n).clone()
