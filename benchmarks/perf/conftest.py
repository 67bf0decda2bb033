"""pytest options and the session fixtures shared by every performance target in this folder.

Only loaded when `benchmarks/perf` (or a file in it) is on the command line: the default test run
(`testpaths = tests`) never sees this folder, and its files are named `bench_*.py`, which pytest
does not collect by itself (the hook below collects them here).

`--tiny` (or the environment variable `DE3_BENCH_TINY=1`) swaps in the tiny random backbone and a
handful of samples so the whole suite smoke-runs in seconds; goals are then recorded but not
asserted. Models, records and operating points are built once per session and shared by all files.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from de3bert.backbone import LayerwiseEncoder, load_encoder, load_tokenizer  # noqa: E402
from de3bert.data import EncodedDataset, Example, get_task, load_examples, make_loader, resolve_data_dir  # noqa: E402
from de3bert.engine import record_signals  # noqa: E402
from de3bert.model import MultiExitModel  # noqa: E402
from de3bert.registry import all_methods, get_method, get_recipe  # noqa: E402
from de3bert.timing import batches_of  # noqa: E402

from .common import (  # noqa: E402
    DEPLOYABLE,
    SEED,
    TRAINED_ROOT,
    TRAINED_SEED,
    Config,
    OperatingPoint,
    find_operating_point,
    fixed_length_items,
    make_config,
)

#: run order of the target files (as in the one-file suite: replay first, the overhead last)
TARGET_ORDER = ("bench_replay_sweep", "bench_wallclock_fidelity", "bench_batched_early_exit",
                "bench_indicator_overhead", "bench_wallclock_real", "bench_train_throughput")


def pytest_addoption(parser):
    """`--tiny`: the smoke-run switch."""
    parser.addoption("--tiny", action="store_true", default=False,
                     help="DE³ benchmarks: tiny random backbone and few samples (smoke run; goals "
                          "not asserted). Same as DE3_BENCH_TINY=1.")


def pytest_configure(config):
    """`--benchmark-json=results/benchmarks/<commit>.json`: make sure the directory exists."""
    out = config.getoption("benchmark_json", default=None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)


def pytest_collect_file(file_path, parent):
    """Collect `bench_*.py` when the folder is given; a file named on the command line is
    collected by pytest itself."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(items):
    """Run the targets in `TARGET_ORDER` (the shared fixtures are then built at the same point of
    the run as before the split), whatever the alphabetical order of their files."""
    rank = {name: i for i, name in enumerate(TARGET_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def tiny_mode(config) -> bool:
    """True when `--tiny` is given or DE3_BENCH_TINY is set (to anything but 0)."""
    return bool(config.getoption("--tiny")) or os.environ.get("DE3_BENCH_TINY", "") not in ("", "0")


@pytest.fixture(scope="session")
def bench_tiny(pytestconfig) -> bool:
    """True in smoke mode (`--tiny` or DE3_BENCH_TINY=1)."""
    return tiny_mode(pytestconfig)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The local GLUE copy (`resolve_data_dir`); skip when it does not hold MRPC."""
    cand = resolve_data_dir()
    if cand and (Path(cand) / "MRPC" / "dev.tsv").is_file():
        return Path(cand).resolve()
    pytest.skip("MRPC dev data not found: set GLUE_DIR or link a glue_data/ folder into the checkout")


@pytest.fixture(scope="session")
def cfg(bench_tiny) -> Config:
    """The run sizes; 2 torch threads as in the default profile (1 for the tiny smoke run)."""
    torch.set_num_threads(1 if bench_tiny else min(2, os.cpu_count() or 1))
    return make_config(bench_tiny)


@pytest.fixture(scope="session")
def tokenizer(cfg):
    """The backbone's tokenizer."""
    return load_tokenizer(cfg.backbone)


def _calibration_loader(cfg: Config, glue_dir: Path, tokenizer):
    """A few MRPC train pairs for a random-init model's `after_training` step."""
    train = load_examples(get_task("mrpc"), "train", glue_dir, cfg.calibration_pairs, seed=0)
    return make_loader(EncodedDataset(train, tokenizer, 128, regression=False), 32, shuffle=False,
                       pad_token_id=tokenizer.pad_token_id or 0)


@pytest.fixture(scope="session")
def models(cfg, glue_dir, tokenizer) -> tuple[dict[str, MultiExitModel], dict[str, str]]:
    """Every recipe's model (plus `single`, the full-model reference) and where it came from.

    A random-init model still gets its recipe's `after_training` step on a few MRPC train pairs
    (DE³: prototypes = class means of the projected features; a no-op for the other recipes), so
    that DE³'s distance ratio is not a constant 0.5 from all-zero prototypes.
    """
    recipes = sorted({m.recipe for m in all_methods().values()} | {"single"})
    models, sources, shared, calib = {}, {}, None, None
    for i, recipe in enumerate(recipes):
        path = TRAINED_ROOT / f"{recipe}-s{TRAINED_SEED}" / "final"
        if not cfg.tiny and (path / "model.safetensors").is_file():
            models[recipe] = MultiExitModel.load(path)
            sources[recipe] = f"trained: {path}"
            continue
        if shared is None:  # random-init heads share one (pre-trained or tiny random) encoder
            torch.manual_seed(SEED)
            shared = LayerwiseEncoder(load_encoder(cfg.backbone))
            calib = _calibration_loader(cfg, glue_dir, tokenizer)
        torch.manual_seed(SEED + i)
        meta = {"backbone": cfg.backbone, "num_labels": 2, "pooling": "mean"}
        model = get_recipe(recipe).build(shared, meta).eval()
        get_recipe(recipe).after_training(model, calib)
        models[recipe] = model.eval()
        sources[recipe] = (f"random-init heads on {cfg.backbone} (seed {SEED + i}); after_training on "
                           f"{cfg.calibration_pairs} MRPC train pairs")
    device = bench_device()
    return {r: m.to(device) for r, m in models.items()}, sources


def bench_device() -> torch.device:
    """Where the targets run: the GPU when one is present (timed with CUDA events), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def dev_examples(cfg, glue_dir) -> list[Example]:
    """MRPC dev pairs of the replay target."""
    return load_examples(get_task("mrpc"), "dev", glue_dir, cfg.dev_limit, seed=0)


@pytest.fixture(scope="session")
def dev_loader(cfg, dev_examples, tokenizer):
    """The dev pairs in record batches."""
    ds = EncodedDataset(dev_examples, tokenizer, 128, regression=False)
    return make_loader(ds, cfg.record_batch, shuffle=False, pad_token_id=tokenizer.pad_token_id or 0)


@pytest.fixture(scope="session")
def dev_records(models, dev_loader) -> dict[str, dict]:
    """One full-depth record of the dev pairs per recipe (what the replay sweep reads)."""
    return {r: record_signals(m, dev_loader, progress=False) for r, m in models[0].items()}


@pytest.fixture(scope="session")
def timed_items(cfg, glue_dir, tokenizer) -> list[dict]:
    """The inputs timed live: exactly `seq_len` tokens each, no padding."""
    examples = load_examples(get_task("mrpc"), "dev", glue_dir)
    return fixed_length_items(examples, tokenizer, cfg.timed_samples, cfg.seq_len)


@pytest.fixture(scope="session")
def operating_points(cfg, models, timed_items) -> dict[str, OperatingPoint | None]:
    """Per deployable method: its 2× point, replayed on a record of the timed samples."""
    records = {r: record_signals(m, batches_of(timed_items, cfg.throughput_batch), progress=False)
               for r, m in models[0].items()}
    points = {}
    for name in DEPLOYABLE:
        method = get_method(name)
        policy = method.make_policy(2, models[0][method.recipe].num_layers)
        points[name] = find_operating_point(name, policy, records[method.recipe])
    return points
