"""Training recipes: which heads a multi-exit model has and how it is trained (losses, stages).

A recipe is half of a method (the other half is an `ExitPolicy`). Methods that share a recipe
share one trained model. A recipe declares its head options as a dataclass (`Options`), so an
unknown or mistyped option fails before training. Recipes are registered by name in
`de3bert.registry.RECIPES` (the core's lines are in `de3bert/plugin.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .model import ClassifierHeads, MultiExitModel, Signals
from .options import NoOptions, known_subset, options_dict, parse_options
from .registry import get_recipe

LossFn = Callable[[MultiExitModel, list[Signals], torch.Tensor, int], torch.Tensor]
__all__ = ["Recipe", "Stage", "get_recipe", "task_loss", "weighted_ce", "all_parameters", "settings_for"]


@dataclass
class Stage:
    """One training stage: the parameters it updates and its loss."""

    name: str
    trainable: Callable[[MultiExitModel], Iterable[nn.Parameter]]
    loss: LossFn  # (model, per-layer signals, labels, step-in-epoch) -> scalar
    lr_scale: float = 1.0
    cost: float = 1.0  # seconds per step relative to a full fine-tune step (the --dry-run estimate)


def loss_float(t: torch.Tensor) -> torch.Tensor:
    """`t` for a loss: bf16/fp16 autocast outputs up to float32, float64 (`precision: fp64`) kept.
    A float32 loss inside an fp64 run rounds per kernel, and FastBERT's distillation amplifies
    that to 3·10⁻³ in its students' logits between CPUs."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification, MSE for regression (one output)."""
    if logits.shape[-1] == 1:
        out = loss_float(logits.squeeze(-1))
        return F.mse_loss(out, labels.to(out.dtype))
    return F.cross_entropy(loss_float(logits), labels)


def weighted_ce(signals: list[Signals], labels: torch.Tensor, weights: str = "linear") -> torch.Tensor:
    """PABEE's weighted average Σ_j w_j·CE_j / Σ_j w_j with w_j = j (or 1 when `uniform`)."""
    w = [float(j + 1) if weights == "linear" else 1.0 for j in range(len(signals))]
    return sum(wj * task_loss(s["logits"], labels) for wj, s in zip(w, signals, strict=True)) / sum(w)


def all_parameters(model: MultiExitModel) -> Iterable[nn.Parameter]:
    """Every parameter of the model (one joint stage)."""
    return model.parameters()


def settings_for(recipe: Recipe, task: str, mode: str) -> tuple[dict, dict]:
    """`train_settings` → (TrainConfig overrides, settings not applied): `equal` = none (the
    profile's one budget for every method), `original` = the recipe's published settings."""
    if mode == "equal":
        return {}, {}
    if mode == "original":  # the originals start regression outputs at a zero bias
        fields, missing = recipe.original_settings(task)
        return {"regression_bias": "zero", **fields}, missing
    raise ValueError(f"unknown train_settings {mode!r}; valid: equal, original")


class Recipe(ABC):
    """How to build and train one family of multi-exit models."""

    name: str = ""
    supports_regression: bool = True
    Options: ClassVar[type] = NoOptions

    def parse_options(self, values: dict | None) -> object:
        """This recipe's typed options from a mapping; unknown keys and wrong types fail."""
        return parse_options(self.Options, values, f"recipe {self.name}")

    def build(self, encoder, meta: dict) -> MultiExitModel:
        """Attach this recipe's heads to `encoder`; `meta` carries num_labels, pooling, options."""
        opts = self.parse_options(known_subset(self.Options, meta))
        meta = {**options_dict(opts), **meta, "recipe": self.name}
        return MultiExitModel(encoder, self.heads(encoder, meta), meta)

    @abstractmethod
    def heads(self, encoder, meta: dict) -> nn.Module:
        """The exit heads of this recipe."""

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The training stages, in order."""

    #: a recipe whose whole training *is* this recipe's first stage (same loss, parameters,
    #: schedule): that run is trained once and shared (`de3bert.train`); empty = none
    first_stage_from: ClassVar[str] = ""

    def adopt_first_stage(self, model: MultiExitModel, trained: MultiExitModel) -> None:
        """Copy what the first stage trains from `trained` (a `first_stage_from` model) into `model`."""
        raise NotImplementedError(f"recipe {self.name} declares no shared first stage")

    def deepest_exit(self, num_layers: int) -> int:
        """The deepest exit this recipe trains (a truncated model's layers above it keep
        untrained heads): what sanity checks and learned-model checks read."""
        return num_layers

    def after_training(self, model: MultiExitModel, train_loader, accelerator=None) -> None:  # noqa: B027
        """Hook run once after the last stage (DE³ recomputes its prototypes here)."""

    def task_options(self, task: str, steps: Callable[[], int]) -> dict:
        """Head options the original sets per task or per run (Past-Future's k and its schedule
        length; `steps()` = optimizer steps per stage). The runner applies them under the user's."""
        return {}

    def original_settings(self, task: str) -> tuple[dict, dict]:
        """The original's published training settings for `task` (`train_settings: original`):
        `(TrainConfig fields, settings TrainConfig cannot express yet)`. Both empty: the source
        is silent or there is no original (the equal-budget values are used)."""
        return {}, {}


#: a step whose backbone is frozen: full forward, backward through the heads only (measured: 0.45)
FROZEN_BACKBONE_COST = 0.45


# HF `run_glue.py` (transformers 2.x) argparse defaults shared by the DeeBERT, BERxiT, PABEE,
# PCEE and GPFEE scripts where those scripts do not override them
HF_RUN_GLUE = {"warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0}
HF_RUN_GLUE_MISSING: dict = {}  # every run_glue.py default above now has a TrainConfig field


@dataclass(frozen=True)
class WeightedOptions:
    """Options of the `weighted` recipe."""

    layer_weights: Literal["linear", "uniform"] = "linear"
    """Per-layer loss weights: w_j = j (PABEE) or 1."""


class Weighted(Recipe):
    """PABEE: one joint stage, Σ_j j·CE_j / Σ_j j over all exits, every parameter trains."""

    name = "weighted"
    Options = WeightedOptions

    def heads(self, encoder, meta):
        return ClassifierHeads(encoder, meta["num_labels"], meta["pooling"], poolers="shared")

    def stages(self):
        return [Stage("joint", all_parameters,
                      lambda model, sig, y, step: weighted_ce(sig, y, model.meta["layer_weights"]))]

    def original_settings(self, task):
        """PABEE finetune_bert.sh: batch 32, lr 2e-5, 5 epochs, best dev checkpoint
        (`--evaluate_during_training`). Shared by PCEE, max-prob and fixed-exit."""
        return ({"batch_size": 32, "lr": 2e-5, "epochs": 5.0, **HF_RUN_GLUE},
                {**HF_RUN_GLUE_MISSING, "checkpoint": "best dev"})


class Single(Recipe):
    """The plain fine-tune: one classifier on the last layer (the full-model reference)."""

    name = "single"

    def heads(self, encoder, meta):
        return ClassifierHeads(encoder, meta["num_labels"], meta["pooling"], poolers="shared")

    def stages(self):
        return [Stage("final", all_parameters, lambda model, sig, y, step: task_loss(sig[-1]["logits"], y))]


class TwoStage(Recipe):
    """DeeBERT: stage 1 trains backbone + final classifier; stage 2 freezes them and trains the
    off-ramps 1..L-1 (own pooler each) with the unweighted sum of their losses."""

    name = "two-stage"
    first_stage_from = "single"

    def adopt_first_stage(self, model, trained):
        """Stage 1 = the `single` fine-tune: its encoder, last pooler and last classifier."""
        model.encoder.load_state_dict(trained.encoder.state_dict())
        model.heads.classifiers[-1].load_state_dict(trained.heads.classifiers[-1].state_dict())
        if model.heads.poolers is not None:
            model.heads.poolers[-1].load_state_dict(trained.heads.pooler(model.num_layers).state_dict())

    def heads(self, encoder, meta):
        return ClassifierHeads(encoder, meta["num_labels"], meta["pooling"], poolers="per_layer")

    @staticmethod
    def _final(model: MultiExitModel):
        heads = model.heads
        yield from model.encoder.parameters()
        yield from heads.classifiers[-1].parameters()
        if heads.poolers is not None:
            yield from heads.poolers[-1].parameters()

    @staticmethod
    def _ramps(model: MultiExitModel):
        heads = model.heads
        for j in range(model.num_layers - 1):
            yield from heads.classifiers[j].parameters()
            if heads.poolers is not None:
                yield from heads.poolers[j].parameters()

    def stages(self):
        return [
            Stage("final", self._final, lambda m, sig, y, step: task_loss(sig[-1]["logits"], y)),
            Stage("off-ramps", self._ramps,
                  lambda m, sig, y, step: sum(task_loss(s["logits"], y) for s in sig[:-1]),
                  cost=FROZEN_BACKBONE_COST),
        ]

    def original_settings(self, task):
        """DeeBERT scripts/train_highway.sh: batch 8, lr 2e-5, 3 epochs per stage, last checkpoint."""
        return ({"batch_size": 8, "lr": 2e-5, "epochs": 3.0, **HF_RUN_GLUE},
                {**HF_RUN_GLUE_MISSING, "checkpoint": "last"})

