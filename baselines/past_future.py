"""Past-Future early exit (GPFEE, Liao et al., NAACL 2021): each exit combines the pooled features
of the layers already run ("past") with features predicted for the layers not yet run ("future")
through a learned gate; exit when the entropy (nats) of the combined logits is below S.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from de3bert.indicators import EntropyPolicy
from de3bert.method import Method
from de3bert.model import ExitHeads, MultiExitModel, cached_pool_weights, pool
from de3bert.policy import float32
from de3bert.recipes import Recipe, Stage, all_parameters, weighted_ce


class PastFutureHeads(ExitHeads):
    """Per-layer poolers, a future predictor ĥⱼ = tanh(Wⱼh + bⱼ) per target layer j (shared by every
    current layer i < j) and a gated classifier with one slot j (H → C logits + C gate inputs) per
    layer.

    The slot outputs of the layers already run only ever enter as sums (logits) and a mean (gate),
    so head state keeps their running sum `past` [N, 2C] and each layer adds its own slot once,
    instead of re-running every past slot. The future predictors and slots are
    stacked tensors, so the L − i future targets of layer i are two matrix products, not 2(L − i)
    small ones: at batch 1 a GPFEE exit then costs a few kernels per layer rather than ~3L.
    (Training: each past slot sees one dropout mask, drawn when its layer runs.)
    In training, `_pooled` [N, H] and `_future` [N, L−i, H] (predictions for layers i+1..L) are
    emitted for the loss.
    """

    def __init__(self, encoder, num_labels: int, pooling: str, dropout: float = 0.1):
        super().__init__()
        if num_labels < 2:
            raise ValueError("Past-Future (GPFEE) is classification-only: its gate and entropy rule "
                             "need class logits; regression is not supported")
        hidden, self.num_layers, self.num_labels = encoder.hidden_size, encoder.num_layers, num_labels
        self.hidden_size, self.pooling = hidden, pooling
        L, C = self.num_layers, num_labels
        # `cls` with a backbone pooler: a copy of it per layer; otherwise pool, then Linear+tanh
        self.copy_pooler = pooling == "cls" and encoder.pooler is not None
        if self.copy_pooler:
            self.poolers = nn.ModuleList(copy.deepcopy(encoder.pooler) for _ in range(L))
        else:
            self.poolers = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
                                         for _ in range(L))
        # future_weight[j − 2] ([out, in], as nn.Linear) predicts layer j = 2..L
        self.future_weight = nn.Parameter(torch.empty(L - 1, hidden, hidden))
        self.future_bias = nn.Parameter(torch.empty(L - 1, hidden))
        # slot j (0-based): x ↦ x·slot_weight[j] + slot_bias[j], `[..., 0, :]` the C logits and
        # `[..., 1, :]` the C gate inputs: one product gives both for the current layer, and the
        # logit halves of the future slots j..L−1 are a strided view `[(L−j)·H, C]` (no copy)
        self.slot_weight = nn.Parameter(torch.empty(L, hidden, 2, C))
        self.slot_bias = nn.Parameter(torch.empty(L, 2, C))
        bound = 1.0 / hidden ** 0.5  # nn.Linear's default initialisation for fan-in H
        for p in (self.future_weight, self.future_bias, self.slot_weight, self.slot_bias):
            nn.init.uniform_(p, -bound, bound)
        self.gate = nn.Parameter(torch.ones(num_labels))  # A, one value per class
        self.dropout = nn.Dropout(dropout)

    def init_state(self, batch_size, device):
        """`past` `[N, 2C]`: sums of the past slots' outputs (C logits, then C gate inputs)."""
        return {"past": torch.zeros(batch_size, 2 * self.num_labels, device=device)}

    def pooled(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
               state: dict | None = None) -> torch.Tensor:
        if self.copy_pooler:
            return self.poolers[layer - 1](hidden)
        weights = cached_pool_weights(state, attention_mask) if self.pooling == "mean" else None
        linear = self.poolers[layer - 1][0]
        return torch.tanh(F.linear(pool(hidden, attention_mask, self.pooling, weights=weights),
                                   linear.weight, linear.bias))

    def predict_future(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """ĥⱼ for j = layer+1..L from this layer's pooled h: `[N, (L − layer)·H]`, targets in order."""
        k, hid = self.num_layers - layer, self.hidden_size
        w = self.future_weight[layer - 1:].reshape(k * hid, hid)
        return torch.tanh(F.linear(h, w, self.future_bias[layer - 1:].reshape(k * hid)))

    def forward_layer(self, layer, hidden, attention_mask, state):
        i, k, c = layer - 1, self.num_layers - layer, self.num_labels
        h = self.pooled(layer, hidden, attention_mask, state)
        own = torch.addmm(self.slot_bias[i].view(2 * c), self.drop(h), self.slot_weight[i].view(-1, 2 * c))
        # out-of-place: in training, earlier layers' graphs still hold the previous sums
        past = state["past"] = state["past"] + own
        lam = torch.sigmoid(self.gate * torch.tanh(past[:, c:] / layer))  # gate on the past slots' mean
        out = {}
        if k:  # 2λ·P + (2 − 2λ)·F = 2·lerp(F, P, λ)
            future = self.predict_future(layer, h)
            future_logits = torch.addmm(self.slot_bias[layer:, 0].sum(0), self.drop(future),
                                        self.slot_weight[layer:, :, 0].reshape(k * self.hidden_size, c))
            # float32: under autocast the product is bf16/fp16, the running sums stay float32
            logits = torch.lerp(float32(future_logits), past[:, :c], lam).mul_(2)
        else:
            logits = past[:, :c] * lam * 2
        out["logits"] = logits
        if self.training:
            out["_pooled"] = h
            out["_future"] = (future.view(h.shape[0], k, self.hidden_size) if k
                              else h.new_zeros(h.shape[0], 0, self.hidden_size))
        return out


def future_loss(signals) -> torch.Tensor:
    """Mean cosine-embedding loss 1 − cos(ĥ_j, h_j) over every (layer i, target j > i) pair and
    sample; the true h_j is detached (it is the target, not trained to match the prediction)."""
    targets = torch.stack([s["_pooled"].detach() for s in signals], 1)  # [N, L, H]
    losses = [1 - F.cosine_similarity(s["_future"].float(), targets[:, i + 1:].float(), dim=-1)
              for i, s in enumerate(signals[:-1])]
    return torch.cat(losses, 1).mean()


def past_future_loss(model: MultiExitModel, signals, labels, step) -> torch.Tensor:
    """½(Σ_j j·CE_j / Σ_j j + cosine loss of the future predictor)."""
    return 0.5 * (weighted_ce(signals, labels) + future_loss(signals))


class PastFuture(Recipe):
    """GPFEE: one joint stage over every parameter."""

    name = "past-future"
    supports_regression = False

    def heads(self, encoder, meta):
        return PastFutureHeads(encoder, meta["num_labels"], meta["pooling"])

    def stages(self):
        return [Stage("joint", all_parameters, past_future_loss)]


class PastFutureEntropyPolicy(EntropyPolicy):
    """Exit when the entropy (nats) of the gated past+future logits is below S."""

    name = "past-future-entropy"
    supports_regression = False


METHOD = Method("past-future", "past-future", PastFutureEntropyPolicy,
                "Past-Future (GPFEE): entropy of gated past + predicted-future logits < S")
