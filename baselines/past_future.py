"""Past-Future early exit (GPFEE, Liao et al., NAACL 2021): each exit combines the pooled features
of the layers already run ("past") with features predicted for the layers not yet run ("future")
through a learned gate; exit when the entropy (nats) of the combined logits is below S.

Training follows lancopku/Early-Exit `model/modeling_bert.py` (README, fidelity table); each
point where an earlier version of this file differed is an option whose default is the original:
`detach_past`, `gate`, `pooler_init`/`init`, `freeze_lower`/`unfreeze_steps`, `cosine`, `dropout_masks`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from de3bert.indicators import EntropyPolicy
from de3bert.method import Method
from de3bert.model import ExitHeads, MultiExitModel, cached_pool_weights, pool, pooler_like
from de3bert.policy import float32
from de3bert.recipes import Recipe, Stage, all_parameters, weighted_ce

# lancopku/Early-Exit finetune_all.sh: `finetune_bert.sh TASK save k batch accum lr` (5 epochs)
GPFEE_TASKS = {"mrpc": (2, 16, 2e-5), "sst2": (2, 16, 1e-5), "qnli": (1, 16, 1e-5),
               "mnli": (3, 128, 3e-5), "qqp": (2, 128, 5e-5), "rte": (1, 16, 2e-5)}


@dataclass(frozen=True)
class PastFutureOptions:
    """Options of the `past-future` recipe; every default is the original's."""

    detach_past: bool = True
    """Past pooled features enter later layers' logits detached (`all_pool[-1].detach()`)."""
    gate: Literal["linear", "vector"] = "linear"
    """Gate on the past slots' mean: `nn.Linear(C, C)` with bias (original) or a C-vector, no bias."""
    pooler_init: Literal["random", "pretrained"] = "random"
    """Per-layer poolers randomly initialised (original) or copies of the pre-trained pooler (cls)."""
    init: Literal["bert", "uniform"] = "bert"
    """New weights ~ N(0, initializer_range), biases 0 (BERT's `_init_weights`), or nn.Linear's uniform."""
    freeze_lower: int = 2
    """k: gradients into the bottom k layers are blocked with probability 1 − step/total (0 = off).
    The original sets k per task (finetune_all.sh; the runner applies GPFEE_TASKS); 2 elsewhere."""
    unfreeze_steps: int = 0
    """Steps over which blocking fades out (the original: the whole run); 0 = the stage's step
    count, which the benchmark runner fills in (a bare `de3bert train` must pass it, else no blocking)."""
    cosine: Literal["per_layer", "flat"] = "per_layer"
    """Cosine loss averaged per source layer, then over layers (original), or one flat mean."""
    dropout_masks: Literal["per_layer", "per_slot"] = "per_layer"
    """A fresh dropout mask on every slot at every layer (original) or one per slot."""


class PastFutureHeads(ExitHeads):
    """Per-layer poolers, a future predictor ĥⱼ = tanh(Wⱼh + bⱼ) per target layer j (shared by every
    current layer i < j) and a gated classifier with one slot j (H → C logits + C gate inputs) per
    layer.

    Inference keeps the running sum `past` [N, 2C] of the past slots' outputs (they only enter as
    a sum and a mean), so each layer adds its own slot once; the future predictors and slots are
    stacked tensors (two matrix products per layer). Training recomputes the past slots at every
    layer from the stored features `hist` (detached, `detach_past`), so each layer draws a fresh
    dropout mask on every slot as the original does; with `dropout_masks = per_slot` the stored
    features are the dropped ones. `_pooled` [N, H] and `_future` [N, L−i, H] feed the cosine loss.
    """

    def __init__(self, encoder, num_labels: int, pooling: str, opts: PastFutureOptions, dropout: float = 0.1):
        super().__init__()
        if num_labels < 2:
            raise ValueError("Past-Future (GPFEE) is classification-only: its gate and entropy rule "
                             "need class logits; regression is not supported")
        hidden, self.num_layers, self.num_labels = encoder.hidden_size, encoder.num_layers, num_labels
        self.hidden_size, self.pooling, self.opts = hidden, pooling, opts
        L, C = self.num_layers, num_labels
        self.copy_pooler = (pooling == "cls" and encoder.pooler is not None
                            and opts.pooler_init == "pretrained")
        self.poolers = nn.ModuleList(
            (copy.deepcopy(encoder.pooler) if self.copy_pooler else pooler_like(hidden)) for _ in range(L))
        # future_weight[j − 2] ([out, in], as nn.Linear) predicts layer j = 2..L
        self.future_weight = nn.Parameter(torch.empty(L - 1, hidden, hidden))
        self.future_bias = nn.Parameter(torch.empty(L - 1, hidden))
        # slot j (0-based): x ↦ x·slot_weight[j] + slot_bias[j], `[..., 0, :]` the C logits and
        # `[..., 1, :]` the C gate inputs
        self.slot_weight = nn.Parameter(torch.empty(L, hidden, 2, C))
        self.slot_bias = nn.Parameter(torch.empty(L, 2, C))
        self.gate_proj = nn.Linear(C, C) if opts.gate == "linear" else None
        self.gate = nn.Parameter(torch.ones(C)) if opts.gate == "vector" else None
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self._init_weights(getattr(encoder.config, "initializer_range", 0.02))
        self._progress = 1.0

    def _init_weights(self, std: float) -> None:
        new = [self.future_weight, self.future_bias, self.slot_weight, self.slot_bias]
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        if self.copy_pooler:
            linears = [m for m in linears if m is self.gate_proj]
        with torch.no_grad():
            if self.opts.init == "bert":  # modeling_bert.py: normal_(0, initializer_range), zero bias
                for p in (self.future_weight, self.slot_weight, *(m.weight for m in linears)):
                    p.normal_(0.0, std)
                for p in (self.future_bias, self.slot_bias, *(m.bias for m in linears)):
                    p.zero_()
            else:
                bound = 1.0 / self.hidden_size ** 0.5  # nn.Linear's default for fan-in H
                for p in new:
                    p.uniform_(-bound, bound)

    # ---- training-time gradient blocking (freezed_lower_layer) ---------------------------------
    def train_hidden(self, layer, hidden):
        """Bottom k layers: detach the layer's output with probability 1 − progress (original:
        `if random.random() > cur_step / total_step: encoder_outputs = encoder_outputs.detach()`)."""
        k, total = self.opts.freeze_lower, self.opts.unfreeze_steps
        if layer == 1:
            if k > 0 and total <= 0:
                warnings.warn("past-future: freeze_lower > 0 but unfreeze_steps = 0; gradients are "
                              "not blocked (pass unfreeze_steps = the run's step count)", stacklevel=2)
            self._progress = float(self.steps_seen) / total if total > 0 else 1.0
            self.steps_seen += 1
        if layer <= k and float(torch.rand(())) > self._progress:
            return hidden.detach()
        return hidden

    def init_state(self, batch_size, device):
        """`past` `[N, 2C]`: sums of the past slots' outputs (C logits, then C gate inputs)."""
        return {"past": torch.zeros(batch_size, 2 * self.num_labels, device=device)}

    def pooled(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
               state: dict | None = None) -> torch.Tensor:
        """Layer `layer`'s own pooler on its [CLS] (cls) or on the masked mean (mean)."""
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

    def _gate(self, mean_gate_inputs: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(mean_gate_inputs)
        return torch.sigmoid(self.gate_proj(x) if self.gate_proj is not None else self.gate * x)

    def _past_sum(self, layer: int, h: torch.Tensor, state: dict) -> torch.Tensor:
        """Σ over slots 1..layer of the slot outputs `[N, 2C]`, and `state` updated."""
        i, c = layer - 1, self.num_labels
        if not self.training:  # no dropout: the running sum is exact
            own = torch.addmm(self.slot_bias[i].view(2 * c), h, self.slot_weight[i].view(-1, 2 * c))
            state["past"] = state["past"] + own
            return state["past"]
        per_slot = self.opts.dropout_masks == "per_slot"
        cur = self.drop(h) if per_slot else h
        hist = state.get("hist")
        feats = cur[:, None] if hist is None else torch.cat([hist, cur[:, None]], 1)  # [N, layer, H]
        kept = cur.detach() if self.opts.detach_past else cur
        state["hist"] = kept[:, None] if hist is None else torch.cat([hist, kept[:, None]], 1)
        x = feats if per_slot else self.drop(feats)  # a fresh mask on every slot at this layer
        out = torch.einsum("nsh,shc->nc", x, self.slot_weight[:layer].reshape(layer, self.hidden_size, 2 * c))
        return out + self.slot_bias[:layer].reshape(layer, 2 * c).sum(0)

    def forward_layer(self, layer, hidden, attention_mask, state):
        k, c = self.num_layers - layer, self.num_labels
        h = self.pooled(layer, hidden, attention_mask, state)
        past = self._past_sum(layer, h, state)
        lam = float32(self._gate(past[:, c:] / layer))  # gate on the past slots' mean (float32
        # under autocast, like the running sums it mixes)
        out = {}
        if k:  # 2λ·P + (2 − 2λ)·F = 2·lerp(F, P, λ)
            future = self.predict_future(layer, h)
            future_logits = torch.addmm(self.slot_bias[layer:, 0].sum(0), self.drop(future),
                                        self.slot_weight[layer:, :, 0].reshape(k * self.hidden_size, c))
            # float32: under autocast the product is bf16/fp16, the running sums stay float32
            logits = torch.lerp(float32(future_logits), float32(past[:, :c]), lam).mul(2)
        else:
            logits = past[:, :c] * lam * 2
        out["logits"] = logits
        if self.training:
            out["_pooled"] = h
            out["_future"] = (future.view(h.shape[0], k, self.hidden_size) if k
                              else h.new_zeros(h.shape[0], 0, self.hidden_size))
        return out


def future_loss(signals, mode: str = "per_layer") -> torch.Tensor:
    """Cosine-embedding loss 1 − cos(ĥ_j, h_j) over every (source layer i, target j > i) pair; the
    true h_j is detached. `per_layer`: mean per source layer, then over the L − 1 sources
    (the original's loop over `cls_tokens_proj`); `flat`: one mean over all pairs."""
    targets = torch.stack([s["_pooled"].detach() for s in signals], 1)  # [N, L, H]
    losses = [1 - F.cosine_similarity(s["_future"].float(), targets[:, i + 1:].float(), dim=-1)
              for i, s in enumerate(signals[:-1])]
    if mode == "flat":
        return torch.cat(losses, 1).mean()
    return torch.stack([x.mean() for x in losses]).mean()


def past_future_loss(model: MultiExitModel, signals, labels, step) -> torch.Tensor:
    """½(Σ_j j·CE_j / Σ_j j + cosine loss of the future predictor)."""
    return 0.5 * (weighted_ce(signals, labels) + future_loss(signals, model.meta.get("cosine", "per_layer")))


class PastFuture(Recipe):
    """GPFEE: one joint stage over every parameter."""

    name = "past-future"
    supports_regression = False
    Options = PastFutureOptions

    def heads(self, encoder, meta):
        opts = self.parse_options({k: meta[k] for k in PastFutureOptions.__dataclass_fields__})
        return PastFutureHeads(encoder, meta["num_labels"], meta["pooling"], opts)

    def stages(self):
        return [Stage("joint", all_parameters, past_future_loss)]

    def task_options(self, task, steps):
        """k of `freeze_lower` per task (finetune_all.sh) and the run's step count (`t_total`)."""
        return {**({"freeze_lower": GPFEE_TASKS[task][0]} if task in GPFEE_TASKS else {}),
                "unfreeze_steps": steps()}

    def original_settings(self, task: str) -> tuple[dict, dict]:
        """finetune_all.sh / finetune_bert.sh: per-task batch (× accumulation) and lr, 5 epochs;
        run_glue.py keeps every checkpoint and the best on dev is reported."""
        batch, lr = GPFEE_TASKS.get(task, (2, 32, 2e-5))[1:]
        return ({"batch_size": batch, "lr": lr, "epochs": 5.0, "warmup_ratio": 0.0, "weight_decay": 0.0,
                 "max_grad_norm": 1.0}, {"checkpoint": "best dev (eval_all_checkpoints)"})


class PastFutureEntropyPolicy(EntropyPolicy):
    """Exit when the entropy (nats) of the gated past+future logits is below S."""

    name = "past-future-entropy"
    supports_regression = False


METHOD = Method("past-future", "past-future", PastFutureEntropyPolicy,
                "Past-Future (GPFEE): entropy of gated past + predicted-future logits < S")
