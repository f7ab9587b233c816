#!/usr/bin/env bash
# The main job on the embedded default: broker, topics, a worker, the simulator, a live table and a
# reconciled summary. Extra arguments go to `bidder demo` (e.g. --seconds 30 --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/bidder demo "$@"
