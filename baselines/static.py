"""Static BERT-kL: every sample stops at layer k (the no-adaptivity reference)."""

from __future__ import annotations

from de3bert.method import Method
from de3bert.policy import ExitPolicy, Knob


class StaticPolicy(ExitPolicy):
    """Exit at layer k for every sample."""

    name = "static"
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


METHOD = Method("static", "weighted", StaticPolicy, "Static BERT-kL: all samples exit at layer k")
