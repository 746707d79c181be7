#!/usr/bin/env bash
# Runs the whole test suite against real servers it starts itself. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
exec .venv/bin/python -m pytest -rf "$@"
