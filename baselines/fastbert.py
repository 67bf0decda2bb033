"""FastBERT (Liu et al., ACL 2020): normalized entropy ≤ speed; self-distillation recipe.

The exit head is heavier than a linear classifier (a small self-attention block per layer). The
last layer's head is the teacher: stage 1 trains it with the backbone, stage 2 freezes both and
distils the teacher into the L−1 student heads with KL divergence (no labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from de3bert.method import Method
from de3bert.model import ExitHeads, MultiExitModel, cached_in_state
from de3bert.policy import ExitPolicy, Knob, normalized_entropy, threshold_grid
from de3bert.recipes import FROZEN_BACKBONE_COST, Recipe, Stage, loss_float, task_loss


def additive_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`[N, 1, 1, T]`: 0 on real tokens, the dtype's minimum on padding (added to attention scores)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class FastBertClassifier(nn.Module):
    """Linear H→w + tanh on every token, w-wide multi-head self-attention with the padding mask,
    first token, Linear w→w + tanh, Linear w→C.

    Only the first token's attention output is used, so only its query is computed: keys and
    values (one fused w→2w map) still span every token, and the output equals full
    self-attention's first row (tested) at 1/T of the score, context and output-projection work.
    Attention is explicit matmuls (not SDPA) so FLOP counters see all of the head's work.
    """

    def __init__(self, hidden_size: int, num_labels: int, width: int = 128, heads: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        if width % heads:
            raise ValueError(f"FastBERT head width {width} is not divisible by {heads} heads")
        self.heads, self.width = heads, width
        self.inp = nn.Linear(hidden_size, width)
        self.q, self.kv = nn.Linear(width, width), nn.Linear(width, 2 * width)
        self._hold_key_bias_at_zero()
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_labels)

    def _hold_key_bias_at_zero(self) -> None:
        """Zero the key half of `kv.bias` and its gradient. Softmax cancels q·b_k (the same for
        every key of a query), so the function is unchanged; but its gradient is pure rounding
        noise, which AdamW turns into lr-sized, hardware-dependent steps (students trained on
        AVX2 and AVX-512 kernels ended 1e-2 apart). The parameter layout stays as saved models
        have it."""
        w = self.width
        with torch.no_grad():
            self.kv.bias[:w].zero_()
        keep = torch.cat([torch.zeros(w), torch.ones(w)])
        self.kv.bias.register_hook(lambda grad: grad * keep.to(grad))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        return x.view(n, t, self.heads, w // self.heads).transpose(1, 2)  # [N, heads, T, d]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                additive_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[N, C]`; `additive_mask` (from `additive_padding_mask`) may be passed in cached."""
        if additive_mask is None:
            additive_mask = additive_padding_mask(attention_mask)
        n, w = hidden.shape[0], self.width
        x = torch.tanh(self.inp(hidden))
        kv = self.kv(x)
        k, v = self._split(kv[..., :w]), self._split(kv[..., w:])
        q = self.q(x[:, 0]).view(n, self.heads, 1, w // self.heads)
        scores = (q @ k.transpose(-1, -2)).mul_(1.0 / math.sqrt(q.shape[-1])).add_(additive_mask)
        probs = scores.softmax(-1)
        if self.training:
            probs = self.dropout(probs)
        ctx = self.out((probs @ v).reshape(n, w))  # [N, heads, 1, d] → [N, w]
        return self.classifier(torch.tanh(self.dense(ctx)))


class FastBertHeads(ExitHeads):
    """One FastBERT classifier per layer; the last one is the teacher. Ignores `pooling`: the head
    pools its own attention output at the first token, as the paper does. Head state caches the
    additive padding mask (batch-first, so the live engine drops exited rows from it)."""

    def __init__(self, hidden_size: int, num_layers: int, num_labels: int, width: int = 128,
                 attention_heads: int = 2):
        super().__init__()
        if num_labels < 2:
            raise ValueError("FastBERT's self-distillation (KL between class distributions) needs a "
                             "classification task; regression is not supported")
        self.layers = nn.ModuleList(FastBertClassifier(hidden_size, num_labels, width, attention_heads)
                                    for _ in range(num_layers))

    def forward_layer(self, layer, hidden, attention_mask, state):
        mask = cached_in_state(state, "additive_mask", lambda: additive_padding_mask(attention_mask))
        return {"logits": self.layers[layer - 1](hidden, attention_mask, mask)}


def distill_loss(model: MultiExitModel, signals, labels, step) -> torch.Tensor:
    """Σ_i KL(teacher ‖ student_i) over layers 1..L−1, teacher detached; labels unused."""
    teacher = F.log_softmax(loss_float(signals[-1]["logits"].detach()), dim=-1)
    return sum(F.kl_div(F.log_softmax(loss_float(s["logits"]), dim=-1), teacher, log_target=True,
                        reduction="batchmean") for s in signals[:-1])


@dataclass(frozen=True)
class SelfDistillOptions:
    """Options of the `self-distill` recipe (FastBERT's classifier)."""

    fastbert_width: int = 128
    """Width of each layer's attention classifier."""
    fastbert_heads: int = 2
    """Attention heads of each layer's classifier."""


class SelfDistill(Recipe):
    """Stage 1: backbone + teacher with the task loss; stage 2: students by KL, lr × 10."""

    name = "self-distill"
    supports_regression = False
    Options = SelfDistillOptions

    def heads(self, encoder, meta):
        return FastBertHeads(encoder.hidden_size, encoder.num_layers, meta["num_labels"],
                             meta["fastbert_width"], meta["fastbert_heads"])

    @staticmethod
    def _teacher(model: MultiExitModel):
        yield from model.encoder.parameters()
        yield from model.heads.layers[-1].parameters()

    @staticmethod
    def _students(model: MultiExitModel):
        for head in model.heads.layers[:-1]:
            yield from head.parameters()

    def stages(self):
        return [Stage("teacher", self._teacher, lambda m, sig, y, step: task_loss(sig[-1]["logits"], y)),
                Stage("distill", self._students, distill_loss, lr_scale=10.0,
                      cost=FROZEN_BACKBONE_COST)]


class FastBertPolicy(ExitPolicy):
    """Exit when H(p_i)/log C ≤ speed (FastBERT's "uncertainty"). Larger speed exits earlier;
    speed = 1 exits every sample at layer 1."""

    name = "fastbert-uncertainty"
    knob = Knob("speed", 0.0, 1.0, "larger")

    def grid(self):
        return threshold_grid(1.0)

    def step(self, layer, signals, state, knobs):
        u = normalized_entropy(signals["logits"]).double()
        return u[None, :] <= knobs.double()[:, None]


METHOD = Method("fastbert", "self-distill", FastBertPolicy,
                "FastBERT: normalized entropy <= speed on self-distilled attention heads")
