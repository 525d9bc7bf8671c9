#!/usr/bin/env bash
# Sets up the bridge and runs the quickstart: embedded source, example function, file sink.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m consumer_core run
