"""pytest options and fixtures for the performance targets in `bench_targets.py`.

Only loaded when a path under `benchmarks/` is on the command line: the default test run
(`testpaths = tests`) never sees this file.

`--tiny` (or the environment variable `DE3_BENCH_TINY=1`) swaps in the tiny random backbone and a
handful of samples so the whole benchmark file smoke-runs in seconds; goals are then recorded but
not asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--tiny", action="store_true", default=False,
                     help="DE³ benchmarks: tiny random backbone and few samples (smoke run; goals "
                          "not asserted). Same as DE3_BENCH_TINY=1.")


def pytest_configure(config):
    # `--benchmark-json=results/benchmarks/<commit>.json`: make sure the directory exists
    out = config.getoption("benchmark_json", default=None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)


def pytest_collect_file(file_path, parent):
    """Collect `bench_*.py` when the directory is given (`pytest benchmarks`); a file named on
    the command line is collected by pytest itself."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def tiny_mode(config) -> bool:
    return bool(config.getoption("--tiny")) or os.environ.get("DE3_BENCH_TINY", "") not in ("", "0")


@pytest.fixture(scope="session")
def bench_tiny(pytestconfig) -> bool:
    """True in smoke mode (`--tiny` or DE3_BENCH_TINY=1)."""
    return tiny_mode(pytestconfig)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """$GLUE_DIR, else ../shared/glue_data; skip when neither holds MRPC."""
    for cand in (os.environ.get("GLUE_DIR"), REPO_ROOT / ".." / "shared" / "glue_data"):
        if cand and (Path(cand) / "MRPC" / "dev.tsv").is_file():
            return Path(cand).resolve()
    pytest.skip("MRPC dev data not found: set GLUE_DIR or provide ../shared/glue_data")
