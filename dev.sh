#!/usr/bin/env bash
# Runs the whole stack locally: databases, server, worker, bridge, Twilio simulator, Envoy and the web UI.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
exec .venv/bin/sms-gateway dev "$@"
