"""GLUE metrics (scikit-learn / scipy) and the AUROC of exit indicators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score


def _np(x) -> np.ndarray:
    """A tensor or sequence as a NumPy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


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


# ---- additive statistics: X [S, K, N] from predictions [K, N], Y [R, N] from labels --------------
# Summing columns (weighted by a bootstrap replicate) and `finish` give the metric of any resample
# by one matrix product. `finish(x, y, n)` takes the sums (x [..., S], y [..., R], n) → percent.
def _accuracy_stats(preds, labels):
    return (preds == labels)[None].astype(np.float64), np.zeros((0, labels.size))


def _accuracy_finish(x, y, n):
    return np.where(n > 0, 100.0 * x[..., 0] / np.maximum(n, 1e-9), 0.0)


def _f1_stats(preds, labels):
    pos, y = preds == 1, (labels == 1)
    return np.stack([pos & y, pos & ~y]).astype(np.float64), y[None].astype(np.float64)


def _f1_finish(x, y, n):
    """F1 of class 1 from (tp, fp) and Σ y."""
    tp, fp = x[..., 0], x[..., 1]
    den = 2 * tp + fp + (y[..., 0] - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 200.0 * tp / den, 0.0)


def _mcc_stats(preds, labels):
    classes = np.unique(np.concatenate([labels, preds.ravel()]))
    x = [(preds == labels)] + [preds == c for c in classes]
    return np.stack(x).astype(np.float64), np.stack([labels == c for c in classes]).astype(np.float64)


def _mcc_finish(x, y, n):
    """Multi-class MCC (sklearn's formula) from correct count and per-class predicted/true counts."""
    c, p = x[..., 0], x[..., 1:]
    cov_tp = c * n - (p * y).sum(-1)
    den = np.sqrt(np.clip((n * n - (p * p).sum(-1)) * (n * n - (y * y).sum(-1)), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 100.0 * cov_tp / den, 0.0)


def _pearson_stats(preds, labels):
    p = preds.astype(np.float64) - preds.mean()
    y = labels.astype(np.float64) - labels.mean()
    return np.stack([p, p * p, p * y[None]]), np.stack([y, y * y])


def _pearson_finish(x, y, n):
    """Pearson r (percent) from Σp, Σp², Σpy, Σy, Σy² of centred values; 0 for constant preds."""
    sp, spp, spy, sy, syy = x[..., 0], x[..., 1], x[..., 2], y[..., 0], y[..., 1]
    vp, vy = n * spp - sp * sp, n * syy - sy * sy
    den = np.sqrt(np.clip(vp * vy, 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (vp > 1e-12 * np.maximum(n * spp, 1e-300)) & (den > 0)
        return np.where(ok, 100.0 * (n * spy - sp * sy) / np.where(ok, den, 1.0), 0.0)


def _spearman_stats(preds, labels):
    """Pearson statistics of the ranks on the whole set (average ranks for ties): exactly Spearman
    on the set itself; a resample keeps the original ranks (the bootstrap's approximation)."""
    ranks = np.stack([rankdata(row) for row in np.atleast_2d(preds)])
    return _pearson_stats(ranks, rankdata(labels))


@dataclass(frozen=True)
class Metric:
    """One metric, defined once: its exact scorer and its additive statistics for the bootstrap."""

    name: str
    score: Callable[[np.ndarray, np.ndarray], float]
    """Exact value as a fraction (scikit-learn / scipy), on predictions and labels `[N]`."""
    stats: Callable
    """Per-sample additive statistics (X [S, K, N], Y [R, N]) of predictions [K, N] and labels [N]."""
    finish: Callable
    """Summed statistics (x [..., S], y [..., R], n) → the metric in percent."""

    def __post_init__(self):
        for part in ("score", "stats", "finish"):
            if not callable(getattr(self, part)):
                raise ValueError(f"metric {self.name!r}: {part} must be given (a callable)")


def _mcc_score(p, y):
    return matthews_corrcoef(y, p) if len(np.unique(p)) > 1 else 0.0


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", lambda p, y: accuracy_score(y, p), _accuracy_stats, _accuracy_finish),
    # MNLI's mismatched dev set: accuracy under its own name, so tables keep the two apart
    Metric("accuracy_mm", lambda p, y: accuracy_score(y, p), _accuracy_stats, _accuracy_finish),
    Metric("f1", lambda p, y: f1_score(y, p, zero_division=0.0), _f1_stats, _f1_finish),
    Metric("mcc", _mcc_score, _mcc_stats, _mcc_finish),
    Metric("pearson", lambda p, y: correlation("pearson", p.astype(np.float64), y.astype(np.float64)),
           _pearson_stats, _pearson_finish),
    Metric("spearman", lambda p, y: correlation("spearman", p.astype(np.float64), y.astype(np.float64)),
           _spearman_stats, _pearson_finish),
)}


def glue_metrics(names: tuple[str, ...], preds, labels) -> dict[str, float]:
    """Every named metric, in percent (as GLUE tables report them); F1 is binary (class 1)."""
    p, y = _np(preds), _np(labels)
    out = {}
    for name in names:
        if name not in METRICS:
            raise KeyError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
        out[name] = round(float(METRICS[name].score(p, y)) * 100, 4)
    return out


def indicator_auroc(score, correct) -> float | None:
    """AUROC of −score for 'this layer's prediction is correct' (low score = confident).

    None when every prediction is correct or every one wrong (AUROC undefined).
    """
    c = _np(correct).astype(bool)
    if c.all() or not c.any():
        return None
    return float(roc_auc_score(c, -_np(score).astype(np.float64)))
