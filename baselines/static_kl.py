"""Static BERT-kL: the bottom k layers of the backbone with one classifier, fine-tuned on their own.

One model per k (recipes `static-kl2`, `static-kl3`, ...; one registry line each), trained only
where a profile asks for the method: training runs layers 1..k only (`ExitHeads.train_depth`),
so a step costs k layers. The record still runs every layer (the layers above k keep their
pre-trained weights and untrained heads, never used); the policy exits every sample at layer k.
"""

from __future__ import annotations

from dataclasses import dataclass

from de3bert.indicators import FixedLayerPolicy
from de3bert.method import Method
from de3bert.model import ClassifierHeads
from de3bert.recipes import HF_RUN_GLUE, Recipe, Stage, all_parameters, task_loss

KS = (2, 3, 4)
"""The k values registered by default (1.5×, 2× and 3× on a 6-layer backbone)."""


class StaticKlRecipe(Recipe):
    """A plain fine-tune of the k-layer truncation: the task loss of layer k only."""

    k: int = 0

    def heads(self, encoder, meta):
        heads = ClassifierHeads(encoder, meta["num_labels"], meta["pooling"], poolers="shared")
        heads.train_depth = min(self.k, encoder.num_layers)  # k ≥ L: the plain full fine-tune
        return heads

    def deepest_exit(self, num_layers):
        """Layer k: the heads above it were never trained."""
        return min(self.k, num_layers)

    def stages(self):
        k = self.k
        return [Stage("truncated", all_parameters,
                      lambda m, sig, y, step: task_loss(sig[min(k, len(sig)) - 1]["logits"], y))]

    def original_settings(self, task):
        """DeeBERT/PABEE fine-tune their BERT-kL like the full model: batch 32, lr 2e-5, 3 epochs."""
        return {"batch_size": 32, "lr": 2e-5, "epochs": 3.0, **HF_RUN_GLUE}, {}


RECIPES = {f"static-kl{k}": type(f"StaticKl{k}", (StaticKlRecipe,), {"name": f"static-kl{k}", "k": k,
                                                                     "__doc__": f"BERT-{k}L."})
           for k in KS}


@dataclass(frozen=True)
class StaticKlOptions:
    """Options of the static-kl rule."""

    k: int = 2
    """Depth of the truncated model (the layer every sample exits at)."""


class StaticKlPolicy(FixedLayerPolicy):
    """Every sample exits at layer k (its model has no layers above k that were trained)."""

    name = "static-kl"
    Options = StaticKlOptions

    def grid(self):
        return [min(self.opts.k, self.num_layers)]


METHODS = {f"static-kl{k}": Method(f"static-kl{k}", f"static-kl{k}", StaticKlPolicy,
                                   f"Static BERT-{k}L: the bottom {k} layers fine-tuned on their own",
                                   {"k": k}, family="static-kl")
           for k in KS}
