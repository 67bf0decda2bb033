"""PCEE-BERT (Zhang et al., NAACL Findings 2022): patience over consecutive confident layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from de3bert.method import Method
from de3bert.policy import ExitPolicy, Knob, normalized_entropy, threshold_grid


@dataclass(frozen=True)
class PatientConfidenceOptions:
    """Options of PCEE-BERT's rule."""

    patience: int = 2
    """Consecutive confident layers needed to exit."""


class PatientConfidencePolicy(ExitPolicy):
    """Counter c += 1 when normalized entropy H_n(p_i) < τ, else c = 0; exit at c = t (option)."""

    name = "patient-confidence"
    knob = Knob("tau", 0.0, 1.0, "larger")
    Options = PatientConfidenceOptions
    state_keys = ("count",)

    def grid(self):
        return threshold_grid(1.0)

    def init_state(self, n, knobs):
        return {"count": torch.zeros(len(knobs), n, dtype=torch.long)}

    def step(self, layer, signals, state, knobs):
        confident = normalized_entropy(signals["logits"]).double()[None, :] < knobs.double()[:, None]
        state["count"] = torch.where(confident, state["count"] + 1, torch.zeros_like(state["count"]))
        return state["count"] >= self.opts.patience


METHOD = Method("pcee", "weighted", PatientConfidencePolicy,
                "PCEE-BERT: exit after `patience` consecutive layers with normalized entropy < tau",
                {"patience": 2})
