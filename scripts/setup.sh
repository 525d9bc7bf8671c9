#!/usr/bin/env bash
# Creates .venv (if missing) and installs the bridge with every extra and dev tool.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING' || true
.venv/bin/python -c 'import consumer_core, connectors, sinks, configs' # fails loudly if the install did
