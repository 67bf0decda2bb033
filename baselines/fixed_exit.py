"""Fixed exit: every sample stops at layer k of the jointly trained weighted model.

This was called `static` before; the literature's static baseline (BERT-kL, a k-layer model
fine-tuned on its own) is `static-kl` (baselines/static_kl.py).
"""

from __future__ import annotations

from de3bert.method import Method
from de3bert.policy import ExitPolicy, Knob


class FixedExitPolicy(ExitPolicy):
    """Exit at layer k for every sample."""

    name = "fixed-exit"
    knob = Knob("k", 1, 1000, "smaller", integer=True)
    supports_regression = True

    def grid(self):
        return list(range(1, self.num_layers + 1))

    def step(self, layer, signals, state, knobs):
        n = signals["logits"].shape[0]
        return (knobs[:, None] <= layer).expand(len(knobs), n)

    def replay(self, record, knobs):
        knobs = self.knob.validate(knobs)
        n = record["labels"].shape[0]
        return knobs.long().clamp(1, self.num_layers)[:, None].expand(len(knobs), n).clone()


METHOD = Method("fixed-exit", "weighted", FixedExitPolicy,
                "Fixed exit: all samples exit at layer k of the weighted (jointly trained) model")
