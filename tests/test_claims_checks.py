"""Verdicts that tell a failed training from a weaker method, and speed-ups that must match (issue 25).

Each test plants the failure in otherwise ordinary data and checks that the claims report gives
the right non-verdict; each also checks that the old rule (no precheck) would have given a
verdict on the same data, so the test tells the two rules apart.
"""

from __future__ import annotations

import numpy as np
from claims_demo import demo_results

from benchmarks.report.claims import NOT_LEARNED, build_claims
from benchmarks.report.markdown_claims import claims_markdown

L = 6


def _with_layers(results: dict, task: str, method: str, layers: np.ndarray) -> None:
    """Give `method` per-layer predictions `[L, N]` in every seed of `task`."""
    for block in results["tasks"][task]["seeds"].values():
        block["methods"][method]["layers"] = layers


def _planted_majority(n: int = 300) -> dict:
    """De3's model predicts the majority class at every layer (a collapsed training)."""
    results = demo_results(n=n, n_seeds=1)
    task = results["tasks"]["learned-task"]
    labels = np.asarray(task["labels"])
    majority = int(np.bincount(labels).argmax())
    block = task["seeds"]["0"]["methods"]
    block["de3"]["preds"] = np.full_like(np.asarray(block["de3"]["preds"]), majority)
    block["de3"]["layers"] = np.full((L, n), majority)
    for m in ("pabee", "deebert"):  # the baselines' models learned: their layers are their preds
        block[m]["layers"] = np.repeat(np.asarray(block[m]["preds"])[-1:], L, 0)
    return results


def test_a_model_predicting_the_majority_class_gets_not_learned_never_contradicted():
    results = _planted_majority()
    claims = build_claims(results, n_boot=200)
    rows = [r for r in claims["claim1"] if r["task"] == "learned-task"]
    assert rows and {r["verdict"] for r in rows} == {NOT_LEARNED}
    assert all(r["comparison"].q is None for r in rows)  # not in the multiple-testing correction
    md = claims_markdown(claims)
    assert "Models that did not learn" in md and "| learned-task | de3 |" in md
    assert claims["tasks"]["learned-task"]["models"]["de3"]["learned"] is False
    assert claims["tasks"]["learned-task"]["models"]["pabee"]["learned"] is True
    # the old rule, on the same data: without the model check the collapse reads as "contradicted"
    for block in results["tasks"]["learned-task"]["seeds"].values():
        for r in block["methods"].values():
            r.pop("layers", None)
    old = build_claims(results, n_boot=200)
    assert "contradicted" in {r["verdict"] for r in old["claim1"]}


def test_a_cliff_in_the_speedup_curve_never_gives_a_supported_or_contradicted_verdict(monkeypatch):
    """De3's exits jump from full depth straight to layer 2 (3×): at 1.5× and 2× its operating
    point is 3×, the baselines' near the target; the comparison is marked, not decided."""
    results = demo_results(n=400, n_seeds=1)
    block = results["tasks"]["learned-task"]["seeds"]["0"]["methods"]
    labels = np.asarray(results["tasks"]["learned-task"]["labels"])
    K, n = np.asarray(block["de3"]["exits"]).shape
    exits = np.full((K, n), 2)
    exits[0] = L
    block["de3"]["exits"] = exits
    block["de3"]["preds"] = np.where(np.arange(K)[:, None] == 0, labels, labels)  # as good as it gets
    claims = build_claims(results, n_boot=200)
    rows = [r for r in claims["claim1"] if r["task"] == "learned-task"]
    assert rows and all(r["verdict"].startswith("speed-up not matched") for r in rows)
    assert not {"supported", "contradicted"} & {r["verdict"] for r in claims["claim1"]}
    assert "3.00× vs" in rows[0]["verdict"]
    # the old rule (no speed-up match) compares the 3× point with the baselines' 2× as equals
    import benchmarks.report.claims as claims_module

    monkeypatch.setattr(claims_module, "SPEEDUP_MATCH", float("inf"))
    old = build_claims(results, n_boot=200)
    assert "supported" in {r["verdict"] for r in old["claim1"]}


def test_the_sanity_guard_flags_a_model_far_below_single_and_only_that_one():
    """Deepest exit vs `single`: a collapsed model (majority class) is flagged, one 2 points
    below is not; the gap rule, not the absolute score, decides."""
    import torch

    from benchmarks.sanity import check_model, sanity_markdown

    g = torch.Generator().manual_seed(0)
    n = 400
    labels = torch.randint(0, 2, (n,), generator=g)

    def record(correct_share: float) -> dict:
        right = torch.rand(n, generator=g) < correct_share
        pred = torch.where(right, labels, 1 - labels)
        logits = torch.nn.functional.one_hot(pred, 2).float()[None].repeat(L, 1, 1)
        return {"logits": logits, "labels": labels}

    single = record(0.85)
    collapsed = {"logits": torch.tensor([5.0, 0.0]).repeat(L, n, 1), "labels": labels}
    close = check_model("sst2", "weighted", 42, record(0.83), single)
    bad = check_model("sst2", "de3", 42, collapsed, single)
    assert bad.flagged and "training failure" in bad.line()
    assert not close.flagged and abs(close.gap) < 5
    table = "\n".join(sanity_markdown([close, bad]))
    assert "1 of 2 models" in table and "(flagged)" in table


def test_a_truncated_bert_kl_is_judged_at_layer_k_not_at_its_untrained_top():
    """Static BERT-kL records every layer, but only layers 1..k are trained: the guard and the
    model checks read layer k (reading layer L flagged every static-kl model as a failure)."""
    import torch

    from benchmarks.report.uncertainty import every_layer_predictions
    from benchmarks.sanity import deepest_metric

    n = 200
    labels = torch.arange(n) % 2
    logits = torch.zeros(L, n, 2)
    logits[:3] = torch.nn.functional.one_hot(labels, 2).float()  # layers 1..3 right
    logits[3:, :, 0] = 1.0  # untrained layers above k = 3: one class
    record = {"logits": logits, "labels": labels}
    assert deepest_metric("sst2", record, "static-kl3") == 100.0
    assert deepest_metric("sst2", record, "weighted") == 50.0
    assert every_layer_predictions(record, "static-kl3").shape == (3, n)
