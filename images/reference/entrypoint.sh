#!/bin/bash
# The reference the supervisor replaces: the usual shell entrypoint (jq merge, envsubst,
# tini). Kept only as the benchmark baseline. Its flaws are why the supervisor exists: envsubst
# over serialized JSON corrupts the file when a secret holds a quote, backslash or newline, a
# missing variable becomes an empty string, and nothing restarts or supervises the gateway.
#   TEMPLATE=… PERSONAL=… STATE=… images/reference/entrypoint.sh CMD ARGS…
#   … images/reference/entrypoint.sh --render-only     (the benchmark of the render alone)
set -euo pipefail
mkdir -p "$STATE"
jq -s '.[0] * .[1]' "$TEMPLATE" "$PERSONAL" > "$STATE/merged.json"
if [ ! -s "$STATE/gateway-token" ]; then
  head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > "$STATE/gateway-token"
fi
AUTO_GENERATED=$(cat "$STATE/gateway-token")
export AUTO_GENERATED MYBUDDY_STATE_DIR="$STATE"
envsubst < "$STATE/merged.json" > "$STATE/clawdbot.json"
chmod 600 "$STATE/clawdbot.json"
if [ "${1:-}" = --render-only ]; then exit 0; fi
exec tini -s -- "$@"
