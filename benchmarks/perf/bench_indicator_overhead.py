"""Target 4, indicator overhead: (DE³ heads' `forward_layer` + `EDRPolicy.step`) − (DeeBERT heads'
`forward_layer` + `EntropyPolicy.step`), batch 1, 128 tokens, ≤ 2% of one transformer layer (issue 14).

Timed inside real passes (`MultiExitModel.layer_pass`, each decision right after its layer: small
ops cost about 3× more there than in a warm loop; the warm-loop figures are kept as `isolated_*`),
in blocks of consecutive passes of one method (a deployment runs one method; passes alternating
method by method are kept as `alternating_*`). Both methods are reached through the registry.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from de3bert.engine import to_device
from de3bert.model import LayerPass, MultiExitModel
from de3bert.policy import ExitPolicy
from de3bert.registry import get_method
from de3bert.timing import DeviceClock, batches_of

from .common import GOAL_OVERHEAD, Config, record_result


@dataclass
class Side:
    """One method of the comparison: its model, policy and one knob value (mid-grid)."""

    model: MultiExitModel
    policy: ExitPolicy
    knobs: torch.Tensor

    @classmethod
    def of(cls, models, name: str) -> Side:
        """The registered method `name` on its recipe's model, at the middle of its default grid."""
        method = get_method(name)
        model = models[0][method.recipe]
        policy = method.make_policy(2, model.num_layers)
        grid = policy.grid()
        return cls(model, policy, policy.knob.validate([grid[len(grid) // 2]]))


def one_pass(side: Side, batch: dict, t_decision: list[float], t_layer: list[float]) -> None:
    """A batch-1 pass through the one layer loop, timing each layer and the decision after it
    (layers 1..L−1; the last layer is never asked) on their own."""
    ids, attn, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    model, policy, knobs = side.model, side.policy, side.knobs
    last, clock = model.num_layers, DeviceClock(next(model.parameters()).device).now
    start = LayerPass(model, ids, attn, types)  # embeddings, untimed
    pol_state = policy.new_state(1, knobs)
    t0 = clock()
    for layer, _, p in model.layer_pass(ids, attn, types, heads="none", start=start):
        t1 = clock()
        t_layer.append(t1 - t0)
        if layer < last:
            signals = model.heads.forward_layer(layer, p.hidden, p.attention_mask, p.head_state)
            policy.step(layer, signals, pol_state, knobs)
            t_decision.append(clock() - t1)
        t0 = clock()


def block(side: Side, batch: dict, passes: int, t_decision: list[float], t_layer: list[float]) -> None:
    """`passes` consecutive passes of one method, the first an untimed warm-up (its code back in
    the caches), as a deployment running one method would."""
    one_pass(side, batch, [], [])
    for _ in range(passes - 1):
        one_pass(side, batch, t_decision, t_layer)


def test_indicator_overhead(benchmark, cfg, models, timed_items):
    """(DE³ heads + EDR step) − (DeeBERT heads + entropy step) ≤ 2% of one transformer layer.

    Each round is a block of DE³ passes (timed by pytest-benchmark) after a block of DeeBERT passes
    (setup); the ratio is (median DE³ decision − median DeeBERT decision) / median layer. Also
    recorded: the same with the methods alternating after every pass (`alternating_*`) and the
    decisions timed in isolation on warm caches (`isolated_*`); see docs/performance.md.
    """
    de3, dee = Side.of(models, "de3"), Side.of(models, "deebert")
    b = to_device(batches_of(timed_items[:1], 1)[0], de3.model)
    d_de3, d_dee, lay, a_de3, a_dee, a_lay = [], [], [], [], [], []
    med = statistics.median
    with torch.inference_mode():
        for _ in range(cfg.warmup):
            one_pass(de3, b, [], [])
            one_pass(dee, b, [], [])
        benchmark.pedantic(lambda: block(de3, b, cfg.overhead_block, d_de3, lay),
                           setup=lambda: block(dee, b, cfg.overhead_block, d_dee, lay),
                           rounds=cfg.rounds_overhead)
        for _ in range(cfg.rounds_overhead):
            one_pass(dee, b, a_dee, a_lay)
            one_pass(de3, b, a_de3, a_lay)
        isolated = isolated_decisions(cfg, de3, dee, b)
    per_de3, per_dee, per_layer = med(d_de3), med(d_dee), med(lay)
    ratio = (per_de3 - per_dee) / per_layer
    passed = record_result(
        benchmark, cfg, "indicator overhead", ratio, GOAL_OVERHEAD, higher_is_better=False,
        measured="inside real passes (decision right after its layer), blocks of consecutive passes",
        seconds_de3_decision=per_de3, seconds_deebert_decision=per_dee, seconds_layer=per_layer,
        de3_decision_vs_layer=per_de3 / per_layer, deebert_decision_vs_layer=per_dee / per_layer,
        alternating_ratio=(med(a_de3) - med(a_dee)) / med(a_lay),
        alternating_seconds_de3_decision=med(a_de3), alternating_seconds_deebert_decision=med(a_dee),
        **isolated, batch_size=1, seq_len=cfg.seq_len, blocks_per_side=cfg.rounds_overhead,
        passes_per_block=cfg.overhead_block, models={"de3": models[1][get_method("de3").recipe],
                                                     "deebert": models[1][get_method("deebert").recipe]})
    if not cfg.tiny:
        assert passed, (f"DE³ decision costs {100 * ratio:.2f}% of a layer more than DeeBERT's inside a "
                        f"real pass (goal ≤ {100 * GOAL_OVERHEAD:g}%; isolated: "
                        f"{100 * isolated['isolated_ratio']:.2f}%)")


def _middle_layer_inputs(model: MultiExitModel, batch: dict, layer: int):
    """Hidden states entering and leaving 1-based `layer` (via the one layer loop), and the mask."""
    ids, attn, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    start = LayerPass(model, ids, attn, types)
    h_in = start.hidden
    for i, _, p in model.layer_pass(ids, attn, types, heads="none", start=start):
        if i == layer:
            return h_in, p.hidden, p.mask
        h_in = p.hidden
    raise ValueError(f"layer {layer} is beyond the model's {model.num_layers} layers")


def isolated_decisions(cfg: Config, de3: Side, dee: Side, batch: dict) -> dict:
    """The same decisions and one middle layer, each called repeatedly on warm caches (interleaved
    rounds, medians): the lower bound of their cost."""
    layer = max(1, de3.model.num_layers // 2)
    attn = batch["attention_mask"]
    h_in, hidden, mask = _middle_layer_inputs(de3.model, batch, layer)
    states = {k: (s.model.heads.init_state(1, attn.device), s.policy.new_state(1, s.knobs))
              for k, s in (("de3", de3), ("deebert", dee))}

    def decide(k: str, s: Side):
        hs, ps = states[k]
        return lambda: s.policy.step(layer, s.model.heads.forward_layer(layer, hidden, attn, hs), ps, s.knobs)

    fns = {"de3": decide("de3", de3), "deebert": decide("deebert", dee),
           "layer": lambda: de3.model.encoder.layer(layer - 1, h_in, mask)}
    calls = {"de3": cfg.calls_overhead, "deebert": cfg.calls_overhead, "layer": cfg.calls_layer}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(cfg.rounds_overhead + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[k]):
                fn()
            if r:  # round 0 is the warm-up
                times[k].append((time.perf_counter() - t0) / calls[k])
    m = {k: statistics.median(v) for k, v in times.items()}
    return {"isolated_ratio": (m["de3"] - m["deebert"]) / m["layer"],
            "isolated_seconds_de3_decision": m["de3"], "isolated_seconds_deebert_decision": m["deebert"],
            "isolated_seconds_layer": m["layer"]}
