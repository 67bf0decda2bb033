"""DE³-BERT: the `de3` training recipe (weighted CE + β·DAR), the EDR exit policy and ablations.

Every choice the paper's public summary leaves open is an option here with the spec's default
(marked [ours] in docs/method.md):
  proto_dim = hidden size, gamma = 0.1, distance = euclidean, dar = protonet (T = 1),
  margin = 1.0, beta = 1.0, layer_weights = uniform, recompute_prototypes = false,
  proto_last_layer = false (prototypes and DAR on layers 1..L−1), lambda = 1.0,
  entropy normalized by log C, r₂ = nearest *other* prototype, and DAR's own choices
  (dar_distance, dar_temperature, dar_through; issue 25, docs/method.md).
The earlier defaults are ablations: `de3-v1defaults` (linear weights, recomputed prototypes, a
prototype head at layer L) and `de3-v2defaults` (DAR on plain Euclidean distances through the
shared pooler, which collapsed CoLA's features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .method import Method
from .model import MultiExitModel
from .policy import (
    Knob,
    ThresholdPolicy,
    entropy,
    float32,
    normalized_entropy,
    predictions,
    threshold_grid,
)
from .prototypes import PrototypeHeads, pairwise_distance
from .recipes import Recipe, Stage, all_parameters, task_loss

EPS = 1e-12
FLOAT_MAX = torch.finfo(torch.float32).max
ONE = torch.ones(())  # the constant term of torch.addcdiv


@dataclass(frozen=True)
class De3Options:
    """Options of the `de3` recipe: every choice the paper leaves open (README, reconstruction)."""

    beta: float = 1.0
    """Weight of DAR in the loss."""
    gamma: float = 0.1
    """Prototype moving-average rate γ ∈ (0, 1]."""
    dar: Literal["protonet", "margin"] = "protonet"
    """DAR form: CE over softmax(−d/T), or a hinge with margin μ."""
    distance: Literal["euclidean", "cosine"] = "euclidean"
    """Distance between a mapped feature and a prototype."""
    dar_distance: Literal["squared", "euclidean", "cosine"] = "squared"
    """Distance inside DAR's softmax: squared Euclidean (Snell et al. 2017, eq. 2 — a linear
    classifier in the metric space whose margin grows with the features), plain Euclidean (the
    v2 reconstruction) or cosine; the DR indicator keeps `distance`."""
    dar_temperature: float = 1.0
    """T > 0 of the protonet DAR: softmax(−d/T) (Snell et al.: T = 1)."""
    dar_through: Literal["all", "projection", "own_pooler"] = "projection"
    """Where DAR's gradient goes: backbone + shared pooler + map g (all), the map g only
    (projection: the metric space reads a detached pooled feature), or the backbone through a
    pooler of the prototype branch's own (own_pooler: the classifiers' shared pooler is untouched)."""
    margin: float = 1.0
    """μ of the margin DAR."""
    proto_dim: int = 0
    """Metric-space dimension d (0 = hidden size)."""
    protonet: bool = True
    """Learned linear map g (False: identity, the `de3-noproto` ablation)."""
    recompute_prototypes: bool = False
    """Exact class means over the training set after training (default: EMA prototypes as trained)."""
    layer_weights: Literal["linear", "uniform"] = "uniform"
    """Per-layer loss weights: 1 (uniform, the first author's COSEE/NSP convention) or m (linear)."""
    proto_last_layer: bool = False
    """A prototypical network (and DAR) at layer L too (default: layers 1..L−1 only)."""


@dataclass(frozen=True)
class EDROptions:
    """Options of the EDR policy."""

    lam: float = 1.0
    """λ ≥ 0: weight of DR in the harmonic mean (0 = normalized entropy only)."""
    indicator: Literal["edr", "dr", "entropy"] = "edr"
    """Which indicator to threshold (the DR-only and entropy-only ablations)."""


# ---- the indicator -----------------------------------------------------------------------------
def distance_ratio(proto_dist: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """DR = ½(1 + (r₁ − r₂)/max(r₁, r₂)), r₁ = distance to the predicted class's prototype,
    r₂ = distance to the nearest other prototype. In [0, 1]; 0.5 when r₁ = r₂ (also both 0).

    Distances are clamped to [EPS, float32 max] first: an infinite distance (overflow) then
    dominates as a huge finite one does (DR → 0 or 1, equal infinities 0.5), a cosine distance
    rounded below 0 counts as ~0, distances both below EPS are equal, and there is no 0/0.
    NaN gives 0.5. Every step is one kernel on `[N, C]` or `[N]` tensors: this runs after every
    layer.
    """
    return twice_dr(proto_dist, logits).nan_to_num_(1.0).mul_(0.5)


def twice_dr(proto_dist: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """2·DR = 1 + (r₁ − r₂)/max(r₁, r₂) `[N]`, on distances clamped to [EPS, float32 max]; NaN
    stays NaN. Shared by `distance_ratio` and the fused `edr_score`."""
    d = float32(proto_dist).clamp(EPS, FLOAT_MAX)
    pred = logits.argmax(-1, keepdim=True)
    r1, r2 = d.gather(-1, pred), d.scatter(-1, pred, float("inf")).amin(-1, keepdim=True)
    return torch.addcdiv(ONE, r1 - r2, torch.maximum(r1, r2)).squeeze(-1)


def edr(entropy_n: torch.Tensor, dr: torch.Tensor, lam: float) -> torch.Tensor:
    """Weighted harmonic mean (λ+1)/(λ/DR + 1/Entropy) = (λ+1)·DR·H/(λ·H + DR), in [0, 1].

    λ = 0 is the normalized entropy itself; a zero component gives 0 (the denominator is
    clamped to EPS, where the numerator is already 0), so no NaN and no division by 0.
    """
    h, r = float32(entropy_n), float32(dr)
    if lam == 0:
        return h
    return (r * h).div_(torch.add(r, h, alpha=lam).clamp_min_(EPS)).mul_(lam + 1).clamp_(0.0, 1.0)


def edr_score(logits: torch.Tensor, proto_dist: torch.Tensor, lam: float) -> torch.Tensor:
    """`edr(normalized_entropy(logits), distance_ratio(proto_dist, logits), lam)` in one pass (λ > 0).

    With S = entropy in nats and a = 2·DR = 1 + (r₁ − r₂)/max(r₁, r₂), EDR = (λ+1)·a·S / (2λ·S +
    a·ln C): the ½ of DR and the ln C of the entropy fold into the harmonic mean, so the decision
    after every layer runs 18 small kernels instead of 22 (tested equal to the three-step form).
    Unlike `distance_ratio` alone, a NaN distance gives NaN (never exits), like NaN logits do.
    """
    s, a = entropy(logits), twice_dr(proto_dist, logits)
    log_c = math.log(logits.shape[-1])
    den = torch.add(a, s, alpha=2 * lam / log_c).clamp_min_(EPS)
    return (a * s).div_(den).mul_((lam + 1) / log_c).clamp_(0.0, 1.0)


class EDRPolicy(ThresholdPolicy):
    """DE³-BERT: exit when EDR = harmonic mix of normalized entropy and DR is below τ."""

    name = "edr"
    needs = ("logits", "proto_dist")
    knob = Knob("tau", 0.0, 1.0, "larger")

    Options = EDROptions

    def __init__(self, num_labels, num_layers, options=None, **kwargs):
        super().__init__(num_labels, num_layers, options, **kwargs)
        if not self.opts.lam >= 0:
            raise ValueError(f"lambda={self.opts.lam} must be >= 0")
        self.lam, self.indicator = float(self.opts.lam), self.opts.indicator

    def grid(self):
        return threshold_grid(1.0)

    def score(self, layer, signals):
        if self.indicator == "edr" and self.lam > 0:
            return edr_score(signals["logits"], signals["proto_dist"], self.lam)
        if self.indicator == "dr":
            return distance_ratio(signals["proto_dist"], signals["logits"])
        return normalized_entropy(signals["logits"])  # indicator "entropy", or EDR with λ = 0


# ---- the training objective ---------------------------------------------------------------------
def dar_distances(z: torch.Tensor, prototypes: torch.Tensor, kind: str) -> torch.Tensor:
    """`[N, C]` distances inside DAR (float32): `squared` is ‖z − c_k‖² as in Snell et al.; the
    prototypes are buffers, so the gradient reaches z (and what produced it) only."""
    if kind == "squared":
        return (float32(z)[:, None, :] - float32(prototypes)[None]).pow(2).sum(-1)
    return pairwise_distance(z, prototypes, kind)


def _dar_input(signals: dict, prototypes: torch.Tensor, kind: str, indicator_distance: str) -> torch.Tensor:
    """DAR's distances from the metric-space features a training pass emits (`_z`); an eval pass
    has only the indicator's `proto_dist`, which serves when it is the same distance (or its root)."""
    if "_z" in signals:
        return dar_distances(signals["_z"], prototypes, kind)
    if kind == indicator_distance:
        return signals["proto_dist"]
    if kind == "squared" and indicator_distance == "euclidean":
        return signals["proto_dist"].pow(2)
    raise ValueError(f"DAR on {kind} distances needs the features of a training pass")


def dar_loss(proto_dist: torch.Tensor, labels: torch.Tensor, kind: str, temperature: float,
             margin: float) -> torch.Tensor:
    """Distance-aware regularization: pull a sample to its class prototype, push it from others."""
    if kind == "protonet":
        return F.cross_entropy(-proto_dist / temperature, labels)
    if kind == "margin":
        own = proto_dist.gather(-1, labels[:, None]).squeeze(-1)
        other = proto_dist.scatter(-1, labels[:, None], float("inf")).min(-1).values
        return F.relu(margin + own - other).mean()
    raise ValueError(f"unknown dar {kind!r}; valid: protonet, margin")


def de3_loss(model: MultiExitModel, signals, labels, step) -> torch.Tensor:
    """Σ_m w_m (CE_m + β·DAR_m) / Σ_m w_m; DAR only on layers with a prototypical network, and
    skipped for a layer whose prototypes are unset."""
    opts, heads = model.meta, model.heads
    total, norm = 0.0, 0.0
    for m, s in enumerate(signals):
        w = float(m + 1) if opts["layer_weights"] == "linear" else 1.0
        term = task_loss(s["logits"], labels)
        if opts["beta"] > 0 and heads.has_protos(m + 1) and bool(heads.proto_set[m].all()):
            dist = _dar_input(s, heads.prototypes[m], opts["dar_distance"], opts["distance"])
            term = term + opts["beta"] * dar_loss(dist, labels, opts["dar"],
                                                  opts["dar_temperature"], opts["margin"])
        total, norm = total + w * term, norm + w
    return total / norm


class De3(Recipe):
    """DE³-BERT training: every parameter, layer-weighted CE + β·DAR, prototypes by EMA."""

    name = "de3"
    supports_regression = False
    Options = De3Options
    overrides: dict = {}

    def build(self, encoder, meta):
        return super().build(encoder, {**meta, **self.overrides})  # the ablation's values win

    def heads(self, encoder, meta):
        if meta["num_labels"] < 2:
            raise ValueError("DE³-BERT needs classes (prototypes); regression tasks are not supported")
        return PrototypeHeads(encoder, meta["num_labels"], meta["pooling"], proto_dim=meta["proto_dim"],
                              protonet=meta["protonet"], gamma=meta["gamma"], distance=meta["distance"],
                              last_layer=meta["proto_last_layer"], through=meta["dar_through"])

    def parse_options(self, values):
        """The typed options, plus the checks a type cannot express (T > 0, a map to train)."""
        opts = super().parse_options(values)
        if not opts.dar_temperature > 0:
            raise ValueError(f"recipe {self.name}: option dar_temperature={opts.dar_temperature} must be > 0")
        if opts.dar_through == "projection" and not opts.protonet:
            raise ValueError(f"recipe {self.name}: dar_through=projection needs a prototype projection "
                             "(protonet: true); with the identity map DAR would train nothing")
        return opts

    def stages(self):
        return [Stage("joint", all_parameters, de3_loss)]

    def after_training(self, model, train_loader, accelerator=None):
        if model.meta["recompute_prototypes"]:
            device = accelerator.device if accelerator is not None else None
            model.heads.recompute(model, train_loader, device)


class De3NoDar(De3):
    """Ablation w/o DAR: β = 0 (prototypes still tracked by EMA), trained separately."""

    name = "de3-nodar"
    overrides = {"beta": 0.0}


class De3V1Defaults(De3):
    """Ablation: the defaults before issue 16 (layer-linear loss weights, prototypes recomputed as
    exact class means after training, a prototypical network and DAR at layer L too)."""

    name = "de3-v1defaults"
    overrides = {"layer_weights": "linear", "recompute_prototypes": True, "proto_last_layer": True}


class De3V2Defaults(De3):
    """Ablation: the defaults before issue 25 (DAR = softmax over plain Euclidean distances,
    T = 1, its gradient through the shared pooler every classifier reads)."""

    name = "de3-v2defaults"
    overrides = {"dar_distance": "euclidean", "dar_temperature": 1.0, "dar_through": "all"}


class De3NoProtonet(De3):
    """Ablation w/o prototypical network: g = identity, distances on the pooled feature."""

    name = "de3-noproto"
    # with the identity map there is no projection to train: DAR shapes the pooled feature itself
    overrides = {"protonet": False, "dar_through": "all"}


METHOD = Method("de3", "de3", EDRPolicy, "DE³-BERT: EDR (entropy + prototype distance ratio) < tau",
                {"lam": 1.0}, family="de3")
ABLATIONS = {m.name: m for m in (
    Method("de3-entropy", "de3", EDRPolicy, "DE³ ablation w/o DR: normalized entropy only (λ=0)",
           {"lam": 0.0, "indicator": "entropy"}, family="de3", ablation_of="de3"),
    Method("de3-dr", "de3", EDRPolicy, "DE³ ablation: distance ratio only", {"indicator": "dr"},
           family="de3", ablation_of="de3"),
    Method("de3-nodar", "de3-nodar", EDRPolicy, "DE³ ablation w/o DAR (β=0, separate training)",
           {"lam": 1.0}, family="de3", ablation_of="de3"),
    Method("de3-noproto", "de3-noproto", EDRPolicy, "DE³ ablation w/o prototypical network (identity map)",
           {"lam": 1.0}, family="de3", ablation_of="de3"),
    Method("de3-v1defaults", "de3-v1defaults", EDRPolicy,
           "DE³ with the earlier defaults (linear weights, recomputed prototypes, prototypes at layer L)",
           {"lam": 1.0}, family="de3", ablation_of="de3"),
    Method("de3-v2defaults", "de3-v2defaults", EDRPolicy,
           "DE³ with the v2 DAR (plain Euclidean softmax through the shared pooler)",
           {"lam": 1.0}, family="de3", ablation_of="de3"),
    *(Method(f"de3-lambda{lam:g}", "de3", EDRPolicy, f"DE³ λ sweep: λ = {lam:g}", {"lam": lam},
             family="de3", ablation_of="de3") for lam in (0.25, 0.5, 2.0, 4.0)),
)}

__all__ = ["EDRPolicy", "distance_ratio", "edr", "edr_score", "dar_loss", "predictions"]
