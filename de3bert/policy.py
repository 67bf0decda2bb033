"""The exit-policy interface: one abstract class, run live or replayed over a record.

A policy sees per-layer *signals* (never the model), keeps per-sample state, and returns a
per-sample exit decision for a vector of knob values at once. Shapes: signals are batch-first
`[N, ...]`; knobs are `[K]`; state tensors and decisions are `[K, N]`. Live inference uses K = 1
and drops exited columns from the state; replay runs all K knob values over a whole record.
Layers are 1-based; no policy is asked about the last layer (it always exits).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch

from .options import NoOptions, options_dict, parse_options

State = dict[str, torch.Tensor]


class Faster(str, Enum):
    """Which direction of a knob exits earlier (and so is faster)."""

    LARGER = "larger"
    SMALLER = "smaller"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Knob:
    """A policy's speed knob: its name, valid range, direction and default sweep."""

    name: str
    low: float
    high: float
    faster: Faster  # which direction exits earlier; a plain "larger"/"smaller" is converted
    grid: tuple[float, ...] = ()
    integer: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "faster", Faster(self.faster))
        except ValueError:
            raise ValueError(f"knob {self.name}: faster={self.faster!r}; valid: larger, smaller") from None

    def validate(self, values) -> torch.Tensor:
        """Reject NaN and out-of-range values with a message that names the valid range."""
        t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        for v in t.tolist():
            if math.isnan(v) or not self.low <= v <= self.high or (self.integer and v != int(v)):
                kind = "an integer" if self.integer else "a number"
                raise ValueError(f"knob {self.name}={v} is out of range: it must be {kind} in "
                                 f"[{self.low}, {self.high}] ({self.faster} is faster)")
        return t


class ExitPolicy(ABC):
    """When a sample leaves. Subclasses set `name`, `needs`, `knob` and implement `step`.

    `Options` is the policy's typed options dataclass (unknown keys are rejected); `state_keys`
    names the per-sample state tensors `init_state` returns, each `[K, N, ...]`.
    """

    name: str = ""
    needs: tuple[str, ...] = ("logits",)
    knob: Knob
    supports_regression: bool = False
    Options: ClassVar[type] = NoOptions
    state_keys: tuple[str, ...] = ()

    def __init__(self, num_labels: int, num_layers: int, options=None, **kwargs):
        self.num_labels, self.num_layers = num_labels, num_layers
        self.opts = parse_options(self.Options, options if options is not None else kwargs,
                                  f"policy {self.name}")
        self.options = options_dict(self.opts)
        if num_labels == 1 and not self.supports_regression:
            raise ValueError(f"policy {self.name!r} does not support regression tasks")

    # -- the knob grid --------------------------------------------------------------------------
    def grid(self) -> list[float]:
        """Default sweep of the knob (may depend on the number of layers)."""
        return list(self.knob.grid)

    def dense_grid(self, n: int) -> list[float]:
        """`n` values spread over the knob's range (the benchmark's 100-value sweep)."""
        g = self.grid()
        vals = torch.linspace(min(g), max(g), n, dtype=torch.float64).tolist()
        return [round(v) for v in vals] if self.knob.integer else vals

    # -- the decision ---------------------------------------------------------------------------
    def init_state(self, n: int, knobs: torch.Tensor) -> State:
        """Per-sample state at the start, `[K, N, ...]` tensors named in `state_keys`."""
        return {}

    def new_state(self, n: int, knobs: torch.Tensor) -> State:
        """`init_state`, checked against the declared contract (live and replay both call this)."""
        state = self.init_state(n, knobs)
        if set(state) != set(self.state_keys):
            raise TypeError(f"policy {self.name}: init_state returned keys {sorted(state)}, "
                            f"but state_keys declares {sorted(self.state_keys)}")
        for key, t in state.items():
            if t.dim() < 2 or tuple(t.shape[:2]) != (len(knobs), n):
                raise TypeError(f"policy {self.name}: state {key!r} has shape {tuple(t.shape)}; "
                                f"every state tensor is [K, N, ...] = [{len(knobs)}, {n}, ...] "
                                "(K knob values, N samples)")
        return state

    def first_exit_layer(self, knobs: torch.Tensor) -> int:
        """The earliest 1-based layer at which any of `knobs` can exit. Live inference runs no head
        and asks no decision below it, so a policy may only raise it above 1 if its `step` keeps
        no state and exits nobody on those layers (a fixed-layer rule; 1 by default)."""
        return 1

    @abstractmethod
    def step(self, layer: int, signals: dict[str, torch.Tensor], state: State,
             knobs: torch.Tensor) -> torch.Tensor:
        """Exit decisions `[K, N]` (bool) at 1-based `layer` < L; may update `state` in place."""

    def replay(self, record: dict[str, torch.Tensor], knobs) -> torch.Tensor:
        """Exit layers `[K, N]` (1-based) for every knob value, from a full-depth record.

        `record[name]` is `[L, N, ...]`. Vectorised over samples and knob values; the default
        loops `step` over layers exactly as the live engine does.
        """
        knobs = self.knob.validate(knobs)
        n = record["labels"].shape[0]
        state = self.new_state(n, knobs)
        exit_layer = torch.full((len(knobs), n), self.num_layers, dtype=torch.long)
        done = torch.zeros(len(knobs), n, dtype=torch.bool)
        for layer in range(1, self.num_layers):
            sig = {k: record[k] if k == "labels" else record[k][layer - 1] for k in self.needs}
            decide = self.step(layer, sig, state, knobs) & ~done
            exit_layer[decide] = layer
            done |= decide
        return exit_layer


# ---- shared indicator maths (float32, no NaN for any finite or infinite logits) --------------
def float32(t: torch.Tensor) -> torch.Tensor:
    """`t` as float32, without a conversion call when it already is (the exit path runs per layer)."""
    return t if t.dtype == torch.float32 else t.float()


def finite_logits(logits: torch.Tensor) -> torch.Tensor:
    """Float32 logits with ±inf (e.g. a float16 overflow) mapped to the largest finite values, so
    softmax stays defined; NaN stays NaN (a broken model is not made to look confident)."""
    info = torch.finfo(torch.float32)
    return float32(logits).clamp(info.min, info.max)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of softmax(logits): −Σ p·log p with 0·log 0 = 0 (`special.entr`).

    Three kernels (softmax, entr, sum): the live engine calls this after every layer at batch 1,
    where each extra small op costs more than its arithmetic."""
    return torch.special.entr(finite_logits(logits).softmax(-1)).sum(-1)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy / log C, in [0, 1]."""
    return (entropy(logits) * (1.0 / math.log(logits.shape[-1]))).clamp_(0.0, 1.0)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Class index, or the value itself for a one-output regression head."""
    return logits[..., 0].float() if logits.shape[-1] == 1 else logits.argmax(-1)


class ThresholdPolicy(ExitPolicy):
    """Exit when a per-sample score crosses the knob: `score < knob` (or `>` if `exit_above`)."""

    exit_above = False

    @abstractmethod
    def score(self, layer: int, signals: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample indicator `[N]`."""

    def step(self, layer, signals, state, knobs):
        # knobs are float64 (`Knob.validate`); the comparison promotes the float32 score exactly
        s, k = self.score(layer, signals)[None, :], knobs[:, None]
        return s > k if self.exit_above else s < k


def threshold_grid(high: float, low: float = 0.0) -> list[float]:
    """A sweep for a threshold in [low, high]: 41 even steps plus log-spaced tails near both ends,
    where confident (near `low`) and undecided (near `high`) samples pile up."""
    span = high - low
    values = {low + span * i / 40 for i in range(41)}
    tails = [span * 10 ** (e / 4) for e in range(-20, -4)]
    values |= {low + t for t in tails} | {high - t for t in tails}
    return sorted(round(v, 8) for v in values)
