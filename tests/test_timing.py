"""The interleaving primitive shared by `compare_wallclock` and the pytest-benchmark targets."""

from de3bert.timing import interleave


def test_interleave_alternates_chunk_by_chunk():
    """Reference then candidate on each chunk in turn, `repeats` times over all chunks."""
    calls = []
    t = interleave(["a", "b"], lambda c: calls.append(("ref", c)),
                   lambda c: calls.append(("cand", c)) or c * 2, repeats=2)
    assert calls == [("ref", "a"), ("cand", "a"), ("ref", "b"), ("cand", "b")] * 2
    assert [len(x) for x in t.reference] == [2, 2] and [len(x) for x in t.candidate] == [2, 2]
    assert t.outputs == ["aa", "bb"] and len(t.paired()) == 4
    assert t.seconds("reference") > 0 and t.seconds("candidate") > 0


def test_interleave_completes_chunks_a_driver_skipped():
    """A driver that runs a single round (`--benchmark-disable`) still leaves every chunk timed."""

    def one_round(candidate, setup, rounds):
        setup()
        candidate()

    t = interleave([1, 2, 3], lambda c: None, lambda c: c, repeats=5, driver=one_round)
    assert t.outputs == [1, 2, 3] and all(len(x) == 1 for x in t.candidate)
