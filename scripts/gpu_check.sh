#!/usr/bin/env bash
# The GPU readiness check (≤ 8 minutes on one CUDA GPU, no network): the paper recipes on a
# random-init BERT-base-shaped model, 200 steps each, precision auto; a dev record; batch-1 and
# batch-32 live timing with CUDA events of every method at its 2× knob. Writes
# ${OUT:-results/gpu_check}/gpu_check.json and prints each method's speed-ups; exit 1 if a
# wall-clock/layer goal (≥ 0.90 at batch 1, ≥ 0.85 at batch 32) is missed.
# Uses .venv when present (./run_tests.sh made it), else the machine's python3 with torch+CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PY" -m benchmarks.gpu_check --out "${OUT:-results/gpu_check}" "$@"
