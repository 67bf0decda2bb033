"""Every registered exit policy: replay == live, batch-N == batch-1; hand-made logits per rule."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import sharpen

from de3bert import engine
from de3bert.policy import ExitPolicy, Knob, entropy, normalized_entropy, predictions
from de3bert.recipes import get_recipe
from de3bert.registry import all_methods, get_method

METHODS = all_methods()
RECIPES = sorted({m.recipe for m in METHODS.values()})
NUM_LAYERS = 4
# each recipe's encoder seed, fixed so that registering a recipe does not reseed the others
SEEDS = {r: i for i, r in enumerate(("alternate-lte", "de3", "de3-nodar", "de3-noproto", "past-future",
                                     "self-distill", "two-stage", "weighted"))}


@pytest.fixture(scope="module")
def models(tiny_encoder, synthetic_loader):
    """One tiny model per recipe (methods sharing a recipe share it), in eval mode."""
    out = {}
    for i, recipe in enumerate(RECIPES):
        # a seed per recipe that does not move when another recipe is registered
        seed = SEEDS.get(recipe, i)
        model = get_recipe(recipe).build(tiny_encoder(seed=seed), {"num_labels": 2, "pooling": "mean"})
        sharpen(model)
        heads = model.heads
        if hasattr(heads, "prototypes"):  # DE³: prototypes from the data, then perturbed
            heads.recompute(model, synthetic_loader(32))
            with torch.no_grad():
                g = torch.Generator().manual_seed(i)
                heads.prototypes.add_(0.5 * torch.randn(heads.prototypes.shape, generator=g))
            assert bool(heads.proto_set[:heads.proto_layers].all())  # layer L has none (default)
        out[recipe] = model.eval()
    return out


@pytest.fixture(scope="module")
def records(models, synthetic_loader):
    # a shuffled loader: the record must come back in dataset order anyway
    return {r: engine.record_signals(m, synthetic_loader(16, shuffle=True), progress=False)
            for r, m in models.items()}


def _knobs(policy: ExitPolicy) -> list[float]:
    """Three grid values at quantiles of the default sweep (fewer if the grid is shorter)."""
    g = sorted(policy.grid())
    picks = [g[round(q * (len(g) - 1))] for q in (0.4, 0.75, 0.95)]
    return list(dict.fromkeys(picks))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_replay_equals_live(name, models, records, synthetic_loader):
    method = METHODS[name]
    model, record = models[method.recipe], records[method.recipe]
    policy = method.make_policy(2, model.num_layers)
    knobs = _knobs(policy)
    assert record["logits"].shape[:2] == (NUM_LAYERS, 64)
    assert record["labels"].tolist() == [int(x) for x in synthetic_loader(64).dataset.labels]
    replayed = policy.replay(record, knobs)
    assert replayed.shape == (len(knobs), 64)
    assert ((replayed >= 1) & (replayed <= NUM_LAYERS)).all()
    replay_preds = engine.replay_predictions(record, replayed)
    for k, knob in enumerate(knobs):
        live = engine.run_live(model, policy, knob, synthetic_loader(16))
        assert live.exit_layers.tolist() == replayed[k].tolist(), f"{name} knob={knob}"
        assert live.predictions.tolist() == replay_preds[k].tolist(), f"{name} knob={knob}"
        single = engine.run_live(model, policy, knob, synthetic_loader(1))
        assert single.exit_layers.tolist() == live.exit_layers.tolist(), f"{name} knob={knob} batch 1"
        assert single.predictions.tolist() == live.predictions.tolist(), f"{name} knob={knob} batch 1"


def test_equivalence_checks_were_not_trivial(models, records):
    """At the knobs test_replay_equals_live compares (where live == replay), most methods exit some
    samples early and keep others to full depth. Computed here from the records, so the check runs
    (and can fail) whatever else runs, in any order (it used to read state the other test left)."""
    seen = {}
    for name, method in METHODS.items():
        policy = method.make_policy(2, models[method.recipe].num_layers)
        seen[name] = set(policy.replay(records[method.recipe], _knobs(policy)).flatten().tolist())
    adaptive = {n: s for n, s in seen.items() if not n.startswith("static-kl")}  # one exit each
    mixed = [n for n, s in adaptive.items() if len(s) >= 2]
    assert len(mixed) >= len(adaptive) - 2, seen
    for name in ("deebert", "pabee", "pcee", "maxprob", "de3", "fixed-exit", "static-kl3"):
        assert name in seen and any(e < NUM_LAYERS for e in seen[name]), (name, seen.get(name))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_grid_is_valid_and_monotone(name, models, records):
    """Every sweep value is in range, and the layer speed-up moves one way with the knob (its
    `faster` direction): operating-point selection and the bisection in `refine_grid` rely on it."""
    from de3bert.speedup import layer_speedups

    method = METHODS[name]
    policy = method.make_policy(2, models[method.recipe].num_layers)
    grid = policy.grid()
    assert len(grid) >= 1
    policy.knob.validate(grid)  # every default sweep value is in range
    values = sorted(set(grid) | set(policy.dense_grid(25)))
    policy.knob.validate(values)
    sp = layer_speedups(policy.replay(records[method.recipe], values), policy.num_layers)
    if policy.knob.faster == "smaller":
        sp = sp[::-1]
    assert all(a <= b + 1e-12 for a, b in zip(sp, sp[1:], strict=False)), (name, values, sp)
    if len(values) > 2 and name != "oracle":
        assert sp[-1] > sp[0], (name, "the sweep never changes the speed-up")


def test_regression_policies_replay_equals_live(tiny_encoder, tokenizer):
    """PABEE and static on a one-output head: replayed exits and values equal live ones."""
    from de3bert.data import EncodedDataset, Example, make_loader

    g = torch.Generator().manual_seed(0)
    words = ["good", "bad", "movie", "plot", "the", "a", "fine", "dull"]
    examples = [Example((" ".join(words[j] for j in torch.randint(0, 8, (6,), generator=g)),
                         " ".join(words[j] for j in torch.randint(0, 8, (4,), generator=g))),
                        float(i % 5)) for i in range(24)]
    ds = EncodedDataset(examples, tokenizer, 32, regression=True)
    model = get_recipe("weighted").build(tiny_encoder(seed=5), {"num_labels": 1, "pooling": "mean"}).eval()
    record = engine.record_signals(model, make_loader(ds, 8, False), progress=False)
    assert record["labels"].dtype == torch.float32
    for name in ("pabee", "fixed-exit"):
        method = get_method(name)
        assert method.supports(1)[0]
        policy = method.make_policy(1, NUM_LAYERS)
        knobs = policy.grid()
        replayed = policy.replay(record, knobs)
        preds = engine.replay_predictions(record, replayed)
        for k, knob in enumerate(knobs):
            live = engine.run_live(model, policy, knob, make_loader(ds, 8, False))
            assert live.exit_layers.tolist() == replayed[k].tolist()
            torch.testing.assert_close(live.predictions.float(), preds[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["deebert", "pcee", "maxprob", "de3", "oracle"])
def test_classification_only_methods_refuse_regression(name):
    method = get_method(name)
    ok, why = method.supports(1)
    assert not ok and why
    with pytest.raises(ValueError, match="regression"):
        method.make_policy(1, NUM_LAYERS)


# ---- hand-made logits -----------------------------------------------------------------------------


def _two_class(diffs: list[list[float]]) -> torch.Tensor:
    """Logits [L, N, 2] from per-sample, per-layer margins: logits = (0, d)."""
    d = torch.tensor(diffs, dtype=torch.float32).T  # [L, N]
    return torch.stack([torch.zeros_like(d), d], dim=-1)


def _record(logits: torch.Tensor, labels=None) -> dict[str, torch.Tensor]:
    n = logits.shape[1]
    lab = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels)
    return {"logits": logits, "labels": lab}


def _h2(d: float) -> float:
    """Binary entropy (nats) of softmax(0, d)."""
    p = 1 / (1 + math.exp(-d))
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_entropy_values():
    logits = torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 1e4], [-1e4, 1e4], [0.0, -math.inf]])
    h = entropy(logits)
    assert h[0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert h[1].item() == pytest.approx(_h2(2.0), abs=1e-6)
    assert h[2].item() == pytest.approx(0.0, abs=1e-6) and h[3].item() == pytest.approx(0.0, abs=1e-6)
    assert h[4].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(h).all() and (h >= 0).all()
    three = torch.tensor([[1.0, 1.0, 1.0], [0.0, 5.0, 0.0]])
    assert normalized_entropy(three)[0].item() == pytest.approx(1.0, abs=1e-6)
    assert 0 < normalized_entropy(three)[1].item() < 0.2
    for dtype in (torch.float16, torch.bfloat16):
        hh = entropy(torch.tensor([[0.0, 60000.0], [1.0, 1.0]], dtype=dtype))
        assert hh.dtype == torch.float32 and torch.isfinite(hh).all()
        assert hh[1].item() == pytest.approx(math.log(2), abs=1e-3)


def test_deebert_entropy_threshold():
    policy = get_method("deebert").make_policy(2, 4)
    # sample 0: uniform at layer 1 (H = ln 2), margin 2 at layer 2, margin 6 at layer 3
    # sample 1: always uniform -> the last layer
    # sample 2: margin 6 from layer 1
    logits = _two_class([[0.0, 2.0, 6.0, 6.0], [0.0, 0.0, 0.0, 0.0], [6.0, 6.0, 6.0, 6.0]])
    h2, h6 = _h2(2.0), _h2(6.0)
    knobs = [0.0, (h6 + 1e-4), (h2 + 1e-4), math.log(2) + 1e-3]
    exits = policy.replay(_record(logits), knobs).tolist()
    assert exits[0] == [4, 4, 4]  # S = 0: nothing has entropy < 0
    assert exits[1] == [3, 4, 1]
    assert exits[2] == [2, 4, 1]
    assert exits[3] == [1, 1, 1]  # raw nats: ln 2 < S for a uniform 2-class output
    # just below the entropy it does not exit (strict <)
    assert policy.replay(_record(logits), [h2 - 1e-4]).tolist() == [[3, 4, 1]]
    assert policy.knob.faster == "larger"


def test_pabee_patience_counting():
    policy = get_method("pabee").make_policy(2, 6)
    # predictions per layer (class 1 iff margin > 0)
    seqs = [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1]]
    logits = _two_class([[3.0 if c else -3.0 for c in s] for s in seqs])
    exits = policy.replay(_record(logits), [0, 1, 2, 3, 4, 5]).tolist()
    assert exits[0] == [6, 6, 6, 6]  # t = 0 never exits
    assert exits[1] == [2, 3, 6, 2]
    assert exits[2] == [3, 4, 6, 3]
    assert exits[3] == [6, 5, 6, 4]
    assert exits[4] == [6, 6, 6, 5]
    assert exits[5] == [6, 6, 6, 6]  # the counter reaches 5 only at layer 6, which always exits
    assert policy.knob.faster == "smaller"
    with pytest.raises(ValueError, match="integer"):
        policy.replay(_record(logits), [1.5])


def test_pabee_regression_tolerance():
    values = torch.tensor([[1.0, 1.05, 1.08, 2.0, 2.02, 2.5]]).T[:, :, None]  # [L=6, N=1, 1]
    rec = {"logits": values, "labels": torch.zeros(1)}
    default = get_method("pabee").make_policy(1, 6)  # tolerance 0.1
    assert default.replay(rec, [1, 2, 3]).tolist() == [[2], [3], [6]]
    strict = type(default)(1, 6, regression_tolerance=0.01)
    assert strict.replay(rec, [1, 2, 3]).tolist() == [[6], [6], [6]]
    loose = type(default)(1, 6, regression_tolerance=1.0)
    assert loose.replay(rec, [3, 4]).tolist() == [[4], [5]]


def test_pcee_patient_confidence():
    policy = get_method("pcee").make_policy(2, 6)  # patience 2 by default
    conf, unsure = 5.0, 0.0  # normalized entropy ≈ 0.058 and 1.0
    logits = _two_class([[conf, unsure, conf, conf, conf, conf],
                         [conf, conf, conf, conf, conf, conf],
                         [unsure, conf, unsure, conf, unsure, conf]])
    hn = _h2(conf) / math.log(2)
    exits = policy.replay(_record(logits), [hn - 1e-4, hn + 1e-4, 1.0]).tolist()
    assert exits[0] == [6, 6, 6]
    assert exits[1] == [4, 2, 6]
    assert exits[2] == [4, 2, 6]  # Hn = 1 is not < 1
    once = type(policy)(2, 6, patience=1)
    assert once.replay(_record(logits), [0.5]).tolist() == [[1, 1, 2]]


def test_maxprob_confidence():
    policy = get_method("maxprob").make_policy(2, 3)
    logits = _two_class([[2.0, 2.0, 2.0], [0.0, -4.0, 0.0], [0.0, 0.0, 0.0]])
    p2, p4 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-4))
    exits = policy.replay(_record(logits), [p2 - 1e-4, p2 + 1e-4, p4 + 1e-4, 0.5]).tolist()
    assert exits[0] == [1, 2, 3]
    assert exits[1] == [3, 2, 3]
    assert exits[2] == [3, 3, 3]
    assert exits[3] == [1, 2, 3]  # 0.5 is not > 0.5 for a uniform output
    assert policy.knob.faster == "smaller"


def test_static_policy():
    policy = get_method("fixed-exit").make_policy(2, 4)
    logits = torch.randn(4, 5, 2)
    assert policy.replay(_record(logits), [1, 2, 4]).tolist() == [[1] * 5, [2] * 5, [4] * 5]
    # the generic layer loop agrees with the closed-form replay
    assert ExitPolicy.replay(policy, _record(logits), [1, 2, 3, 4]).tolist() == \
        policy.replay(_record(logits), [1, 2, 3, 4]).tolist()
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        policy.replay(_record(logits), [0])


def test_oracle_first_correct_layer():
    policy = get_method("oracle").make_policy(3, 4)
    assert get_method("oracle").report_only
    preds = torch.tensor([[2, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 2]]).T  # [L, N]
    logits = torch.nn.functional.one_hot(preds, 3).float() * 5
    rec = _record(logits, labels=[1, 0, 2])
    assert policy.replay(rec, [0.0]).tolist() == [[3, 1, 4]]
    assert engine.replay_predictions(rec, policy.replay(rec, [0.0])).tolist() == [[1, 0, 2]]
    # never correct: the last layer's (wrong) prediction
    rec = _record(logits, labels=[0, 2, 0])
    assert policy.replay(rec, [0.0]).tolist() == [[2, 4, 4]]


@pytest.mark.parametrize("name, bad, rng", [
    ("deebert", -0.1, r"\[0.0, inf\]"), ("deebert", math.nan, r"\[0.0, inf\]"),
    ("pcee", 1.5, r"\[0.0, 1.0\]"), ("pcee", math.nan, r"\[0.0, 1.0\]"),
    ("maxprob", -0.01, r"\[0.0, 1.0\]"), ("pabee", -1, r"\[0, 1000\]"), ("pabee", math.nan, r"\[0, 1000\]"),
    ("fixed-exit", 2.5, r"\[1, 1000\]"), ("de3", 1.01, r"\[0.0, 1.0\]"), ("de3", math.nan, r"\[0.0, 1.0\]"),
])
def test_knob_validation_names_the_range(name, bad, rng, models, synthetic_loader):
    method = get_method(name)
    policy = method.make_policy(2, 4)
    rec = _record(torch.zeros(4, 2, 2))
    rec["proto_dist"] = torch.ones(4, 2, 2)
    with pytest.raises(ValueError, match=rng):
        policy.replay(rec, [bad])
    with pytest.raises(ValueError, match=rng):
        engine.run_live(models[method.recipe], policy, bad, synthetic_loader(16))


def test_knob_validate_accepts_boundaries():
    k = Knob("x", 0.0, 1.0, "larger")
    assert k.validate([0.0, 1.0]).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="x=inf"):
        k.validate([math.inf])


class _Spy(ExitPolicy):
    """Exits everything it is asked about; records which layers it was asked about."""

    name = "spy"
    knob = Knob("k", 0.0, 1.0, "larger")

    def __init__(self, *a, exit_all: bool = False, **kw):
        super().__init__(*a, **kw)
        self.asked: list[int] = []
        self.exit_all = exit_all

    def step(self, layer, signals, state, knobs):
        self.asked.append(layer)
        n = signals["logits"].shape[0]
        return torch.full((len(knobs), n), self.exit_all, dtype=torch.bool)


def test_last_layer_always_exits_and_is_never_asked(models, synthetic_loader):
    model = models["weighted"]
    spy = _Spy(2, NUM_LAYERS)
    record = engine.record_signals(model, synthetic_loader(32), progress=False)
    assert spy.replay(record, [0.5]).tolist() == [[NUM_LAYERS] * 64]
    assert spy.asked == [1, 2, 3]
    spy.asked.clear()
    live = engine.run_live(model, spy, 0.5, synthetic_loader(32))
    assert live.exit_layers.tolist() == [NUM_LAYERS] * 64
    assert max(spy.asked) == NUM_LAYERS - 1
    # the prediction at the last layer is the last classifier's
    assert live.predictions.tolist() == predictions(record["logits"][-1]).tolist()
    # a policy that always says exit stops every sample at layer 1 and never runs layer 2
    eager = _Spy(2, NUM_LAYERS, exit_all=True)
    live = engine.run_live(model, eager, 0.5, synthetic_loader(32))
    assert live.exit_layers.tolist() == [1] * 64 and eager.asked == [1, 1]
    assert live.predictions.tolist() == predictions(record["logits"][0]).tolist()


class _CountingHeads:
    """Wraps a model's heads, recording the layers whose `forward_layer` ran."""

    def __init__(self, model):
        self.model, self.inner, self.layers = model, model.heads.forward_layer, []

    def __enter__(self):
        def counted(layer, *args):
            self.layers.append(layer)
            return self.inner(layer, *args)
        self.model.heads.forward_layer = counted
        return self

    def __exit__(self, *exc):
        del self.model.heads.forward_layer  # the class's method again


@pytest.mark.parametrize("k", [1, 3, NUM_LAYERS])
def test_fixed_layer_policies_run_only_the_head_they_exit_at(k, models, records, synthetic_loader):
    """A fixed-layer rule cannot exit before layer k, so live inference runs no head (and asks no
    decision) below it: one head per sample instead of k, and still exactly what replay gives."""
    model, record = models["weighted"], records["weighted"]
    policy = get_method("fixed-exit").make_policy(2, NUM_LAYERS)
    assert policy.first_exit_layer(policy.knob.validate([k])) == k
    with _CountingHeads(model) as heads:
        live = engine.run_live(model, policy, k, synthetic_loader(16))
    assert set(heads.layers) == {k} and len(heads.layers) == 4  # one call per batch of 16
    assert live.exit_layers.tolist() == [k] * 64
    assert live.predictions.tolist() == predictions(record["logits"][k - 1]).tolist()


def test_heads_that_carry_state_run_at_every_layer(models, records, synthetic_loader):
    """Past-Future's head at layer k reads the past layers' outputs (`init_state`), so a fixed-layer
    rule on its model still runs every head up to k: predictions stay those of the record."""
    model, record = models["past-future"], records["past-future"]
    policy = get_method("fixed-exit").make_policy(2, NUM_LAYERS)
    with _CountingHeads(model) as heads:
        live = engine.run_live(model, policy, 3, synthetic_loader(16))
    assert sorted(set(heads.layers)) == [1, 2, 3]
    assert live.predictions.tolist() == predictions(record["logits"][2]).tolist()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_no_policy_exits_before_its_first_exit_layer(name, models, records):
    """The promise behind skipping heads: no replayed exit lies below `first_exit_layer`."""
    method = METHODS[name]
    policy = method.make_policy(2, models[method.recipe].num_layers)
    for knob in _knobs(policy):
        knobs = policy.knob.validate([knob])
        first = policy.first_exit_layer(knobs)
        assert 1 <= first <= NUM_LAYERS
        assert int(policy.replay(records[method.recipe], knobs).min()) >= first, (name, knob)


def test_live_batch_takes_one_knob_value(models, synthetic_loader):
    """A live pass decides with one knob value; several (a replay sweep) fail before any work."""
    policy = get_method("deebert").make_policy(2, NUM_LAYERS)
    batch = next(iter(synthetic_loader(4)))
    with pytest.raises(ValueError, match=r"one knob value at a time; got 2"):
        engine.live_batch(models["two-stage"], policy, policy.knob.validate([0.1, 0.5]), batch)
