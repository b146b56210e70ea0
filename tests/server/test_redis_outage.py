"""Redis down or stalled (issue 9, item 2), against a private ``redis-server`` process:
killed, every authenticated request is answered 503 SERVICE_UNAVAILABLE with Retry-After
and charges nothing; stopped (SIGSTOP), requests are answered within the socket timeout
instead of hanging; restarted or resumed, the same API process serves again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.plans import default_plan_book
from billing.service import accounts
from runtime.settings import Settings
from tests.conftest import ThreadedServer, free_port
from tests.factories import TestAccount, audit, create_account
from tests.redis_server import RedisServer
from tests.server.test_errors import job_count

ME = "{ me { id } }"
GENERATE = """mutation G($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
JOB = {"service": "flux-dev", "prompt": "p", "width": 256, "height": 256}
# The API's Redis timeout in this test, and the bound a stalled Redis must be answered in:
# a few timeouts' worth (the limiter's call, a reconnect), far below "hangs".
TIMEOUT_S = 1.0
ANSWER_WITHIN_S = 8 * TIMEOUT_S


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@pytest.fixture
def outage_api(settings: Settings, database: str, private_redis: RedisServer) -> Iterator[str]:
    own = settings.model_copy(
        update={
            "redis_url": private_redis.url,
            "queue_name": f"fluxgate:outage:{uuid.uuid4().hex[:8]}",
            "redis_timeout_s": TIMEOUT_S,
        }
    )
    with ThreadedServer(own, free_port()) as server:
        yield server.url


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["Retry-After"]) > 0
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert error["extensions"]["retryAfter"] == int(response.headers["Retry-After"])


async def refused_everywhere(client: httpx.AsyncClient, account: TestAccount) -> None:
    """GraphQL query and mutation, REST submit and poll: all 503."""
    h = {"X-API-Key": account.api_key}
    requests: list[Any] = [
        client.post("/graphql", json={"query": ME}, headers=h),
        client.post("/graphql", json={"query": GENERATE, "variables": {"input": JOB}}, headers=h),
        client.post("/v1/text_to_image", json=JOB, headers=h),
        client.get(f"/v1/text_to_image/{uuid.uuid4()}", headers=h),
    ]
    for pending in requests:
        started = time.monotonic()
        assert_unavailable(await pending)
        assert time.monotonic() - started < ANSWER_WITHIN_S


async def served_again(client: httpx.AsyncClient, account: TestAccount) -> None:
    """Polls (the API reconnects on its own) until a query is served; no restart."""
    deadline = time.monotonic() + 30
    while True:
        response = await client.post("/graphql", json={"query": ME}, headers=account.bearer)
        if response.status_code == 200:
            assert response.json()["data"]["me"]["id"] == str(account.id)
            return
        assert_unavailable(response)
        assert time.monotonic() < deadline, "the API did not recover"
        await asyncio.sleep(0.1)


async def test_redis_killed_then_restarted(
    outage_api: str,
    private_redis: RedisServer,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    account = await create_account(sessions, settings, credits=1000)
    async with httpx.AsyncClient(base_url=outage_api, timeout=30) as client:
        assert (
            await client.post("/graphql", json={"query": ME}, headers=account.bearer)
        ).status_code == 200

        private_redis.kill()
        await refused_everywhere(client, account)
        # Not ready (the API refuses work); alive all the same: nothing to restart.
        ready = await client.get("/readyz")
        assert ready.status_code == 503, ready.text
        [error] = ready.json()["errors"]
        assert (error["extensions"]["code"], error["extensions"]["failing"]) == (
            "SERVICE_UNAVAILABLE",
            ["redis"],
        )
        assert (await client.get("/healthz")).status_code == 200
        cached, summed = await audit(sessions, account.id)
        assert cached == summed and (cached.available, cached.reserved) == (1000, 0)
        assert await job_count(sessions, account) == 0

        private_redis.start()  # same port, empty data: a restarted Redis
        await served_again(client, account)
        submitted = await client.post(
            "/v1/text_to_image", json=JOB, headers={"X-API-Key": account.api_key}
        )
        assert submitted.status_code == 200, submitted.text
        assert (await client.get("/readyz")).status_code == 200


async def test_redis_stalled_then_resumed(
    outage_api: str,
    private_redis: RedisServer,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    account = await create_account(sessions, settings, credits=1000)
    async with httpx.AsyncClient(base_url=outage_api, timeout=30) as client:
        assert (
            await client.post("/graphql", json={"query": ME}, headers=account.bearer)
        ).status_code == 200

        private_redis.pause()
        try:
            await refused_everywhere(client, account)
            cached, summed = await audit(sessions, account.id)
            assert cached == summed and (cached.available, cached.reserved) == (1000, 0)
            assert await job_count(sessions, account) == 0
        finally:
            private_redis.resume()
        await served_again(client, account)


async def test_an_accepted_job_is_never_answered_503(
    outage_api: str,
    private_redis: RedisServer,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    """An unmetered account needs no Redis before its job is committed: with Redis gone
    the job is accepted (credits held, the sweeper enqueues it later) and the answer must
    say so, with the job; a 503 would tell the client nothing was charged while the job
    runs and is billed later (found by the outside review of issue 9)."""
    account = await create_account(sessions, settings, credits=1000)
    async with sessions() as session:
        await accounts.set_plan(
            session, account.id, plan=None, overrides={"requests_per_minute": None},
            plans=default_plan_book(),
        )  # fmt: skip
        await session.commit()
    private_redis.kill()
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=outage_api, timeout=30) as client:
        for _ in range(3):
            rest = await client.post(
                "/v1/text_to_image", json=JOB, headers={"X-API-Key": account.api_key}
            )
            graphql = await client.post(
                "/graphql",
                json={"query": GENERATE, "variables": {"input": JOB}},
                headers=account.bearer,
            )
            for response in (rest, graphql):
                assert response.status_code == 200, response.text
                accepted.append(response.json()["data"]["generateImage"]["id"])
    assert await job_count(sessions, account) == len(accepted) == 6
    cached, summed = await audit(sessions, account.id)
    assert cached == summed and cached.reserved > 0
    assert cached.available + cached.reserved == 1000
