"""The statistics library on simulated records with a known truth (seeded, small, fast)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from benchmarks.stats import bootstrap as st
from de3bert.metrics import glue_metrics

L = 6


def simulate(
    rng: np.random.Generator,
    labels: np.ndarray,
    K: int = 12,
    skill: float = 0.8,
    difficulty: np.ndarray | None = None,
) -> st.MethodRecord:
    """One policy's record: per-layer predictions, exits monotone in the knob, knob 0 = full depth."""
    N = labels.size
    d = rng.random(N) if difficulty is None else difficulty
    u = 0.5 * (1 - d) + 0.5 * rng.random(N)  # method-specific confidence
    thr = np.linspace(0, 1, K)[:, None]
    exits = np.clip(L - np.floor(thr * L * u[None]), 1, L).astype(np.int64)
    p_layer = np.clip(skill - 0.3 * d[None] + 0.05 * (np.arange(1, L + 1)[:, None] - L), 0.05, 0.98)
    layer_ok = rng.random((L, N)) < p_layer
    layer_pred = np.where(layer_ok, labels[None], 1 - labels[None])
    preds = layer_pred[exits - 1, np.arange(N)]
    return st.MethodRecord(exits, preds)


def direct_crossfit(rec: st.MethodRecord, labels, idx, folds, target, metric) -> tuple[float, float]:
    """The definition, sample by sample: fold f of the resample scored at the knob chosen on the rest."""
    f_of = folds[idx]
    ex_all, pr_all = [], []
    for f in np.unique(folds):
        sel, scored = idx[f_of != f], idx[f_of == f]
        k, _ = st.choose_knobs(st.layer_speedup(rec.exits[:, sel], L), [target])
        ex_all.append(rec.exits[k[0], scored])
        pr_all.append(rec.preds[k[0], scored])
    ex, pr = np.concatenate(ex_all), np.concatenate(pr_all)
    y = np.concatenate([labels[idx[f_of == f]] for f in np.unique(folds)])
    return metric(pr, y), L * ex.size / ex.sum()


@pytest.fixture(scope="module")
def pair():
    """Two methods on 400 samples: B equals A with 5% of A's correct answers flipped wrong."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    a = simulate(rng, labels)
    flip = rng.random(labels.size) < 0.05
    b_preds = np.where(flip[None] & (a.preds == labels[None]), 1 - labels[None], a.preds)
    return labels, a, st.MethodRecord(a.exits, b_preds)


@pytest.mark.parametrize("name", list(glue_metrics.__globals__["METRICS"]))
def test_every_metric_has_one_definition_the_scorer_and_the_bootstrap_agree_on(name):
    """Issue 26: one metric table; its exact scorer and its additive statistics agree on random
    inputs for every metric, and every metric has a learned-task bar (else claims would crash)."""
    rng = np.random.default_rng(7)
    for trial in range(5):
        n = int(rng.integers(20, 200))
        if name in ("pearson", "spearman"):
            y = rng.normal(size=n).round(1)
            p = y * rng.uniform(-1, 1) + rng.normal(size=n)
        else:
            y = rng.integers(0, 3 if name in ("mcc", "accuracy", "accuracy_mm") else 2, n)
            p = np.where(rng.random(n) < 0.7, y, rng.integers(0, 3 if name != "f1" else 2, n))
        exact = 100 * glue_metrics.__globals__["METRICS"][name].score(p, y)  # unrounded
        assert st.METRICS[name](p, y) == pytest.approx(exact, abs=1e-9), trial
    assert name in st.DEFAULT_BARS


def test_a_metric_without_statistics_is_refused_at_definition():
    from de3bert.metrics import Metric

    with pytest.raises(ValueError, match="metric 'bleu': stats must be given"):
        Metric("bleu", lambda p, y: 0.0, None, lambda x, y, n: x)


def test_metrics_match_glue_metrics():
    """The additive-statistics metrics must equal the GLUE metrics the tables print."""
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    for name in ("accuracy", "f1", "mcc"):
        assert st.METRICS[name](p, y) == pytest.approx(glue_metrics((name,), p, y)[name], abs=1e-3)
    y3, p3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert st.METRICS["mcc"](p3, y3) == pytest.approx(glue_metrics(("mcc",), p3, y3)["mcc"], abs=1e-3)
    yr = rng.normal(3, 1, 300)
    pr = yr + rng.normal(0, 1, 300)
    assert st.METRICS["pearson"](pr, yr) == pytest.approx(
        glue_metrics(("pearson",), pr, yr)["pearson"], abs=1e-3
    )
    assert st.METRICS["mcc"](np.ones(300, int), y) == 0.0
    assert st.METRICS["pearson"](np.full(300, 2.0), yr) == 0.0


def test_stratified_folds_balanced_seeded_and_regression():
    """Folds keep class (or quantile) balance so each fold can stand in for the dev set."""
    y = np.array([0] * 30 + [1] * 71)
    f = st.stratified_folds(y, seed=3)
    assert set(np.unique(f)) == {0, 1}
    for c in (0, 1):
        counts = np.bincount(f[y == c])
        assert abs(counts[0] - counts[1]) <= 1
    assert abs(np.bincount(f)[0] - np.bincount(f)[1]) <= 1
    assert np.array_equal(f, st.stratified_folds(y, seed=3))
    assert not np.array_equal(f, st.stratified_folds(y, seed=4))
    yr = np.random.default_rng(0).normal(size=200)
    fr = st.stratified_folds(yr, seed=0)
    order = np.argsort(yr)
    for chunk in np.array_split(order, 10):  # each quantile decile is split evenly
        assert abs(np.bincount(fr[chunk], minlength=2)[0] - len(chunk) / 2) <= 1


def test_choose_knobs_rule_ties_and_unreached():
    """The selection rule of protocol.md: smallest ≥ target, first on ties, fastest when unreached."""
    sp = np.array([1.0, 1.6, 2.1, 1.6, 3.0])
    k, r = st.choose_knobs(sp, [1.5, 2.0, 5.0])
    assert k.tolist() == [1, 2, 4] and r.tolist() == [True, True, False]


def test_crossfit_never_scores_a_sample_with_a_knob_chosen_on_it():
    """Record where leakage shows: fold-0 samples alone push knob 0 over the target under `dev`."""
    N = 40
    labels = np.tile([0, 1], N // 2)
    folds = st.stratified_folds(labels, seed=0)
    exits = np.full((3, N), 5)  # knob 0: 1.2× everywhere
    exits[1] = 2  # knob 1: 3× everywhere
    exits[2] = 1  # knob 2: 6× everywhere
    base = st.crossfit_select(exits, labels, [2.0], folds, n_layers=L)
    tricked = exits.copy()
    tricked[0, folds == 0] = 1  # knob 0 becomes fast on fold 0 only: 2.0× on the whole dev set
    dev = st.dev_select(tricked, [2.0], n_layers=L)
    cf = st.crossfit_select(tricked, labels, [2.0], folds, n_layers=L)
    assert dev.knobs[0, 0] == 0 != st.dev_select(exits, [2.0], n_layers=L).knobs[0, 0]  # leakage would show
    assert np.array_equal(cf.sample_knob[0, folds == 0], base.sample_knob[0, folds == 0])  # fold 0 unaffected
    for f in (0, 1):
        k, _ = st.choose_knobs(st.layer_speedup(tricked[:, folds != f], L), [2.0])
        assert np.all(cf.sample_knob[0, folds == f] == k[0])
    assert cf.protocol == "crossfit" and dev.protocol == "dev"


def test_bootstrap_replicates_equal_the_direct_definition(pair):
    """The vectorised engine must reproduce the slow definition on every replicate it draws."""
    labels, a, b = pair
    folds = st.stratified_folds(labels, 0)
    an = st.paired_bootstrap(
        {"a": a, "b": b}, labels, n_layers=L, metric="f1", targets=[1.5, 2.0], folds=folds, n_boot=50, seed=7
    )
    for m, rec in (("a", a), ("b", b)):
        for t in (1.5, 2.0):
            for rep in (0, 17, 49):
                met, sp = direct_crossfit(rec, labels, an.indices[rep], folds, t, st.METRICS["f1"])
                assert an.reps[an.row(m, "metric", t), rep] == pytest.approx(met, abs=1e-9)
                assert an.reps[an.row(m, "speedup", t), rep] == pytest.approx(sp, abs=1e-9)
        sel = st.crossfit_select(rec.exits, labels, [2.0], folds, n_layers=L, preds=rec.preds)
        assert an.point[an.row(m, "metric", 2.0)] == pytest.approx(
            glue_metrics(("f1",), sel.preds[0], labels)["f1"], abs=1e-3
        )
        assert an.point[an.row(m, "speedup", 2.0)] == pytest.approx(sel.speedup[0])


def test_paired_means_identical_indices(pair):
    """Paired means paired: copies of one method differ by exactly 0 in every replicate."""
    labels, a, _ = pair
    copy = st.MethodRecord(a.exits.copy(), a.preds.copy())
    an = st.paired_bootstrap(
        {"a": a, "a2": copy}, labels, n_layers=L, metric="accuracy", targets=[1.5, 2.0], n_boot=200, seed=3
    )
    assert an.indices.shape == (200, labels.size)
    for t in (1.5, 2.0):
        d = an.reps[an.row("a", "metric", t)] - an.reps[an.row("a2", "metric", t)]
        assert np.all(d == 0)  # only possible when both methods saw the same indices in every replicate
        c = an.difference("a", "a2", "metric", t)
        assert c.interval.lo == c.interval.hi == 0 and c.p == 1.0


def test_callable_metric_path_equals_vectorised(pair):
    """Any callable metric gives the same replicates as the vectorised one (just slower)."""
    labels, a, b = pair
    kw = dict(n_layers=L, targets=[2.0], n_boot=20, seed=5, n_grid=4)
    fast = st.paired_bootstrap({"a": a, "b": b}, labels, metric="mcc", **kw)
    slow = st.paired_bootstrap(
        {"a": a, "b": b}, labels, metric=lambda p, y: glue_metrics(("mcc",), p, y)["mcc"], **kw
    )
    assert np.allclose(fast.reps, slow.reps, atol=1e-3) and np.allclose(fast.point, slow.point, atol=1e-3)


def test_two_copies_of_one_policy_cover_zero():
    """Exchangeable methods (same generator): the 95% difference interval covers 0 in ≥ 90% of datasets."""
    rng = np.random.default_rng(2024)
    covered, total = 0, 0
    for i in range(100):
        labels = rng.integers(0, 2, 200)
        d = rng.random(labels.size)
        recs = {"a": simulate(rng, labels, K=8, difficulty=d), "b": simulate(rng, labels, K=8, difficulty=d)}
        an = st.paired_bootstrap(
            recs, labels, n_layers=L, metric="accuracy", targets=[2.0], n_boot=200, seed=i, n_grid=3
        )
        covered += an.difference("a", "b", "metric", 2.0).interval.covers(0.0)
        total += 1
    assert covered / total >= 0.90


def test_planted_difference_is_detected():
    """A real 2-4 point gap on 1,000 samples must come out significant and bolded."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 1000)
    a = simulate(rng, labels)
    flip = rng.random(labels.size) < 0.04
    b = st.MethodRecord(a.exits, np.where(flip[None] & (a.preds == labels[None]), 1 - labels[None], a.preds))
    an = st.paired_bootstrap({"a": a, "b": b}, labels, n_layers=L, metric="accuracy", targets=[1.5, 2.0])
    for c in st.compare(an, [("a", "b")]):
        assert 1.0 < c.interval.estimate < 5.0  # a few points
        assert c.interval.lo > 0 and c.q < 0.05
    best = st.significant_best({"t2": (an, 2.0)}, ["a", "b"])
    assert best[0].best == "a" and best[0].bold and best[0].mark == "best"


def test_intervals_shrink_as_dev_grows():
    """More dev samples must buy narrower intervals (roughly 1/√n)."""
    widths = []
    for n in (200, 800, 3200):
        rng = np.random.default_rng(n)
        labels = rng.integers(0, 2, n)
        an = st.paired_bootstrap(
            {"a": simulate(rng, labels)},
            labels,
            n_layers=L,
            metric="accuracy",
            targets=[2.0],
            n_boot=300,
            n_grid=3,
        )
        widths.append(an.interval("a", "metric", 2.0).half_width)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.7 * widths[0]


def test_bh_matches_scipy_and_definition():
    """q-values are scipy's BH, which is the textbook step-up rule."""
    p = np.array([0.001, 0.04, 0.03, 0.2, 0.5, 0.011])
    q = st.fdr(p)
    assert np.allclose(q, false_discovery_control(p, method="bh"))
    order = np.argsort(p)
    m = p.size
    manual = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    assert np.allclose(q[order], np.minimum(manual, 1))


def test_hierarchical_one_seed_equals_sample_level(pair):
    """One seed must degrade gracefully to the sample-level bootstrap, and say so."""
    labels, a, b = pair
    an = st.paired_bootstrap(
        {"a": a, "b": b}, labels, n_layers=L, metric="accuracy", targets=[2.0], n_boot=100
    )
    h = st.hierarchical_bootstrap([an])
    assert np.array_equal(h.reps, an.reps) and np.array_equal(h.point, an.point)
    assert "sample-level intervals only" in h.note
    assert h.interval("a", "metric", 2.0) == an.interval("a", "metric", 2.0)
    assert np.isnan(st.seed_summary([an])[("a", "metric", 2.0)]["std"])


def test_hierarchical_several_seeds_is_wider_with_seed_variance():
    """Seed-to-seed variance must widen the hierarchical interval beyond each seed's own."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 500)
    runs = [
        st.paired_bootstrap(
            {"a": simulate(rng, labels, skill=s)},
            labels,
            n_layers=L,
            metric="accuracy",
            targets=[2.0],
            n_boot=300,
            seed=i,
            n_grid=3,
            s_max=2.5,
        )
        for i, s in enumerate((0.65, 0.8, 0.95))
    ]
    h = st.hierarchical_bootstrap(runs, seed=1)
    summ = st.seed_summary(runs)[("a", "metric", 2.0)]
    assert h.point[0] == pytest.approx(summ["mean"]) and summ["std"] > 3
    assert h.interval("a", "metric", 2.0).half_width > max(
        r.interval("a", "metric", 2.0).half_width for r in runs
    )
    assert "3 seeds" in h.note


def test_bca_interval_and_protocol_labels(pair):
    """BCa goes through scipy's jackknife on the same engine; protocols keep their labels."""
    labels, a, b = pair
    an = st.paired_bootstrap(
        {"a": a, "b": b},
        labels,
        n_layers=L,
        metric="accuracy",
        targets=[2.0],
        n_boot=200,
        protocol="dev",
        ci="BCa",
    )
    iv = an.interval("a", "metric", 2.0)
    assert iv.method == "BCa" and iv.lo < iv.estimate < iv.hi
    assert an.protocol == "dev" and st.PROTOCOL_LABELS["dev"] == "tuned on the reported split"
    auc = an.difference("a", "b", "auc")
    assert auc.interval.method == "BCa" and auc.interval.estimate > 0


def test_train_holdout_chooses_on_the_holdout(pair):
    """train-holdout picks the knob from the holdout exits only, and refuses without them."""
    labels, a, _ = pair
    hold = np.full((a.exits.shape[0], 50), L)
    hold[-1] = 1  # only the last knob reaches 2× on the holdout
    rec = st.MethodRecord(a.exits, a.preds, hold)
    sel = st.holdout_select(hold, a.exits, [2.0], n_layers=L, preds=a.preds)
    assert sel.knobs[0, 0] == a.exits.shape[0] - 1 and sel.protocol == "train-holdout"
    an = st.paired_bootstrap(
        {"a": rec}, labels, n_layers=L, metric="accuracy", targets=[2.0], n_boot=50, protocol="train-holdout"
    )
    assert an.point[an.row("a", "speedup", 2.0)] == pytest.approx(sel.speedup[0])
    with pytest.raises(ValueError, match="holdout"):
        st.paired_bootstrap(
            {"a": a}, labels, n_layers=L, metric="accuracy", targets=[2.0], n_boot=5, protocol="train-holdout"
        )


def test_full_model_and_indistinguishable(pair):
    """The full model enters as a one-knob record; comparisons to it carry q-values."""
    labels, a, _ = pair
    full = st.MethodRecord(np.full((1, labels.size), L), a.preds[:1])
    an = st.paired_bootstrap(
        {"a": a, "full-model": full}, labels, n_layers=L, metric="accuracy", targets=[1.5], n_boot=200
    )
    res = st.vs_full_model(an)
    assert set(res) == {("a", 1.5)}
    assert st.vs_full_model(an, methods=[]) == {}  # none asked (a table none of whose methods ran here)
    assert res[("a", 1.5)]["comparison"].q is not None
    assert an.reached[an.row("full-model", "metric", 1.5)] == 0  # never reaches 1.5×: its full-depth score
    tie = st.significant_best({"c": (an, 1.5)}, ["a", "full-model"])
    assert tie[0].runner_up is not None


def test_trivial_baseline_and_learned():
    """The trivial predictors and the default-run bars of issue 15."""
    y = np.array([1] * 68 + [0] * 32)
    assert st.trivial_baseline(y, "accuracy") == pytest.approx(68.0)
    assert st.trivial_baseline(y, "f1") == pytest.approx(200 * 68 / (2 * 68 + 32))
    assert st.trivial_baseline(y, "mcc") == 0.0
    assert st.trivial_baseline(np.linspace(0, 5, 50), "pearson") == 0.0
    v = st.learned({"f1": 82.2, "accuracy": 72.0}, y, "f1")
    assert not v.learned and len(v.reasons) == 2
    assert st.learned({"f1": 86.0, "accuracy": 77.0}, y, "f1").learned
    assert st.learned({"accuracy": 78.5}, y, "accuracy").learned
    assert not st.learned({"mcc": 4.7}, y, "mcc").learned
    assert st.learned({"pearson": 85.0}, np.linspace(0, 5, 50), "pearson").learned
    assert not st.learned({"accuracy": 78.5}, y, "accuracy", bars={"accuracy": {"above_trivial": 12}}).learned


def test_weighted_auroc_matches_sklearn_and_indicator_auroc():
    """The vectorised AUROC equals sklearn's (with ties and resample weights) and the suite's own."""
    from sklearn.metrics import roc_auc_score

    from de3bert.metrics import indicator_auroc

    rng = np.random.default_rng(0)
    score = np.round(rng.random(300), 1)  # many ties
    correct = rng.random(300) < 0.7 - 0.4 * score
    idx = st.bootstrap_indices(300, 5, 1)
    W = np.stack([np.bincount(i, minlength=300) for i in idx]).astype(float)
    got = st.weighted_auroc(score, correct, W)
    for b in range(5):
        assert got[b] == pytest.approx(roc_auc_score(correct, -score, sample_weight=W[b]))
    one = st.weighted_auroc(score, correct, np.ones((1, 300)))[0]
    assert one == pytest.approx(indicator_auroc(score, correct))
    assert np.isnan(st.weighted_auroc(score, np.ones(300, bool), np.ones((1, 300)))[0])


def test_auroc_bootstrap_separates_a_better_indicator():
    """An indicator carrying more signal about correctness wins per layer, paired on shared resamples."""
    rng = np.random.default_rng(3)
    N, layers = 1000, 3
    correct = rng.random((layers, N)) < 0.7
    good = np.where(correct, 0.0, 1.0) + rng.normal(0, 0.8, (layers, N))
    weak = np.where(correct, 0.0, 1.0) + rng.normal(0, 2.0, (layers, N))
    an = st.auroc_bootstrap({"edr": (good, correct), "entropy": (weak, correct)}, n_boot=300)
    for layer in (1.0, 2.0, 3.0):
        c = an.difference("edr", "entropy", "auroc", layer)
        assert c.interval.lo > 0 and c.p < 0.01
        assert an.interval("edr", "auroc", layer).covers(an.point[an.row("edr", "auroc", layer)])


def test_choose_knobs_vectorised_equals_the_rule_row_by_row():
    """The sorted/searchsorted selection equals the plain rule, including ties, inf and NaN."""
    rng = np.random.default_rng(4)
    sp = np.round(rng.uniform(0.8, 4.0, (200, 15)), 1)
    sp[0, 3], sp[1, :] = np.inf, np.nan
    targets = [1.0, 1.5, 2.0, 3.0, 3.95]
    knobs, reached = st.choose_knobs(sp, targets)
    for r in range(sp.shape[0]):
        for j, t in enumerate(targets):
            ok = [k for k in range(sp.shape[1]) if sp[r, k] >= t - 1e-9]
            want = min(ok, key=lambda k: (sp[r, k], k)) if ok else int(np.nanargmax(sp[r])) if r != 1 else 0
            assert (knobs[r, j], reached[r, j]) == (want, bool(ok))


def test_claims_report_from_a_results_structure(tmp_path):
    """The claims report runs from arrays alone, excludes unlearned tasks and says what it cannot decide."""
    import json

    from claims_demo import demo_results

    from benchmarks.report.claims import build_claims, write_claims

    results = demo_results(n=300, n_seeds=1)
    claims = build_claims(results, n_boot=200)
    assert claims["tasks"]["chance-task"]["learned"] is False
    assert {r["task"] for r in claims["claim1"]} == {"learned-task"}
    assert {r["verdict"] for r in claims["claim1"]} <= {"supported", "contradicted", "not distinguishable"}
    assert all(r["comparison"].q is not None for r in claims["claim1"] + claims["claim2"])
    assert "one seed" in claims["tasks"]["learned-task"]["note"]
    md, js = write_claims(results, tmp_path, n_boot=200)
    text = md.read_text()
    assert "not learned" in text and "cannot be checked" in text  # no overhead data given
    assert json.loads(js.read_text())["protocol"] == "crossfit"


def test_curve_band_and_auc_use_the_scored_curve(pair):
    """AUC is the mean of the method's own scored curve (no envelope); the band brackets the curve."""
    labels, a, _ = pair
    an = st.paired_bootstrap(
        {"a": a}, labels, n_layers=L, metric="accuracy", targets=[2.0], n_boot=100, n_grid=9
    )
    cur = an.curve("a")
    assert cur["target"][0] == 1.0 and cur["target"].size == 9
    assert np.all(cur["metric_lo"] <= cur["metric"] + 1e-9) and np.all(
        cur["metric"] <= cur["metric_hi"] + 1e-9
    )
    g, m = cur["target"], cur["metric"]
    auc = np.trapezoid(m, g) / (g[-1] - g[0])
    assert an.point[an.row("a", "auc")] == pytest.approx(auc)
    envelope = [
        max(
            st.METRICS["accuracy"](a.preds[k], labels)
            for k in range(a.exits.shape[0])
            if st.layer_speedup(a.exits[k], L) >= t - 1e-9
        )
        for t in g
    ]
    assert np.trapezoid(envelope, g) / (g[-1] - g[0]) >= auc  # the old envelope can only flatter


def test_undefined_auroc_rows_do_not_leak_into_other_rows():
    """A layer where every prediction is correct has no AUROC; other layers' intervals stay finite."""
    rng = np.random.default_rng(8)
    correct = rng.random((2, 200)) < 0.7
    correct[0] = True
    an = st.auroc_bootstrap(
        {"x": (rng.random((2, 200)), correct), "y": (rng.random((2, 200)), correct)}, n_boot=50
    )
    assert np.isnan(an.point[an.row("x", "auroc", 1.0)])
    c = an.difference("x", "y", "auroc", 2.0)
    assert np.isfinite([c.interval.lo, c.interval.hi, c.p]).all()


def test_a_method_on_the_first_seed_only_is_compared_on_that_seed():
    """`pool_seeds`: methods on every seed are pooled over seeds; a first-seed-only method's cells
    and every comparison involving it come from the first seed's own (paired) analysis."""
    from benchmarks.stats.seedsplit import SeedSplit, pool_seeds

    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 400)
    kw = dict(n_layers=L, metric="accuracy", targets=[2.0], n_boot=200, n_grid=3, s_max=2.5)
    first = st.paired_bootstrap({"a": simulate(rng, labels, skill=0.8), "b": simulate(rng, labels, skill=0.7),
                                 "x": simulate(rng, labels, skill=0.75)}, labels, seed=0, **kw)
    second = st.paired_bootstrap({"a": simulate(rng, labels, skill=0.9),
                                  "b": simulate(rng, labels, skill=0.6)}, labels, seed=1, **kw)
    view = pool_seeds([first, second], seed=3)
    assert isinstance(view, SeedSplit) and view.methods == ["a", "b", "x"]
    both = st.hierarchical_bootstrap([st_subset(first, ["a", "b"]), second], seed=3)
    assert view.interval("a", "metric", 2.0) == both.interval("a", "metric", 2.0)
    diff = {k: an.difference("a", k, "metric", 2.0).interval for k, an in (("b", both), ("x", first))}
    assert view.difference("a", "b", "metric", 2.0).interval == diff["b"]
    assert view.difference("a", "x", "metric", 2.0).interval == diff["x"]
    assert view.point[view.row("x", "metric", 2.0)] == first.point[first.row("x", "metric", 2.0)]
    assert "first seed only" in view.note and "x" in view.note
    assert st.seed_summary([first, second])[("x", "metric", 2.0)]["n_seeds"] == 1
    # the same methods on every seed: the plain hierarchical bootstrap
    same = pool_seeds([st_subset(first, ["a", "b"]), second], seed=3)
    assert not isinstance(same, SeedSplit)
    # ... whatever order each seed lists them in (records come back in dict order)
    swapped = st.paired_bootstrap({"b": simulate(rng, labels, skill=0.6),
                                   "a": simulate(rng, labels, skill=0.9)}, labels, seed=1, **kw)
    assert swapped.names != second.names
    pooled = pool_seeds([st_subset(first, ["a", "b"]), swapped], seed=3)
    assert not isinstance(pooled, SeedSplit) and pooled.names == st_subset(first, ["a", "b"]).names


def st_subset(a, methods):
    from benchmarks.stats.seedsplit import subset

    return subset(a, methods)


def test_claim_rows_take_cells_and_difference_from_the_same_seeds():
    """A claims row comparing DE³ with a first-seed-only baseline shows both cells from that seed,
    the seed its difference is made on (not DE³'s pooled cell next to a first-seed difference)."""
    from benchmarks.report.claims import _claim1_rows
    from benchmarks.stats.seedsplit import pool_seeds

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    kw = dict(n_layers=L, metric="accuracy", targets=[2.0], n_boot=100, n_grid=3, s_max=2.5)
    first = st.paired_bootstrap({"de3": simulate(rng, labels, skill=0.8),
                                 "x": simulate(rng, labels, skill=0.7)}, labels, seed=0, **kw)
    second = st.paired_bootstrap({"de3": simulate(rng, labels, skill=0.95)}, labels, seed=1, **kw)
    view = pool_seeds([first, second], seed=2)
    (row,) = _claim1_rows("t", {"baselines": ["x"], "targets": [2.0]}, view, "de3")
    assert row["de3"] == first.interval("de3", "metric", 2.0)
    assert row["de3"] != view.interval("de3", "metric", 2.0)  # the pooled cell differs
    assert row["comparison"].interval == first.difference("de3", "x", "metric", 2.0).interval
