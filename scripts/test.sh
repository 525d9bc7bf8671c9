#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs every check and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m consumer_core.config.docgen --check
.venv/bin/python -m pytest "$@"
