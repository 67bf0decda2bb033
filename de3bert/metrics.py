"""GLUE metrics (scikit-learn / scipy) and the AUROC of exit indicators."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def glue_metrics(names: tuple[str, ...], preds, labels) -> dict[str, float]:
    """Every named metric, in percent (as GLUE tables report them)."""
    p, y = _np(preds), _np(labels)
    out = {}
    for name in names:
        if name == "accuracy":
            v = accuracy_score(y, p)
        elif name == "f1":
            v = f1_score(y, p, zero_division=0.0)
        elif name == "mcc":
            v = matthews_corrcoef(y, p) if len(np.unique(p)) > 1 else 0.0
        elif name in ("pearson", "spearman"):
            if np.std(p) == 0:
                v = 0.0
            else:
                v = (pearsonr(p, y)[0] if name == "pearson" else spearmanr(p, y)[0])
        else:
            raise KeyError(f"unknown metric {name!r}; valid: accuracy, f1, mcc, pearson, spearman")
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
