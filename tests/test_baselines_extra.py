"""FastBERT, BERxiT and Past-Future (GPFEE): exit rules, replay = live, batch-N = batch-1,
what each training stage updates, and FLOPs visible to FlopCounterMode. Tiny random BERT."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from baselines.berxit import LtePolicy, lte_targets  # noqa: E402
from baselines.fastbert import FastBertPolicy  # noqa: E402
from baselines.past_future import PastFutureEntropyPolicy, future_loss  # noqa: E402
from de3bert.backbone import LayerwiseEncoder  # noqa: E402
from de3bert.data import make_loader  # noqa: E402
from de3bert.engine import record_signals, run_live  # noqa: E402
from de3bert.policy import entropy, normalized_entropy  # noqa: E402
from de3bert.recipes import get_recipe  # noqa: E402
from de3bert.registry import get_method  # noqa: E402

L = 4
# A random BERT's [CLS] state barely depends on the input; mean pooling gives heads spread to test
POOL = "mean"


def _encoder(seed: int = 0, attn: str = "sdpa") -> LayerwiseEncoder:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=L, num_attention_heads=4,
                     intermediate_size=64, attn_implementation=attn)
    return LayerwiseEncoder(BertModel(cfg))


def build(recipe: str, num_labels: int = 2, seed: int = 0, attn: str = "sdpa", pooling: str = POOL):
    meta = {"backbone": "tiny", "num_labels": num_labels, "pooling": pooling, "attn_implementation": attn}
    return get_recipe(recipe).build(_encoder(seed, attn), meta)


@pytest.fixture
def dataset(synthetic_dataset):
    """The first 64 synthetic dev examples (conftest)."""
    return synthetic_dataset


# ---- (a) exit rules on hand-made signals --------------------------------------------------------
def _logits(rows: list[list[list[float]]]) -> torch.Tensor:
    """rows[sample][layer] = logits -> record layout [L, N, C]."""
    return torch.tensor(rows, dtype=torch.float).transpose(0, 1).contiguous()


HAND_LOGITS = _logits([
    [[0, 0], [0, 0], [0, 0], [0, 0]],          # uniform everywhere
    [[0, 0], [200, -200], [0, 0], [0, 0]],     # one-hot (entropy exactly 0) at layer 2
    [[1, 0], [3, 0], [0, 0], [0, 0]],          # H = .58 then .19 nats
])


def test_fastbert_rule_is_le_speed():
    pol = FastBertPolicy(2, L)
    rec = {"logits": HAND_LOGITS, "labels": torch.zeros(3, dtype=torch.long)}
    tie = normalized_entropy(torch.tensor([[3.0, 0.0]])).item()
    got = pol.replay(rec, [0.0, 0.5, tie, 1.0])
    assert got.tolist() == [[4, 2, 4],   # speed 0: only a zero-entropy layer exits (≤)
                            [4, 2, 2],
                            [4, 2, 2],   # H_n == speed exits
                            [1, 1, 1]]   # speed 1 exits everything at layer 1 (uniform ties too)
    with pytest.raises(ValueError, match="out of range"):
        pol.replay(rec, [1.5])


def test_berxit_rule_is_lt_theta():
    lte = torch.tensor([[0.5, 0.5, 0.5, 0.0], [0.9, 0.3, 0.1, 0.0], [0.0, 1.0, 1.0, 1.0],
                        [1.0, 1.0, 1.0, 1.0]]).T.contiguous()
    rec = {"logits": torch.zeros(L, 4, 2), "lte": lte, "labels": torch.zeros(4, dtype=torch.long)}
    got = LtePolicy(2, L).replay(rec, [0.0, 0.5, 1.0])
    assert got.tolist() == [[4, 4, 4, 4],   # θ = 0 never exits (u ≥ 0, strict)
                            [4, 2, 1, 4],   # u == θ does not exit
                            [1, 1, 1, 4]]   # θ = 1 exits unless u saturates at 1
    reg = {"logits": torch.zeros(L, 4, 1), "lte": lte, "labels": torch.zeros(4)}
    assert LtePolicy(1, L).replay(reg, [0.5]).tolist() == [[4, 2, 1, 4]]


def test_past_future_rule_is_lt_s():
    pol = PastFutureEntropyPolicy(2, L)
    rec = {"logits": HAND_LOGITS, "labels": torch.zeros(3, dtype=torch.long)}
    tie = entropy(torch.zeros(1, 2)).item()
    got = pol.replay(rec, [0.0, 0.4, tie, math.inf])
    assert got.tolist() == [[4, 4, 4],   # S = 0 never exits (H ≥ 0, strict), even at H = 0
                            [4, 2, 2],
                            [4, 2, 1],   # H == S (uniform) does not exit
                            [1, 1, 1]]
    assert pol.grid()[-1] == pytest.approx(math.log(2))


def test_classification_only_errors():
    for pol in (FastBertPolicy, PastFutureEntropyPolicy):
        with pytest.raises(ValueError, match="regression"):
            pol(1, L)
    for recipe in ("self-distill", "past-future"):
        with pytest.raises(ValueError, match="regression"):
            build(recipe, num_labels=1)
        assert not get_recipe(recipe).supports_regression
    for method in ("fastbert", "past-future"):
        ok, why = get_method(method).supports(1)
        assert not ok and why
    assert get_method("berxit").supports(1) == (True, "")
    assert get_method("past-future").recipe == "past-future"


# ---- (b, c) replay = live, batch-N = batch-1 -------------------------------------------------------
@torch.no_grad()
def _spread(model, loader) -> None:
    """Random heads give near-uniform outputs; rescale their last linear maps so exits differ."""
    heads = model.heads
    if hasattr(heads, "lte"):
        heads.lte.weight.mul_(30)
    if hasattr(heads, "slot_weight"):  # Past-Future's stacked slots
        heads.slot_weight.mul_(10)
    if hasattr(heads, "layers"):  # FastBERT: centre and scale each layer's logits (an exact affine map)
        z = record_signals(model, loader, progress=False)["logits"]  # [L, N, C]
        for head, zi in zip(heads.layers, z, strict=True):
            scale = 2.0 / zi.std(0).mean()
            head.classifier.bias.sub_(zi.mean(0)).mul_(scale)
            head.classifier.weight.mul_(scale)


def _score(method: str, record) -> torch.Tensor:
    if method == "fastbert":
        return normalized_entropy(record["logits"][:-1])
    if method == "berxit":
        return record["lte"][:-1]
    return entropy(record["logits"][:-1])


def _knobs(scores: torch.Tensor, k: int = 3, margin: float = 1e-4) -> list[float]:
    """Knobs at midpoints of well-separated consecutive scores, spread over the range."""
    v = torch.unique(scores.double().flatten())
    gaps = (v[1:] - v[:-1]) > margin
    mids = ((v[1:] + v[:-1]) / 2)[gaps]
    assert len(mids) >= k, "scores do not spread enough to pick knobs"
    return [mids[int(q * (len(mids) - 1))].item() for q in torch.linspace(0.1, 0.9, k).tolist()]


CASES = [("fastbert", "self-distill"), ("berxit", "alternate-lte"), ("past-future", "past-future")]


@pytest.mark.parametrize("method,recipe", CASES)
def test_replay_equals_live_and_batch_one(method, recipe, dataset):
    model = build(recipe).eval()
    _spread(model, make_loader(dataset, 16, shuffle=False))
    record = record_signals(model, make_loader(dataset, 16, shuffle=False), progress=False)
    assert not [k for k in record if k.startswith("_")]
    assert record["logits"].shape == (L, len(dataset), 2)
    if method == "berxit":
        assert record["lte"].shape == (L, len(dataset))
    policy = get_method(method).make_policy(2, L)
    knobs = _knobs(_score(method, record))
    replayed = policy.replay(record, knobs)
    assert len(torch.unique(replayed)) > 1, "knobs should give a mix of exit layers"
    for k, want in zip(knobs, replayed, strict=True):
        live = run_live(model, policy, k, make_loader(dataset, 16, shuffle=False))
        assert torch.equal(live.exit_layers, want)
        preds = record["logits"].argmax(-1).gather(0, want[None] - 1)[0]
        assert torch.equal(live.predictions.long(), preds)
        single = run_live(model, policy, k, make_loader(dataset, 1, shuffle=False))
        assert torch.equal(single.exit_layers, live.exit_layers)


# ---- (d) what each training stage updates --------------------------------------------------------
def _batch(dataset, n: int = 16) -> dict:
    return next(iter(make_loader(dataset, n, shuffle=False)))


def _run_step(model, stage, batch, step_in_epoch: int = 0) -> dict[str, torch.Tensor]:
    """One AdamW step of `stage`, as train() does it; returns the parameters before the step."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(dict.fromkeys(stage.trainable(model)))
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-3 * stage.lr_scale)
    model.train()
    signals = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    loss = stage.loss(model, signals, batch["labels"], step_in_epoch)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    return before


def _changed(model, before, prefix: str) -> list[bool]:
    return [not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(prefix)]


def test_fastbert_stages(dataset):
    model = build("self-distill")
    teacher = f"heads.layers.{L - 1}."
    stage1, stage2 = get_recipe("self-distill").stages()
    assert stage2.lr_scale == 10.0
    batch = _batch(dataset)
    before = _run_step(model, stage1, batch)
    assert all(_changed(model, before, teacher))
    assert all(_changed(model, before, "encoder.encoder.encoder.layer."))
    assert not any(_changed(model, before, "heads.layers.0.") + _changed(model, before, "heads.layers.2."))
    before = _run_step(model, stage2, batch)
    assert not any(_changed(model, before, "encoder.") + _changed(model, before, teacher))
    for i in range(L - 1):
        assert all(_changed(model, before, f"heads.layers.{i}."))
    # no labels in the distillation loss
    model.eval()
    sig = model(batch["input_ids"], batch["attention_mask"])
    assert stage2.loss(model, sig, batch["labels"], 0) == stage2.loss(model, sig, 1 - batch["labels"], 0)


def test_berxit_alternates_by_step_parity(dataset):
    model = build("alternate-lte")
    (stage,) = get_recipe("alternate-lte").stages()
    batch = _batch(dataset)
    before = _run_step(model, stage, batch, step_in_epoch=0)  # even: final + LTE
    assert all(_changed(model, before, f"heads.classifiers.{L - 1}."))
    assert not any(_changed(model, before, "heads.classifiers.0."))
    assert all(_changed(model, before, "heads.lte."))
    assert all(_changed(model, before, "encoder.encoder.encoder.layer.0."))
    before = _run_step(model, stage, batch, step_in_epoch=3)  # odd: off-ramps 1..L-1 + LTE
    assert not any(_changed(model, before, f"heads.classifiers.{L - 1}."))
    for i in range(L - 1):
        assert all(_changed(model, before, f"heads.classifiers.{i}."))
    assert all(_changed(model, before, "heads.lte."))


def test_berxit_targets_and_regression(dataset):
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert lte_targets(logits, torch.tensor([0, 0])).tolist() == [0.0, 1.0]
    z, y = torch.tensor([[0.5], [3.0]]), torch.tensor([0.5, 1.0])
    assert torch.allclose(lte_targets(z, y), torch.tanh(torch.tensor([0.0, 2.0])))
    model = build("alternate-lte", num_labels=1)
    (stage,) = get_recipe("alternate-lte").stages()
    batch = _batch(dataset)
    batch["labels"] = batch["labels"].float() * 5
    before = _run_step(model, stage, batch, 1)
    assert all(_changed(model, before, "heads.lte."))


def test_past_future_training(dataset):
    model = build("past-future")
    (stage,) = get_recipe("past-future").stages()
    batch = _batch(dataset)
    model.train()
    sig = model(batch["input_ids"], batch["attention_mask"])
    assert [s["_future"].shape[1] for s in sig] == [L - 1, L - 2, L - 3, 0]
    # the future loss trains predictions toward detached targets: h_L is only a target
    model.zero_grad()
    future_loss(sig).backward()
    heads = model.heads
    assert all(p.grad is None or not p.grad.any() for p in heads.poolers[L - 1].parameters())
    assert heads.poolers[0][0].weight.grad.abs().sum() > 0
    assert heads.future_weight.grad[0].abs().sum() > 0
    model.zero_grad()
    before = _run_step(model, stage, batch)
    for prefix in ("heads.poolers.", "heads.future_", "heads.slot_", "heads.gate",
                   "encoder.encoder.encoder.layer."):
        assert all(_changed(model, before, prefix)), prefix
    assert not any(_changed(model, before, "encoder.encoder.pooler."))  # replaced by per-layer copies


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_past_future_gate_formula(pooling):
    """The head's running sums and stacked matrices give GPFEE's formula, written out per slot."""
    model = build("past-future", pooling=pooling).eval()
    heads, c = model.heads, 2
    torch.manual_seed(1)
    hidden = [torch.randn(3, 5, 32) for _ in range(L)]
    mask = torch.ones(3, 5, dtype=torch.long)
    state = heads.init_state(3, torch.device("cpu"))

    def slot(j, x):  # slot j (0-based) → (C logits, C gate inputs)
        w, b = heads.slot_weight[j], heads.slot_bias[j]  # [H, 2, C], [2, C]
        return x @ w[:, 0] + b[0], x @ w[:, 1] + b[1]

    def future(j, h):  # predicted pooled feature of 1-based layer j
        return torch.tanh(h @ heads.future_weight[j - 2].T + heads.future_bias[j - 2])

    pooled = []
    with torch.no_grad():
        for layer in range(1, L + 1):
            out = heads.forward_layer(layer, hidden[layer - 1], mask, state)["logits"]
            h = hidden[layer - 1]
            pooled.append(heads.poolers[layer - 1](h[:, 0] if pooling == "cls" else h.mean(1)))
            past = [slot(j, pooled[j]) for j in range(layer)]
            fut = [slot(j - 1, future(j, pooled[-1]))[0] for j in range(layer + 1, L + 1)]
            lam = torch.sigmoid(heads.gate_proj(torch.tanh(torch.stack([g for _, g in past]).mean(0))))
            want = 2 * lam * sum(p for p, _ in past) + (2 - 2 * lam) * sum(fut, torch.zeros(3, c))
            assert torch.allclose(out, want, atol=1e-5)
            assert torch.allclose(state["past"][:, :c], sum(p for p, _ in past), atol=1e-6)
        assert torch.allclose(heads.predict_future(1, pooled[0]).view(3, L - 1, 32),
                              torch.stack([future(j, pooled[0]) for j in range(2, L + 1)], 1), atol=1e-6)


def test_save_load_roundtrip(tmp_path, dataset):
    from de3bert.model import MultiExitModel

    batch = _batch(dataset, 8)
    for _, recipe in CASES:
        model = build(recipe).eval()
        model.save(tmp_path / recipe)
        again = MultiExitModel.load(tmp_path / recipe)
        with torch.no_grad():
            a = model(batch["input_ids"], batch["attention_mask"])
            b = again(batch["input_ids"], batch["attention_mask"])
        for x, y in zip(a, b, strict=True):
            assert torch.allclose(x["logits"], y["logits"], atol=1e-6)


# ---- (e) FLOPs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", [r for _, r in CASES])
def test_head_flops_visible(recipe):
    model = build(recipe, attn="eager").eval()
    t, hdim = 10, 32
    hidden, mask = torch.randn(1, t, hdim), torch.ones(1, t, dtype=torch.long)
    state = model.heads.init_state(1, torch.device("cpu"))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.heads.forward_layer(1, hidden, mask, state)
    flops = counter.get_total_flops()
    assert flops > 0
    if recipe == "self-distill":
        # Linear H→w and k/v w→w on every token; q, out, dense w→w and w→C on the first token only;
        # the first token's 1×T scores and its context
        w = 128
        assert flops == 2 * t * hdim * w + 2 * 2 * t * w * w + 3 * 2 * w * w + 2 * 2 * t * w + 2 * w * 2
    if recipe == "past-future":  # pooler, L−1 future predictors, this layer's slot (2C), L−1 future
        # slots (C), the gate nn.Linear(C, C)
        gate = 2 * 2 * 2
        assert flops == 2 * hdim * hdim * (1 + (L - 1)) + 2 * hdim * 2 * 2 + 2 * hdim * 2 * (L - 1) + gate
    if recipe == "alternate-lte":  # mean-pooled pooler dense H→H (+tanh), off-ramp H→C, LTE unit H→1
        assert flops == 2 * hdim * hdim + 2 * hdim * 2 + 2 * hdim


def test_berxit_head_flops_with_cls_pooling():
    """With [CLS] pooling each off-ramp adds its own pooler's dense H→H on the first token only."""
    model = build("alternate-lte", attn="eager", pooling="cls").eval()
    hdim = 32
    for t in (5, 17):
        hidden, mask = torch.randn(1, t, hdim), torch.ones(1, t, dtype=torch.long)
        state = model.heads.init_state(1, torch.device("cpu"))
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model.heads.forward_layer(2, hidden, mask, state)
        assert counter.get_total_flops() == 2 * hdim * hdim + 2 * hdim * 2 + 2 * hdim


def test_fastbert_head_equals_full_self_attention_first_row():
    """Computing only the first token's query gives exactly full self-attention's first row."""
    model = build("self-distill").eval()
    head = model.heads.layers[0]
    torch.manual_seed(3)
    hidden = torch.randn(4, 9, 32)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    with torch.no_grad():
        x = torch.tanh(head.inp(hidden))
        k, v = head.kv(x).split(head.width, -1)
        q, k, v = head._split(head.q(x)), head._split(k), head._split(v)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
        ctx = head.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape))  # every token's row
        want = head.classifier(torch.tanh(head.dense(ctx[:, 0])))
        got = head(hidden, mask)
        unpadded = head(hidden[1:2, :5], mask[1:2, :5])[0]  # padding keys are masked out
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], unpadded, atol=1e-6, rtol=1e-5)


def test_fastbert_key_bias_stays_zero_under_adamw():
    """The key bias adds q·b_k to every score of a query, which softmax cancels: its gradient is
    zero in exact arithmetic and rounding noise in floats. AdamW normalises that noise into
    lr-sized steps whose sign depends on the CPU's kernels (smoke: students 1e-2 apart on AVX2 vs
    AVX-512, every other recipe 1e-6). The key half of the bias is held at exactly 0."""
    model = build("self-distill").train()
    head = model.heads.layers[0]
    w = head.width
    assert torch.count_nonzero(head.kv.bias[:w]) == 0
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    torch.manual_seed(0)
    hidden, mask = torch.randn(8, 7, 32), torch.ones(8, 7, dtype=torch.long)
    for _ in range(3):
        head(hidden, mask).logsumexp(-1).sum().backward()
        assert torch.count_nonzero(head.kv.bias.grad[:w]) == 0
        assert torch.count_nonzero(head.kv.bias.grad[w:]) > 0  # the value bias does learn
        opt.step()
        opt.zero_grad()
    assert torch.count_nonzero(head.kv.bias[:w]) == 0
