"""The GPU readiness check (scripts/gpu_check.sh) runs its whole path on a CPU: the gpu-check
profile's recipes train, record, replay and time, and one JSON gives each method's layer and
wall-clock speed-ups at 2× with the goals. (CUDA event timing: tests/test_timing.py, faked.)"""

from __future__ import annotations

import dataclasses
import json

from benchmarks import gpu_check
from benchmarks.profiles import Profile
from de3bert.backbone import RANDOM_BACKBONES, load_encoder


def test_profile_is_the_paper_recipes_on_bert_base_shape_on_cuda():
    p = Profile.load("gpu-check")
    assert (p.device, p.backbone, p.train["precision"], p.speedup_targets) == \
        ("cuda", "random-bert-base", "auto", [2.0])
    assert 800 / p.train["batch_size"] * p.train["epochs"] == 200  # optimizer steps per recipe
    from de3bert.registry import get_method

    assert {get_method(m).recipe for m in p.methods} == {"weighted", "two-stage", "de3"}  # + single
    shape = RANDOM_BACKBONES["random-bert-base"]
    assert (shape["num_hidden_layers"], shape["hidden_size"]) == (12, 768)


def test_random_bert_base_has_bert_base_shape():
    enc = load_encoder("random-bert-base")
    assert enc.config.num_hidden_layers == 12 and enc.config.hidden_size == 768
    assert sum(p.numel() for p in enc.parameters()) > 100e6


def test_no_gpu_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main(["--out", "unused"]) == 2
    assert "no CUDA GPU visible; use --device cpu" in capsys.readouterr().err


def test_the_check_runs_end_to_end_on_a_cpu(tmp_path, monkeypatch):
    timing = {"samples": 8, "repeats": 1, "warmup": 1, "batch_size": 4, "methods": "all"}
    small = dataclasses.replace(Profile.load("gpu-check"), methods=["deebert", "de3"], timing=timing)
    monkeypatch.setattr(Profile, "load", classmethod(lambda cls, name: small))
    code = gpu_check.main(["--device", "cpu", "--backbone", "tiny-random", "--epochs", "0.1",
                           "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["methods"]) == {"deebert", "de3"} and report["device"] == "cpu"
    for m in report["methods"].values():
        assert m["speedup_layers"] >= 2.0 and m["speedup_wallclock_b1"] > 0 and m["speedup_wallclock_b32"] > 0
        assert m["ratio"]["batch_1"] == m["speedup_wallclock_b1"] / m["speedup_layers"]
    met = all(all(m["goal_met"].values()) for m in report["methods"].values())
    assert code == (0 if met else 1)
