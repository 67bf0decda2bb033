"""Near ties (de3bert.ties): exactly the samples a rounding-level change of their scores could
flip, so the regression check can tolerate them and nothing else. A threshold rule on a made-up
record whose scores sit at known distances from the knob."""

from __future__ import annotations

import math

import torch

from de3bert.registry import get_method
from de3bert.ties import TIE_EPS, exit_ties, near_ties, prediction_ties


def _logits_with_maxprob(p: float) -> list[float]:
    """Two-class logits whose softmax max is `p` (margin log(p / (1 − p)))."""
    return [math.log(p / (1 - p)), 0.0]


def _record() -> dict:
    """3 layers × 5 samples; max-prob at layer 1: 0.9 (clear exit), 0.70005 (within 1e-4 of the
    knob 0.7), 0.7003 (3·10⁻⁴ above: not a tie), 0.6 (clear continue), 0.6995 (5·10⁻⁴ below: not
    a tie); later layers confident but for sample 4, whose layer-2 logits are within 5·10⁻⁵ of each
    other (a prediction tie)."""
    layer1 = [_logits_with_maxprob(p) for p in (0.9, 0.70005, 0.7003, 0.6, 0.6995)]
    layer2 = [[3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [1.0, 1.00005], [3.0, 0.0]]
    layer3 = [[3.0, 0.0]] * 5
    return {"logits": torch.tensor([layer1, layer2, layer3]), "labels": torch.tensor([0, 0, 0, 1, 0])}


def test_exit_ties_are_the_scores_within_eps_of_the_knob():
    policy = get_method("maxprob").make_policy(2, 3)
    rec = _record()
    exits = policy.replay(rec, [0.7])
    assert exits.tolist() == [[1, 1, 1, 3, 2]]  # sample 4: undecided at layer 2 too
    assert exit_ties(policy, rec, [0.7], exits).tolist() == [[False, True, False, False, False]]
    assert exit_ties(policy, rec, [0.7], exits, eps=1e-3).tolist() == [[False, True, True, False, True]]


def test_prediction_ties_are_close_top_two_logits_up_to_the_exit_layer():
    rec = _record()
    at_layer_1 = torch.tensor([[1, 1, 1, 1, 1]])
    assert prediction_ties(rec, at_layer_1).tolist() == [[False] * 5]
    at_layer_2 = torch.tensor([[1, 1, 1, 2, 2]])
    assert prediction_ties(rec, at_layer_2).tolist() == [[False, False, False, True, False]]
    assert prediction_ties({"logits": torch.zeros(3, 5, 1)}, at_layer_1).sum() == 0  # regression


def test_near_ties_count_each_sample_once_per_knob():
    policy = get_method("maxprob").make_policy(2, 3)
    rec = _record()
    knobs = [0.7, 0.95]
    out = near_ties(policy, rec, knobs, policy.replay(rec, knobs))
    assert out[0] == {"eps": TIE_EPS, "exit": 1, "prediction": 1}
    assert out[1]["exit"] == 0  # nothing within 1e-4 of 0.95


def test_integer_knobs_have_no_exit_ties():
    policy = get_method("pabee").make_policy(2, 3)
    rec = _record()
    exits = policy.replay(rec, [1])
    assert not exit_ties(policy, rec, [1], exits).any()
