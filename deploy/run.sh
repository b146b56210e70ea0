#!/usr/bin/env bash
# Start the API, one GPU worker and the webhook worker on this machine (after
# deploy/setup.sh) and print how to call it. Each process is supervised: one that exits
# is started again after a pause (1 s, doubling up to 30 s; back to 1 s after a minute
# of running). Ctrl-C (or SIGTERM) stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
HOST=${FLUXGATE_HOST:-127.0.0.1}
PORT=${FLUXGATE_PORT:-8000}
export FLUXGATE_PUBLIC_URL=${FLUXGATE_PUBLIC_URL:-http://$HOST:$PORT}
LOG_DIR=${FLUXGATE_LOG_DIR:-var/log}
KEY_FILE=${FLUXGATE_DEV_KEY_FILE:-var/dev-account.json}

account=$("$BIN/fluxgate" dev bootstrap --key-file "$KEY_FILE")
key=$("$BIN/python" -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$account")

# supervise NAME LOG COMMAND...: run COMMAND until this subshell gets SIGTERM, starting
# it again whenever it exits. LOG "-" keeps the output on this terminal.
supervise() {
    local name=$1 log=$2
    shift 2
    local delay=1 child="" started status
    trap '[[ -n $child ]] && kill -TERM "$child" 2>/dev/null; wait 2>/dev/null; exit 0' TERM
    while true; do
        started=$SECONDS
        if [[ $log == - ]]; then "$@" & else "$@" >>"$log" 2>&1 & fi
        child=$!
        status=0
        wait "$child" || status=$?
        if ((SECONDS - started >= 60)); then delay=1; fi
        echo "run.sh: $name exited with status $status; restarting in ${delay}s" >&2
        sleep "$delay" &
        child=$!
        wait "$child" || true
        delay=$((delay * 2 > 30 ? 30 : delay * 2))
    done
}

mkdir -p "$LOG_DIR"
# One /metrics for every process here: prometheus-client's multiprocess mode, so the
# API's /metrics shows the workers' job histograms too (emptied at each start).
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-var/metrics}
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
pids=()
supervise worker "$LOG_DIR/worker.log" "$BIN/fluxgate" worker &
pids+=($!)
supervise webhook-worker "$LOG_DIR/webhook-worker.log" "$BIN/fluxgate" webhook-worker &
pids+=($!)
supervise api - "$BIN/fluxgate" serve --host "$HOST" --port "$PORT" &
pids+=($!)

stop() {
    trap - INT TERM EXIT
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

cat <<MSG

  Fluxgate is starting at $FLUXGATE_PUBLIC_URL  (GraphQL: $FLUXGATE_PUBLIC_URL/graphql)
  Development API key: $key
  Worker logs: $LOG_DIR/worker.log, $LOG_DIR/webhook-worker.log
  A process that exits is restarted; Ctrl-C stops everything.

  Try it:

curl -s -X POST $FLUXGATE_PUBLIC_URL/graphql \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $key" \\
  -d '{"query": "mutation Generate(\$input: GenerateInput!) { generate(input: \$input) { id status type provider url metadata creditCost } }", "variables": {"input": {"type": "IMAGE", "provider": "flux-pro", "input": {"text": "A futuristic city with flying cars and neon lights"}, "options": {"width": 1024, "height": 1024}}}}'

  then poll (replace JOB_ID):

curl -s $FLUXGATE_PUBLIC_URL/v1/text_to_image/JOB_ID -H "X-API-Key: $key"

MSG
wait
