"""The interleaving primitive shared by `compare_wallclock` and the pytest-benchmark targets."""

from de3bert.timing import DeviceClock, interleave

CPU = DeviceClock("cpu")


def test_interleave_alternates_chunk_by_chunk():
    """Reference then candidate on each chunk in turn, `repeats` times over all chunks."""
    calls = []
    t = interleave(["a", "b"], lambda c: calls.append(("ref", c)),
                   lambda c: calls.append(("cand", c)) or c * 2, repeats=2, clock=CPU)
    assert calls == [("ref", "a"), ("cand", "a"), ("ref", "b"), ("cand", "b")] * 2
    assert [len(x) for x in t.reference] == [2, 2] and [len(x) for x in t.candidate] == [2, 2]
    assert t.outputs == ["aa", "bb"] and len(t.paired()) == 4
    assert t.seconds("reference") > 0 and t.seconds("candidate") > 0


def test_interleave_completes_chunks_a_driver_skipped():
    """A driver that runs a single round (`--benchmark-disable`) still leaves every chunk timed."""

    def one_round(candidate, setup, rounds):
        setup()
        candidate()

    t = interleave([1, 2, 3], lambda c: None, lambda c: c, repeats=5, clock=CPU, driver=one_round)
    assert t.outputs == [1, 2, 3] and all(len(x) == 1 for x in t.candidate)


def test_compare_wallclock_times_both_models_on_the_same_samples_and_returns_live_exits(tiny_encoder,
                                                                                        synthetic_dataset):
    """The runner's live timing: ratio of medians, the live exit layers (= replay), the settings."""
    import torch

    from de3bert.engine import record_signals
    from de3bert.recipes import get_recipe
    from de3bert.registry import get_method
    from de3bert.timing import batches_of, compare_wallclock

    model = get_recipe("weighted").build(tiny_encoder(seed=2), {"num_labels": 2, "pooling": "mean"}).eval()
    items = [synthetic_dataset[i] for i in range(12)]
    policy = get_method("pabee").make_policy(2, model.num_layers)
    out = compare_wallclock(model, model, policy, 1, items, batch_size=4, repeats=2, warmup=1)
    assert out["speedup"] == out["seconds_full"] / out["seconds_exit"] > 0
    assert (out["batch_size"], out["repeats"], out["samples"]) == (4, 2, 12)
    assert out["threads"] == torch.get_num_threads()
    replayed = policy.replay(record_signals(model, batches_of(items, 4), progress=False), [1])[0]
    assert out["exit_layers"] == replayed.tolist()


def test_a_gpu_is_timed_with_cuda_events_after_a_synchronise(monkeypatch):
    """On CUDA the host clock would stop before the queued kernels ran: the clock records events
    around the call and reads them after synchronising (faked here; no GPU on the CI machine)."""
    import torch

    from de3bert.timing import DeviceClock

    log = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.name = "start" if not any(e == "new" for e in log) else "end"
            log.append("new")

        def record(self):
            log.append(f"record {self.name}")

        def synchronize(self):
            log.append(f"sync {self.name}")

        def elapsed_time(self, other):
            return 250.0  # milliseconds

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: log.append("sync device"))
    seconds, out = DeviceClock("cuda:0").measure(lambda x: log.append("work") or x + 1, 1)
    assert (seconds, out) == (0.25, 2)
    assert log == ["sync device", "new", "new", "record start", "work", "record end", "sync end"]
    cpu_seconds, _ = DeviceClock("cpu").measure(lambda x: x, 1)
    assert 0 <= cpu_seconds < 0.1 and log.count("work") == 1  # the CPU clock never touches CUDA


def test_a_gpu_clock_read_waits_for_queued_work(monkeypatch):
    """`DeviceClock.now` (the indicator-overhead target's clock) synchronises on CUDA only."""
    import torch

    from de3bert.timing import DeviceClock

    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: syncs.append(1))
    a = DeviceClock("cuda:0").now()
    DeviceClock("cpu").now()
    assert syncs == [1] and DeviceClock("cuda:0").now() >= a and syncs == [1, 1]
