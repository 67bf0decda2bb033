"""Early exit under a stream of requests: a layer-step engine and three schedulers behind one interface.

The live engine (`engine.live_batch`) runs one batch from embeddings to its last exit. A server
sees requests arrive one by one, so here the unit of work is *one layer of one batch*: a `Cohort`
is the state a batch carries between layers (what `LayerPass` holds, plus each sample's request
id and exit-policy state), `ServingEngine.advance` runs one layer and lets exited samples go, and
`ServingEngine.merge` joins cohorts at the same depth into one batch (hidden states padded to a
common length, masks rebuilt, head and policy state concatenated). A sample's computation never
depends on its batch-mates beyond rounding (~1e-6, `ties.py`), so every scheduler exits every
request where `policy.replay` does, except near ties.

Schedulers (`SCHEDULERS`) decide what runs next; `serve` drives one with requests that become
available at their arrival times on a real clock (open loop), so latency = completion − arrival:

- `batch1`: one request at a time in arrival order (the original repositories' setting);
- `dynamic`: up to `max_batch` requests, started when full or when the oldest has waited
  `max_wait_ms`; the batch shrinks as samples exit and new requests wait for it to finish;
- `rebatch`: per-layer queues; survivors of layer l wait in layer l+1's queue and merge with other
  samples at that depth; `order` picks the queue to run next (see `RebatchScheduler`).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_bidirectional_mask

from .data import collate
from .engine import to_device
from .model import CACHE_KEYS, MultiExitModel
from .policy import ExitPolicy, predictions
from .predict import ScoreTap

ORDERS = ("deepest", "fullest")


@dataclass
class Request:
    """One input as the server receives it: unpadded token features and its arrival time (s)."""

    rid: int
    features: dict[str, list[int]]  # input_ids, attention_mask (and token_type_ids), unpadded
    arrival: float = 0.0


@dataclass
class Done:
    """A finished request: where it exited, its exit layer's logits and prediction, and times (s)."""

    rid: int
    exit_layer: int
    logits: torch.Tensor  # [C] float32 on the CPU, the exit layer's
    prediction: float
    arrival: float
    finish: float = 0.0  # stamped by `serve` when the step that exited it returns
    batch: int = 1  # rows in the batch of the step that exited it

    @property
    def latency(self) -> float:
        """Completion − arrival, in seconds."""
        return self.finish - self.arrival


@dataclass
class Cohort:
    """Samples at the same depth, carried between layers: `LayerPass`'s state plus request ids,
    arrival times and the policy's state (`[1, n, ...]`), so any cohort can merge with another."""

    rids: list[int]
    arrivals: list[float]
    depth: int  # layers done
    hidden: torch.Tensor  # [n, T, H]
    attention_mask: torch.Tensor  # [n, T]
    mask: torch.Tensor | None  # what the library's layers expect (None: no padding under sdpa)
    head_state: dict[str, torch.Tensor]  # batch-first
    pol_state: dict[str, torch.Tensor]  # [K=1, n, ...]
    enqueued: float = 0.0  # the rebatching scheduler's step count when it entered its queue

    def __len__(self) -> int:
        return len(self.rids)


@dataclass(frozen=True)
class Limits:
    """A scheduler's limits: batch size, how long a request may wait for batch-mates, queue order."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    order: str = "fullest"

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch}: it must be at least 1")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms={self.max_wait_ms}: it must be a number ≥ 0")
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}; valid: {', '.join(ORDERS)}")


class ServingEngine:
    """One layer of one batch at a time, for a model, a deployable policy and one knob value."""

    def __init__(self, model: MultiExitModel, policy: ExitPolicy, knob: float, pad_token_id: int = 0):
        """Check the policy can serve (no labels) and fix the first layer whose heads must run."""
        if "labels" in policy.needs:
            raise ValueError(f"policy {policy.name!r} reads the gold labels (an oracle); it cannot serve")
        if isinstance(model.heads, ScoreTap):  # its per-batch row ids cannot follow merged samples;
            model = MultiExitModel(model.encoder, model.heads.inner, model.meta)  # `Done.logits` can
        self.model, self.policy, self.pad = model.eval(), policy, pad_token_id
        self.knobs = policy.knob.validate([knob])
        self.num_layers = model.num_layers
        self.device = next(model.parameters()).device
        # as in `live_batch`: heads with state run at every layer, others from the first exit layer
        stateful = bool(model.heads.init_state(1, self.device))
        self.first = 1 if stateful else min(policy.first_exit_layer(self.knobs), self.num_layers)
        self.wanted = (*policy.needs, "logits")
        self.steps = self.rows = 0  # layer steps run and Σ their batch rows (mean batch = rows/steps)
        self.merges = 0  # batches formed from more than one cohort
        self.seconds = {"embed": 0.0, "layers": 0.0, "merge": 0.0}  # where a server's time goes

    @torch.inference_mode()
    def embed(self, requests: list[Request], now: float = 0.0) -> Cohort:
        """The embeddings of a new batch (depth 0), padded to its longest request."""
        t = time.perf_counter()
        items = [{**r.features, "labels": 0, "index": i} for i, r in enumerate(requests)]
        batch = to_device(collate(items, self.pad), self.model)
        ids, attn = batch["input_ids"], batch["attention_mask"]
        hidden, mask = self.model.encoder.embed(ids, attn, batch.get("token_type_ids"))
        n = len(requests)
        c = Cohort([r.rid for r in requests], [r.arrival for r in requests], 0, hidden, attn, mask,
                   self.model.heads.init_state(n, self.device), self.policy.new_state(n, self.knobs),
                   enqueued=now)
        self.seconds["embed"] += time.perf_counter() - t
        return c

    def advance(self, c: Cohort) -> tuple[Cohort | None, list[Done]]:
        """Run layer `c.depth + 1`: exited samples come back as `Done`, the others as a cohort."""
        t = time.perf_counter()
        out = self._advance(c)
        self.seconds["layers"] += time.perf_counter() - t
        return out

    @torch.inference_mode()
    def _advance(self, c: Cohort) -> tuple[Cohort | None, list[Done]]:
        """`advance` itself (one layer, its heads, the exit decision, the survivors' rows)."""
        layer = c.depth + 1
        self.steps, self.rows = self.steps + 1, self.rows + len(c)
        c.hidden = self.model.encoder.layer(c.depth, c.hidden, c.mask)
        c.depth = layer
        if layer < self.first:
            return c, []
        signals = self.model.heads.forward_layer(layer, c.hidden, c.attention_mask, c.head_state)
        signals = {k: v.cpu() for k, v in signals.items() if k in self.wanted}
        if layer == self.num_layers:
            return None, self._done(c, torch.ones(len(c), dtype=torch.bool), signals["logits"], layer)
        leave = self.policy.step(layer, signals, c.pol_state, self.knobs)[0]
        if not leave.any():
            return c, []
        done = self._done(c, leave, signals["logits"], layer)
        keep = (~leave).nonzero().squeeze(1)
        return (select(c, keep) if keep.numel() else None), done

    def _done(self, c: Cohort, leave: torch.Tensor, logits: torch.Tensor, layer: int) -> list[Done]:
        """`Done` records of the rows `leave` of cohort `c`, exiting at `layer`."""
        rows = leave.nonzero().squeeze(1).tolist()
        preds = predictions(logits).tolist()
        return [Done(c.rids[i], layer, logits[i].float(), preds[i], c.arrivals[i], batch=len(c))
                for i in rows]

    @torch.inference_mode()
    def merge(self, cohorts: list[Cohort], now: float = 0.0) -> Cohort:
        """One batch of cohorts at the same depth, trimmed and padded to their longest real length.

        Padding keys are masked, so a row's values do not depend on how far its batch is padded
        (up to rounding); caches made from the old masks (`CACHE_KEYS`) are dropped and remade.
        """
        if len(cohorts) == 1:
            return cohorts[0]
        depths = {c.depth for c in cohorts}
        if len(depths) != 1:
            raise ValueError(f"cohorts at different depths {sorted(depths)} cannot merge")
        self.merges += 1
        t = time.perf_counter()
        width = max(int(c.attention_mask.sum(1).max()) for c in cohorts)
        hidden = torch.cat([_fit(c.hidden, width) for c in cohorts])
        attn = torch.cat([_fit(c.attention_mask, width) for c in cohorts])
        mask = create_bidirectional_mask(config=self.model.encoder.config, inputs_embeds=hidden,
                                         attention_mask=attn)
        keys = [k for k in cohorts[0].head_state if k not in CACHE_KEYS]
        head = {k: torch.cat([c.head_state[k] for c in cohorts]) for k in keys}
        pol = {k: torch.cat([c.pol_state[k] for c in cohorts], dim=1) for k in cohorts[0].pol_state}
        merged = Cohort([r for c in cohorts for r in c.rids], [a for c in cohorts for a in c.arrivals],
                        depths.pop(), hidden, attn, mask, head, pol, enqueued=now)
        self.seconds["merge"] += time.perf_counter() - t
        return merged


def _fit(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` (`[n, T, ...]`) cut or zero-padded to `width` positions along dim 1."""
    if t.shape[1] >= width:
        return t[:, :width]
    pad = [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]
    return F.pad(t, pad)


def select(c: Cohort, rows: torch.Tensor) -> Cohort:
    """The rows `rows` of a cohort (hidden states, masks, head and policy state alike)."""
    dev = c.hidden.device
    idx = rows.to(dev)
    mask = None if c.mask is None else c.mask.index_select(0, idx)
    rl = rows.tolist()
    return Cohort([c.rids[i] for i in rl], [c.arrivals[i] for i in rl], c.depth,
                  c.hidden.index_select(0, idx), c.attention_mask.index_select(0, idx), mask,
                  {k: v.index_select(0, idx) for k, v in c.head_state.items()},
                  {k: v.index_select(1, rows) for k, v in c.pol_state.items()}, c.enqueued)


# ---- schedulers ----------------------------------------------------------------------------------
class Scheduler(ABC):
    """What runs next. `serve` calls `admit` as requests arrive, `wait` to know whether work is
    ready (0), not yet (seconds until it is) or absent (None), and `step` to run one layer of one
    batch. Keeping the interface to these three calls lets one driver time every scheduler alike."""

    name = ""

    def __init__(self, engine: ServingEngine, limits: Limits | None = None):
        """Hold the engine and the limits (`Limits()` by default)."""
        self.engine, self.limits = engine, limits or Limits()
        self.queue: deque[Request] = deque()

    def admit(self, request: Request, now: float) -> None:
        """A request has arrived: it waits in the (first layer's) queue."""
        self.queue.append(request)

    @abstractmethod
    def wait(self, now: float) -> float | None:
        """0 when `step` has work now; else seconds until it will without new arrivals; None: idle."""

    @abstractmethod
    def step(self, now: float) -> list[Done]:
        """Run one layer of one batch; the requests that exited there."""

    def _admission_wait(self, now: float) -> float | None:
        """Dynamic batching's rule for new requests: go when `max_batch` wait or the oldest has
        waited `max_wait_ms`; the time left until then otherwise."""
        if not self.queue:
            return None
        if len(self.queue) >= self.limits.max_batch:
            return 0.0
        return max(0.0, self.queue[0].arrival + self.limits.max_wait_ms / 1000 - now)

    def _take(self, n: int) -> list[Request]:
        """The `n` oldest waiting requests (fewer if fewer wait)."""
        return [self.queue.popleft() for _ in range(min(n, len(self.queue)))]


class Batch1Scheduler(Scheduler):
    """One request at a time, in arrival order, each to its exit before the next starts."""

    name = "batch1"

    def __init__(self, engine: ServingEngine, limits: Limits | None = None):
        """No batching: the limits are kept only to report them."""
        super().__init__(engine, limits)
        self.current: Cohort | None = None

    def wait(self, now: float) -> float | None:
        """Work whenever a request is in flight or waiting: batch 1 never waits for batch-mates."""
        return 0.0 if self.current is not None or self.queue else None

    def step(self, now: float) -> list[Done]:
        if self.current is None:
            self.current = self.engine.embed(self._take(1), now)
        self.current, done = self.engine.advance(self.current)
        return done


class DynamicScheduler(Scheduler):
    """Up to `max_batch` requests start together (when the batch is full or its oldest request has
    waited `max_wait_ms`); the batch shrinks as samples exit; new requests wait for the next one."""

    name = "dynamic"

    def __init__(self, engine: ServingEngine, limits: Limits | None = None):
        """An empty queue and no batch in flight."""
        super().__init__(engine, limits)
        self.current: Cohort | None = None

    def wait(self, now: float) -> float | None:
        """The batch in flight runs to its end; only then does a new one wait for admission."""
        return 0.0 if self.current is not None else self._admission_wait(now)

    def step(self, now: float) -> list[Done]:
        if self.current is None:
            self.current = self.engine.embed(self._take(self.limits.max_batch), now)
        self.current, done = self.engine.advance(self.current)
        return done


class RebatchScheduler(Scheduler):
    """Per-layer queues: the survivors of layer l wait in layer l+1's queue and merge there with
    samples that reached the same depth from other batches, so batches stay full as samples exit.

    New requests fill layer 1's queue under dynamic batching's admission rule. `order` picks the
    queue: `deepest` runs the deepest non-empty queue (finish started work first; with it a batch
    runs to its end before the next starts, so it is dynamic batching that admits new requests only
    between batches); `fullest` runs the queue with the most samples (ties: the deepest), which is
    what lets later batches catch up with stragglers and merge (sizes count up to `max_batch`: two
    full batches tie, and the deeper one runs), except that a deeper queue whose oldest cohort has
    been passed over for L steps (the steps a new batch needs to catch up from layer 1) goes first,
    so no sample starves. Ageing counts steps, not seconds: a step of a real model can outlast any
    fixed wait, which would then force every straggler to run alone.
    """

    name = "rebatch"

    def __init__(self, engine: ServingEngine, limits: Limits | None = None):
        """One queue of cohorts per depth 1..L−1 (depth 0 is the request queue)."""
        super().__init__(engine, limits)
        self.levels: list[deque[Cohort]] = [deque() for _ in range(engine.num_layers)]
        self.steps = 0  # the clock of the queues' ageing

    def _size(self, depth: int) -> int:
        return sum(len(c) for c in self.levels[depth])

    def wait(self, now: float) -> float | None:
        """Samples already past layer 1 never wait for work; new requests wait for admission."""
        if any(self.levels[1:]):
            return 0.0
        return self._admission_wait(now)

    def _pick(self, now: float) -> int:
        """The depth whose queue runs next (0: new requests)."""
        deep = [d for d in range(1, len(self.levels)) if self.levels[d]]
        admit = self._admission_wait(now) == 0.0
        if not deep:
            return 0
        if self.limits.order == "deepest":
            return max(deep)
        # passed over for L steps (what a new batch needs to catch up from layer 1): it runs now
        patience = self.engine.num_layers
        stale = [d for d in deep if self.steps - self.levels[d][0].enqueued >= patience]
        if stale:
            return max(stale)
        cap = self.limits.max_batch  # beyond a full batch, size does not matter: the deeper goes
        best = max(deep, key=lambda d: (min(self._size(d), cap), d))
        return 0 if admit and min(len(self.queue), cap) > min(self._size(best), cap) else best

    def _pop(self, depth: int, now: float) -> Cohort:
        """Up to `max_batch` samples of a queue (oldest cohorts first; the last one split), merged."""
        level, room, parts = self.levels[depth], self.limits.max_batch, []
        while level and room > 0:
            c = level.popleft()
            if len(c) > room:
                level.appendleft(select(c, torch.arange(room, len(c))))
                c = select(c, torch.arange(room))
            parts.append(c)
            room -= len(c)
        return self.engine.merge(parts, now)

    def step(self, now: float) -> list[Done]:
        depth = self._pick(now)
        if depth == 0:
            cohort = self.engine.embed(self._take(self.limits.max_batch), now)
        else:
            cohort = self._pop(depth, now)
        rest, done = self.engine.advance(cohort)
        self.steps += 1
        if rest is not None:
            rest.enqueued = self.steps
            self.levels[rest.depth].append(rest)
        return done


SCHEDULERS: dict[str, type[Scheduler]] = {s.name: s for s in (Batch1Scheduler, DynamicScheduler,
                                                              RebatchScheduler)}


def make_scheduler(name: str, engine: ServingEngine, limits: Limits | None = None) -> Scheduler:
    """A scheduler by name (`batch1`, `dynamic`, `rebatch`); an unknown name lists the valid ones."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](engine, limits)


# ---- the open-loop driver ------------------------------------------------------------------------
@dataclass
class ServeStats:
    """What one `serve` run measured besides the completions: wall time and the steps it ran."""

    seconds: float = 0.0
    steps: int = 0  # layer steps run
    rows: int = 0  # Σ batch rows over those steps (rows / steps = the mean batch)
    idle: float = 0.0  # seconds spent sleeping for arrivals or batch-mates
    completions: list[Done] = field(default_factory=list)


def precise_sleep(seconds: float, spin: float = 3e-3, clock: Callable[[], float] = time.perf_counter) -> None:
    """Sleep, then spin for the last `spin` s: the OS wakes a sleeper late (on a 2-core VM: 0.2 ms
    at the median, 2-3 ms at the p99), which would otherwise be the load generator's own share of
    every latency (a 0.2 ms spin left 2.8% of a 17.7 ms batch-1 service time)."""
    end = clock() + seconds
    if seconds > spin:
        time.sleep(seconds - spin)
    while clock() < end:
        pass


def serve(scheduler: Scheduler, requests: Iterable[Request],
          clock: Callable[[], float] = time.perf_counter,
          sleep: Callable[[float], None] = time.sleep) -> ServeStats:
    """Drive `scheduler` with requests that become available at their `arrival` (seconds after the
    start, on the real `clock`): an open loop, so a slow server does not slow the arrivals and
    every latency is completion − arrival. Returns when every request has finished."""
    pending = sorted(requests, key=lambda r: r.arrival)
    engine = scheduler.engine
    steps0, rows0 = engine.steps, engine.rows
    stats, i, t0 = ServeStats(), 0, clock()
    while True:
        now = clock() - t0
        while i < len(pending) and pending[i].arrival <= now:
            scheduler.admit(pending[i], now)
            i += 1
        wait = scheduler.wait(now)
        if wait == 0.0:
            done = scheduler.step(now)
            finish = clock() - t0
            for d in done:
                d.finish = finish
            stats.completions.extend(done)
            continue
        until_arrival = pending[i].arrival - now if i < len(pending) else None
        delays = [d for d in (wait, until_arrival) if d is not None]
        if not delays:
            break
        idle_start = clock()
        sleep(max(0.0, min(delays)))
        stats.idle += clock() - idle_start
    stats.seconds = clock() - t0
    stats.steps, stats.rows = engine.steps - steps0, engine.rows - rows0
    return stats


# ---- a live server loop (HTTP): the same scheduler, fed from other threads ----------------------
class ServerLoop:
    """A scheduler run by one background thread and fed from any thread (an HTTP server's).

    `submit` stamps the request's arrival on the loop's clock and returns at once; the thread admits
    it, runs steps while the scheduler has work, sleeps on the inbox while it has none, and calls
    each request's callback (in the loop thread) with its `Done`. One thread owns the model, so
    the scheduler, not the web framework, decides what runs together.
    """

    def __init__(self, scheduler: Scheduler, clock: Callable[[], float] = time.perf_counter):
        """Hold the scheduler; `start` launches the thread."""
        self.scheduler, self.clock, self.t0 = scheduler, clock, clock()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.callbacks: dict[int, Callable[[Done | BaseException], None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="de3bert-serving", daemon=True)
        self._ids = itertools.count()  # request ids, safe to draw from any thread
        self.served = 0
        self.error: BaseException | None = None

    def start(self) -> ServerLoop:
        """Launch the loop thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait for it (requests still queued are dropped)."""
        self._stop.set()
        self.inbox.put(None)
        self._thread.join(timeout)

    def submit(self, features: dict[str, list[int]], callback: Callable[[Done | BaseException], None]) -> int:
        """Queue one tokenised input; `callback(done)` runs in the loop thread when it exits (with
        the exception instead if the loop failed, so no caller waits for ever)."""
        if self.error is not None:
            raise RuntimeError(f"the serving loop failed: {self.error!r}")
        rid = next(self._ids)
        self.inbox.put((Request(rid, features, self.clock() - self.t0), callback))
        return rid

    def _admit(self, block: float | None) -> None:
        """Move submitted requests into the scheduler (waiting up to `block` s for the first)."""
        try:
            item = self.inbox.get(timeout=block) if block is None or block > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            request, callback = item
            self.callbacks[request.rid] = callback
            self.scheduler.admit(request, self.clock() - self.t0)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _run(self) -> None:
        """Admit, step while there is work, finish requests; sleep on the inbox otherwise."""
        try:
            while not self._stop.is_set():
                now = self.clock() - self.t0
                wait = self.scheduler.wait(now)
                self._admit(0.0 if wait == 0.0 else wait)
                if self._stop.is_set() or self.scheduler.wait(self.clock() - self.t0) != 0.0:
                    continue
                done = self.scheduler.step(self.clock() - self.t0)
                finish = self.clock() - self.t0
                for d in done:
                    d.finish = finish
                    self.served += 1
                    self.callbacks.pop(d.rid)(d)
        except BaseException as err:  # surfaced by /health; the thread must not die silently
            self.error = err
            for callback in self.callbacks.values():
                callback(err)
            self.callbacks.clear()
            traceback.print_exc()  # the server's log; the thread then ends
