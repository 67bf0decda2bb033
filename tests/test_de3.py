"""DE³-BERT: the DR/EDR indicator, DAR, prototype EMA (incl. data-parallel sync), save/load,
regression refusal, and the recipe's loss going down."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from de3bert import engine
from de3bert.de3 import De3Options, EDRPolicy, dar_loss, de3_loss, distance_ratio, edr, edr_score
from de3bert.model import MultiExitModel
from de3bert.policy import normalized_entropy
from de3bert.prototypes import PrototypeHeads, pairwise_distance
from de3bert.recipes import get_recipe
from de3bert.registry import get_method

# ---- DR and EDR -----------------------------------------------------------------------------------


def _dr(dists, pred_class: int, num_classes: int | None = None) -> float:
    d = torch.tensor([dists], dtype=torch.float32)
    logits = F.one_hot(torch.tensor([pred_class]), num_classes or len(dists)).float()
    return distance_ratio(d, logits).item()


def test_distance_ratio_hand_computed():
    assert _dr([1.0, 3.0], 0) == pytest.approx(0.5 * (1 + (1 - 3) / 3))  # 1/6: near its own prototype
    assert _dr([1.0, 3.0], 1) == pytest.approx(0.5 * (1 + (3 - 1) / 3))  # 5/6: near the other one
    assert _dr([2.0, 1.0, 4.0], 0) == pytest.approx(0.75)  # r₂ = nearest *other* prototype
    assert _dr([0.5, 1.0, 4.0], 0) == pytest.approx(0.25)
    assert _dr([0.0, 5.0], 0) == pytest.approx(0.0)
    assert _dr([5.0, 0.0], 0) == pytest.approx(1.0)


@pytest.mark.parametrize("r", [0.0, 1e-20, 1e-7, 2.0, 1e30])
def test_distance_ratio_is_half_when_equal(r):
    assert _dr([r, r], 0) == pytest.approx(0.5)
    assert _dr([r, r, r], 2) == pytest.approx(0.5)


def test_edr_hand_computed():
    h = torch.tensor([0.5, 0.5, 0.2, 0.9])
    dr = torch.tensor([0.25, 0.25, 0.8, 0.1])
    for lam in (0.25, 1.0, 2.0, 4.0):
        expected = [(lam + 1) / (lam / r + 1 / e) for e, r in zip(h.tolist(), dr.tolist(), strict=True)]
        assert edr(h, dr, lam).tolist() == pytest.approx(expected, abs=1e-6)
    assert edr(h, dr, 1.0)[0].item() == pytest.approx(1 / 3)
    # λ = 0 is the normalized entropy itself; large λ tends to DR
    assert edr(h, dr, 0.0).tolist() == pytest.approx(h.tolist())
    assert edr(h, dr, 1e6).tolist() == pytest.approx(dr.tolist(), abs=1e-5)
    # a zero component gives 0, never NaN
    z = edr(torch.tensor([0.0, 0.3, 0.0]), torch.tensor([0.4, 0.0, 0.0]), 1.0)
    assert z.tolist() == [0.0, 0.0, 0.0]


def test_indicator_bounds_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for c in (2, 3, 5):
        logits = torch.randn(500, c, generator=g) * torch.logspace(-3, 3, 500)[:, None]
        dists = torch.rand(500, c, generator=g) * torch.logspace(-6, 6, 500)[:, None]
        dists[:50] = 0.0
        dists[50:100, 0] = dists[50:100, 1]
        dr = distance_ratio(dists, logits)
        h = normalized_entropy(logits)
        assert torch.isfinite(dr).all() and ((dr >= 0) & (dr <= 1)).all()
        assert (dr[:50] == 0.5).all()
        for lam in (0.0, 0.25, 1.0, 4.0):
            e = edr(h, dr, lam)
            assert torch.isfinite(e).all() and ((e >= 0) & (e <= 1)).all()
            # a harmonic mean lies between its two components
            lo, hi = torch.minimum(h, dr), torch.maximum(h, dr)
            assert ((e >= lo - 1e-5) & (e <= hi + 1e-5)).all()


def test_extreme_and_low_precision_inputs_are_finite():
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [1.0, 0.0], [0.0, 0.0]])
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]).log()  # -inf entries
    dists = torch.tensor([[0.0, 1.0], [1e-30, 1e30], [3.0, 3.0], [0.0, 0.0]])
    policy = EDRPolicy(2, 4, lam=1.0)
    for lg in (logits, onehot):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            lg_t = lg.clamp(-6e4, 6e4).to(dtype) if dtype != torch.float32 else lg
            d_t = dists.clamp(max=6e4).to(dtype) if dtype != torch.float32 else dists
            h = normalized_entropy(lg_t)
            dr = distance_ratio(d_t, lg_t)
            score = policy.score(1, {"logits": lg_t, "proto_dist": d_t})
            for t in (h, dr, score):
                assert t.dtype == torch.float32
                assert torch.isfinite(t).all(), (dtype, t)
                assert ((t >= 0) & (t <= 1)).all()
            assert h[0].item() == pytest.approx(0.0, abs=1e-3) and h[3].item() == pytest.approx(1.0, abs=1e-3)
            assert score[0].item() == pytest.approx(0.0, abs=1e-3)  # zero entropy: confident


def test_fused_edr_score_equals_the_three_step_definition():
    """The policy's one-pass `edr_score` is EDR(normalized entropy, DR), including the edge cases:
    zero and equal distances, infinite distances and logits, one-hot and uniform outputs."""
    g = torch.Generator().manual_seed(5)
    inf = float("inf")
    for c in (2, 3, 5):
        logits = torch.randn(400, c, generator=g) * torch.logspace(-3, 4, 400)[:, None]
        dists = torch.rand(400, c, generator=g) * torch.logspace(-8, 8, 400)[:, None]
        dists[:30] = 0.0
        dists[30:60, 0] = dists[30:60, 1]
        dists[60:70, 0] = inf
        dists[70:80] = inf
        logits[80:90, 0] = inf
        logits[90:100] = 0.0
        h, dr = normalized_entropy(logits), distance_ratio(dists, logits)
        for lam in (0.25, 1.0, 4.0):
            fused = edr_score(logits, dists, lam)
            torch.testing.assert_close(fused, edr(h, dr, lam), atol=2e-6, rtol=1e-5)
    assert edr_score(torch.zeros(1, 2), torch.ones(1, 2), 1.0).item() == pytest.approx(2 / 3)


def test_edr_policy_indicators_and_exits():
    # [L=3, N=2, C=2]: sample 0 is fairly sure with DR 1/6; sample 1 is uniform with DR 1/2
    logits = torch.tensor([[[0.0, -2.0], [0.0, 0.0]]] * 3)
    dists = torch.tensor([[[1.0, 3.0], [3.0, 3.0]]] * 3)
    rec = {"logits": logits, "proto_dist": dists, "labels": torch.zeros(2, dtype=torch.long)}
    h = normalized_entropy(logits[0])
    dr = distance_ratio(dists[0], logits[0])
    for name, expected in [("de3", edr(h, dr, 1.0)), ("de3-entropy", h), ("de3-dr", dr),
                           ("de3-lambda4", edr(h, dr, 4.0))]:
        pol = get_method(name).make_policy(2, 3)
        score = pol.score(1, {"logits": logits[0], "proto_dist": dists[0]})
        torch.testing.assert_close(score, expected)
        s0 = score[0].item()
        assert pol.replay(rec, [s0 + 1e-4]).tolist()[0][0] == 1
        assert pol.replay(rec, [s0 - 1e-4]).tolist()[0][0] == 3
    # sample 1 (DR = 0.5 but entropy 1): EDR = 2·0.5·1/1.5 = 2/3
    assert get_method("de3").make_policy(2, 3).score(1, {"logits": logits[0], "proto_dist": dists[0]})[1] \
        .item() == pytest.approx(2 / 3)
    assert EDRPolicy.needs == ("logits", "proto_dist")
    with pytest.raises(ValueError, match="lam"):
        EDRPolicy(2, 3, lam=-1.0)
    with pytest.raises(ValueError, match="lam"):
        EDRPolicy(2, 3, lam=math.nan)
    with pytest.raises(ValueError, match="edr, dr, entropy"):
        EDRPolicy(2, 3, indicator="margin")


# ---- DAR and the loss ---------------------------------------------------------------------------


def test_dar_hand_computed():
    d = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.5, 3.0]])
    y = torch.tensor([0, 1, 1])
    proto = dar_loss(d, y, "protonet", 1.0, 1.0).item()
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1)) + math.log(1 + math.exp(2.5))) / 3
    assert proto == pytest.approx(expected, rel=1e-5)
    assert dar_loss(d, y, "protonet", 2.0, 1.0).item() == pytest.approx(
        F.cross_entropy(-d / 2, y).item(), rel=1e-6)
    # margin: mean max(0, μ + d_own − min_other d)
    assert dar_loss(d, y, "margin", 1.0, 1.0).item() == pytest.approx((0 + 2 + 3.5) / 3)
    with pytest.raises(ValueError, match="protonet, margin"):
        dar_loss(d, y, "triplet", 1.0, 1.0)


def test_de3_loss_is_the_weighted_sum():
    g = torch.Generator().manual_seed(0)
    signals = [{"logits": torch.randn(6, 3, generator=g), "_z": torch.randn(6, 5, generator=g)}
               for _ in range(4)]
    protos = torch.randn(4, 3, 5, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    meta = {**asdict(De3Options()), "beta": 0.5, "layer_weights": "linear"}
    heads = SimpleNamespace(proto_set=torch.ones(4, 3, dtype=torch.bool), prototypes=protos,
                            has_protos=lambda layer: True)
    model = SimpleNamespace(meta=meta, heads=heads)

    def dar(m: int, squared: bool = True) -> torch.Tensor:
        d = torch.cdist(signals[m]["_z"], protos[m])  # the default is Snell et al.'s squared distance
        return F.cross_entropy(-(d**2 if squared else d), y)

    terms = [F.cross_entropy(s["logits"], y) + 0.5 * dar(m) for m, s in enumerate(signals)]
    expected = sum((m + 1) * t for m, t in enumerate(terms)) / 10
    assert de3_loss(model, signals, y, 0).item() == pytest.approx(expected.item(), rel=1e-5)
    # the v2 reconstruction: plain Euclidean distances, temperature 2
    model.meta = {**meta, "dar_distance": "euclidean", "dar_temperature": 2.0}
    v2 = [F.cross_entropy(s["logits"], y) + 0.5 * F.cross_entropy(
        -torch.cdist(s["_z"], protos[m]) / 2, y) for m, s in enumerate(signals)]
    assert de3_loss(model, signals, y, 0).item() == pytest.approx(
        (sum((m + 1) * t for m, t in enumerate(v2)) / 10).item(), rel=1e-5)
    model.meta = meta
    # unset prototypes at a layer: that layer has no DAR term
    model.heads.proto_set[1, 2] = False
    terms[1] = F.cross_entropy(signals[1]["logits"], y)
    expected = sum((m + 1) * t for m, t in enumerate(terms)) / 10
    assert de3_loss(model, signals, y, 0).item() == pytest.approx(expected.item(), rel=1e-5)
    # uniform layer weights
    model.meta = {**meta, "layer_weights": "uniform", "beta": 0.0}
    expected = sum(F.cross_entropy(s["logits"], y) for s in signals) / 4
    assert de3_loss(model, signals, y, 0).item() == pytest.approx(expected.item(), rel=1e-6)


def _dar_gradients(tiny_encoder, synthetic_loader, through: str) -> dict[str, bool]:
    """Which parts get a gradient from the DAR term alone (β·DAR with the CE terms removed)."""
    torch.manual_seed(0)
    model = get_recipe("de3").build(tiny_encoder(seed=1), {"num_labels": 2, "pooling": "mean",
                                                            "dar_through": through})
    batch = next(iter(synthetic_loader(16)))
    model.train()
    signals = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    model.heads.after_step(signals, batch["labels"])  # sets the prototypes
    signals = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    de3_loss(model, [{**s, "logits": s["logits"].detach()} for s in signals], batch["labels"], 0).backward()

    def touched(params) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)

    heads = model.heads
    return {"encoder": touched(model.encoder.parameters()),
            "shared_pooler": touched(heads.pooler(1).parameters()),
            "projection": touched(heads.projections.parameters()),
            "own_pooler": heads.proto_pooler is not None and touched(heads.proto_pooler.parameters())}


@pytest.mark.parametrize("through, expected", [
    ("all", {"encoder": True, "shared_pooler": True, "projection": True, "own_pooler": False}),
    ("projection", {"encoder": False, "shared_pooler": False, "projection": True, "own_pooler": False}),
    ("own_pooler", {"encoder": True, "shared_pooler": False, "projection": True, "own_pooler": True}),
])
def test_dar_through_decides_where_the_dar_gradient_goes(tiny_encoder, synthetic_loader, through, expected):
    """Issue 25: DAR through the shared pooler reshaped what every classifier reads; `projection`
    and `own_pooler` keep its gradient away from the shared pooler."""
    assert _dar_gradients(tiny_encoder, synthetic_loader, through) == expected


def test_bad_dar_options_fail_before_training(tiny_encoder):
    build = get_recipe("de3").build
    meta = {"num_labels": 2, "pooling": "mean"}
    with pytest.raises(ValueError, match="dar_distance='manhatan' is not one of: squared, euclidean, cosine"):
        build(tiny_encoder(), {**meta, "dar_distance": "manhatan"})
    with pytest.raises(ValueError, match="dar_through='pooler' is not one of: all, projection, own_pooler"):
        build(tiny_encoder(), {**meta, "dar_through": "pooler"})
    with pytest.raises(ValueError, match="dar_temperature=0.0 must be > 0"):
        get_recipe("de3").parse_options({"dar_temperature": 0})
    with pytest.raises(ValueError, match="did you mean 'dar_through'"):
        get_recipe("de3").parse_options({"dar_thru": "all"})
    with pytest.raises(ValueError, match="protonet"):
        get_recipe("de3").parse_options({"dar_through": "projection", "protonet": False})


def test_pairwise_distance():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    p = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    torch.testing.assert_close(pairwise_distance(z, p), torch.cdist(z, p), atol=1e-5, rtol=0)
    cos = pairwise_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]]), "cosine")
    torch.testing.assert_close(cos, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="euclidean, cosine"):
        pairwise_distance(z, p, "manhattan")


# ---- prototypes: EMA, data-parallel sync, recompute ---------------------------------------------


def _heads(num_labels: int = 3, dim: int = 4, layers: int = 2, gamma: float = 0.1) -> PrototypeHeads:
    fake_encoder = SimpleNamespace(hidden_size=dim, num_layers=layers, pooler=None)
    return PrototypeHeads(fake_encoder, num_labels, "mean", gamma=gamma)


def test_ema_update_toy_batch():
    heads = _heads(gamma=0.1)
    z1 = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 2.0, 0, 0]])
    y1 = torch.tensor([0, 0, 1])
    heads.ema_update([z1, 2 * z1], y1)
    assert heads.proto_set.tolist() == [[True, True, False]] * 2
    # unset prototypes take the first batch mean; an absent class stays unset (zeros)
    torch.testing.assert_close(heads.prototypes[0], torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0.0] * 4]))
    torch.testing.assert_close(heads.prototypes[1], 2 * heads.prototypes[0])
    z2 = torch.tensor([[0, 0, 10.0, 0], [0, 0, 0, 5.0], [0, 0, 0, 7.0]])
    y2 = torch.tensor([0, 2, 2])
    heads.ema_update([z2, z2], y2)
    assert heads.proto_set.all()
    expected0 = 0.9 * torch.tensor([2.0, 0, 0, 0]) + 0.1 * torch.tensor([0, 0, 10.0, 0])
    torch.testing.assert_close(heads.prototypes[0, 0], expected0)
    torch.testing.assert_close(heads.prototypes[0, 1], torch.tensor([0, 2.0, 0, 0]))  # absent: unchanged
    torch.testing.assert_close(heads.prototypes[0, 2], torch.tensor([0, 0, 0, 6.0]))  # fresh: the mean
    # γ = 1 replaces a present class by its batch mean
    one = _heads(gamma=1.0)
    one.ema_update([z1, z1], y1)
    one.ema_update([z2, z2], y2)
    torch.testing.assert_close(one.prototypes[0, 0], torch.tensor([0, 0, 10.0, 0]))
    with pytest.raises(ValueError, match="gamma"):
        _heads(gamma=0.0)


def _ddp_batches():
    g = torch.Generator().manual_seed(3)
    z = [torch.randn(10, 4, generator=g) for _ in range(2)]  # per layer, 10 samples
    y = torch.tensor([0, 0, 1, 2, 1, 0, 1, 1, 0, 1])  # rank 0 has no class 2 after the split below
    # rank 0: rows 0..2 and 4; rank 1: the rest (class 2 only on rank 1)
    parts = [torch.tensor([0, 1, 2, 4]), torch.tensor([3, 5, 6, 7, 8, 9])]
    return z, y, parts


def _initial(heads: PrototypeHeads) -> None:
    with torch.no_grad():
        heads.prototypes[:, 1] = torch.arange(8.0).reshape(2, 4)  # class 1 already set
        heads.proto_set[:, 1] = True


def _ddp_worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        heads = _heads()
        _initial(heads)
        z, y, parts = _ddp_batches()
        mine = parts[rank]
        heads.ema_update([zl[mine] for zl in z], y[mine])
        torch.save({"prototypes": heads.prototypes.clone(), "proto_set": heads.proto_set.clone()},
                   Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_prototype_sync_across_data_parallel_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _heads()
    _initial(single)
    z, y, _ = _ddp_batches()
    single.ema_update(z, y)
    for res in results:
        torch.testing.assert_close(res["prototypes"], single.prototypes, atol=1e-6, rtol=0)
        assert torch.equal(res["proto_set"], single.proto_set)
    assert single.proto_set.all()
    # without the all-reduce, rank 0 would not have seen class 2 at all
    alone = _heads()
    _initial(alone)
    alone.ema_update([zl[_ddp_batches()[2][0]] for zl in z], y[_ddp_batches()[2][0]])
    assert not alone.proto_set[:, 2].any()


@pytest.fixture
def de3_model(tiny_encoder, synthetic_loader):
    model = get_recipe("de3").build(tiny_encoder(seed=3), {"num_labels": 2, "pooling": "mean",
                                                            "backbone": "tiny"})
    model.heads.recompute(model, synthetic_loader(32))
    with torch.no_grad():
        model.heads.prototypes.add_(torch.randn(model.heads.prototypes.shape))
    return model.eval()


def test_recompute_gives_exact_class_means(de3_model, synthetic_loader):
    heads = de3_model.heads
    heads.recompute(de3_model, synthetic_loader(16))
    sums = torch.zeros_like(heads.prototypes)
    counts = torch.zeros(heads.prototypes.shape[:2])
    with torch.no_grad():
        for batch in synthetic_loader(64):
            hidden, mask = de3_model.encoder.embed(batch["input_ids"], batch["attention_mask"],
                                                   batch["token_type_ids"])
            for i in range(de3_model.num_layers):
                hidden = de3_model.encoder.layer(i, hidden, mask)
                if not heads.has_protos(i + 1):  # no prototypes at layer L (default)
                    sums[i], counts[i] = heads.prototypes[i], 1
                    continue
                z = heads.projections[i](heads.pooled(i + 1, hidden, batch["attention_mask"]))
                for c in range(2):
                    sums[i, c] += z[batch["labels"] == c].sum(0)
                    counts[i, c] += (batch["labels"] == c).sum()
    torch.testing.assert_close(heads.prototypes, sums / counts[..., None], atol=1e-5, rtol=1e-5)
    assert heads.proto_set[:-1].all() and not heads.proto_set[-1].any()
    assert not de3_model.training


def test_save_load_round_trip(de3_model, synthetic_loader, tmp_path):
    de3_model.save(tmp_path / "m")
    loaded = MultiExitModel.load(tmp_path / "m")
    assert loaded.meta == de3_model.meta
    assert loaded.meta["recipe"] == "de3" and loaded.meta["beta"] == 1.0
    assert isinstance(loaded.heads, PrototypeHeads)
    assert torch.equal(loaded.heads.prototypes, de3_model.heads.prototypes)
    assert torch.equal(loaded.heads.proto_set, de3_model.heads.proto_set)
    a = engine.record_signals(de3_model, synthetic_loader(32), progress=False)
    b = engine.record_signals(loaded, synthetic_loader(32), progress=False)
    assert set(a) == {"logits", "proto_dist", "labels"}
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    # the eager copy (for FLOP counting) computes the same signals
    eager = MultiExitModel.load(tmp_path / "m", attn_implementation="eager")
    c = engine.record_signals(eager, synthetic_loader(32), progress=False)
    torch.testing.assert_close(c["proto_dist"], a["proto_dist"], atol=1e-4, rtol=1e-4)


def test_ablation_recipes():
    from transformers import BertConfig, BertModel

    from de3bert.backbone import LayerwiseEncoder

    enc = LayerwiseEncoder(BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=32)))
    nodar = get_recipe("de3-nodar").build(enc, {"num_labels": 2, "pooling": "mean"})
    assert nodar.meta["beta"] == 0.0 and nodar.meta["recipe"] == "de3-nodar"
    noproto = get_recipe("de3-noproto").build(enc, {"num_labels": 2, "pooling": "mean"})
    assert all(isinstance(p, torch.nn.Identity) for p in noproto.heads.projections)
    assert noproto.heads.prototypes.shape == (2, 2, 16)
    small = get_recipe("de3").build(enc, {"num_labels": 3, "pooling": "mean", "proto_dim": 8,
                                          "distance": "cosine"})
    assert small.heads.prototypes.shape == (2, 3, 8) and small.heads.distance == "cosine"


def test_regression_is_refused(tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match="regression"):
        get_recipe("de3").build(tiny_encoder(), {"num_labels": 1, "pooling": "mean"})
    with pytest.raises(ValueError, match="regression"):
        EDRPolicy(1, 4)
    ok, why = get_method("de3").supports(1)
    assert not ok and "classification-only" in why
    from de3bert.train import TrainConfig, train

    with pytest.raises(ValueError, match="does not support regression"):
        train(TrainConfig(task="stsb", recipe="de3", out_dir=str(tmp_path / "run"), progress=False))


def test_de3_loss_finite_and_decreases(tiny_encoder, synthetic_loader):
    torch.manual_seed(0)
    model = get_recipe("de3").build(tiny_encoder(seed=1), {"num_labels": 2, "pooling": "mean"})
    stage = get_recipe("de3").stages()[0]
    opt = torch.optim.AdamW(stage.trainable(model), lr=3e-3)
    batch = next(iter(synthetic_loader(64)))
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = stage.loss(model, model(*args), batch["labels"], 0).item()
        model.train()
        return value

    model.train()
    losses = []
    for step in range(12):
        signals = model(*args)
        assert all("_z" in s for s in signals[:-1]) and "_z" not in signals[-1]
        loss = stage.loss(model, signals, batch["labels"], step)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.heads.after_step(signals, batch["labels"])
        if step == 0:
            assert model.heads.proto_set[:-1].all()  # the first batch sets every prototype
            assert not model.heads.proto_set[-1].any()  # layer L has none (default)
            start = eval_loss()  # now with the DAR term
        losses.append(loss.item())
    end = eval_loss()
    assert math.isfinite(start) and math.isfinite(end)
    assert end < 0.8 * start, (start, end, losses)
    # gradients reached the projections through DAR
    assert model.heads.projections[0].weight.grad is not None
    assert model.heads.projections[0].weight.grad.abs().sum() > 0
