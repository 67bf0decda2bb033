"""PABEE (Zhou et al., NeurIPS 2020): exit after t consecutive layers agree; weighted recipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from de3bert.method import Method
from de3bert.policy import ExitPolicy, Knob, predictions


@dataclass(frozen=True)
class PatienceOptions:
    """Options of PABEE's patience rule."""

    regression_tolerance: float = 0.1
    """Regression: |z_i − z_{i−1}| below this counts as agreement."""


class PatiencePolicy(ExitPolicy):
    """Counter c += 1 when layer i predicts what layer i−1 predicted, else c = 0; exit at c = t.

    Regression: |z_i − z_{i−1}| < `regression_tolerance` counts as agreement. t = 0 never exits.
    """

    name = "patience"
    knob = Knob("patience", 0, 1000, "smaller", integer=True)
    supports_regression = True
    Options = PatienceOptions
    state_keys = ("count", "prev")

    def grid(self):
        return list(range(1, self.num_layers))

    def init_state(self, n, knobs):
        k = len(knobs)
        return {"count": torch.zeros(k, n, dtype=torch.long), "prev": torch.zeros(k, n)}

    def step(self, layer, signals, state, knobs):
        out = predictions(signals["logits"]).float()
        if layer == 1:
            agree = torch.zeros_like(out, dtype=torch.bool)
        elif self.num_labels == 1:
            agree = (out - state["prev"][0]).abs() < self.opts.regression_tolerance
        else:
            agree = out == state["prev"][0]
        state["count"] = torch.where(agree[None, :], state["count"] + 1, torch.zeros_like(state["count"]))
        state["prev"] = out[None, :].expand_as(state["prev"]).clone()
        t = knobs.long()[:, None]
        return (t > 0) & (state["count"] >= t)


METHOD = Method("pabee", "weighted", PatiencePolicy,
                "PABEE: exit after `patience` consecutive agreeing layers (weighted recipe)",
                {"regression_tolerance": 0.1})
