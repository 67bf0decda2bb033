"""Load: serving through the live engine keeps memory flat (a fast version of
`python -m benchmarks.load_test`, which serves 10,000 samples).

Memory is judged in a fresh process: a long-lived pytest process has freed-but-resident heap
that a leak could reuse without growing the RSS, which would make the check blind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import load_test
from de3bert.data import synthetic_examples
from de3bert.registry import get_method

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.load_test", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_memory_is_flat_over_2000_samples():
    done = _script("--samples", "2000", "--mark", "1000", "--max-growth-mb", "30")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:2] in ("1 ", "32")]
    assert [r[0] for r in rows] == ["1", "32"] and all(r[1] == "2000" for r in rows), done.stdout


def test_an_injected_leak_is_caught():
    """The check is not vacuous: 40 KB kept per sample after the mark (~40 MB) fails it."""
    done = _script("--samples", "2000", "--mark", "1000", "--batch-sizes", "32", "--max-growth-mb", "30",
                   "--leak-kb", "40")
    assert done.returncode == 1 and "FAIL batch 32" in done.stdout, done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("batch_size", [1, 32])
def test_serving_counts_every_sample_and_shrinks_batches(batch_size):
    model, tok = load_test.tiny_model("pabee")
    policy = get_method("pabee").make_policy(2, model.num_layers)
    examples = synthetic_examples("dev", 500, 0)
    r = load_test.serve(model, policy, 1, tok, examples, batch_size, mark=250)
    assert r.samples == 500 and sum(r.exit_histogram) == 500
    assert r.exit_histogram[-1] < 500  # samples left early
    assert r.throughput > 0 and set(r.rss) == set(r.peak) == {"start", "mark", "end"}
    assert r.growth_mb < 30.0, load_test.table([r])  # generous; the fresh-process test is the real check


def test_script_exit_status(capsys):
    assert load_test.main(["--samples", "200", "--mark", "100", "--batch-sizes", "32"]) == 0
    assert "ok: RSS growth" in capsys.readouterr().out
    assert load_test.main(["--samples", "200", "--mark", "100", "--batch-sizes", "32",
                           "--max-growth-mb", "-1"]) == 1
    assert "FAIL batch 32" in capsys.readouterr().out
