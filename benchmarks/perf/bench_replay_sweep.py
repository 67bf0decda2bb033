"""Target 1, replay sweep: every registered method × 100 knob values replayed on MRPC dev records
(`replay` + `replay_predictions`) ≤ 1.2 × one full-depth record pass over the same dev set.

The timed function is the sweep; the record pass it is divided by runs in pytest-benchmark's
untimed `setup` before every round, so the two alternate and the ratio uses medians of both.
"""

from __future__ import annotations

import statistics

from de3bert.engine import record_signals, replay_predictions
from de3bert.registry import all_methods

from .common import GOAL_REPLAY, record_result, sweep_values, timed


def test_replay_sweep(benchmark, cfg, models, dev_loader, dev_records):
    """All methods × 100 knob values replayed on the dev records ≤ 1.2 × one record pass."""
    sweeps = []
    for name, method in all_methods().items():
        rec = dev_records[method.recipe]
        policy = method.make_policy(2, models[0][method.recipe].num_layers)
        sweeps.append((name, policy, sweep_values(policy, cfg.sweep_size), rec))

    def replay_all():
        for _, policy, values, rec in sweeps:
            replay_predictions(rec, policy.replay(rec, values))

    reference = models[0]["de3"]
    t_pass, t_replay = [], []
    replay_all()  # warm-up (the record fixture already warmed the model)
    benchmark.pedantic(timed(replay_all, t_replay), rounds=cfg.rounds_replay,
                       setup=timed(lambda: record_signals(reference, dev_loader, progress=False), t_pass))
    ratio = statistics.median(t_replay) / statistics.median(t_pass)
    passed = record_result(
        benchmark, cfg, "replay sweep", ratio, GOAL_REPLAY, higher_is_better=False,
        seconds_replay_all=statistics.median(t_replay), seconds_one_record_pass=statistics.median(t_pass),
        record_pass_model="de3", record_batch=cfg.record_batch, n_samples=len(dev_loader.dataset),
        methods=len(sweeps), knob_values=sum(len(v) for _, _, v, _ in sweeps),
        per_method_knobs={name: len(v) for name, _, v, _ in sweeps},
        models=models[1])
    if not cfg.tiny:
        assert passed, f"replay sweep took {ratio:.3f}× one record pass (goal ≤ {GOAL_REPLAY})"
