"""The profile's `serving:` block as a typed dataclass (apart from `benchmarks.serving`, so that
`benchmarks.profiles` can check it without importing the benchmark's machinery)."""

from __future__ import annotations

from dataclasses import dataclass, field

from de3bert.options import parse_options
from de3bert.registry import get_method
from de3bert.serving import SCHEDULERS, Limits


@dataclass(frozen=True)
class ServingSettings:
    """The profile's `serving:` block (absent or empty: no load benchmark); CLI flags override it."""

    tasks: list = field(default_factory=list)
    """Tasks `de3bert run` load-tests after its other work (empty: only `de3bert serve-bench`)."""
    threads: int = 1
    """Torch threads of the server (1: a CPU replica per core, the usual way to serve on CPUs)."""

    loads: list = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    """Offered loads as fractions of the full model's batch-1 capacity (above 1: only batching or
    early exit can keep up, which is what the serving speed-up measures)."""
    slo_ms: float = 0.0
    """p99 latency objective in ms; 0 = 10 × the full model's mean batch-1 service time."""
    refine: int = 0
    """Extra loads bisecting between the highest load that met the SLO and the lowest that
    missed it (each halves the sustainable throughput's uncertainty from the load grid)."""
    duration_s: float = 2.0
    """Seconds of arrivals per load point (bounded by `max_requests`)."""
    max_requests: int = 1500
    """At most this many requests per load point."""
    max_batch: int = 16
    """Largest batch a scheduler forms (dynamic batching and per-layer rebatching)."""
    max_wait_ms: float = 5.0
    """How long a new request may wait for batch-mates."""
    order: str = "fullest"
    """Per-layer rebatching's queue order: fullest or deepest (`de3bert.serving.RebatchScheduler`)."""
    schedulers: list = field(default_factory=lambda: ["batch1", "dynamic", "rebatch"])
    """Schedulers to compare (`de3bert.serving.SCHEDULERS`)."""
    methods: str | list = "main"
    """`all`, `main` (no ablations) or a list of method names (report-only methods never serve)."""
    targets: list = field(default_factory=lambda: [1.5, 2.0])
    """Operating points (layer speed-up targets of the run) to serve each method at."""
    seed: int = 0
    """Seed of the arrival times and of the dev samples each request carries."""
    warmup: int = 16
    """Untimed requests before each contender's sweeps."""

    def check(self, where: str) -> None:
        """Every value in range and every name known, before any work."""
        if not self.loads or not all(isinstance(x, int | float) and x > 0 for x in self.loads):
            raise ValueError(f"{where}: loads={self.loads} must be positive fractions of capacity")
        for key in ("duration_s", "max_wait_ms", "slo_ms"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{where}: {key}={getattr(self, key)} must be ≥ 0")
        if min(self.max_requests, self.max_batch, self.threads) < 1 or min(self.warmup, self.refine) < 0:
            raise ValueError(f"{where}: max_requests, max_batch and threads must be ≥ 1, warmup and "
                             "refine ≥ 0")
        unknown = [s for s in self.schedulers if s not in SCHEDULERS]
        if unknown:
            raise ValueError(f"{where}: unknown scheduler(s) {unknown}; valid: {', '.join(SCHEDULERS)}")
        Limits(self.max_batch, self.max_wait_ms, self.order)
        if isinstance(self.methods, list):
            for m in self.methods:
                get_method(m)
        elif self.methods not in ("all", "main"):
            raise ValueError(f"{where}: methods={self.methods!r}; valid: all, main or a list of names")

    def chooses(self, method) -> bool:
        """Whether a registered method (`de3bert.method.Method`) is served under `methods`
        (report-only methods never are)."""
        if method.report_only:
            return False
        if self.methods == "all":
            return True
        if self.methods == "main":
            return not method.ablation_of
        return method.name in self.methods

    @property
    def limits(self) -> Limits:
        """The schedulers' limits."""
        return Limits(self.max_batch, self.max_wait_ms, self.order)


def parse_settings(values: dict | None, where: str = "serving") -> ServingSettings:
    """`values` (a profile's `serving:` block) typed and checked; unknown keys get a did-you-mean."""
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}")
    s = parse_options(ServingSettings, values or {}, where)
    s.check(where)
    return s
