#!/usr/bin/env bash
# Stops the deployment of compose.yaml in the order docs/deploy.md ("Shutdown order") explains: Envoy drains and
# stops (no new traffic), then the bridges (their posts in flight still reach a server), then the servers (calls
# drain for SMS_DRAIN_SECONDS) and the workers (running sends finish), then the UI and Redis, MongoDB last.
# `docker compose down` keeps the same order (the reverse of depends_on) but cannot ask Envoy to drain first.
set -euo pipefail
cd "$(dirname "$0")"

DRAIN_SECONDS=${ENVOY_DRAIN_SECONDS:-15}  # as compose.yaml's --drain-time-s
compose() { docker compose -f compose.yaml "$@"; }

echo "stop: draining Envoy's listeners for ${DRAIN_SECONDS} s"
# No curl in Envoy's image: bash's /dev/tcp to the admin port (127.0.0.1 inside the container).
if compose exec -T envoy bash -c 'exec 3<>/dev/tcp/127.0.0.1/9901 \
    && printf "POST /drain_listeners?graceful HTTP/1.0\r\n\r\n" >&3 && cat <&3 >/dev/null'; then
  sleep "$DRAIN_SECONDS"
else
  echo "stop: Envoy's admin did not answer; stopping it without draining" >&2
fi
compose stop envoy
compose stop bridge-1 bridge-2
compose stop server-1 server-2 worker-1 worker-2
compose stop ui redis
compose stop mongo-1 mongo-2 mongo-3
