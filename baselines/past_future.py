"""Past-Future early exit (GPFEE, Liao et al., NAACL 2021): each exit combines the pooled features
of the layers already run ("past") with features predicted for the layers not yet run ("future")
through a learned gate; exit when the entropy (nats) of the combined logits is below S.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from de3bert.model import ExitHeads, MultiExitModel, pool
from de3bert.recipes import Recipe, Stage, all_parameters, register_recipe, weighted_ce
from de3bert.registry import register_method

from .deebert import EntropyPolicy


class PastFutureHeads(ExitHeads):
    """Per-layer poolers, a future predictor (one Linear+tanh per target layer j, shared by every
    current layer i < j) and a gated classifier with one Linear H→2C per slot j.

    Head state `past` [N, L, H] keeps the pooled features of the layers run so far (rows are
    samples, so the live engine can drop exited ones). In training, `_pooled` [N, H] and
    `_future` [N, L−i, H] (predictions for layers i+1..L) are emitted for the loss.
    """

    def __init__(self, encoder, num_labels: int, pooling: str, dropout: float = 0.1):
        super().__init__()
        if num_labels < 2:
            raise ValueError("Past-Future (GPFEE) is classification-only: its gate and entropy rule "
                             "need class logits; regression is not supported")
        hidden, self.num_layers, self.num_labels = encoder.hidden_size, encoder.num_layers, num_labels
        self.pooling = pooling
        # `cls` with a backbone pooler: a copy of it per layer; otherwise pool, then Linear+tanh
        self.copy_pooler = pooling == "cls" and encoder.pooler is not None
        if self.copy_pooler:
            self.poolers = nn.ModuleList(copy.deepcopy(encoder.pooler) for _ in range(self.num_layers))
        else:
            self.poolers = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
                                         for _ in range(self.num_layers))
        # future[j − 2] predicts layer j (2..L) from any earlier layer's pooled feature
        self.future = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(self.num_layers - 1))
        self.slots = nn.ModuleList(nn.Linear(hidden, 2 * num_labels) for _ in range(self.num_layers))
        self.gate = nn.Parameter(torch.ones(num_labels))  # A, one value per class
        self.dropout = nn.Dropout(dropout)

    def init_state(self, batch_size, device):
        return {"past": torch.zeros(batch_size, self.num_layers, self.slots[0].in_features, device=device)}

    def pooled(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.copy_pooler:
            return self.poolers[layer - 1](hidden)
        return self.poolers[layer - 1](pool(hidden, attention_mask, self.pooling))

    def forward_layer(self, layer, hidden, attention_mask, state):
        c = self.num_labels
        h = self.pooled(layer, hidden, attention_mask)
        # out-of-place write: earlier layers' graphs still hold the previous buffer
        past = state["past"].index_copy(1, torch.tensor([layer - 1], device=h.device),
                                        h.to(state["past"].dtype)[:, None])
        state["past"] = past
        past_out = [self.slots[j](self.dropout(past[:, j].to(h.dtype))) for j in range(layer)]
        future = [torch.tanh(self.future[j - 1](h)) for j in range(layer, self.num_layers)]
        future_out = [self.slots[j](self.dropout(f)) for j, f in zip(range(layer, self.num_layers), future,
                                                                      strict=True)]
        p = torch.stack([o[:, :c] for o in past_out]).sum(0)
        lam = torch.sigmoid(self.gate * torch.tanh(torch.stack([o[:, c:] for o in past_out]).mean(0)))
        logits = 2 * lam * p
        if future_out:
            logits = logits + (2 - 2 * lam) * torch.stack([o[:, :c] for o in future_out]).sum(0)
        out = {"logits": logits}
        if self.training:
            out["_pooled"] = h
            out["_future"] = torch.stack(future, 1) if future else h.new_zeros(h.shape[0], 0, h.shape[1])
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


@register_recipe
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


register_method("past-future", "past-future", PastFutureEntropyPolicy,
                "Past-Future (GPFEE): entropy of gated past + predicted-future logits < S")
