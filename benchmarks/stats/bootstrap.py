"""Statistics for early-exit comparisons: held-out operating points, paired bootstrap, seeds, verdicts.

Pure functions on arrays (numpy/scipy only). Inputs per (task, seed, method): ``exits`` [K, N]
(1-based exit layer per knob value and dev sample), ``preds`` [K, N], ``labels`` [N], the number of
layers L and a headline metric. Layer speed-up of a set of samples = L·n / Σ exit layers; the
operating point for a target is the knob whose speed-up on the *selection* data is the smallest
≥ target (ties → the first; when no knob reaches it, the fastest knob, flagged ``reached=False``).

Protocols (recorded in every result): ``crossfit`` (default; knob chosen on the other folds, every
sample scored with a knob chosen without it), ``dev`` (tuned and scored on the same split, the
literature's optimistic protocol) and ``train-holdout`` (chosen on a separate holdout record).

The bootstrap resamples dev indices with a seeded ``np.random.Generator``; one index matrix serves
every method (paired) and the whole selection is redone inside every replicate. A sample keeps its
fold when resampled, so copies of one sample never sit on both sides of a cross-fit. Every
statistic is computed from weighted sufficient statistics (one matrix product per fold), so
1,000 replicates × ~100 knobs × 1,000 samples cost milliseconds per method. Intervals are
percentile (default) or BCa, both through ``scipy.stats.bootstrap`` fed the paired distribution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from de3bert.metrics import METRICS as METRIC_TABLE
from de3bert.metrics import Metric as MetricSpec
from de3bert.speedup import choose_knobs
from de3bert.speedup import speedups_along_last_axis as layer_speedup

PROTOCOLS = ("crossfit", "dev", "train-holdout")
PROTOCOL_LABELS = {
    "crossfit": "cross-fitted operating points (knob chosen on the other fold)",
    "dev": "tuned on the reported split",
    "train-holdout": "knob chosen on a held-out slice of the training data",
}
_EPS = 1e-9


def _blas_threads(n: int | None):
    """Cap BLAS threads: these products are small, and threaded BLAS spins 4× slower on a shared CPU."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


# ----------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A headline metric (percent) that the bootstrap evaluates from additive statistics; the
    definition (scorer, statistics, finish) is the one in `de3bert.metrics.METRICS`."""

    name: str

    @property
    def spec(self) -> MetricSpec:
        """The metric's one definition."""
        return METRIC_TABLE[self.name]

    def __call__(self, preds, labels) -> float:
        """Metric of one set of predictions, in percent like ``glue_metrics``."""
        x, y = self.spec.stats(np.asarray(preds)[None], np.asarray(labels))
        n = np.float64(np.asarray(labels).size)
        return float(self.spec.finish(x.sum(-1)[:, 0], y.sum(-1), n))


METRICS: dict[str, Metric] = {name: Metric(name) for name in METRIC_TABLE}


def as_metric(metric: str | Callable) -> Callable:
    """A name becomes its vectorised Metric; any other callable is used as is (slower path)."""
    if isinstance(metric, str):
        if metric not in METRICS:
            valid = ", ".join(METRICS)
            raise KeyError(f"unknown metric {metric!r}; vectorised: {valid} (or pass a callable)")
        return METRICS[metric]
    return metric


# ---------------------------------------------------------------------------------------- selection


def stratified_folds(labels, seed: int, n_folds: int = 2, regression: bool | None = None) -> np.ndarray:
    """Fold id per sample, label-stratified (quantile bins for regression) by a seeded permutation."""
    y = np.asarray(labels)
    if regression is None:
        regression = y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0))
    if regression:
        n_bins = max(1, min(10, y.size // (2 * n_folds)))
        edges = np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1])
        y = np.searchsorted(edges, y, side="right")
    rng = np.random.default_rng(seed)
    folds = np.empty(y.size, dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        folds[members] = (np.arange(members.size) + offset) % n_folds
        offset += members.size  # continue the rotation so fold sizes stay balanced across classes
    return folds


@dataclass
class Selection:
    """Chosen knobs and the pooled per-sample outcome of one protocol on one method's record."""

    protocol: str
    targets: np.ndarray  # [T]
    knobs: np.ndarray  # [T, F]: knob used to score fold f (chosen without fold f under crossfit)
    sample_knob: np.ndarray  # [T, N]: knob each dev sample is scored with
    exits: np.ndarray  # [T, N] pooled exit layers
    preds: np.ndarray | None  # [T, N] pooled predictions
    speedup: np.ndarray  # [T] achieved layer speed-up on the scored samples (may be < target)
    reached: np.ndarray  # [T, F]: the selection data reached the target


def _pooled(protocol, targets, knobs, folds, exits, preds, n_layers, reached) -> Selection:
    """Gather every sample's outcome at the knob of its fold."""
    sample_knob = knobs[:, folds]
    cols = np.arange(exits.shape[1])
    ex = exits[sample_knob, cols]
    pr = None if preds is None else np.asarray(preds)[sample_knob, cols]
    return Selection(protocol, np.asarray(targets, dtype=np.float64), knobs, sample_knob, ex, pr,
                     layer_speedup(ex, n_layers), reached)


def _infer_layers(exits: np.ndarray, n_layers: int | None) -> int:
    """L, inferred as the deepest recorded exit when not given (pass it explicitly when known)."""
    return int(n_layers) if n_layers is not None else int(np.max(exits))


def crossfit_select(exits, labels, targets, folds, *, n_layers: int | None = None, preds=None) -> Selection:
    """Cross-fitted operating points: fold f is scored with the knob chosen on the other folds."""
    exits, folds = np.asarray(exits), np.asarray(folds)
    if folds.shape != (exits.shape[1],) or np.asarray(labels).shape[0] != exits.shape[1]:
        raise ValueError("folds and labels must have one entry per dev sample (exits is [K, N])")
    L = _infer_layers(exits, n_layers)
    n_folds = int(folds.max()) + 1
    knobs = np.empty((len(targets), n_folds), dtype=np.int64)
    reached = np.empty((len(targets), n_folds), dtype=bool)
    for f in range(n_folds):
        knobs[:, f], reached[:, f] = choose_knobs(layer_speedup(exits[:, folds != f], L), targets)
    return _pooled("crossfit", targets, knobs, folds, exits, preds, L, reached)


def dev_select(exits, targets, *, n_layers: int | None = None, preds=None) -> Selection:
    """The literature's protocol: knob chosen and scored on the same dev split (optimistic)."""
    exits = np.asarray(exits)
    L = _infer_layers(exits, n_layers)
    k, r = choose_knobs(layer_speedup(exits, L), targets)
    zeros = np.zeros(exits.shape[1], dtype=np.int64)
    return _pooled("dev", targets, k[:, None], zeros, exits, preds, L, r[:, None])


def holdout_select(holdout_exits, exits, targets, *, n_layers: int | None = None, preds=None) -> Selection:
    """Knob chosen on a holdout record's exits (same knob grid), scored on the whole dev set."""
    exits, hold = np.asarray(exits), np.asarray(holdout_exits)
    if hold.shape[0] != exits.shape[0]:
        raise ValueError("holdout and dev records must share the knob grid (same K)")
    L = _infer_layers(exits, n_layers)
    k, r = choose_knobs(layer_speedup(hold, L), targets)
    zeros = np.zeros(exits.shape[1], dtype=np.int64)
    return _pooled("train-holdout", targets, k[:, None], zeros, exits, preds, L, r[:, None])


# ---------------------------------------------------------------------------------- paired bootstrap


@dataclass(frozen=True)
class MethodRecord:
    """One method's replayed record on the dev set (and optionally on a training holdout)."""

    exits: np.ndarray  # [K, N] 1-based exit layer per knob value and dev sample
    preds: np.ndarray  # [K, N] predicted class or regression value
    holdout_exits: np.ndarray | None = None  # [K, H], only for protocol train-holdout


def bootstrap_indices(n: int, n_boot: int, seed: int | np.random.Generator) -> np.ndarray:
    """[n_boot, n] resampled dev indices; one matrix is shared by every method (paired)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n), dtype=np.int64)


def _weights(idx: np.ndarray, n: int, dtype=np.float64) -> np.ndarray:
    """Resample counts [b, n] from index rows [b, m]: a resample is a weighting of the samples."""
    idx = np.atleast_2d(idx)
    b = idx.shape[0]
    flat = (idx + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(dtype)


@dataclass
class _Prepared:
    """Per-method matrices stacked once so each fold of each batch is a single matrix product."""

    mat: np.ndarray  # [K + S·K + R, N]: exits, knob statistics, label statistics
    K: int
    S: int
    preds: np.ndarray
    holdout: np.ndarray | None


def _prepare(rec: MethodRecord, labels: np.ndarray, metric: Callable, order: np.ndarray, dtype) -> _Prepared:
    """Stack exits and the metric's statistics (none for a callable), columns sorted by fold."""
    exits = np.asarray(rec.exits, dtype=np.float64)
    K, N = exits.shape
    if isinstance(metric, Metric):
        x, y = metric.spec.stats(np.atleast_2d(np.asarray(rec.preds)), np.asarray(labels))
    else:
        x, y = np.zeros((0, K, N)), np.zeros((0, N))
    mat = np.ascontiguousarray(np.concatenate([exits, x.reshape(-1, N), y])[:, order], dtype=dtype)
    hold = None if rec.holdout_exits is None else np.asarray(rec.holdout_exits, dtype=np.float64)
    return _Prepared(mat, K, x.shape[0], np.asarray(rec.preds), hold)


def _fold_sums(W: np.ndarray, mat: np.ndarray, bounds: Sequence[tuple[int, int]]) -> list[tuple]:
    """Per fold (a contiguous column block): weight total [b] and weighted row sums [b, rows].

    Count statistics are integers, so float32 products are exact (< 2**24); sums leave as float64.
    """
    out = []
    for a, b in bounds:
        Wf = W[:, a:b]
        out.append((Wf.sum(1, dtype=np.float64), (Wf @ mat[:, a:b].T).astype(np.float64)))
    return out


def _select_batch(protocol, sums, K, L, targets, hold_W, prep) -> tuple[np.ndarray, np.ndarray]:
    """Knobs [b, T, F] for each scored fold under the protocol, and whether targets were reached."""
    n_tot = sum(s[0] for s in sums)
    E_tot = sum(s[1][:, :K] for s in sums)
    with np.errstate(divide="ignore", invalid="ignore"):
        if protocol == "crossfit":
            picks = [choose_knobs(L * (n_tot - n)[:, None] / (E_tot - s[:, :K]), targets) for n, s in sums]
            return np.stack([p[0] for p in picks], -1), np.stack([p[1] for p in picks], -1)
        if protocol == "dev":
            k, r = choose_knobs(L * n_tot[:, None] / E_tot, targets)
        elif protocol == "train-holdout":
            if prep.holdout is None:
                raise ValueError("protocol train-holdout needs holdout_exits in every MethodRecord")
            k, r = choose_knobs(L * hold_W.sum(1)[:, None] / (hold_W @ prep.holdout.T), targets)
        else:
            raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return k[..., None], r[..., None]


def _score_batch(knobs, sums, prep, L, metric, labels, idx, folds) -> tuple[np.ndarray, np.ndarray]:
    """Pooled metric and achieved speed-up [b, T]: each fold scored at its own knob."""
    K, S = prep.K, prep.S
    rows = np.arange(knobs.shape[0])[:, None]
    n_tot = sum(s[0] for s in sums)[:, None]
    E = sum(s[:, :K][rows, knobs[..., f]] for f, (_, s) in enumerate(sums))
    with np.errstate(divide="ignore", invalid="ignore"):
        speed = L * n_tot / E
    if isinstance(metric, Metric):
        X = sum(s[:, K:K + S * K].reshape(-1, S, K)[rows, :, knobs[..., f]] for f, (_, s) in enumerate(sums))
        Y = sum(s[:, K + S * K:] for _, s in sums)[:, None, :]
        return metric.spec.finish(X, Y, n_tot), speed
    fold_of = np.broadcast_to(folds[idx][:, None, :], (*knobs.shape[:2], idx.shape[1]))
    kk = np.take_along_axis(knobs, fold_of, 2)
    p = prep.preds[kk, idx[:, None, :]]
    y = labels[idx]
    vals = np.array([[metric(p[b, t], y[b]) for t in range(p.shape[1])] for b in range(p.shape[0])])
    return vals, speed


@dataclass
class _Design:
    """Everything fixed across replicates: prepared records, protocol, folds, targets and AUC grid."""

    preps: dict[str, _Prepared]
    labels: np.ndarray
    L: int
    metric: Callable
    protocol: str
    folds: np.ndarray  # fold id per dev sample (zeros unless crossfit)
    targets: np.ndarray
    grid: np.ndarray  # targets of the AUC curve, on [1, s_max]
    inv: np.ndarray  # dev index → column in the fold-sorted matrices
    bounds: list[tuple[int, int]]  # column block of each fold
    dtype: type = np.float64

    @property
    def names(self) -> list[tuple[str, str, float | None]]:
        """Row labels (method, quantity, target) of the stacked value vector."""
        out: list[tuple[str, str, float | None]] = []
        for m in self.preps:
            out += [(m, "metric", float(t)) for t in self.targets]
            out += [(m, "speedup", float(t)) for t in self.targets]
            out.append((m, "auc", None))
            out += [(m, "curve", float(g)) for g in self.grid]  # scored curve, for bootstrap bands
            out += [(m, "curve_speedup", float(g)) for g in self.grid]
        return out


def _evaluate(design: _Design, idx: np.ndarray, hold_idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Values [Q, b] of every row of ``design.names`` on resamples ``idx`` [b, m]; reached [Q, b]."""
    idx = np.atleast_2d(idx)
    N, T = design.labels.size, design.targets.size
    W = _weights(design.inv[idx], N, design.dtype)
    all_t = np.concatenate([design.targets, design.grid])
    vals, reach = [], []
    for prep in design.preps.values():
        hold_W = None
        if prep.holdout is not None and design.protocol == "train-holdout":
            h = prep.holdout.shape[1]
            hold_W = _weights(np.arange(h)[None] if hold_idx is None else hold_idx[: idx.shape[0]], h)
        sums = _fold_sums(W, prep.mat, design.bounds)
        knobs, reached = _select_batch(design.protocol, sums, prep.K, design.L, all_t, hold_W, prep)
        met, speed = _score_batch(knobs, sums, prep, design.L, design.metric, design.labels, idx,
                                  design.folds)
        g = design.grid
        auc = np.trapezoid(met[:, T:], g, axis=1) / (g[-1] - g[0]) if g.size > 1 else met[:, T]
        vals += [met[:, :T].T, speed[:, :T].T, auc[None], met[:, T:].T, speed[:, T:].T]
        r = reached.all(-1)
        reach += [r[:, :T].T, r[:, :T].T, r[:, T:].all(1)[None], r[:, T:].T, r[:, T:].T]
    return np.concatenate(vals), np.concatenate(reach)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval; ``half_width`` is what ``81.7 ±1.1`` prints."""

    estimate: float
    lo: float
    hi: float
    level: float
    method: str  # "percentile" or "BCa"

    @property
    def half_width(self) -> float:
        """Half the interval's width (symmetric summary for table cells)."""
        return (self.hi - self.lo) / 2

    def covers(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies inside the interval."""
        return self.lo <= value <= self.hi


@dataclass(frozen=True)
class Comparison:
    """``a − b`` with its interval and a two-sided bootstrap p-value (q after BH when adjusted)."""

    a: str
    b: str
    quantity: str
    target: float | None
    interval: Interval
    p: float
    q: float | None = None
    protocol: str = "crossfit"

    def significant(self, alpha: float = 0.05) -> bool:
        """Significant after FDR control when q is set, else on the raw p-value."""
        return (self.q if self.q is not None else self.p) < alpha


def bootstrap_pvalue(diff_reps: np.ndarray) -> np.ndarray:
    """Two-sided p for 'difference = 0' from the replicates: 2·min tail mass at 0, with +1 smoothing."""
    d = np.asarray(diff_reps, dtype=np.float64)
    fin = np.isfinite(d)
    B = fin.sum(-1)
    lo = (((d <= 0) & fin).sum(-1) + 1) / (B + 1)
    hi = (((d >= 0) & fin).sum(-1) + 1) / (B + 1)
    return np.minimum(1.0, 2 * np.minimum(lo, hi))


def fdr(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q) across one table's comparisons (scipy)."""
    p = np.asarray(pvalues, dtype=np.float64)
    return sps.false_discovery_control(p, method="bh") if p.size else p


@dataclass
class Analysis:
    """Point estimates and paired replicates of every (method, quantity, target) of one run."""

    names: list[tuple[str, str, float | None]]
    point: np.ndarray  # [Q]
    reps: np.ndarray  # [Q, B]
    reached: np.ndarray  # [Q]: fraction of replicates whose selection data reached the target
    protocol: str
    ci: str = "percentile"
    note: str = "sample-level paired bootstrap"
    indices: np.ndarray | None = None  # [B, N] shared by every method
    seed_points: np.ndarray | None = None  # [n_seeds, Q] when built from several seeds
    statistic: Callable | None = field(default=None, repr=False)  # idx [..., m] -> [Q, ...]

    def row(self, method: str, quantity: str = "metric", target: float | None = None) -> int:
        """Index of one quantity ('metric', 'speedup' at a target, or 'auc')."""
        key = (method, quantity, None if target is None else float(target))
        try:
            return self.names.index(key)
        except ValueError:
            raise KeyError(f"no row {key}; methods: {sorted({n[0] for n in self.names})}") from None

    @property
    def methods(self) -> list[str]:
        """Methods in input order."""
        return list(dict.fromkeys(n[0] for n in self.names))

    def linear(self, weights: np.ndarray, level: float = 0.95) -> list[Interval]:
        """Intervals of linear combinations ``weights`` [P, Q] of the rows (differences, cells)."""
        w = np.atleast_2d(weights)
        dist = _combine(w, self.reps)
        if not np.isfinite(dist).all():  # e.g. an AUROC undefined in some replicates: finite ones only
            lo, hi = np.nanquantile(dist, [(1 - level) / 2, (1 + level) / 2], axis=1)
            rows = zip(_combine(w, self.point), lo, hi, strict=True)
            return [Interval(float(e), float(a), float(b), level, "percentile") for e, a, b in rows]
        method = "BCa" if self.ci.lower() == "bca" and self.statistic is not None else "percentile"
        stat = self.statistic

        def combo(idx, axis=-1):
            """The combinations recomputed on scipy's jackknife index rows (BCa acceleration)."""
            return _combine(w, stat(idx))

        n = self.indices.shape[1] if self.indices is not None else 2  # percentile never calls combo
        res = sps.bootstrap((np.arange(n),), combo,
                            n_resamples=0, bootstrap_result=_Dist(dist), method=method.lower(),
                            confidence_level=level, vectorized=True)
        point = _combine(w, self.point)
        lo, hi = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
        rows = zip(point, lo, hi, strict=True)
        return [Interval(float(e), float(a), float(b), level, method) for e, a, b in rows]

    def interval(self, method: str, quantity: str = "metric", target: float | None = None,
                 level: float = 0.95) -> Interval:
        """95% interval of one table cell (metric or achieved speed-up at a target, or AUC)."""
        w = np.zeros(len(self.names))
        w[self.row(method, quantity, target)] = 1.0
        return self.linear(w, level)[0]

    def difference(self, a: str, b: str, quantity: str = "metric", target: float | None = None,
                   level: float = 0.95) -> Comparison:
        """'a − b' on the same resamples: interval and two-sided bootstrap p-value."""
        w = np.zeros(len(self.names))
        w[self.row(a, quantity, target)], w[self.row(b, quantity, target)] = 1.0, -1.0
        p = float(bootstrap_pvalue(_combine(w, self.reps)))
        return Comparison(a, b, quantity, target, self.linear(w, level)[0], p, None, self.protocol)

    def curve(self, method: str, level: float = 0.95) -> dict[str, np.ndarray]:
        """The method's scored trade-off curve over the AUC targets with its band (for plots)."""
        grid = [n[2] for n in self.names if n[0] == method and n[1] == "curve"]
        out: dict[str, list[float]] = {"target": grid}
        for q in ("curve", "curve_speedup"):
            w = np.zeros((len(grid), len(self.names)))
            w[np.arange(len(grid)), [self.row(method, q, g) for g in grid]] = 1.0
            ivs = self.linear(w, level)
            key = "metric" if q == "curve" else "speedup"
            for suffix, f in (("", "estimate"), ("_lo", "lo"), ("_hi", "hi")):
                out[key + suffix] = [getattr(i, f) for i in ivs]
        return {k: np.asarray(v) for k, v in out.items()}


def _combine(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w @ x`` over the rows ``w`` uses only: cheaper, and a NaN in an unused row cannot leak in."""
    nz = np.flatnonzero(np.any(np.atleast_2d(w) != 0, axis=0))
    return np.tensordot(w[..., nz], x[nz], axes=(-1, 0))


@dataclass
class _Dist:
    """Carrier of a precomputed bootstrap distribution for ``scipy.stats.bootstrap(bootstrap_result=)``."""

    bootstrap_distribution: np.ndarray


def common_s_max(records: Mapping[str, MethodRecord], n_layers: int) -> float:
    """Largest speed-up every swept method reaches on dev: the shared upper end of the AUC range.

    One-knob records (the full model) are points, not curves, and do not limit the range.
    """
    swept = [r for r in records.values() if np.shape(r.exits)[0] > 1] or list(records.values())
    return float(min(layer_speedup(r.exits, n_layers).max() for r in swept))


def _design(records, labels, n_layers, metric, targets, protocol, folds, s_max, n_grid) -> _Design:
    """Validate inputs and fix everything that does not change across replicates."""
    labels = np.asarray(labels)
    metric = as_metric(metric)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    for name, r in records.items():
        if np.shape(r.exits) != np.shape(r.preds) or np.shape(r.exits)[1] != labels.size:
            raise ValueError(f"{name}: exits and preds must both be [K, N] with N = len(labels)")
    if protocol != "crossfit":
        folds = np.zeros(labels.size, dtype=np.int64)
    elif np.shape(folds) != labels.shape:
        raise ValueError("crossfit needs one fold id per dev sample (see stratified_folds)")
    s_max = common_s_max(records, n_layers) if s_max is None else float(s_max)
    grid = np.linspace(1.0, s_max, n_grid) if s_max > 1.0 else np.array([1.0])
    folds = np.asarray(folds, dtype=np.int64)
    order = np.argsort(folds, kind="stable")
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    edges = np.searchsorted(folds[order], np.arange(int(folds.max()) + 2))
    exact32 = isinstance(metric, Metric) and metric.name != "pearson"
    dtype = np.float32 if exact32 and labels.size * n_layers < 2**22 else np.float64
    preps = {m: _prepare(r, labels, metric, order, dtype) for m, r in records.items()}
    targets = np.asarray(targets, dtype=np.float64)
    bounds = list(zip(edges[:-1], edges[1:], strict=True))
    return _Design(preps, labels, int(n_layers), metric, protocol, folds, targets, grid, inv, bounds, dtype)


def paired_bootstrap(records: Mapping[str, MethodRecord], labels, *, n_layers: int,
                     metric: str | Callable, targets: Sequence[float], protocol: str = "crossfit",
                     folds: np.ndarray | None = None, fold_seed: int = 0, n_boot: int = 1000, seed: int = 0,
                     ci: str = "percentile", s_max: float | None = None, n_grid: int = 21,
                     blas_threads: int | None = 1) -> Analysis:
    """Paired bootstrap of one (task, seed): same indices for every method, selection redone inside.

    AUC = mean scored metric over the targets ``linspace(1, s_max, n_grid)`` (each method's own
    curve of operating points under the protocol; no envelope over knobs). ``ci``: percentile|BCa.
    ``blas_threads`` caps BLAS threads during the products (None leaves the process setting).
    """
    if folds is None and protocol == "crossfit":
        folds = stratified_folds(labels, fold_seed)
    d = _design(records, labels, n_layers, metric, targets, protocol, folds, s_max, n_grid)
    N = d.labels.size
    rng = np.random.default_rng(seed)
    idx = bootstrap_indices(N, n_boot, rng)
    hold = [r.holdout for r in d.preps.values() if r.holdout is not None]
    if protocol == "train-holdout" and len({h.shape[1] for h in hold}) > 1:
        raise ValueError("train-holdout: every method's holdout record must cover the same samples")
    use_hold = bool(hold) and protocol == "train-holdout"
    hold_idx = bootstrap_indices(hold[0].shape[1], n_boot, rng) if use_hold else None
    with _blas_threads(blas_threads):
        point, _ = _evaluate(d, np.arange(N)[None], None)
        reps, reached = _chunked(d, idx, hold_idx)
    memo: dict = {}

    def statistic(sample_idx):
        """Every row recomputed on index rows [..., m]; memoised so BCa's jackknife runs once."""
        a = np.asarray(sample_idx)
        key = (a.shape, hash(a.tobytes()))
        if key not in memo:
            with _blas_threads(blas_threads):
                memo[key] = _chunked(d, a.reshape(-1, a.shape[-1]), None)[0].reshape(-1, *a.shape[:-1])
        return memo[key]

    return Analysis(d.names, point[:, 0], reps, reached.mean(1), protocol, ci,
                    "sample-level paired bootstrap (one seed)", idx, None, statistic)


def _chunked(d: _Design, idx: np.ndarray, hold_idx: np.ndarray | None, chunk: int = 250) -> tuple:
    """Evaluate replicates in chunks so the weight matrices stay a few MB."""
    vals, reach = [], []
    for s in range(0, idx.shape[0], chunk):
        h = None if hold_idx is None else hold_idx[s:s + chunk]
        v, r = _evaluate(d, idx[s:s + chunk], h)
        vals.append(v)
        reach.append(r)
    return np.concatenate(vals, 1), np.concatenate(reach, 1)


# ----------------------------------------------------------------------------- comparisons and seeds


def compare(analysis: Analysis, pairs: Sequence[tuple[str, str]], quantity: str = "metric",
            targets: Sequence[float] | None = None, level: float = 0.95) -> list[Comparison]:
    """Every 'a − b' of one table at every target (or the AUC), with BH q-values across them all."""
    if quantity == "auc":
        ts: list[float | None] = [None]
    else:
        known = sorted({n[2] for n in analysis.names if n[1] == quantity and n[2] is not None})
        ts = list(targets) if targets is not None else known
    out = [analysis.difference(a, b, quantity, t, level) for a, b in pairs for t in ts]
    return adjust(out)


def adjust(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Attach Benjamini–Hochberg q-values computed across exactly these comparisons."""
    q = fdr([c.p for c in comparisons])
    return [Comparison(c.a, c.b, c.quantity, c.target, c.interval, c.p, float(qi), c.protocol)
            for c, qi in zip(comparisons, q, strict=True)]


def vs_full_model(analysis: Analysis, full: str = "full-model", methods: Sequence[str] | None = None,
                  targets: Sequence[float] | None = None, alpha: float = 0.05) -> dict[tuple, dict]:
    """'method − full model' per (method, target) with q-values and the 'not distinguishable' mark.

    The full model enters as a one-knob record (every exit = L), so its cell is its full-depth score.
    """
    methods = [m for m in (analysis.methods if methods is None else methods) if m != full]
    comps = compare(analysis, [(m, full) for m in methods], "metric", targets)
    return {(c.a, c.target): {"comparison": c, "not_distinguishable": not c.significant(alpha)}
            for c in comps}


@dataclass(frozen=True)
class Best:
    """The best method of one table column and whether it may be bolded (significant after FDR)."""

    column: str
    best: str
    runner_up: str | None
    comparison: Comparison | None
    bold: bool

    @property
    def mark(self) -> str:
        """'best' when significant, 'tie' when the runner-up cannot be told apart, '' when alone."""
        return "best" if self.bold else ("tie" if self.runner_up else "")


def significant_best(columns: Mapping[str, tuple[Analysis, float | None]], methods: Sequence[str],
                     quantity: str = "metric", alpha: float = 0.05,
                     higher_is_better: bool = True) -> list[Best]:
    """Per column (analysis, target): best vs runner-up, BH across the table's columns, bold iff q < α."""
    rows: list[tuple[str, str, str | None, Comparison | None]] = []
    for col, (an, t) in columns.items():
        est = {m: an.point[an.row(m, quantity, t)] for m in methods}
        order = sorted(est, key=lambda m: -est[m] if higher_is_better else est[m])
        if len(order) < 2:
            rows.append((col, order[0], None, None))
            continue
        a, b = order[:2]
        rows.append((col, a, b, an.difference(a, b, quantity, t)))
    comps = [r[3] for r in rows if r[3] is not None]
    adjusted = iter(adjust(comps))
    out = []
    for col, a, b, c in rows:
        c2 = next(adjusted) if c is not None else None
        out.append(Best(col, a, b, c2, bool(c2 is not None and c2.significant(alpha))))
    return out


def hierarchical_bootstrap(analyses: Sequence[Analysis], seed: int = 0) -> Analysis:
    """Resample seeds, then samples within each picked seed; one seed gives the sample-level result.

    Slot j of replicate b reuses row b (j = 0) or a random row of the picked seed's paired replicates.
    """
    first = analyses[0]
    if any(a.names != first.names or a.reps.shape != first.reps.shape for a in analyses):
        raise ValueError("every seed needs the same methods, targets, replicates and s_max "
                         "(pass one s_max, e.g. the min of common_s_max over seeds)")
    S, B = len(analyses), first.reps.shape[1]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, S, size=(B, S))
    rows = np.concatenate([np.arange(B)[:, None], rng.integers(0, B, size=(B, S - 1))], 1)
    stacked = np.stack([a.reps for a in analyses])  # [S, Q, B]
    reps = stacked[picks, :, rows].mean(1).T  # [Q, B]
    points = np.stack([a.point for a in analyses])
    if S == 1:
        return Analysis(first.names, first.point, reps, first.reached, first.protocol, first.ci,
                        "one seed: sample-level intervals only", first.indices, points, first.statistic)
    reached = np.mean([a.reached for a in analyses], 0)
    return Analysis(first.names, points.mean(0), reps, reached, first.protocol, "percentile",
                    f"hierarchical bootstrap over {S} seeds (seeds, then samples)", None, points, None)


def seed_summary(analyses: Sequence[Analysis]) -> dict[tuple, dict[str, float]]:
    """Mean and standard deviation (ddof 1; NaN for one seed) over the seeds that have each
    quantity (a method restricted to some seeds counts only those)."""
    out = {}
    for name in dict.fromkeys(n for a in analyses for n in a.names):
        vals = np.array([a.point[a.names.index(name)] for a in analyses if name in a.names])
        std = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        out[name] = {"mean": float(vals.mean()), "std": std, "n_seeds": len(vals)}
    return out


# --------------------------------------------------------------------------------- trivial baselines


def trivial_predictions(labels, regression: bool | None = None) -> list[np.ndarray]:
    """Constant predictors: every class (classification) or the label mean (regression)."""
    y = np.asarray(labels)
    if regression is None:
        regression = y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0))
    if regression:
        return [np.full(y.size, float(y.mean()))]
    return [np.full(y.size, c) for c in np.unique(y)]


def trivial_baseline(labels, metric: str | Callable, regression: bool | None = None) -> float:
    """Best constant predictor's score: majority rate, all-positive F1, MCC 0, Pearson 0 (mean)."""
    fn = as_metric(metric)
    return float(max(fn(p, labels) for p in trivial_predictions(labels, regression)))


DEFAULT_BARS: dict[str, dict[str, float]] = {
    "accuracy": {"above_trivial": 10.0},
    "f1": {"above_trivial": 3.0, "accuracy_above_majority": 8.0},
    "mcc": {"at_least": 25.0},
    "pearson": {"at_least": 80.0},
    "accuracy_mm": {"above_trivial": 10.0},
    "spearman": {"at_least": 80.0},
}


@dataclass(frozen=True)
class Verdict:
    """Whether a task's full model learned it, with the bars checked and the trivial scores."""

    learned: bool
    reasons: tuple[str, ...]
    trivial: dict[str, float]


def learned(scores: Mapping[str, float], labels, headline: str,
            bars: Mapping[str, Mapping[str, float]] | None = None) -> Verdict:
    """Full-model scores (percent) against the task's bar; tasks that miss it are left out of claims."""
    bar = (bars or DEFAULT_BARS)[headline]
    trivial = {headline: trivial_baseline(labels, headline)}
    reasons, ok = [], True
    if "above_trivial" in bar:
        need = trivial[headline] + bar["above_trivial"]
        ok &= scores[headline] >= need
        reasons.append(f"{headline} {scores[headline]:.1f} vs ≥ {need:.1f} (trivial {trivial[headline]:.1f} "
                       f"+ {bar['above_trivial']:g})")
    if "accuracy_above_majority" in bar:
        trivial["accuracy"] = trivial_baseline(labels, "accuracy")
        need = trivial["accuracy"] + bar["accuracy_above_majority"]
        ok &= scores["accuracy"] >= need
        reasons.append(f"accuracy {scores['accuracy']:.1f} vs ≥ {need:.1f} "
                       f"(majority {trivial['accuracy']:.1f} + {bar['accuracy_above_majority']:g})")
    if "at_least" in bar:
        ok &= scores[headline] >= bar["at_least"]
        reasons.append(f"{headline} {scores[headline]:.1f} vs ≥ {bar['at_least']:g}")
    return Verdict(bool(ok), tuple(reasons), trivial)


# ---------------------------------------------------------------------------- indicator AUROC


def weighted_auroc(score: np.ndarray, correct: np.ndarray, W: np.ndarray) -> np.ndarray:
    """AUROC of −score for 'correct' under sample weights W [b, N] (ties count ½); NaN if one class.

    Sorting once and summing weights per tied group makes every replicate a cumulative sum.
    """
    score, correct = np.asarray(score, dtype=np.float64), np.asarray(correct, dtype=bool)
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    Wo = W[:, order]
    pos = np.add.reduceat(Wo * correct[order], starts, axis=1)  # [b, G] correct weight per tie group
    neg = np.add.reduceat(Wo * ~correct[order], starts, axis=1)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    above = n_neg[:, None] - np.cumsum(neg, 1)  # wrong weight with a strictly higher score
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (above + 0.5 * neg)).sum(1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def auroc_bootstrap(indicators: Mapping[str, tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000,
                    seed: int = 0, ci: str = "percentile") -> Analysis:
    """Per-layer AUROC of each indicator (score [L, N], correct [L, N]) on shared resamples.

    Rows are (indicator, 'auroc', layer 1..L); ``difference('EDR', 'entropy', 'auroc', layer)`` is paired.
    """
    items = {k: (np.atleast_2d(s), np.atleast_2d(c)) for k, (s, c) in indicators.items()}
    N = next(iter(items.values()))[0].shape[1]
    if any(s.shape[1] != N or s.shape != c.shape for s, c in items.values()):
        raise ValueError("every indicator needs score and correct of shape [L, N] over the same N samples")
    names = [(k, "auroc", float(layer + 1)) for k, (s, _) in items.items() for layer in range(s.shape[0])]

    def evaluate(idx: np.ndarray) -> np.ndarray:
        """AUROC of every (indicator, layer) on index rows [b, m] → [Q, b]."""
        W = _weights(idx, N)
        rows = [weighted_auroc(s[lay], c[lay], W) for s, c in items.values() for lay in range(s.shape[0])]
        return np.stack(rows)

    idx = bootstrap_indices(N, n_boot, seed)
    point = evaluate(np.arange(N)[None])[:, 0]
    reps = np.concatenate([evaluate(idx[i:i + 250]) for i in range(0, n_boot, 250)], 1)
    memo: dict = {}

    def statistic(sample_idx):
        """Rows recomputed on index rows [..., m], memoised for BCa's jackknife."""
        a = np.asarray(sample_idx)
        key = (a.shape, hash(a.tobytes()))
        if key not in memo:
            memo[key] = evaluate(a.reshape(-1, a.shape[-1])).reshape(-1, *a.shape[:-1])
        return memo[key]

    defined = np.isfinite(reps).mean(1)
    return Analysis(names, point, reps, defined, "per-layer (no selection)", ci,
                    "sample-level paired bootstrap of per-layer AUROC", idx, None, statistic)
