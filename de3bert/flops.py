"""FLOPs per exit depth with `torch.utils.flop_counter.FlopCounterMode`.

Count the embeddings, every layer and every exit head separately, at three sequence lengths, and
fit the exact quadratic a + b·n + c·n² of each (a transformer layer's FLOPs are quadratic in n),
so every sample is charged for its own length. The model must use eager attention: SDPA hides
the attention matmuls from the counter. Unit: FLOPs = 2 × multiply-accumulates.
FlopCounterMode counts matrix products only; softmax/entropy/elementwise indicator work (O(C) per
sample) is not counted, which is below 0.01% of a layer. Prototype distances (`torch.cdist`, which
the counter does not know) are counted through a formula registered in `de3bert.prototypes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import LayerPass, MultiExitModel

LENGTHS = (16, 48, 96)


@dataclass
class DepthFlops:
    """Quadratic coefficients `[3]` (a, b, c) per component, to evaluate at any length."""

    embed: np.ndarray  # [3]
    layers: np.ndarray  # [L, 3]
    heads: np.ndarray  # [L, 3]

    def per_sample(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embed [N], layers [L, N], heads [L, N]) FLOPs for samples of the given lengths."""
        n = np.asarray(lengths, dtype=np.float64)
        basis = np.stack([np.ones_like(n), n, n * n])  # [3, N]
        return self.embed @ basis, self.layers @ basis, self.heads @ basis

    def cumulative(self, lengths) -> np.ndarray:
        """FLOPs `[L, N]` of exiting at depth m (1..L): embeddings + layers 1..m + heads 1..m."""
        emb, lay, hd = self.per_sample(lengths)
        return emb[None, :] + np.cumsum(lay + hd, axis=0)

    def full_model(self, lengths) -> np.ndarray:
        """FLOPs `[N]` of the plain model: embeddings + all layers + the last head only."""
        emb, lay, hd = self.per_sample(lengths)
        return emb + lay.sum(0) + hd[-1]


def _count(fn) -> tuple[float, object]:
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return float(counter.get_total_flops()), out


@torch.inference_mode()
def count_components(model: MultiExitModel, length: int) -> tuple[float, list[float], list[float]]:
    """FLOPs of embeddings, each layer and each head for one sample of `length` tokens."""
    if model.encoder.config._attn_implementation not in ("eager",):
        raise ValueError("count FLOPs on an eager-attention model (SDPA hides attention matmuls); "
                         "load it with attn_implementation='eager'")
    model.eval()
    ids = torch.full((1, length), 1, dtype=torch.long)  # any in-vocabulary id: FLOPs do not depend on it
    attn = torch.ones(1, length, dtype=torch.long)
    tokens = torch.zeros_like(ids)
    emb, lp = _count(lambda: LayerPass(model, ids, attn, tokens))
    passes = model.layer_pass(ids, attn, tokens, heads="none", start=lp)
    layers, heads = [], []
    for i in range(model.num_layers):
        f, _ = _count(lambda: next(passes))
        layers.append(f)
        f, _ = _count(lambda i=i: model.heads.forward_layer(i + 1, lp.hidden, lp.attention_mask,
                                                            lp.head_state))
        heads.append(f)
    return emb, layers, heads


def depth_flops(model: MultiExitModel, lengths: tuple[int, ...] = LENGTHS) -> DepthFlops:
    """Count at three lengths and solve for each component's quadratic exactly."""
    counts = [count_components(model, n) for n in lengths]
    vander = np.vander(np.asarray(lengths, dtype=np.float64), 3, increasing=True)  # [3, 3]

    def fit(values: np.ndarray) -> np.ndarray:
        return np.linalg.solve(vander, values)

    embed = fit(np.array([c[0] for c in counts]))
    layers = np.stack([fit(np.array([c[1][i] for c in counts])) for i in range(model.num_layers)])
    heads = np.stack([fit(np.array([c[2][i] for c in counts])) for i in range(model.num_layers)])
    return DepthFlops(embed, layers, heads)
