"""glue_metrics against hand-computed values; the documented convention for constant inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from de3bert.metrics import glue_metrics

# preds vs labels: TP = 2 (0, 2), FN = 1 (1), FP = 1 (3), TN = 1 (4)
PREDS, LABELS = [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]


def test_accuracy_f1_mcc_by_hand():
    m = glue_metrics(("accuracy", "f1", "mcc"), PREDS, LABELS)
    assert m["accuracy"] == 60.0  # 3 of 5
    assert m["f1"] == pytest.approx(100 * 2 / 3, abs=1e-4)  # P = R = 2/3 (binary, positive class 1)
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 − 1) / sqrt(3·3·2·2) = 1/6
    assert m["mcc"] == pytest.approx(100 / 6, abs=1e-4)


def test_f1_is_binary_not_macro():
    # class 1: P = 1/2, R = 1 → F1 = 2/3; class 0: P = 1, R = 3/4 → 6/7; macro would be 16/21
    f1 = glue_metrics(("f1",), [1, 1, 0, 0, 0], [1, 0, 0, 0, 0])["f1"]
    assert f1 == pytest.approx(100 * 2 / 3, abs=1e-4)
    assert glue_metrics(("f1",), [0, 0, 0], [1, 0, 1])["f1"] == 0.0  # no positive prediction


def test_mcc_perfect_inverse_and_constant():
    assert glue_metrics(("mcc",), [0, 1, 1, 0], [0, 1, 1, 0])["mcc"] == 100.0
    assert glue_metrics(("mcc",), [1, 0, 0, 1], [0, 1, 1, 0])["mcc"] == -100.0
    assert glue_metrics(("mcc",), [1, 1, 1, 1], [0, 1, 1, 0])["mcc"] == 0.0


def test_pearson_by_hand():
    # dp = [-1.5, -.5, .5, 1.5], dy = [-3, -1, 0, 4]: r = 11 / sqrt(5 · 26)
    m = glue_metrics(("pearson",), torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 4.0, 5.0, 9.0]))
    assert m["pearson"] == pytest.approx(100 * 11 / math.sqrt(130), abs=1e-4)


def test_spearman_by_hand_with_ties():
    # ranks p = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: r = 4.5 / sqrt(4.5 · 5)
    m = glue_metrics(("spearman",), [1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0])
    assert m["spearman"] == pytest.approx(100 * 4.5 / math.sqrt(22.5), abs=1e-4)
    # a monotone but non-linear relation: Spearman 1, Pearson below 1
    x = np.arange(1.0, 7.0)
    both = glue_metrics(("pearson", "spearman"), x, x ** 4)
    assert both["spearman"] == 100.0 and both["pearson"] < 99.0


def test_constant_predictions_give_zero_correlation():
    m = glue_metrics(("pearson", "spearman"), [2.5, 2.5, 2.5], [1.0, 2.0, 4.0])
    assert m == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_constant_labels_are_a_clear_error(name):
    with pytest.raises(ValueError, match=f"{name}: the labels are constant"):
        glue_metrics((name,), [1.0, 2.0, 3.0], [3.0, 3.0, 3.0])


def test_nan_predictions_are_refused_and_unknown_metrics_named():
    with pytest.raises(ValueError, match="NaN"):
        glue_metrics(("pearson",), [1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(KeyError, match="accuracy_mm"):
        glue_metrics(("auc",), [1], [1])
