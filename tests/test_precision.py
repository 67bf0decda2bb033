"""`precision: auto`: the device's native precision (bf16 only where the hardware computes it),
resolved before anything trains, hashed, and recorded; bad values fail before any work."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks.profiles import Profile
from de3bert import precision
from de3bert.precision import native_precision, resolve_precision
from de3bert.train import TrainConfig, config_fingerprint, config_hash


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with the given ATen capability and bf16 instructions."""
    def make(capability: str, bf16: bool, amx: bool = False):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        precision._warned.clear()
    return make


@pytest.mark.parametrize("capability,bf16,amx,want", [
    ("AVX512", True, False, "bf16"),   # AVX-512 BF16 (this repository's CPU)
    ("AVX512", False, True, "bf16"),   # AMX
    ("AVX512", False, False, "fp32"),  # AVX-512 without bf16 instructions
    ("AVX2", True, False, "fp32"),     # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU: AVX2 kernels, emulated
    ("DEFAULT", False, False, "fp32"),
])
def test_auto_on_cpus(cpu, capability, bf16, amx, want):
    cpu(capability, bf16, amx)
    assert native_precision("cpu") == want
    assert resolve_precision("auto", "cpu") == want


def test_onednn_cap_below_bf16_means_fp32(cpu, monkeypatch):
    cpu("AVX512", True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert native_precision("cpu") == "fp32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert native_precision("cpu") == "bf16"


@pytest.mark.parametrize("major,want", [(7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_on_cuda(monkeypatch, major, want):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, 0))
    assert resolve_precision("auto", "cuda") == want


def test_explicit_bf16_on_an_emulating_cpu_warns_once_with_the_cost_and_runs(cpu, capsys):
    cpu("AVX2", False)
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    err = capsys.readouterr().err
    assert err.count("warning: precision bf16") == 1 and "4.6-7.8×" in err and "auto" in err
    cpu("AVX512", True)
    resolve_precision("bf16", "cpu")
    assert capsys.readouterr().err == ""  # native: nothing to say


def test_bad_values_fail_naming_the_valid_ones(cpu):
    cpu("AVX2", False)
    with pytest.raises(ValueError, match="unknown precision 'bf32'; valid: auto, fp32, bf16, fp16, fp64"):
        resolve_precision("bf32")
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")


def test_profile_with_unknown_precision_fails_at_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\ntasks: [synthetic]\nbackbone: tiny-random\ntrain: {precision: half}\n")
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        Profile.load(str(path))
    path.write_text("name: p\ntasks: [synthetic]\nbackbone: tiny-random\n"
                    "task_train: {synthetic: {precision: x}}\n")
    with pytest.raises(ValueError, match="unknown precision 'x'"):
        Profile.load(str(path))


def test_the_resolved_precision_is_hashed(cpu):
    """`auto` keys the same model as the precision it resolves to, so a bf16 machine reuses its
    bf16 models and an AVX2 machine never takes them for its fp32 ones."""
    cfg = TrainConfig(task="synthetic", recipe="single", backbone="tiny-random", precision="auto")
    cpu("AVX512", True)
    native = config_hash(cfg)
    assert config_fingerprint(cfg)["precision"] == "bf16"
    assert native == config_hash(dataclasses.replace(cfg, precision="bf16"))
    cpu("AVX2", False)
    emulated = config_hash(cfg)
    assert emulated == config_hash(dataclasses.replace(cfg, precision="fp32")) and emulated != native
