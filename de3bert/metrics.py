"""GLUE metrics (scikit-learn / scipy) and the AUROC of exit indicators."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score


def _np(x) -> np.ndarray:
    """A tensor or sequence as a NumPy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


METRICS = ("accuracy", "accuracy_mm", "f1", "mcc", "pearson", "spearman")


def correlation(name: str, preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson or Spearman r. Constant predictions give 0.0 (no association can be shown; the
    same convention as MCC for a constant predictor); constant labels raise ValueError (the
    correlation is undefined whatever the model does: the split is wrong, not the model)."""
    if len(labels) < 2 or np.all(labels == labels.flat[0]):
        raise ValueError(f"{name}: the labels are constant ({len(labels)} samples, value "
                         f"{labels.flat[0] if len(labels) else 'none'}); the correlation is undefined")
    if not np.isfinite(preds).all():
        raise ValueError(f"{name}: predictions contain NaN or infinity")
    if np.all(preds == preds.flat[0]):
        return 0.0
    return float(pearsonr(preds, labels)[0] if name == "pearson" else spearmanr(preds, labels)[0])


def glue_metrics(names: tuple[str, ...], preds, labels) -> dict[str, float]:
    """Every named metric, in percent (as GLUE tables report them); `accuracy_mm` is accuracy on
    MNLI's mismatched dev set, F1 is binary (positive class 1)."""
    p, y = _np(preds), _np(labels)
    out = {}
    for name in names:
        if name in ("accuracy", "accuracy_mm"):
            v = accuracy_score(y, p)
        elif name == "f1":
            v = f1_score(y, p, zero_division=0.0)
        elif name == "mcc":
            v = matthews_corrcoef(y, p) if len(np.unique(p)) > 1 else 0.0
        elif name in ("pearson", "spearman"):
            v = correlation(name, p.astype(np.float64), y.astype(np.float64))
        else:
            raise KeyError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
        out[name] = round(float(v) * 100, 4)
    return out


def indicator_auroc(score, correct) -> float | None:
    """AUROC of −score for 'this layer's prediction is correct' (low score = confident).

    None when every prediction is correct or every one wrong (AUROC undefined).
    """
    c = _np(correct).astype(bool)
    if c.all() or not c.any():
        return None
    return float(roc_auc_score(c, -_np(score).astype(np.float64)))
