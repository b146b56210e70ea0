#!/usr/bin/env bash
# Start the API and one worker on this machine (after deploy/setup.sh) and print how to
# call it. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
HOST=${FLUXGATE_HOST:-127.0.0.1}
PORT=${FLUXGATE_PORT:-8000}
export FLUXGATE_PUBLIC_URL=${FLUXGATE_PUBLIC_URL:-http://$HOST:$PORT}

account=$("$BIN/fluxgate" dev bootstrap)
key=$("$BIN/python" -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$account")

mkdir -p var/log
"$BIN/fluxgate" worker > var/log/worker.log 2>&1 &
worker=$!
"$BIN/fluxgate" webhook-worker > var/log/webhook-worker.log 2>&1 &
webhooks=$!
trap 'kill $worker $webhooks 2>/dev/null; wait $worker $webhooks 2>/dev/null' EXIT INT TERM

cat <<MSG

  Fluxgate is starting at $FLUXGATE_PUBLIC_URL  (GraphQL: $FLUXGATE_PUBLIC_URL/graphql)
  Development API key: $key
  Worker logs: var/log/worker.log, var/log/webhook-worker.log

  Try it:

curl -s -X POST $FLUXGATE_PUBLIC_URL/graphql \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $key" \\
  -d '{"query": "mutation Generate(\$input: GenerateInput!) { generate(input: \$input) { id status type provider url metadata creditCost } }", "variables": {"input": {"type": "IMAGE", "provider": "flux-pro", "input": {"text": "A futuristic city with flying cars and neon lights"}, "options": {"width": 1024, "height": 1024}}}}'

  then poll (replace JOB_ID):

curl -s $FLUXGATE_PUBLIC_URL/v1/text_to_image/JOB_ID -H "X-API-Key: $key"

MSG
"$BIN/fluxgate" serve --host "$HOST" --port "$PORT"
