"""Near ties: the samples whose exit layer or prediction a rounding-level change of the scores
could flip. Another CPU's kernels (AVX2 vs AVX-512), thread count or batching move recorded scores
by ~10⁻⁶ (measured: ≤ 6·10⁻⁶ over every smoke recipe); a knob value or a class margin closer than
that decides differently there. Every results row counts its near ties, so a regression check can
tolerate exactly those samples and nothing else (benchmarks.regression).
"""

from __future__ import annotations

import torch

#: how close (knob units, or logit margin) a score must be to count as a near tie: ~17× the
#: largest cross-kernel score difference measured on the smoke profile (README: regression check)
TIE_EPS = 1e-4


def exit_ties(policy, record: dict[str, torch.Tensor], knobs, exits: torch.Tensor,
              eps: float = TIE_EPS) -> torch.Tensor:
    """`[K, N]` bool: samples whose exit layer changes when the knob moves by ±`eps` (for a
    threshold rule: a score within `eps` of the knob at a layer the sample reaches). Integer knobs
    (counts of layers) have no such ties."""
    if policy.knob.integer:
        return torch.zeros_like(exits, dtype=torch.bool)
    k = policy.knob.validate(knobs)
    lower = (k - eps).clamp(min=policy.knob.low)
    upper = (k + eps).clamp(max=policy.knob.high)
    return (policy.replay(record, lower) != exits) | (policy.replay(record, upper) != exits)


def prediction_ties(record: dict[str, torch.Tensor], exits: torch.Tensor,
                    eps: float = TIE_EPS) -> torch.Tensor:
    """`[K, N]` bool: samples whose top-two logits lie within `eps` at some layer up to their exit
    (their prediction may flip there, and rules that compare layers' predictions, such as PABEE's
    patience, may exit elsewhere). None for regression outputs."""
    logits = record["logits"].float()  # [L, N, C]
    if logits.shape[-1] < 2:
        return torch.zeros_like(exits, dtype=torch.bool)
    top = logits.topk(2, dim=-1).values
    close_so_far = (top[..., 0] - top[..., 1] < eps).int().cumsum(0) > 0  # [L, N]
    return torch.gather(close_so_far, 0, exits - 1)


def near_ties(policy, record: dict[str, torch.Tensor], knobs, exits: torch.Tensor,
              eps: float = TIE_EPS) -> list[dict]:
    """Per knob value: {eps, exit, prediction}: how many samples are exit ties, and how many more
    are prediction ties only (a sample is counted once)."""
    ex = exit_ties(policy, record, knobs, exits, eps)
    pred = prediction_ties(record, exits, eps) & ~ex
    return [{"eps": eps, "exit": int(e), "prediction": int(p)}
            for e, p in zip(ex.sum(1).tolist(), pred.sum(1).tolist(), strict=True)]


def tie_count(row: dict) -> int:
    """A results row's near ties in all (0 for rows made before they were counted)."""
    t = row.get("near_ties") or {}
    return int(t.get("exit", 0)) + int(t.get("prediction", 0))
