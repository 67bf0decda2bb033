"""Oracle (upper bound, report only): exit at the first layer whose prediction is correct."""

from __future__ import annotations

from de3bert.policy import ExitPolicy, Knob, predictions
from de3bert.registry import register_method


class OraclePolicy(ExitPolicy):
    """Uses the labels: shows the head-room of any exit rule on a trained model."""

    name = "oracle"
    needs = ("logits", "labels")
    knob = Knob("none", 0.0, 0.0, "larger", grid=(0.0,))

    def step(self, layer, signals, state, knobs):
        correct = predictions(signals["logits"]) == signals["labels"]
        return correct[None, :].expand(len(knobs), -1)


register_method("oracle", "weighted", OraclePolicy,
                "Oracle: first correct layer (uses labels; head-room only)", report_only=True)
