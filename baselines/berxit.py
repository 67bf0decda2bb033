"""BERxiT (Xin et al., EACL 2021): a learning-to-exit (LTE) head predicts whether an off-ramp is
wrong; exit when that prediction u is below θ. Alternating training (`alternate-lte`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from de3bert.method import Method
from de3bert.model import ClassifierHeads, MultiExitModel, linear
from de3bert.policy import Knob, ThresholdPolicy, predictions, threshold_grid
from de3bert.recipes import HF_RUN_GLUE, HF_RUN_GLUE_MISSING, Recipe, Stage, all_parameters, task_loss


class LteHeads(ClassifierHeads):
    """DeeBERT-style off-ramps (own pooler per layer) + one LTE unit shared by every layer:
    u_i = sigmoid(w·h̃_i + b) on off-ramp i's pooled feature h̃_i, emitted as `lte` [N]."""

    def __init__(self, encoder, num_labels: int, pooling: str, poolers: str = "per_layer"):
        super().__init__(encoder, num_labels, pooling, poolers=poolers)
        self.lte = nn.Linear(encoder.hidden_size, 1)

    def forward_layer(self, layer, hidden, attention_mask, state):
        h = self.drop(self.pooled(layer, hidden, attention_mask, state))
        return {"logits": linear(self.classifiers[layer - 1], h),
                "lte": torch.sigmoid(linear(self.lte, h)).squeeze(-1)}


def lte_targets(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 where the off-ramp is wrong, 0 where right; regression: |tanh(z − y)|. No gradient."""
    with torch.no_grad():
        if logits.shape[-1] == 1:
            return torch.tanh(logits.squeeze(-1).float() - labels.float()).abs()
        return (predictions(logits) != labels).float()


def lte_loss(signals, labels: torch.Tensor) -> torch.Tensor:
    """Mean over all layers of MSE(u_i, target_i)."""
    return sum(F.mse_loss(s["lte"].float(), lte_targets(s["logits"], labels)) for s in signals) / len(signals)


def alternate_loss(model: MultiExitModel, signals, labels, step: int) -> torch.Tensor:
    """Even steps (within the epoch): final task loss; odd steps: Σ off-ramp losses 1..L−1;
    the LTE loss is added on every step."""
    if step % 2 == 0:
        task = task_loss(signals[-1]["logits"], labels)
    else:
        task = sum(task_loss(s["logits"], labels) for s in signals[:-1])
    return task + lte_loss(signals, labels)


@dataclass(frozen=True)
class AlternateLteOptions:
    """Options of the `alternate-lte` recipe."""

    poolers: Literal["per_layer", "shared"] = "per_layer"
    """One pooler per off-ramp (BERxiT's code) or the backbone's shared pooler."""


class AlternateLte(Recipe):
    """BERxiT's alternating scheme: every parameter, one stage, parity decides the task loss."""

    name = "alternate-lte"
    Options = AlternateLteOptions

    def heads(self, encoder, meta):
        return LteHeads(encoder, meta["num_labels"], meta["pooling"], meta["poolers"])

    def stages(self):
        return [Stage("alternate", all_parameters, alternate_loss)]

    def original_settings(self, task):
        """berxit scripts/train_highway.sh: batch 8, lr 2e-5, 3 epochs (BERT), last checkpoint."""
        return ({"batch_size": 8, "lr": 2e-5, "epochs": 3.0, **HF_RUN_GLUE},
                {**HF_RUN_GLUE_MISSING, "checkpoint": "last"})


class LtePolicy(ThresholdPolicy):
    """Exit when u < θ (u predicts "this off-ramp is wrong"). Larger θ exits earlier."""

    name = "lte"
    needs = ("logits", "lte")
    knob = Knob("theta", 0.0, 1.0, "larger")
    supports_regression = True

    def grid(self):
        return threshold_grid(1.0)

    def score(self, layer, signals):
        return signals["lte"].float()


METHOD = Method("berxit", "alternate-lte", LtePolicy,
                "BERxiT: learning-to-exit head u < theta (alternate-lte recipe)")
