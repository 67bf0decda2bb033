"""Fidelity to the authors' code (issue 16): Past-Future's training as in lancopku/Early-Exit,
equal off-ramp capacity under cls and mean pooling, static BERT-kL, `train_settings`, and DE³'s
defaults from the closest evidence. Tiny random BERT, no data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from baselines.past_future import PastFutureOptions, future_loss  # noqa: E402
from de3bert.backbone import LayerwiseEncoder  # noqa: E402
from de3bert.de3 import De3Options, de3_loss  # noqa: E402
from de3bert.recipes import get_recipe, settings_for  # noqa: E402
from de3bert.registry import METHODS, get_method  # noqa: E402

L, H, C = 4, 32, 2


def _encoder(seed: int = 0, dropout: float = 0.1) -> LayerwiseEncoder:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                     intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return LayerwiseEncoder(BertModel(cfg))


def build(recipe: str, pooling: str = "mean", seed: int = 0, dropout: float = 0.1, **options):
    meta = {"backbone": "tiny", "num_labels": C, "pooling": pooling, **options}
    return get_recipe(recipe).build(_encoder(seed, dropout), meta)


def _batch(n: int = 6, t: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, t), generator=g)
    return ids, torch.ones(n, t, dtype=torch.long), torch.randint(0, C, (n,), generator=g)


def _head_params(model) -> int:
    """Parameters the heads own (the backbone's pooler counts when a head uses it)."""
    own = sum(p.numel() for p in model.heads.parameters())
    shared = getattr(model.heads, "_shared", [None])[0]
    used_backbone = shared is not None and getattr(model.heads, "shared_pooler", None) is None
    return own + (sum(p.numel() for p in shared.parameters()) if used_backbone else 0)


# ---- (2) equal head capacity ----------------------------------------------------------------------
DENSE = H * H + H  # a pooler: dense H→H + tanh
CLF = H * C + C    # a linear classifier
CAPACITY = {  # recipe: parameters of its exit heads on BERT (pooler-like dense+tanh, then linear)
    "weighted": DENSE + L * CLF,            # PABEE / PCEE / max-prob / fixed-exit: one shared pooler
    "two-stage": L * (DENSE + CLF),         # DeeBERT: own pooler per off-ramp
    "alternate-lte": L * (DENSE + CLF) + H + 1,  # BERxiT: DeeBERT's off-ramps + the LTE unit
    "single": DENSE + L * CLF,
    "static-kl2": DENSE + L * CLF,
}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("recipe", sorted(CAPACITY))
def test_head_capacity_is_the_same_under_cls_and_mean(recipe, pooling):
    model = build(recipe, pooling)
    assert _head_params(model) == CAPACITY[recipe]
    heads = model.heads
    for layer in range(1, L + 1):  # every off-ramp: a dense + tanh, then dropout + linear
        pooler = heads.pooler(layer)
        assert sum(isinstance(m, nn.Linear) for m in pooler.modules()) == 1
        assert any(isinstance(m, nn.Tanh) for m in pooler.modules())
    shared = heads.poolers is None
    assert shared == (recipe not in ("two-stage", "alternate-lte"))
    ids, mask, _ = _batch()
    with torch.no_grad():
        h = heads.pooled(1, model.encoder.layer(0, *model.encoder.embed(ids, mask, None)), mask)
    assert h.abs().max() <= 1.0  # tanh output under both poolings


def test_mean_pooling_applies_the_dense_to_the_mean():
    model = build("weighted", "mean").eval()
    heads = model.heads
    hidden, mask = torch.randn(3, 5, H), torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1, 0, 0, 0, 0]])
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    dense = heads.shared_pooler[0]
    want = heads.classifiers[1](torch.tanh(dense(mean)))
    assert torch.allclose(heads.forward_layer(2, hidden, mask, {})["logits"], want, atol=1e-6)


def test_past_future_and_de3_capacity():
    pf = build("past-future", "mean")
    assert sum(isinstance(m, nn.Tanh) for m in pf.heads.poolers.modules()) == L  # a pooler per layer
    de3 = build("de3", "mean")
    assert de3.heads.shared_pooler is not None and len(de3.heads.projections) == L - 1


# ---- (1) Past-Future as in lancopku/Early-Exit ---------------------------------------------------
def test_past_future_defaults_are_the_originals():
    o = PastFutureOptions()
    assert (o.detach_past, o.gate, o.pooler_init, o.cosine, o.dropout_masks, o.init) == \
        (True, "linear", "random", "per_layer", "per_layer", "bert")
    heads = build("past-future", "cls").heads
    assert isinstance(heads.gate_proj, nn.Linear) and heads.gate_proj.bias is not None
    assert heads.gate_proj.weight.shape == (C, C)
    enc = _encoder()
    assert not torch.equal(heads.poolers[0][0].weight, enc.pooler.dense.weight)  # random, not copied
    assert heads.future_weight.std().item() == pytest.approx(0.02, rel=0.1)  # N(0, 0.02)
    old = build("past-future", "cls", pooler_init="pretrained", gate="vector").heads
    assert torch.equal(old.poolers[0].dense.weight, enc.pooler.dense.weight) and old.gate_proj is None


@pytest.mark.parametrize("detach", [True, False])
def test_past_features_are_detached(detach):
    """Layer 3's logits send no gradient into layer 1's pooled feature (original: all_pool[-1].detach())."""
    model = build("past-future", detach_past=detach, freeze_lower=0)
    model.train()
    model.heads.dropout.p = 0.0
    ids, mask, _ = _batch()
    sig = model(ids, mask)
    g1 = torch.autograd.grad(sig[2]["logits"].sum(), sig[0]["_pooled"], allow_unused=True,
                             retain_graph=True)[0]
    assert (g1 is None or not g1.any()) == detach
    g3 = torch.autograd.grad(sig[2]["logits"].sum(), sig[2]["_pooled"])[0]
    assert g3.abs().sum() > 0  # the current layer's own feature keeps its gradient


def test_training_logits_equal_inference_without_dropout():
    model = build("past-future", dropout=0.0, freeze_lower=0)
    model.heads.dropout.p = 0.0
    ids, mask, _ = _batch()
    model.train()
    with torch.no_grad():
        train = [s["logits"] for s in model(ids, mask)]
    model.eval()
    with torch.no_grad():
        infer = [s["logits"] for s in model(ids, mask)]
    for a, b in zip(train, infer, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_fresh_dropout_mask_per_layer():
    """per_layer (original): the stored past features are undropped and each layer drops every
    slot anew; per_slot: the stored feature is the dropped one, reused by later layers."""
    for mode in ("per_layer", "per_slot"):
        model = build("past-future", dropout_masks=mode, detach_past=True)
        model.train()
        heads = model.heads
        state = heads.init_state(4, torch.device("cpu"))
        torch.manual_seed(0)
        h, mask = torch.randn(4, 5, H), torch.ones(4, 5, dtype=torch.long)
        pooled = heads.forward_layer(1, h, mask, state)["_pooled"]
        assert torch.equal(state["hist"][:, 0], pooled) == (mode == "per_layer")
        seen = []
        orig = heads.drop
        heads.drop = lambda x, _o=orig, _seen=seen: _seen.append(x.shape) or _o(x)
        heads.forward_layer(2, h, mask, state)
        heads.drop = orig
        slots = [s for s in seen if len(s) == 3 and s[1] == 2]
        assert bool(slots) == (mode == "per_layer")  # both slots dropped together, a new mask


def test_cosine_loss_averages_per_source_layer_first():
    g = torch.Generator().manual_seed(0)
    sig = [{"_pooled": torch.randn(3, H, generator=g),
            "_future": torch.randn(3, L - 1 - i, H, generator=g)} for i in range(L)]
    per_source = []
    for i in range(L - 1):
        a = sig[i]["_future"].reshape(-1, H)
        b = torch.stack([sig[j]["_pooled"] for j in range(i + 1, L)], 1).reshape(-1, H)
        per_source.append(F.cosine_embedding_loss(b, a, torch.ones(a.shape[0])))  # the original's call
    want = torch.stack(per_source).mean()
    assert future_loss(sig).item() == pytest.approx(want.item(), rel=1e-5)
    flat = torch.cat([1 - F.cosine_similarity(sig[i]["_future"], torch.stack(
        [sig[j]["_pooled"] for j in range(i + 1, L)], 1), dim=-1) for i in range(L - 1)], 1).mean()
    assert future_loss(sig, "flat").item() == pytest.approx(flat.item(), rel=1e-5)
    assert abs(want.item() - flat.item()) > 1e-4  # the two differ: the test can tell them apart


def test_gradual_unfreezing_of_the_lower_layers():
    """freeze_lower = k: at step 0 (progress 0) the bottom k layers get no gradient; once the
    schedule is over (progress 1) they do."""
    model = build("past-future", freeze_lower=2, unfreeze_steps=10)
    model.train()
    ids, mask, y = _batch()
    params = [p for n, p in model.named_parameters() if "encoder.layer.1." in n]
    assert params

    def grads():
        model.zero_grad()
        sig = model(ids, mask)
        (sum(F.cross_entropy(s["logits"], y) for s in sig)).backward()
        return sum(p.grad.abs().sum().item() if p.grad is not None else 0.0 for p in params)

    assert grads() == 0.0  # step 0: blocked with probability 1
    model.heads.steps_seen.fill_(10)
    assert grads() > 0.0  # end of the schedule: never blocked


def test_gpfee_k_per_task_and_the_step_count():
    rec = get_recipe("past-future")
    assert rec.task_options("rte", lambda: 8) == {"freeze_lower": 1, "unfreeze_steps": 8}
    assert rec.task_options("mnli", lambda: 8)["freeze_lower"] == 3
    assert rec.task_options("mrpc", lambda: 8)["freeze_lower"] == 2
    assert rec.task_options("cola", lambda: 8) == {"unfreeze_steps": 8}  # not in finetune_all.sh


# ---- (3) static-kl and fixed-exit -----------------------------------------------------------------
def test_static_kl_trains_only_k_layers():
    model = build("static-kl2")
    model.train()
    ids, mask, y = _batch()
    sig = model(ids, mask)
    assert len(sig) == 2  # training stops at layer k
    (stage,) = get_recipe("static-kl2").stages()
    stage.loss(model, sig, y, 0).backward()
    upper = [p for n, p in model.named_parameters() if "encoder.layer.2." in n or "encoder.layer.3." in n]
    assert upper and all(p.grad is None for p in upper)
    assert model.heads.classifiers[1].weight.grad.abs().sum() > 0
    model.eval()
    assert len(model(ids, mask)) == L  # the record runs every layer
    policy = get_method("static-kl2").make_policy(C, L)
    assert policy.grid() == [2]
    rec = {"labels": torch.zeros(5, dtype=torch.long)}
    assert policy.replay(rec, [2]).unique().tolist() == [2]


def test_methods_renamed_and_registered():
    names = METHODS.names()
    assert "fixed-exit" in names and "static" not in names
    assert {"static-kl2", "static-kl3", "static-kl4"} <= set(names)
    assert get_method("fixed-exit").recipe == "weighted"
    assert {get_method(f"static-kl{k}").recipe for k in (2, 3, 4)} == {f"static-kl{k}" for k in (2, 3, 4)}


# ---- (4) train_settings ---------------------------------------------------------------------------
def test_train_settings_equal_is_default_and_original_is_the_table():
    for recipe in ("weighted", "two-stage", "alternate-lte", "past-future", "de3", "self-distill"):
        assert settings_for(get_recipe(recipe), "mrpc", "equal") == ({}, {})
    applied, missing = settings_for(get_recipe("two-stage"), "mrpc", "original")
    assert applied == {"batch_size": 8, "lr": 2e-5, "epochs": 3.0, "warmup_ratio": 0.0, "weight_decay": 0.0,
                       "max_grad_norm": 1.0,  # clipping now has a TrainConfig field
                       "regression_bias": "zero"}  # the originals' (HF) output init
    assert missing["checkpoint"] == "last"
    applied, missing = settings_for(get_recipe("weighted"), "rte", "original")
    assert applied["epochs"] == 5.0 and applied["batch_size"] == 32 and missing["checkpoint"] == "best dev"
    applied, _ = settings_for(get_recipe("past-future"), "sst2", "original")
    assert (applied["batch_size"], applied["lr"], applied["epochs"]) == (16, 1e-5, 5.0)
    applied, _ = settings_for(get_recipe("past-future"), "qqp", "original")
    assert (applied["batch_size"], applied["lr"]) == (128, 5e-5)  # 32 × 4 accumulation
    with pytest.raises(ValueError, match="equal, original"):
        settings_for(get_recipe("weighted"), "rte", "best")
    from de3bert.train import TrainConfig
    fields = set(TrainConfig.__dataclass_fields__)
    for recipe in ("weighted", "two-stage", "alternate-lte", "past-future", "static-kl3"):
        assert set(settings_for(get_recipe(recipe), "rte", "original")[0]) <= fields


def test_profile_train_settings_reach_the_train_config():
    from benchmarks.profiles import Profile

    p = Profile(name="t", train={"batch_size": 32, "lr": 1e-4, "epochs": 1}, train_settings="original")
    cfg, info = p.recipe_train("synthetic", "two-stage", 0)
    assert (cfg["batch_size"], cfg["lr"], cfg["epochs"]) == (8, 2e-5, 3.0)
    assert info["train_settings"] == "original" and cfg["max_grad_norm"] == 1.0
    assert "max_grad_norm" not in info["not_applied"]
    eq = Profile(name="t", train={"batch_size": 32, "lr": 1e-4, "epochs": 1})
    cfg, info = eq.recipe_train("synthetic", "two-stage", 0)
    assert (cfg["batch_size"], cfg["lr"]) == (32, 1e-4) and info["train_settings"] == "equal"
    cfg, _ = eq.recipe_train("synthetic", "past-future", 0)
    assert cfg["head_options"]["unfreeze_steps"] > 0  # the run's step count reaches the schedule
    with pytest.raises(ValueError, match="train_settings"):
        Profile(name="t", train_settings="paper").recipe_train("synthetic", "weighted", 0)


# ---- (5) DE³ defaults ------------------------------------------------------------------------------
def test_de3_defaults_from_the_closest_evidence():
    o = De3Options()
    assert (o.layer_weights, o.recompute_prototypes, o.proto_last_layer) == ("uniform", False, False)
    model = build("de3")
    assert len(model.heads.projections) == L - 1 and model.meta["layer_weights"] == "uniform"
    old = build("de3-v1defaults")
    assert len(old.heads.projections) == L
    assert (old.meta["layer_weights"], old.meta["recompute_prototypes"]) == ("linear", True)
    assert get_method("de3-v1defaults").ablation_of == "de3"
    nodar = build("de3-nodar", beta=1.0)  # an ablation's override wins over the default options
    assert nodar.meta["beta"] == 0.0


def test_de3_no_dar_at_the_last_layer():
    model = build("de3")
    model.heads.proto_set.fill_(True)
    g = torch.Generator().manual_seed(0)
    sig = [{"logits": torch.randn(6, C, generator=g), "proto_dist": torch.rand(6, C, generator=g)}
           for _ in range(L)]
    y = torch.randint(0, C, (6,), generator=g)
    # an eval pass carries the indicator's Euclidean `proto_dist`; DAR squares it (its default)
    terms = [F.cross_entropy(s["logits"], y) + (F.cross_entropy(-s["proto_dist"] ** 2, y) if m < L - 1 else 0)
             for m, s in enumerate(sig)]
    assert de3_loss(model, sig, y, 0).item() == pytest.approx((sum(terms) / L).item(), rel=1e-6)
    ids, mask, _ = _batch()
    model.train()
    out = model(ids, mask)
    assert "_z" not in out[-1] and "_z" in out[0]
    assert not out[-1]["proto_dist"].any()
