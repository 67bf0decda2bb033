"""Prototypical networks for DE³-BERT: a metric-space map per layer and class prototypes.

Prototypes are buffers (saved with the model, never trained by gradient), updated by a moving
average of detached class means; under data parallelism the class sums and counts are
all-reduced first so every replica holds the same prototypes.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import flop_registry, register_flop_formula

from .model import ClassifierHeads, dense_of_tanh_pooler, linear
from .policy import float32


def _cdist_flops(x1_shape, x2_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `torch.cdist` (Euclidean): a difference, a multiply and an add per coordinate."""
    *batch, n, d = x1_shape
    return 3 * math.prod(batch) * n * x2_shape[-2] * d


# FlopCounterMode has no formula for cdist; without one, prototype distances would count as free
if torch.ops.aten._cdist_forward not in flop_registry:
    register_flop_formula(torch.ops.aten._cdist_forward)(_cdist_flops)


def pairwise_distance(z: torch.Tensor, protos: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    """Distances `[N, C]` from features `[N, d]` to prototypes `[C, d]`, in float32.

    Euclidean is `torch.cdist` in its direct mode: one kernel (it runs after every layer at
    batch 1), no ‖z‖² − 2z·p + ‖p‖² cancellation, a row's result independent of the batch it is
    in, and a zero gradient at zero distance. `de3bert.flops` registers its FLOPs (3·N·C·d).
    """
    z, protos = float32(z), float32(protos)
    if kind == "euclidean":
        return torch.cdist(z, protos, compute_mode="donot_use_mm_for_euclid_dist")
    if kind == "cosine":
        return 1.0 - F.normalize(z, dim=-1, eps=1e-8) @ F.normalize(protos, dim=-1, eps=1e-8).T
    raise ValueError(f"unknown distance {kind!r}; valid: euclidean, cosine")


def class_sums(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums `[C, d]` and counts `[C]`, all-reduced across replicas if any."""
    onehot = F.one_hot(labels.long(), num_classes).to(z.dtype)
    sums, counts = onehot.T @ z, onehot.sum(0)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return sums, counts


class PrototypeHeads(ClassifierHeads):
    """Linear classifiers (PABEE-style) + a map g⁽ᵐ⁾ into a metric space + class prototypes.

    Emits `logits` and `proto_dist` (distance to every class prototype) per layer.
    """

    def __init__(self, encoder, num_labels: int, pooling: str, proto_dim: int = 0, protonet: bool = True,
                 gamma: float = 0.1, distance: str = "euclidean", last_layer: bool = False,
                 through: str = "all"):
        super().__init__(encoder, num_labels, pooling, poolers="shared")
        if through not in ("all", "projection", "own_pooler"):
            raise ValueError(f"unknown dar_through {through!r}; valid: all, projection, own_pooler")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma={gamma} must be in (0, 1]")
        hidden = encoder.hidden_size
        dim = hidden if not protonet else (proto_dim or hidden)
        self.gamma, self.distance, self.num_labels = gamma, distance, num_labels
        # prototypical networks on layers 1..L−1 (layer L never uses DR); `last_layer` adds one at L
        self.proto_layers = self.num_layers if last_layer else self.num_layers - 1
        self.projections = nn.ModuleList(
            (nn.Linear(hidden, dim) if protonet else nn.Identity()) for _ in range(self.proto_layers))
        self.through = through
        # own_pooler: the metric space reads a pooler of its own (a copy of the shared one), so
        # DAR's gradient reaches the backbone without reshaping the classifiers' shared pooler
        self.proto_pooler = copy.deepcopy(self.pooler(1)) if through == "own_pooler" else None
        self._proto_dense = [dense_of_tanh_pooler(self.proto_pooler)] if self.proto_pooler is not None else []
        self.register_buffer("prototypes", torch.zeros(self.num_layers, num_labels, dim))
        self.register_buffer("proto_set", torch.zeros(self.num_layers, num_labels, dtype=torch.bool))

    def has_protos(self, layer: int) -> bool:
        """Whether 1-based `layer` has a prototypical network (and DAR)."""
        return layer <= self.proto_layers

    def forward_layer(self, layer, hidden, attention_mask, state):
        h = self.pooled(layer, hidden, attention_mask, state)
        out = {"logits": self.classify(layer, h)}
        if not self.has_protos(layer):
            # no prototypes at layer L: distances 0 (DR = ½), never read (layer L always exits)
            out["proto_dist"] = h.new_zeros(h.shape[0], self.num_labels, dtype=torch.float32)
            return out
        z = self.metric_feature(layer, h, hidden, attention_mask, state)
        out["proto_dist"] = pairwise_distance(z, self.prototypes[layer - 1], self.distance)
        if self.training:
            out["_z"] = z  # for DAR and the EMA update; never recorded
        return out

    def metric_feature(self, layer: int, h: torch.Tensor, hidden: torch.Tensor,
                       attention_mask: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """z = g⁽ᵐ⁾(pooled feature) in the metric space; which pooled feature (and so where DAR's
        gradient goes) is `through`: the shared one `h`, `h` detached, or the own pooler's."""
        if self.through == "own_pooler":
            h = self.pool_with(self.proto_pooler, self._proto_dense[0], hidden, attention_mask, state)
        elif self.through == "projection":
            h = h.detach()
        g = self.projections[layer - 1]
        return linear(g, h) if isinstance(g, nn.Linear) else g(h)  # g = identity: de3-noproto

    @torch.no_grad()
    def ema_update(self, z_per_layer: list[torch.Tensor], labels: torch.Tensor) -> None:
        """cp_k ← (1−γ)·cp_k + γ·batch mean of class k; unset → batch mean; absent → unchanged."""
        for m, z in enumerate(z_per_layer):
            sums, counts = class_sums(z.detach().float(), labels, self.num_labels)
            present = counts > 0
            mean = sums / counts.clamp_min(1)[:, None]
            fresh = present & ~self.proto_set[m]
            old = self.prototypes[m]
            ema = (1 - self.gamma) * old + self.gamma * mean
            new = torch.where(fresh[:, None], mean, torch.where(present[:, None], ema, old))
            self.prototypes[m].copy_(new)
            self.proto_set[m] |= present

    def after_step(self, signals, labels, accelerator=None) -> None:
        self.ema_update([s["_z"] for s in signals if "_z" in s], labels)

    @torch.no_grad()
    def recompute(self, model, loader, device=None) -> None:
        """Replace the EMA prototypes by exact class means over `loader` (one pass, no gradient)."""
        was_training = model.training
        model.eval()
        total = torch.zeros_like(self.prototypes)
        count = torch.zeros(self.prototypes.shape[:2], device=self.prototypes.device)
        for batch in loader:
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            onehot = F.one_hot(batch["labels"].long(), self.num_labels).float()
            for layer, _, p in model.layer_pass(batch["input_ids"], batch["attention_mask"],
                                                batch.get("token_type_ids"), heads="none"):
                if not self.has_protos(layer):
                    continue
                h = self.pooled(layer, p.hidden, p.attention_mask)
                z = self.metric_feature(layer, h, p.hidden, p.attention_mask).float()
                total[layer - 1] += onehot.T @ z
                count[layer - 1] += onehot.sum(0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        seen = count > 0
        self.prototypes.copy_(torch.where(seen[..., None], total / count.clamp_min(1)[..., None],
                                          self.prototypes))
        self.proto_set |= seen
        model.train(was_training)
