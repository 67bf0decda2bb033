"""Serving schedulers = replay: every registered deployable method, every scheduler (batch 1,
dynamic batching, per-layer rebatching in both queue orders), staggered arrivals on a virtual clock
(deterministic, so merges of cohorts padded to different lengths happen the same way every run):
each request exits at its replayed layer with its replayed prediction, except near ties
(`de3bert.ties`: a score within TIE_EPS of the knob, or top-two logits within TIE_EPS).
"""

from __future__ import annotations

import random
import threading

import pytest
import torch
from tiny_models import sharpen

from de3bert import engine
from de3bert.recipes import get_recipe
from de3bert.registry import all_methods
from de3bert.serving import Batch1Scheduler, Limits, Request, ServerLoop, ServingEngine, make_scheduler, serve
from de3bert.ties import TIE_EPS, exit_ties, prediction_ties

METHODS = {n: m for n, m in all_methods().items() if not m.report_only and m.supports(2)[0]}
RECIPES = sorted({m.recipe for m in METHODS.values()})
SCENARIOS = {  # name: (scheduler, limits)
    "batch1": ("batch1", Limits(max_batch=1, max_wait_ms=0.0)),
    "dynamic": ("dynamic", Limits(max_batch=8, max_wait_ms=2.0)),
    "rebatch-fullest": ("rebatch", Limits(max_batch=8, max_wait_ms=2.0, order="fullest")),
    "rebatch-deepest": ("rebatch", Limits(max_batch=6, max_wait_ms=0.0, order="deepest")),
}


class VirtualClock:
    """A clock that moves only when read (`tick` per read, a stand-in for compute) or slept on."""

    def __init__(self, tick: float = 2e-4):
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(scope="module")
def models(tiny_encoder, synthetic_loader):
    """One tiny sharpened model per recipe (DE³'s prototypes from the data, then perturbed)."""
    out = {}
    for i, recipe in enumerate(RECIPES):
        model = get_recipe(recipe).build(tiny_encoder(seed=i), {"num_labels": 2, "pooling": "mean"})
        sharpen(model)
        if hasattr(model.heads, "prototypes"):
            model.heads.recompute(model, synthetic_loader(32))
            with torch.no_grad():
                g = torch.Generator().manual_seed(i)
                model.heads.prototypes.add_(0.5 * torch.randn(model.heads.prototypes.shape, generator=g))
        out[recipe] = model.eval()
    return out


@pytest.fixture(scope="module")
def records(models, synthetic_loader):
    """Full-depth records over the 64 synthetic dev samples, batch 16."""
    return {r: engine.record_signals(m, synthetic_loader(16), progress=False) for r, m in models.items()}


@pytest.fixture(scope="module")
def requests(synthetic_dataset):
    """The 64 samples at their natural lengths, arriving Poisson-like (seeded) over ~6 ms: faster
    than the virtual server, so queues build up and per-layer rebatching merges cohorts."""
    rng, t, out = random.Random(0), 0.0, []
    for i in range(len(synthetic_dataset)):
        t += rng.expovariate(1 / 1e-4)
        out.append(Request(i, dict(synthetic_dataset.features[i]), t))
    return out


def _knobs(policy) -> list[float]:
    """Two grid values at quantiles of the default sweep (where some samples exit early)."""
    g = sorted(policy.grid())
    return list(dict.fromkeys(g[round(q * (len(g) - 1))] for q in (0.4, 0.75)))


def _run(model, policy, knob, requests, scenario) -> tuple[dict, ServingEngine]:
    """Every request's `Done`, by request id, and the engine (for its counters)."""
    name, limits = SCENARIOS[scenario]
    eng = ServingEngine(model, policy, knob)
    clock = VirtualClock()
    stats = serve(make_scheduler(name, eng, limits), requests, clock=clock, sleep=clock.sleep)
    assert len(stats.completions) == len(requests)
    return {d.rid: d for d in stats.completions}, eng


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_scheduler_equals_replay(name, models, records, requests):
    method = METHODS[name]
    model, record = models[method.recipe], records[method.recipe]
    policy = method.make_policy(2, model.num_layers)
    knobs = _knobs(policy)
    replayed = policy.replay(record, knobs)
    preds = engine.replay_predictions(record, replayed)
    ties = exit_ties(policy, record, knobs, replayed) | prediction_ties(record, replayed)
    for k, knob in enumerate(knobs):
        for scenario in SCENARIOS:
            done, _ = _run(model, policy, knob, requests, scenario)
            for i in range(len(requests)):
                d, want = done[i], int(replayed[k, i])
                if ties[k, i]:
                    continue  # a near tie: either side is within the documented bound
                assert d.exit_layer == want, f"{name} {scenario} knob={knob} request {i}"
                assert d.prediction == preds[k, i].item(), f"{name} {scenario} knob={knob} request {i}"
                torch.testing.assert_close(d.logits, record["logits"][want - 1, i].float(),
                                           atol=TIE_EPS, rtol=0)


@pytest.mark.parametrize("name", ["maxprob", "past-future", "de3"])
def test_rebatching_merges_partial_cohorts(name, models, records, requests):
    """The equivalence above is not vacuous for rebatching: under load, with samples exiting, the
    fullest-first order merges cohorts (of different padded lengths, with head and policy state)."""
    method = METHODS[name]
    model = models[method.recipe]
    policy = method.make_policy(2, model.num_layers)
    grid = sorted(policy.grid())
    spread = [len(set(e.tolist())) for e in policy.replay(records[method.recipe], grid)]
    knob = grid[max(range(len(grid)), key=spread.__getitem__)]  # the most varied exits
    assert max(spread) >= 2
    _, eng = _run(model, policy, knob, requests, "rebatch-fullest")
    assert eng.merges > 0 and eng.rows / eng.steps > 1


def test_oracle_cannot_serve(models):
    """A policy that reads gold labels is refused with a message that says so."""
    oracle = all_methods()["oracle"]
    model = models[oracle.recipe]
    with pytest.raises(ValueError, match="gold labels"):
        ServingEngine(model, oracle.make_policy(2, model.num_layers), oracle.policy.knob.low)


def test_limits_and_scheduler_names_are_checked(models):
    with pytest.raises(ValueError, match="max_batch"):
        Limits(max_batch=0)
    with pytest.raises(ValueError, match="valid: deepest, fullest"):
        Limits(order="widest")
    method = METHODS["pabee"]
    model = models[method.recipe]
    eng = ServingEngine(model, method.make_policy(2, model.num_layers), 2)
    with pytest.raises(ValueError, match="valid: batch1, dynamic, rebatch"):
        make_scheduler("fifo", eng)


def test_server_loop_answers_other_threads_and_reports_a_failure(models, records, requests):
    """The HTTP server's loop thread: requests submitted from another thread come back equal to
    replay; a failing step hands its exception to every waiting caller and refuses new ones."""
    method = METHODS["pabee"]
    model = models[method.recipe]
    policy = method.make_policy(2, model.num_layers)
    knob = _knobs(policy)[0]
    eng = ServingEngine(model, policy, knob)
    loop = ServerLoop(make_scheduler("rebatch", eng, Limits(8, 1.0))).start()
    got, finished = {}, threading.Event()

    def keep(i):
        def callback(done):
            got[i] = done
            if len(got) == len(requests):
                finished.set()
        return callback

    for r in requests:
        loop.submit(r.features, keep(r.rid))
    assert finished.wait(30)
    loop.stop()
    replayed = policy.replay(records[method.recipe], [knob])[0]
    assert [got[i].exit_layer for i in range(len(requests))] == replayed.tolist()
    assert loop.served == len(requests)

    class Broken(Batch1Scheduler):
        def step(self, now):
            raise RuntimeError("boom")

    broken, failed = ServerLoop(Broken(eng)).start(), []
    done = threading.Event()
    broken.submit(requests[0].features, lambda d: (failed.append(d), done.set()))
    assert done.wait(10) and isinstance(failed[0], RuntimeError)
    with pytest.raises(RuntimeError, match="serving loop failed"):
        broken.submit(requests[1].features, failed.append)


@pytest.mark.e2e
def test_every_scheduler_equals_replay_minilm_real_rows(glue_dir, tokenizer):
    """The packaged MiniLM with every recipe's heads (untrained, sharpened; DE³'s prototypes from 64
    SST-2 train rows), 48 real SST-2 dev rows at their natural lengths: for every deployable method,
    at the knob of its grid with the most varied exits, every scheduler's exits and predictions
    equal replay except near ties, and per-layer rebatching merges cohorts."""
    from de3bert.data import EncodedDataset, get_task, load_examples, make_loader
    from de3bert.model import build_model

    task = get_task("sst2")
    dev = EncodedDataset(load_examples(task, "dev", glue_dir, 48, 0), tokenizer, 64, False)
    train = EncodedDataset(load_examples(task, "train", glue_dir, 64, 0), tokenizer, 64, False)
    rng, t, reqs = random.Random(1), 0.0, []
    for i in range(len(dev)):
        t += rng.expovariate(1 / 1e-4)
        reqs.append(Request(i, dict(dev.features[i]), t))
    compared = merges = 0
    for recipe in RECIPES:
        torch.manual_seed(0)
        model = build_model("embedded", recipe, 2, "mean").eval()
        sharpen(model)
        if hasattr(model.heads, "prototypes"):
            model.heads.recompute(model, make_loader(train, 32, shuffle=False))
        record = engine.record_signals(model, make_loader(dev, 16, shuffle=False), progress=False)
        for name in (n for n, m in METHODS.items() if m.recipe == recipe):
            policy = METHODS[name].make_policy(2, model.num_layers)
            grid = sorted(policy.grid())
            spread = [len(set(e.tolist())) for e in policy.replay(record, grid)]
            knob = grid[max(range(len(grid)), key=spread.__getitem__)]
            replayed = policy.replay(record, [knob])
            preds = engine.replay_predictions(record, replayed)[0]
            ties = (exit_ties(policy, record, [knob], replayed) | prediction_ties(record, replayed))[0]
            for scenario in SCENARIOS:
                done, eng = _run(model, policy, knob, reqs, scenario)
                merges += eng.merges
                for i in range(len(reqs)):
                    if not ties[i]:
                        assert done[i].exit_layer == int(replayed[0, i]), f"{name} {scenario} {i}"
                        assert done[i].prediction == preds[i].item(), f"{name} {scenario} {i}"
                        compared += 1
    print(f"MiniLM/SST-2: {compared} served requests equal replay; {merges} merges")
    assert compared > 0.9 * len(METHODS) * len(SCENARIOS) * len(reqs) and merges > 0
