"""Reliability: bad input fails early with a clear message and loses nothing; a killed or damaged
run resumes to the rows of an uninterrupted one; same seed, same exits; extreme signals stay
finite in every policy; nothing unpickles arbitrary objects; the test suite cannot reach the network.

Covered elsewhere (not repeated here): TSV error messages at the loader level (test_data.py),
training resume mid-epoch and between stages (test_train.py), `Knob.validate` ranges and NaN for
every policy (test_policies.py::test_knob_validation_names_the_range), batch size never changing
exit decisions (test_policies.py::test_replay_equals_live), DR/EDR bounds and ±1e4 / one-hot /
zero-distance / fp16 / bf16 indicator values (test_de3.py), flat memory under load (test_load.py).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import runner as runner_mod
from benchmarks.cli import main
from benchmarks.profiles import PROFILE_DIR, Profile
from benchmarks.results import Results
from benchmarks.runner import Runner
from de3bert import engine
from de3bert.data import TASKS
from de3bert.policy import ThresholdPolicy
from de3bert.record import CorruptRecord, load_record, save_record
from de3bert.registry import all_methods

REPO = Path(__file__).resolve().parent.parent
COMPARED = ("task", "method", "knob", "metric", "speedup_layers", "exit_histogram")
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                  "OMP_NUM_THREADS": "1"}


# ---- helpers ------------------------------------------------------------------------------------
def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run `de3bert argv` in-process; (exit code, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return code, capsys.readouterr().err


def rows_by_key(path: Path) -> dict[tuple, dict]:
    """The compared fields of every row, keyed by (task, method, seed, knob); fails on a duplicate."""
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        key = (r["task"], r["method"], r["seed"], json.dumps(r["knob"], sort_keys=True))
        assert key not in out, f"duplicate row {key}"
        out[key] = {f: r[f] for f in COMPARED}
    return out


def assert_complete_groups(path: Path) -> None:
    """Every (task, method, seed) group has exactly `group_size` rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    sizes = Counter((r["task"], r["method"], r["seed"]) for r in rows)
    for r in rows:
        assert sizes[r["task"], r["method"], r["seed"]] == r["group_size"], (r["method"], r["group_size"])


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root`."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The smoke profile run once, uninterrupted, in this process (~30-60 s). Read-only: tests that
    damage a run work on a copy."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    assert main(["run", "--profile", "smoke", "--out", str(out), "--no-progress"]) == 0
    assert_complete_groups(out / "results.jsonl")
    return out


# ==== 1. bad input: a clear error (exit 2, valid names listed) and nothing lost ==================
def test_unknown_task_lists_valid_tasks(tmp_path, capsys):
    for cmd in ("train", "eval"):
        code, err = cli([cmd, "--task", "nope", "--method", "pabee", "--backbone", "tiny-random",
                         "--out-dir", str(tmp_path / "o"), "--no-progress"], capsys)
        assert code == 2 and err.startswith("error: unknown task 'nope'"), err
        assert all(name in err for name in TASKS)
    assert not (tmp_path / "o").exists()


def test_unknown_method_lists_valid_methods(tmp_path, capsys):
    for cmd in ("train", "eval"):
        code, err = cli([cmd, "--task", "synthetic", "--method", "nope", "--out-dir", str(tmp_path / "o")],
                        capsys)
        assert code == 2 and err.startswith("error: unknown method 'nope'"), err
        assert all(name in err for name in all_methods())
    assert not (tmp_path / "o").exists()


def test_unknown_profile_lists_valid_profiles(tmp_path, capsys):
    code, err = cli(["run", "--profile", "nope", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown profile 'nope'" in err
    assert all(p.stem in err for p in PROFILE_DIR.glob("*.yaml"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, message", [
    ("name: x\nmethods: [pabee\n", "not valid YAML"),
    ("- a\n- b\n", "a YAML mapping"),
    ("", "a YAML mapping"),
    ("backbone: tiny-random\n", "needs a `name`"),
    ("name: x\nmethods: pabee\n", "`methods` must be a list"),  # was: unknown method 'p'
    ("name: x\ntasks: [synthetic]\nmethods: [pabee]\nepochs: 3\n", "unknown profile keys"),
])
def test_malformed_profile_yaml(tmp_path, capsys, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    code, err = cli(["run", "--profile", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_unknown_backbone_path_offline(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    code, err = cli(["train", "--task", "synthetic", "--backbone", str(missing),
                     "--out-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and f"{missing} is not a directory" in err, err
    assert "valid backbones" in err and "tiny-random" in err and "embedded:all-MiniLM-L6-v2" in err
    # a Hub id that is not cached: offline, so no network (the guard would fail this test)
    code, err = cli(["train", "--task", "synthetic", "--backbone", "no-such-org/no-such-model",
                     "--out-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "no-such-org/no-such-model" in err and "valid backbones" in err, err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_bert_dirs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A tiny BERT saved without tokenizer files, and one with a tokenizer but no weights."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("bad-backbones")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64)
    BertModel(config).save_pretrained(root / "no-tokenizer")
    config.save_pretrained(root / "no-weights")
    tokenizer.save_pretrained(root / "no-weights")
    return {"no-tokenizer": root / "no-tokenizer", "no-weights": root / "no-weights"}


def test_backbone_dir_without_tokenizer_files(tiny_bert_dirs, tmp_path, capsys):
    """Before: transformers built a 5-token vocabulary from the config alone, every word became
    [UNK], and training ran to a chance-level model without a word of warning."""
    code, err = cli(["train", "--task", "synthetic", "--backbone", str(tiny_bert_dirs["no-tokenizer"]),
                     "--out-dir", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and "has no tokenizer files" in err and "vocab.txt" in err, err
    assert not (tmp_path / "o").exists()


def test_backbone_dir_without_weights(tiny_bert_dirs, tmp_path, capsys):
    """Before: an uncaught OSError traceback."""
    code, err = cli(["train", "--task", "synthetic", "--backbone", str(tiny_bert_dirs["no-weights"]),
                     "--out-dir", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and "cannot load weights" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method, knob, valid", [
    ("de3", "1.5", r"[0.0, 1.0]"), ("de3", "nan", r"[0.0, 1.0]"), ("pabee", "-1", "[0, 1000]"),
    ("pabee", "2.5", "an integer"), ("deebert", "-0.1", "[0.0, inf]"), ("maxprob", "inf", "[0.0, 1.0]"),
])
def test_knob_out_of_range_fails_before_training(method, knob, valid, tmp_path, capsys):
    """Before: `eval` trained the model and recorded the dev set, then rejected the knob."""
    base = ["eval", "--task", "synthetic", "--method", method, "--backbone", "tiny-random",
            "--out-dir", str(tmp_path / "o"), "--no-progress"]
    for extra in (["--knob", knob], ["--live", knob]):
        code, err = cli(base + extra, capsys)
        assert code == 2 and "out of range" in err and valid in err, err
    assert not (tmp_path / "o").exists()  # nothing was trained
    code, err = cli(base + ["--knob", "abc"], capsys)  # not a number: argparse, exit 2
    assert code == 2 and "invalid float value: 'abc'" in err


def test_hub_unreachable_exits_2(tmp_path, capsys, monkeypatch):
    """No data dir and no Hub (offline, cold cache). Before: a ConnectionError traceback, exit 1."""
    import de3bert.data as data_mod

    def offline(task, split):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(data_mod, "_load_hub", offline)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(data_mod, "REPO_GLUE", tmp_path / "no-glue-data")
    code, err = cli(["eval", "--task", "rte", "--method", "pabee", "--backbone", "tiny-random",
                     "--out-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("error: Couldn't reach 'nyu-mll/glue'"), err


def test_method_that_cannot_run_the_task_exits_2(tmp_path, capsys):
    """Before: SystemExit with a message (exit status 1, unlike every other error)."""
    code, err = cli(["eval", "--task", "stsb", "--method", "de3", "--out-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("error: method de3 cannot run stsb"), err


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
RTE_ROWS = "0\ta b\tc d\tentailment\n1\te f\tg h\tnot_entailment\n"


def _write(root: Path, task_dir: str, name: str, text: str) -> Path:
    (root / task_dir).mkdir(parents=True, exist_ok=True)
    (root / task_dir / name).write_text(text)
    return root / task_dir / name


@pytest.mark.parametrize("split", ["train.tsv", "dev.tsv"])
def test_label_outside_classes_via_cli(split, tmp_path, capsys):
    data = tmp_path / "glue"
    other = "dev.tsv" if split == "train.tsv" else "train.tsv"
    _write(data, "RTE", other, RTE_HEADER + RTE_ROWS)
    _write(data, "RTE", split, RTE_HEADER + RTE_ROWS + "2\ti j\tk l\tmaybe\n")
    code, err = cli(["eval", "--task", "rte", "--method", "pabee", "--backbone", "tiny-random",
                     "--data-dir", str(data), "--out-dir", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2, err
    assert f"{data / 'RTE' / split}:4: label 'maybe' is not one of ['entailment', 'not_entailment']" in err
    # integer classes: the valid range is named
    _write(data, "MRPC", "train.tsv", MRPC_HEADER + "1\t1\t2\ta\tb\n7\t3\t4\tc\td\n")
    _write(data, "MRPC", "dev.tsv", MRPC_HEADER + "1\t1\t2\ta\tb\n")
    code, err = cli(["train", "--task", "mrpc", "--backbone", "tiny-random", "--data-dir", str(data),
                     "--out-dir", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and "train.tsv:3: label 7 outside the task's classes 0..1" in err, err
    assert not (tmp_path / "o").exists()


def test_data_dir_missing_a_file_fails_before_training(tmp_path, capsys):
    """Before: `eval` trained on train.tsv, then failed on the missing dev.tsv."""
    data = tmp_path / "glue"
    _write(data, "RTE", "train.tsv", RTE_HEADER + RTE_ROWS)
    code, err = cli(["eval", "--task", "rte", "--method", "pabee", "--backbone", "tiny-random",
                     "--data-dir", str(data), "--out-dir", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and f"missing data file {data / 'RTE' / 'dev.tsv'} for task rte" in err, err
    assert not (tmp_path / "o").exists()
    code, err = cli(["train", "--task", "rte", "--backbone", "tiny-random", "--data-dir", str(tmp_path / "x"),
                     "--out-dir", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and "does not exist" in err, err


def _profile(path: Path, **over) -> Path:
    data = {"name": "smoke", "backbone": "tiny-random", "tasks": ["synthetic"], "seeds": [0],
            "methods": ["pabee"], **over}
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_failing_run_leaves_finished_results_intact(smoke_run, tmp_path, capsys):
    """A run that fails (unknown method; a task whose data files are missing) into a finished out
    dir changes no file there. Before: the missing-data run overwrote profile.json with the
    failing profile before it failed (results.jsonl itself was already safe)."""
    out = copy_run(smoke_run, tmp_path / "out")
    before = snapshot(out)
    results = (out / "results.jsonl").read_bytes()
    data = tmp_path / "glue"
    _write(data, "RTE", "train.tsv", RTE_HEADER + RTE_ROWS)  # no dev.tsv
    cases = [
        (_profile(tmp_path / "a.yaml", methods=["pabee", "no-such-method"]), [],
         "unknown method 'no-such-method'"),
        (_profile(tmp_path / "b.yaml", tasks=["synthetic", "rte"]), ["--data-dir", str(data)],
         "missing data file"),
        (_profile(tmp_path / "c.yaml", tasks=["rte", "synthetic"]), ["--data-dir", str(tmp_path / "nope")],
         "does not exist"),
    ]
    for path, extra, message in cases:
        code, err = cli(["run", "--profile", str(path), "--out", str(out), "--no-progress", *extra], capsys)
        assert code == 2 and message in err, err
        assert (out / "results.jsonl").read_bytes() == results
        assert snapshot(out) == before
    # a failure mid-run, after training: RTE's dev.tsv has a bad label on its last line
    _write(data, "RTE", "dev.tsv", RTE_HEADER + RTE_ROWS + "2\ti j\tk l\tmaybe\n")
    # the synthetic task keeps the finished run's settings (its groups are reused, not recomputed)
    smoke = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    path = _profile(tmp_path / "d.yaml", **{**smoke, "tasks": ["synthetic", "rte"],
                                            "task_train": {"rte": {"epochs": 1, "max_seq_length": 16}}})
    code, err = cli(["run", "--profile", str(path), "--out", str(out), "--no-progress",
                     "--data-dir", str(data)], capsys)
    assert code == 2 and "label 'maybe' is not one of" in err, err
    # it got far: the first training job (train + record) trained its model, then failed on dev.tsv
    assert (out / "models" / "rte" / "single-s0" / "final" / "model.safetensors").is_file()
    assert (out / "results.jsonl").read_bytes() == results
    after = snapshot(out)
    changed = [f for f in before if after.get(f) != before[f]]
    assert changed == ["profile.json"], changed  # the profile of the latest run; nothing else touched


# ==== 2. interruptions ===========================================================================
def _start(out: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen([sys.executable, "-m", "benchmarks", "run", "--profile", "smoke", "--out",
                                 str(out), "--no-progress"], cwd=REPO, env=SUBPROCESS_ENV,
                                stdout=subprocess.DEVNULL, stderr=fh)


def _kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before the kill point: "
                        f"{log.read_text()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            proc.wait()
            pytest.fail("kill point not reached in time")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_training_and_mid_sweep_then_resume(smoke_run, tmp_path):
    """SIGKILL in the two-stage recipe's second stage (a stage checkpoint on disk), then SIGKILL
    after the first result group; the third start finishes. No duplicate or partial group, and
    the rows equal the uninterrupted run's (dates and timings aside)."""
    out = tmp_path / "killed"
    ckpt = out / "models" / "synthetic" / "two-stage-s0" / "checkpoint" / "progress.json"
    log = tmp_path / "stderr.log"
    out.mkdir()
    proc = _start(out, log)
    _kill_when(proc, ckpt.is_file, log)
    assert json.loads(ckpt.read_text())["stage"] == 1  # killed between/within stage 2
    assert not (out / "results.jsonl").exists()

    results = out / "results.jsonl"
    proc = _start(out, log)
    _kill_when(proc, lambda: results.is_file() and results.read_bytes().count(b"\n") >= 1, log)
    total = len(rows_by_key(smoke_run / "results.jsonl"))
    assert 1 <= len(results.read_text().splitlines()) < total  # killed mid-sweep
    assert_complete_groups(results)
    assert not (out / "run.json").exists()

    done = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--profile", "smoke", "--out", str(out),
                           "--no-progress"], cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_complete_groups(results)
    resumed, reference = rows_by_key(results), rows_by_key(smoke_run / "results.jsonl")
    assert resumed.keys() == reference.keys()
    differ = [k for k in reference if resumed[k] != reference[k]]
    assert not differ, (differ[:3], [(resumed[k], reference[k]) for k in differ[:1]])
    assert not list(out.rglob("checkpoint*")), "training checkpoints left behind"


def _drop_groups(path: Path, methods: set[str]) -> None:
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["method"] not in methods]
    path.write_text("".join(line + "\n" for line in lines))


def _run_smoke(out: Path) -> None:
    Runner(Profile.load("smoke"), out, progress=False).run()


def test_corrupt_records_are_detected_and_rebuilt(smoke_run, tmp_path, monkeypatch, capsys):
    out = copy_run(smoke_run, tmp_path / "out")
    rec_dir = out / "records" / "synthetic"
    originals = {r: (rec_dir / f"{r}-s0.safetensors").read_bytes() for r in ("weighted", "de3")}
    # weighted (pabee's recipe): truncated; de3: one byte flipped, same size
    half = len(originals["weighted"]) // 2
    (rec_dir / "weighted-s0.safetensors").write_bytes(originals["weighted"][:half])
    flipped = bytearray(originals["de3"])
    flipped[len(flipped) // 2] ^= 0x01
    (rec_dir / "de3-s0.safetensors").write_bytes(bytes(flipped))
    for r in ("weighted", "de3"):
        with pytest.raises(CorruptRecord, match="checksum mismatch"):
            load_record(rec_dir / f"{r}-s0.safetensors")
    _drop_groups(out / "results.jsonl", {"pabee", "de3"})  # groups that need those records

    recorded = []
    original = runner_mod.record_signals

    def spy(model, loader, progress=True):
        recorded.append(model.meta["recipe"])
        return original(model, loader, progress=progress)

    monkeypatch.setattr(runner_mod, "record_signals", spy)
    capsys.readouterr()
    _run_smoke(out)
    log = capsys.readouterr().out
    assert sorted(recorded) == ["de3", "weighted"]  # rebuilt, not used; intact records reused
    assert log.count("checksum mismatch") == 2 and "rebuilding the record" in log
    for r, data in originals.items():
        assert (rec_dir / f"{r}-s0.safetensors").read_bytes() == data  # deterministic rebuild
        load_record(rec_dir / f"{r}-s0.safetensors")  # sidecar matches again
    assert rows_by_key(out / "results.jsonl") == rows_by_key(smoke_run / "results.jsonl")
    assert_complete_groups(out / "results.jsonl")


def test_record_checksum_unit(tmp_path):
    rec = {"logits": torch.randn(4, 8, 2), "labels": torch.arange(8)}
    path = tmp_path / "r.safetensors"
    save_record(rec, path, {"task": "x"})
    assert torch.equal(load_record(path)["logits"], rec["logits"])
    good = path.read_bytes()
    path.write_bytes(good + b"\0")  # appended garbage
    with pytest.raises(CorruptRecord):
        load_record(path)
    path.write_bytes(good)
    side = path.with_name(path.name + ".json")
    side.write_text("{trunc")  # torn sidecar
    with pytest.raises(CorruptRecord, match="unreadable sidecar"):
        load_record(path)
    side.unlink()  # killed between the tensor file and its sidecar: treated as missing
    with pytest.raises(FileNotFoundError):
        load_record(path)


def test_damaged_results_file_is_kept_and_groups_recomputed(smoke_run, tmp_path, monkeypatch, capsys):
    """A truncated last line and a garbage (non-UTF-8) line. Before: UnicodeDecodeError on load."""
    out = copy_run(smoke_run, tmp_path / "out")
    path = out / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    last_method = json.loads(lines[-1])["method"]
    damaged = b"".join(lines[:5]) + b"\xff\xfe\x00garbage {not json\n" + b"".join(lines[5:-1]) \
        + lines[-1][: len(lines[-1]) // 2]
    path.write_bytes(damaged)

    replayed = []
    original = Runner.replay_method

    def spy(self, task, seed, name, *args, **kwargs):
        replayed.append(name)
        return original(self, task, seed, name, *args, **kwargs)

    monkeypatch.setattr(Runner, "replay_method", spy)
    capsys.readouterr()
    _run_smoke(out)
    log = capsys.readouterr().out
    assert "2 unreadable line(s)" in log and "will be recomputed" in log  # garbage + torn last line
    backups = list(out.glob("results.jsonl.damaged-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == damaged  # the damaged copy is kept
    assert replayed == [last_method]  # only the group that lost a row
    assert_complete_groups(path)
    assert rows_by_key(path) == rows_by_key(smoke_run / "results.jsonl")


def test_results_loader_drops_what_it_cannot_trust(tmp_path):
    def row(method, size, knob=0.0):
        return json.dumps({"task": "t", "method": method, "seed": 0, "group_size": size,
                           "knob": {"name": "k", "value": knob}})

    path = tmp_path / "results.jsonl"
    clean = "".join(x + "\n" for x in [row("a", 2, 0.1), row("a", 2, 0.2), row("b", 1)])
    path.write_text(clean)
    Results(path)
    assert path.read_text() == clean and not list(tmp_path.glob("*.damaged-*"))  # intact: untouched
    path.write_text(clean + row("b", 1) + "\n" + "42\nnull\n[1]\n" + '{"task": "t"}\n' + row("c", 3) + "\n")
    res = Results(path)
    # b duplicated (2 rows for a group of 1) and c incomplete are dropped; a survives
    assert [r["method"] for r in res.rows] == ["a", "a"]
    assert not res.done("t", "b", 0) and not res.done("t", "c", 0) and res.done("t", "a", 0)
    assert [json.loads(x)["method"] for x in path.read_text().splitlines()] == ["a", "a"]
    assert len(list(tmp_path.glob("results.jsonl.damaged-*"))) == 1


# ==== 3. determinism =============================================================================
def _train_and_record(tmp_path: Path, name: str):
    from de3bert.backbone import load_tokenizer
    from de3bert.data import EncodedDataset, get_task, load_examples, make_loader
    from de3bert.train import TrainConfig, train

    cfg = TrainConfig(task="synthetic", recipe="de3", backbone="tiny-random", pooling="mean", batch_size=32,
                      epochs=1, train_limit=128, max_seq_length=32, lr=1e-3, seed=5, checkpoint_every=1000,
                      out_dir=str(tmp_path / name), progress=False)
    model = train(cfg)
    tok = load_tokenizer(cfg.backbone)
    ds = EncodedDataset(load_examples(get_task("synthetic"), "dev", limit=96, seed=5), tok, 32, False)
    loader = make_loader(ds, 32, shuffle=False, pad_token_id=tok.pad_token_id or 0)
    return model, engine.record_signals(model, loader, progress=False), loader


def test_same_seed_same_exits_predictions_and_metrics(tmp_path):
    """Two trainings + records with one seed on the CPU: bit-identical weights, records, exit
    layers (replayed and live), predictions and metrics. (The kill test above also checks that
    a fresh process reproduces the in-process smoke run row for row.)"""
    from de3bert.metrics import glue_metrics

    (m1, r1, loader), (m2, r2, _) = _train_and_record(tmp_path, "a"), _train_and_record(tmp_path, "b")
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.keys() == r2.keys() and all(torch.equal(r1[k], r2[k]) for k in r1)
    methods = {n: m for n, m in all_methods().items() if m.recipe == "de3"}
    assert len(methods) >= 3
    for name, method in methods.items():
        policy = method.make_policy(2, m1.num_layers)
        grid = policy.grid()
        e1, e2 = policy.replay(r1, grid), policy.replay(r2, grid)
        assert torch.equal(e1, e2), name
        p1, p2 = engine.replay_predictions(r1, e1), engine.replay_predictions(r2, e2)
        assert torch.equal(p1, p2), name
        for k in (0, len(grid) // 2, len(grid) - 1):
            assert glue_metrics(("accuracy",), p1[k], r1["labels"]) == \
                glue_metrics(("accuracy",), p2[k], r2["labels"])
        knob = grid[len(grid) // 2]
        l1, l2 = engine.run_live(m1, policy, knob, loader), engine.run_live(m2, policy, knob, loader)
        assert torch.equal(l1.exit_layers, l2.exit_layers) and torch.equal(l1.predictions, l2.predictions)
        assert l1.exit_layers.tolist() == e1[len(grid) // 2].tolist()


# ==== 4. numerics: every registered policy under extreme signals =================================
INF = math.inf
# rows 0-3: certain of class 0 (±1e4, +inf overflow, one-hot log, ±3e38); rows 4-6: uniform
# (zeros, +inf twice, -inf twice); row 7: certain of class 1
EXTREME_LOGITS = [[1e4, -1e4], [INF, 0.0], [0.0, -INF], [3e38, -3e38],
                  [0.0, 0.0], [INF, INF], [-INF, -INF], [-1e4, 1e4]]
SAME = [(0, 1, 2, 3), (4, 5, 6)]


def _extreme_signals(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    n = len(EXTREME_LOGITS)
    return {"logits": torch.tensor(EXTREME_LOGITS).to(dtype),
            "proto_dist": torch.tensor([[0.5, 2.0]] * n).to(dtype),
            "lte": torch.full((n,), 0.25).to(dtype),
            "labels": torch.zeros(n, dtype=torch.long)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(all_methods()))
def test_every_policy_step_on_extreme_signals(name, dtype):
    """Before: entropy of logits with +inf (an fp16 overflow) was NaN, so entropy-based policies
    never exited a sample that was certain; max-prob likewise."""
    policy = all_methods()[name].make_policy(2, 4)
    sig = _extreme_signals(dtype)
    n = sig["labels"].shape[0]
    knobs = policy.knob.validate(policy.grid())
    state = policy.init_state(n, knobs)
    for layer in (1, 2, 3):
        step_sig = {k: sig[k] for k in policy.needs}
        decide = policy.step(layer, step_sig, state, knobs)
        assert decide.dtype == torch.bool and decide.shape == (len(knobs), n)
        for group in SAME:  # an overflowed row is judged like its finite twin
            for i in group[1:]:
                assert torch.equal(decide[:, i], decide[:, group[0]]), (name, layer, i)
        for key, value in state.items():
            assert torch.isfinite(value.double()).all(), (name, key)
        if isinstance(policy, ThresholdPolicy):
            score = policy.score(layer, step_sig)
            assert score.dtype == torch.float32 and torch.isfinite(score).all(), (name, score)
            for group in SAME:
                assert (score[list(group)] == score[group[0]]).all(), (name, score)
    record = {k: v.expand(4, *v.shape).float() if k != "labels" else v for k, v in sig.items()}
    exits = policy.replay(record, policy.grid())
    assert ((exits >= 1) & (exits <= 4)).all()


def test_indicators_with_infinite_inputs():
    from de3bert.de3 import distance_ratio, edr
    from de3bert.policy import entropy, normalized_entropy

    logits = torch.tensor(EXTREME_LOGITS)
    h = normalized_entropy(logits)
    assert torch.isfinite(entropy(logits)).all() and torch.isfinite(h).all()
    assert h[:4].abs().max().item() == 0.0 and h[4:7].tolist() == pytest.approx([1.0] * 3)
    # an infinite distance dominates; equal infinities tie
    d = torch.tensor([[INF, INF], [INF, 1.0], [1.0, INF], [0.0, 0.0], [0.0, INF]])
    dr = distance_ratio(d, torch.tensor([[1.0, 0.0]] * 5))  # predicted class 0
    assert dr.tolist() == [0.5, 1.0, 0.0, 0.5, 0.0]
    for dtype in (torch.float16, torch.bfloat16):
        assert distance_ratio(d.to(dtype), torch.tensor([[1.0, 0.0]] * 5).to(dtype)).tolist() == dr.tolist()
    for lam in (0.0, 0.5, 1.0, 4.0):
        e = edr(torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0]), dr, lam)
        assert torch.isfinite(e).all() and ((e >= 0) & (e <= 1)).all()


# ==== 5. safe loading and no network =============================================================
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Calls that may unpickle arbitrary objects: torch.load without weights_only=True, pickle-family
    loads, numpy.load(allow_pickle=True), pandas.read_pickle, yaml.load without a safe loader."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module:
            names = {a.name for a in node.names}
            if node.module.split(".")[0] in UNSAFE_MODULES and names & {"load", "loads", "Unpickler"}:
                found.append(f"{where}: from {node.module} import {sorted(names)}")
            if node.module == "torch" and "load" in names:
                found.append(f"{where}: from torch import load (weights_only cannot be checked)")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        attr, base = node.func.attr, node.func.value
        owner = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        kw = {k.arg: k.value for k in node.keywords}

        def const(key, kw=kw):
            return kw[key].value if isinstance(kw.get(key), ast.Constant) else None

        if owner == "torch" and attr == "load" and const("weights_only") is not True:
            found.append(f"{where}: torch.load without weights_only=True")
        elif owner in UNSAFE_MODULES and attr in ("load", "loads", "Unpickler", "open"):
            found.append(f"{where}: {owner}.{attr}")
        elif attr == "read_pickle":
            found.append(f"{where}: read_pickle")
        elif owner in ("np", "numpy") and attr == "load" and const("allow_pickle") is not False \
                and "allow_pickle" in kw:
            found.append(f"{where}: numpy.load(allow_pickle=...)")
        elif owner == "yaml" and attr in ("load", "load_all", "unsafe_load") and not (
                isinstance(kw.get("Loader"), ast.Attribute) and "Safe" in kw["Loader"].attr):
            found.append(f"{where}: yaml.{attr} without a SafeLoader")
    return found


def test_scanner_catches_unsafe_loads():
    bad = ("import torch, pickle, yaml, numpy as np, pandas as pd\nfrom pickle import loads\n"
           "torch.load('a')\ntorch.load('a', weights_only=False)\npickle.load(f)\npickle.loads(b)\n"
           "np.load('x', allow_pickle=True)\npd.read_pickle('p')\nyaml.load(s, Loader=yaml.Loader)\n")
    assert len(unsafe_loads(bad)) == 8
    good = ("import torch, yaml\ntorch.load('a', weights_only=True)\nyaml.safe_load(s)\n"
            "yaml.load(s, Loader=yaml.SafeLoader)\nimport json\njson.loads('1')\n")
    assert unsafe_loads(good) == []


def test_no_unsafe_deserialisation_in_sources():
    dirs = ("de3bert", "baselines", "benchmarks", "scripts")
    files = [p for d in dirs for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20
    found = [f for p in files for f in unsafe_loads(p.read_text(), str(p.relative_to(REPO)))]
    assert not found, "\n".join(found)


def test_trained_models_are_safetensors(smoke_run):
    from de3bert.registry import all_methods

    recipes = {"single"} | {m.recipe for m in all_methods().values()}  # smoke runs `methods: all`
    finals = sorted(smoke_run.glob("models/*/*/final"))
    assert len(finals) == len(recipes)
    for final in finals:
        files = {str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()}
        assert files == {"model.safetensors", "model.safetensors.sha256", "multiexit.json",
                         "encoder/config.json", "config_hash.json"}, (final, files)
    records = list(smoke_run.glob("records/*/*.safetensors"))
    assert len(records) == len(recipes)
    suffixes = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
    pickled = [p for p in smoke_run.rglob("*") if p.suffix in suffixes]
    assert not pickled


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_training_checkpoint_is_safetensors_plus_tensors_only_state(tmp_path, monkeypatch):
    """A mid-training checkpoint: model.safetensors, progress.json and an optimizer/RNG file that
    loads with weights_only=True; a pickled object in its place is refused, not executed."""
    import de3bert.recipes as recipes
    from de3bert.train import TrainConfig, train

    original, calls = recipes.weighted_ce, [0]

    class Crash(RuntimeError):
        pass

    def crash_at_3(*a, **k):
        calls[0] += 1
        if calls[0] == 3:
            raise Crash("injected")
        return original(*a, **k)

    monkeypatch.setattr(recipes, "weighted_ce", crash_at_3)
    cfg = TrainConfig(task="synthetic", recipe="weighted", backbone="tiny-random", pooling="mean",
                      batch_size=16, epochs=1, train_limit=64, max_seq_length=32, checkpoint_every=2, seed=1,
                      out_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(Crash):
        train(cfg)
    ckpt = tmp_path / "run" / "checkpoint"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "model.safetensors.sha256", "state.pt",
                                                "progress.json"}
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert isinstance(state["rng"], torch.Tensor) and "optimizer" in state
    torch.save({"rng": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        torch.load(tmp_path / "evil.pt", weights_only=True)


def test_network_guard_blocks_and_reports():
    """The conftest guard: connections and remote DNS lookups raise, and the attempt is recorded
    (which fails the test at teardown). The attempts made here are expected, so they are cleared."""
    import conftest

    targets = [("example.com", 80), ("192.0.2.1", 80)]  # a name (DNS) and a literal (connect)
    for target in targets:
        with pytest.raises(OSError, match="network access is forbidden in tests"):
            socket.create_connection(target, timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, \
            pytest.raises(OSError, match="network access is forbidden in tests"):
        s.connect_ex(("192.0.2.1", 443))
    attempts = list(conftest._NETWORK_ATTEMPTS)
    conftest._NETWORK_ATTEMPTS.clear()
    assert any("example.com" in a for a in attempts) and sum("192.0.2.1" in a for a in attempts) == 2
    # local, non-network sockets still work
    a, b = socket.socketpair()
    a.sendall(b"ok")
    assert b.recv(2) == b"ok"
    a.close()
    b.close()


def test_the_report_gives_intervals_cross_fitted_points_and_claims(smoke_run):
    """The uncertainty tables and the claims report come with every run (records + exits only)."""
    md = (smoke_run / "tables" / "uncertainty.md").read_text()
    assert "Selection protocol: **crossfit**" in md and "1000 paired bootstrap replicates" in md
    assert " ±" in md and "trivial predictor" in md and "## Cost" in md
    cells = json.loads((smoke_run / "tables" / "uncertainty.json").read_text())["cells"]
    de3 = [c for c in cells if c["method"] == "de3" and c["quantity"] == "metric" and c["target"] == 2.0]
    assert len(de3) == 1 and de3[0]["lo"] <= de3[0]["estimate"] <= de3[0]["hi"]
    claims = json.loads((smoke_run / "tables" / "claims.json").read_text())
    assert claims["protocol"] == "crossfit" and claims["claim1"]
    assert (smoke_run / "plots" / "tradeoff_intervals.png").is_file()
    points = (smoke_run / "tables" / "operating_points.md").read_text()
    assert "| synthetic | 2× | de3 | 0 | tau=" in points


def test_bad_statistics_settings_fail_before_work(tmp_path, capsys):
    for bad, msg in (({"selection": "holdout"}, "valid: crossfit, dev"),
                     ({"bootstrap": {"replicate": 10}},
                      "unknown option 'replicate' (did you mean 'replicates'?)"),
                     ({"bootstrap": {"ci": "bootstrap-t"}}, "valid: percentile, BCa")):
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({"name": "x", "tasks": ["synthetic"], **bad}))
        code, err = cli(["run", "--profile", str(path), "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and msg in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad, message", [
    ({"train": {"lr_rate": 1e-4}}, "train: unknown option 'lr_rate' (did you mean 'lr'?)"),
    ({"train": {"epochs": 0}}, "train: epochs=0.0 must be > 0"),
    ({"train": {"seed": 1}}, "train: seed cannot be set here"),
    ({"train": {"batch_size": "32"}}, "train: option batch_size='32' must be int"),
    ({"task_train": {"synthetic": {"train_limt": 5}}}, "task_train.synthetic: unknown option 'train_limt'"),
    ({"task_train": {"sst2": {"epochs": 1}}}, "task_train.sst2: not one of the profile's tasks"),
    ({"timing": {"sample": 8}}, "timing: unknown option 'sample' (did you mean 'samples'?)"),
    ({"timing": {"repeats": 0}}, "timing: repeats=0 must be ≥ 1"),
    ({"speedup_targets": [-1.5, 2.0]}, "every target must be a speed-up > 1"),
    ({"speedup_targets": [1.0]}, "every target must be a speed-up > 1"),
    ({"dev_limit": -5}, "dev_limit=-5 must be an integer ≥ 0"),
    ({"seeds": [42, 42]}, "must be distinct integers"),
    ({"tasks": ["sst3"]}, "unknown task 'sst3'"),
    ({"bootstrap": {"alpha": 1.5}}, "bootstrap.alpha=1.5 must be in (0, 1)"),
])
def test_every_profile_misspelling_or_bad_value_is_named_before_any_work(tmp_path, capsys, bad, message):
    """Issue 26: typed profiles all the way down; a failing profile writes nothing, and an
    existing run's profile.json is never overwritten by the bad one (dry run or not)."""
    run = tmp_path / "o"
    run.mkdir()
    (run / "profile.json").write_text("{\"name\": \"earlier\"}")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "tasks": ["synthetic"], "backbone": "tiny-random", **bad}))
    for extra in ([], ["--dry-run"]):
        code, err = cli(["run", "--profile", str(path), "--out", str(run), *extra], capsys)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in run.iterdir()) == ["profile.json"]
    assert (run / "profile.json").read_text() == "{\"name\": \"earlier\"}"


def test_ctrl_c_prints_one_line_and_exits_130(capsys, monkeypatch):
    """Issue 27: an interrupted command says so in one line (no traceback), with the shell's code."""
    import de3bert.cli as cli_mod

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_mod, "cmd_list", interrupted)
    parser = cli_mod.build_parser()[0]
    assert cli_mod.main(["list"], parser) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "to resume, run the same command again: de3bert list" in err


def test_no_progress_silences_the_libraries_bars(monkeypatch):
    """Issue 27: `--no-progress` also turns off transformers' and the Hub's bars."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    from de3bert.cli import quiet_libraries

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        quiet_libraries()
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # Ray workers inherit it
    finally:
        hf_logging.enable_progress_bar()
        enable_progress_bars()


def test_an_unforeseen_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    """Issue 27: every error is one line naming the bad thing; `--debug` re-raises it."""
    import de3bert.cli as cli_mod

    def broken(args):
        raise RuntimeError("the thing that broke")

    monkeypatch.setattr(cli_mod, "cmd_list", broken)
    assert cli_mod.main(["list"], cli_mod.build_parser()[0]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: the thing that broke" in err
    with pytest.raises(RuntimeError):
        cli_mod.main(["--debug", "list"], cli_mod.build_parser()[0])


def test_space_needed_says_what_the_rest_of_the_plan_writes(tmp_path):
    """The full-disk line's figure: MB for the models still to train while some are missing; once
    every model is trained, no 'while one trains' figure (nothing trains any more)."""
    runner = Runner(Profile.load("smoke"), tmp_path / "run", progress=False)
    plan = [{"kind": "train", "task": "synthetic", "recipe": r, "seed": 0} for r in ("single", "weighted")]
    done = runner.layout.model_dir("synthetic", "single", 0) / "final" / "model.safetensors"
    done.parent.mkdir(parents=True)
    done.write_bytes(b"x" * 3_000_000)
    assert runner.space_needed(plan).startswith("about 3 MB more for the 1 models still to train")
    weighted = runner.layout.model_dir("synthetic", "weighted", 0) / "final" / "model.safetensors"
    weighted.parent.mkdir(parents=True)
    weighted.write_bytes(b"x")
    assert "while one trains" not in runner.space_needed(plan)
