"""The bare yardstick of bench/accept.py: a minimal Starlette + asyncpg + arq app doing
exactly the writes of an accepted job — key lookup, conditional debit with its ledger
row, job insert, enqueue after commit — and nothing else (no GraphQL, no validation
beyond reading the body, no rate limit). Fluxgate's accept path is measured against it.

Run: ``python bench/bare_app.py PORT`` with FLUXGATE_DATABASE_URL, FLUXGATE_REDIS_URL,
FLUXGATE_SECRET_KEY and FLUXGATE_QUEUE_NAME set (bench/accept.py does it)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type stubs
import uvicorn
from arq.connections import ArqRedis, RedisSettings, create_pool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PRICE = 15
INSERT_JOB = """
INSERT INTO generations (id, account_id, api_key_id, type, kind, params, provider, version,
    quality, prompt, width, height, steps, guidance, seed, credit_cost, status, progress,
    step, total_steps, metadata, outputs, preview, revision, attempts, created_at, updated_at)
VALUES ($1, $2, $3, 'IMAGE', 'text_to_image', $4::jsonb, $5, $5, 'standard', $6, $7, $8, 4,
    3.5, $9, $10, 'queued', 0, 0, 4, $11::jsonb, '[]'::jsonb, false, 0, 0, now(), now())
"""
DEBIT = """
UPDATE accounts SET credits_available = credits_available - $2,
                    credits_reserved = credits_reserved + $2
WHERE id = $1 AND credits_available >= $2 RETURNING id
"""
LEDGER = """
INSERT INTO ledger_entries (account_id, kind, available_delta, reserved_delta,
    generation_id, movement_key, created_at)
VALUES ($1, 'reserve', -($2::bigint), $2::bigint, $3::varchar, 'reserve:' || $3::varchar, now())
"""
LOOKUP = """
SELECT k.id, k.account_id FROM api_keys k WHERE k.key_hash = $1 AND k.revoked_at IS NULL
"""


class State:
    db: asyncpg.Pool
    redis: ArqRedis


STATE = State()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    dsn = os.environ["FLUXGATE_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    STATE.db = await asyncpg.create_pool(dsn, min_size=10, max_size=20)
    STATE.redis = await create_pool(RedisSettings.from_dsn(os.environ["FLUXGATE_REDIS_URL"]))
    yield
    await STATE.db.close()
    await STATE.redis.aclose()


PEPPER = os.environ.get("FLUXGATE_SECRET_KEY", "").encode()
QUEUE = os.environ.get("FLUXGATE_QUEUE_NAME", "fluxgate:queue")


async def generate(request: Request) -> Response:
    key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    body: dict[str, Any] = json.loads(await request.body())
    variables = body["variables"]["input"]
    options = variables.get("options") or {}
    key_hash = hmac.new(PEPPER, key.encode(), hashlib.sha256).hexdigest()
    job_id = secrets.token_hex(12)
    seed = secrets.randbelow(2**31)
    async with STATE.db.acquire() as conn:
        found = await conn.fetchrow(LOOKUP, key_hash)
        if found is None:
            return JSONResponse({"errors": [{"message": "bad key"}]}, status_code=401)
        key_id, account_id = found
        async with conn.transaction():
            if await conn.fetchval(DEBIT, account_id, PRICE) is None:
                return JSONResponse({"errors": [{"message": "no credits"}]}, status_code=402)
            params = {"prompt": variables["input"]["text"], "seed": seed}
            await conn.execute(
                INSERT_JOB, job_id, account_id, key_id, json.dumps(params),
                variables["provider"], variables["input"]["text"], options.get("width", 1024),
                options.get("height", 1024), seed, PRICE, json.dumps({"seed": seed}),
            )  # fmt: skip
            await conn.execute(LEDGER, account_id, PRICE, job_id)
    await STATE.redis.enqueue_job(
        "run_generation", job_id, _job_id=f"generation:{job_id}", _queue_name=QUEUE
    )
    return JSONResponse({"data": {"generate": {"id": job_id}}})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route("/graphql", generate, methods=["POST"]), Route("/healthz", health)],
    lifespan=lifespan,
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
