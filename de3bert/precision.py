"""Training precision: `auto` picks what this device computes natively, so one profile trains at
full speed on every machine instead of emulating bf16 where the hardware has none.

The resolved precision (never `auto`) is what changes the trained model: it goes into the config
hash, every results row and the tables' header. Evaluation, records and timing stay fp32.
"""

from __future__ import annotations

import os
import sys

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")

#: the cost of emulated bf16, measured: a MiniLM training step (batch 32, 64 tokens, 2 threads)
#: in bf16 ÷ fp32, median of 3 interleaved rounds (`python -m benchmarks.perf.precision_step`):
#: 4.6 on a first-gen EPYC with AVX2 only (issue 24), 7.8 under AVX2 kernels on this repository's
#: AVX-512 EPYC (docs/performance.md)
EMULATED_BF16_COST = "4.6-7.8× slower than fp32 per training step on AVX2 CPUs"

#: oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include bf16 instructions
_BF16_ISAS = ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")

_warned: set[str] = set()


def training_device() -> str:
    """The device a training run uses: `cuda` when a GPU is visible (as `train` does), else `cpu`."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively for torch: ATen's AVX-512 kernels (the capability
    honours ATEN_CPU_CAPABILITY) on a CPU with AVX-512 BF16 or AMX, and no oneDNN cap below them."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if not cap.startswith(_BF16_ISAS):
        return False
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(c is None for c in checks):  # an older torch: oneDNN's own bf16 check
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(c is not None and c() for c in checks)


def native_precision(device: str) -> str:
    """What `auto` means on `device`: bf16 on a CPU with native bf16 or a CUDA GPU of compute
    capability ≥ 8.0; fp16 (with a grad scaler) on older CUDA GPUs; fp32 otherwise."""
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    return "bf16" if cpu_native_bf16() else "fp32"


def check_precision(value: str) -> None:
    """An unknown precision fails before any work, naming the valid values."""
    if value not in PRECISIONS:
        raise ValueError(f"unknown precision {value!r}; valid: {', '.join(PRECISIONS)} "
                         "(auto = the device's native one)")


def resolve_precision(value: str, device: str | None = None, warn: bool = True) -> str:
    """`value` with `auto` resolved for `device` (default: the training device). An explicit bf16
    on a CPU that emulates it runs, after one warning line with the measured cost; fp16 needs CUDA."""
    check_precision(value)
    device = device or training_device()
    if value == "auto":
        return native_precision(device)
    on_cpu = not device.startswith("cuda")
    if value == "fp16" and on_cpu:
        raise ValueError("precision fp16 needs a CUDA GPU (its grad scaler); on a CPU use auto, fp32 or bf16")
    if value == "bf16" and on_cpu and warn and not cpu_native_bf16() and "bf16" not in _warned:
        _warned.add("bf16")
        print(f"[train] warning: precision bf16 on a CPU without native bf16 (torch capability "
              f"{torch.backends.cpu.get_cpu_capability()}): it is emulated, measured "
              f"{EMULATED_BF16_COST}; `precision: auto` would train in fp32 here", file=sys.stderr)
    return value


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype the weights train in: float64 for `fp64` (the smoke profile: training rounding
    noise, which a chaotic run amplifies 10⁴-fold, then stays ~10⁻¹² and the saved fp32 model is
    the same on every CPU), else float32."""
    return torch.float64 if precision == "fp64" else torch.float32


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: plain fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
