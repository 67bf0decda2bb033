"""Oracle (upper bound, report only): exit at the first layer whose prediction is correct."""

from __future__ import annotations

from de3bert.method import Method
from de3bert.policy import ExitPolicy, Knob, predictions


class OraclePolicy(ExitPolicy):
    """Uses the labels: shows the head-room of any exit rule on a trained model."""

    name = "oracle"
    needs = ("logits", "labels")
    knob = Knob("none", 0.0, 0.0, "larger", grid=(0.0,))

    def step(self, layer, signals, state, knobs):
        correct = predictions(signals["logits"]) == signals["labels"]
        return correct[None, :].expand(len(knobs), -1)


METHOD = Method("oracle", "weighted", OraclePolicy,
                "Oracle: first correct layer (uses labels; head-room only)", report_only=True)
