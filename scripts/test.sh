#!/usr/bin/env bash
# Everything CI checks: install (venv, packages, helm), ruff, mypy --strict on bidder/, pytest
# (unit, integration against an embedded broker it starts itself, chart checks).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,train
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict bidder/ streams/"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
