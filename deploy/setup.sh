#!/usr/bin/env bash
# Idempotent set-up for `make run` and `make test` on a fresh machine:
#   1. a virtual environment with torch (CPU wheel, pinned first) and the project,
#   2. PostgreSQL and Redis reachable at their default local addresses (started, or
#      installed from the OS packages, where they are not),
#   3. the database created and migrated, 4. the tiny development model built.
# Each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH_SPEC=${FLUXGATE_TORCH_SPEC:-torch==2.13.0}
DB_URL=${FLUXGATE_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/fluxgate}
REDIS_URL=${FLUXGATE_REDIS_URL:-redis://127.0.0.1:6379/0}
TINY_DIR=${FLUXGATE_TINY_MODEL_DIR:-var/models/tiny-flux}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# --- 1. Python environment ------------------------------------------------------------
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || die "Python 3.11 is required (found: $("$PY" --version 2>&1)). Install python3.11 and re-run."
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.fluxgate-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch first, pinned: the worker extra's range then accepts it instead of resolving a
  # newer build with several GB of CUDA packages.
  say "installing $TORCH_SPEC"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$TORCH_SPEC"
  say "installing fluxgate[worker,dev]"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[worker,dev]"
  echo "$want" > "$stamp"
fi

# --- 2. PostgreSQL and Redis ------------------------------------------------------------
pg_up() { "$VENV/bin/python" - "$DB_URL" <<'PYEOF'
import asyncio, sys
import asyncpg
url = sys.argv[1].replace("postgresql+asyncpg://", "postgresql://")
base = url.rsplit("/", 1)[0] + "/postgres"
async def main() -> None:
    conn = await asyncpg.connect(base, timeout=3)
    await conn.close()
try:
    asyncio.run(main())
except Exception:
    sys.exit(1)
PYEOF
}
redis_up() { "$VENV/bin/python" -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_timeout=3).ping()" "$REDIS_URL" 2>/dev/null; }

if ! pg_up; then
  say "PostgreSQL is not reachable at $DB_URL; trying to start it"
  if ! ls /etc/postgresql >/dev/null 2>&1; then
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
      || die "PostgreSQL is not installed. Install it (Debian: apt-get install postgresql), start it, allow trust auth for 127.0.0.1, or set FLUXGATE_DATABASE_URL."
  fi
  for v in $(ls /etc/postgresql); do as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
  for _ in $(seq 1 20); do pg_up && break; sleep 0.5; done
  pg_up || die "PostgreSQL did not come up. Start it (pg_ctlcluster <version> main start) or set FLUXGATE_DATABASE_URL to a reachable server."
fi
if ! redis_up; then
  say "Redis is not reachable at $REDIS_URL; trying to start it"
  if ! command -v redis-server >/dev/null; then
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || die "Redis is not installed. Install it (Debian: apt-get install redis-server) and start it, or set FLUXGATE_REDIS_URL."
  fi
  mkdir -p var/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$PWD/var/redis" --logfile "$PWD/var/redis/redis.log" || true
  for _ in $(seq 1 20); do redis_up && break; sleep 0.5; done
  redis_up || die "Redis did not come up. Start it (redis-server --daemonize yes) or set FLUXGATE_REDIS_URL."
fi

# --- what only the tests need (make test) --------------------------------------------------
# The fault tests start, kill and stall private redis-server processes of their own.
if [ "${FLUXGATE_SETUP_BROWSER:-0}" = 1 ] && ! command -v redis-server >/dev/null; then
  say "installing Debian's redis-server for the fault tests"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
    || die "The fault tests need redis-server: apt-get install redis-server"
fi
# Browser for the dashboard's tests.
if [ "${FLUXGATE_SETUP_BROWSER:-0}" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  say "installing Debian's chromium for the browser tests"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || die "The browser tests need Debian's chromium at /usr/bin/chromium: apt-get install chromium"
fi
# docker-compose for the deployment tests (tests/deploy: `docker-compose config` validates
# deploy/compose.yaml; no Docker daemon is needed). Kubernetes' tools come with .[dev].
if [ "${FLUXGATE_SETUP_DEPLOY:-0}" = 1 ] && ! command -v docker-compose >/dev/null; then
  say "installing Debian's docker-compose for the deployment tests"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
    || die "The deployment tests need docker-compose: apt-get install docker-compose"
fi

# Node.js for the compatible-API tests: the seeds' JavaScript examples run as written
# (tests/compat), the Socket.IO ones with socket.io-client from the npm registry
# (tests/compat/socketio_client, pinned by its package-lock.json).
if [ "${FLUXGATE_SETUP_BROWSER:-0}" = 1 ]; then
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    say "installing Debian's nodejs and npm for the seed examples"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null \
      || die "The seed-example tests need Node.js and npm: apt-get install nodejs npm"
  fi
  if [ ! -d tests/compat/socketio_client/node_modules/socket.io-client ]; then
    say "installing socket.io-client for the Socket.IO tests"
    (cd tests/compat/socketio_client && npm ci --no-audit --no-fund --silent) \
      || die "npm ci failed in tests/compat/socketio_client"
  fi
fi

# --- 3. database and migrations ----------------------------------------------------------
if [ "${FLUXGATE_SKIP_MIGRATE:-0}" != 1 ]; then
  "$VENV/bin/fluxgate" db upgrade >/dev/null
fi

# --- 4. tiny development model ------------------------------------------------------------
if [ ! -f "$TINY_DIR/model_index.json" ] || [ ! -f "$TINY_DIR-fill/model_index.json" ] \
  || [ ! -f "$(dirname "$TINY_DIR")/loras/tiny-style-a.safetensors" ] \
  || [ ! -f "$TINY_DIR"2/model_index.json ] || [ ! -f "$TINY_DIR"2-klein/model_index.json ]; then
  say "building the tiny FLUX models (text-to-image, Fill, LoRA styles, FLUX.2 [dev] and [klein]) under $(dirname "$TINY_DIR")"
  "$VENV/bin/fluxgate" models build-dev "$(dirname "$TINY_DIR")"
fi
