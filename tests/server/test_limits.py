"""Plans and limits against real Redis, Postgres and two API processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.catalog import Catalog
from billing.db import unit_of_work_without_dispatch
from billing.errors import RateLimited
from billing.plans import default_plan_book
from billing.pricing import default_price_table
from billing.requests import Limits, RawImageRequest, validate
from billing.service import accounts, generations
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, free_port, spawn_api
from tests.factories import TestAccount, audit, create_account, gql, t2i_job, wait_for_final
from tests.runners import SlowRunner

ME = "{ me { id limits { requestsPerMinute concurrentJobs jobsPerDay } } }"
SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
SMALL = {"service": "flux-dev", "prompt": "p", "width": 256, "height": 256}


async def free_account(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, **overrides: Any
) -> TestAccount:
    account = await create_account(sessions, settings, credits=1000, plan="free")
    if overrides:
        async with sessions() as s:
            await accounts.set_plan(
                s, account.id, plan=None, overrides=overrides, plans=default_plan_book()
            )
            await s.commit()
    return account


def rate_headers(response: httpx.Response) -> tuple[int, int, int]:
    return (
        int(response.headers["X-RateLimit-Limit"]),
        int(response.headers["X-RateLimit-Remaining"]),
        int(response.headers["X-RateLimit-Reset"]),
    )


async def test_free_plan_allows_ten_requests_a_minute(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    account = await free_account(sessions, settings)
    started = time.time()
    remaining = []
    for _ in range(10):
        response = await client.post("/graphql", json={"query": ME}, headers=account.bearer)
        assert response.status_code == 200
        assert "errors" not in response.json()
        limit, left, reset = rate_headers(response)
        assert limit == 10
        assert started + 55 <= reset <= time.time() + 61
        remaining.append(left)
    assert remaining == list(range(9, -1, -1))

    # The 11th: REST answers 429 with Retry-After, GraphQL RATE_LIMITED with retryAfter.
    rest = await client.post(
        "/v1/text_to_image", json=SMALL, headers={"X-API-Key": account.api_key}
    )
    assert rest.status_code == 429
    retry_after = int(rest.headers["Retry-After"])
    assert 50 <= retry_after <= 60
    assert rate_headers(rest)[1] == 0
    [error] = rest.json()["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["limit"] == "rate"
    assert error["extensions"]["retryAfter"] == retry_after

    graphql = await client.post("/graphql", json={"query": ME}, headers=account.bearer)
    [error] = graphql.json()["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert 50 <= error["extensions"]["retryAfter"] <= 60
    assert rate_headers(graphql)[:2] == (10, 0)
    cached, _ = await audit(sessions, account.id)
    assert (cached.available, cached.reserved) == (1000, 0)  # refused requests cost nothing


async def test_one_limit_across_two_api_processes(
    client: httpx.AsyncClient, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    account = await free_account(sessions, settings)
    with spawn_api(settings) as other:
        async with httpx.AsyncClient(base_url=other, timeout=30) as elsewhere:
            for i in range(10):
                target = client if i % 2 else elsewhere
                response = await target.post("/graphql", json={"query": ME}, headers=account.bearer)
                assert "errors" not in response.json()
                assert rate_headers(response)[1] == 9 - i
            for target in (client, elsewhere):
                response = await target.post("/graphql", json={"query": ME}, headers=account.bearer)
                assert response.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_aliases_cannot_multiply_work(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    def aliased(n: int) -> str:
        fields = " ".join(
            f'a{i}: generateImage(input: {{service: "flux-dev", prompt: "p{i}", width: 256, '
            f"height: 256}}) {{ id }}"
            for i in range(n)
        )
        return f"mutation {{ {fields} }}"

    # Concurrency unlimited, so only the requests/minute limit is in play.
    roomy = await free_account(sessions, settings, concurrent_jobs=None)
    body = await gql(client, aliased(20), key=roomy.api_key)
    assert body["data"] is None
    [error] = body["errors"]
    # Retrying cannot help: bad input, with no retryAfter to invite a retry.
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "retryAfter" not in error["extensions"]
    assert "counts 20 requests and can never fit" in error["message"]
    assert (await audit(sessions, roomy.id))[0].available == 1000  # no job, no charge

    five = await gql(client, aliased(5), key=roomy.api_key)
    assert "errors" not in five and len(five["data"]) == 5
    after = await client.post("/graphql", json={"query": ME}, headers=roomy.bearer)
    assert rate_headers(after)[1] == 4  # 5 for the aliases + 1 for this query
    over = await gql(client, aliased(5), key=roomy.api_key)
    assert over["errors"][0]["extensions"]["code"] == "RATE_LIMITED"

    # On the plain free plan the concurrency cap (1) also applies, alias by alias.
    plain = await free_account(sessions, settings)
    capped = await gql(client, aliased(3), key=plain.api_key)
    accepted = [v for v in (capped["data"] or {}).values() if v]
    refused = [e["extensions"] for e in capped["errors"]]
    assert len(accepted) == 1 and len(refused) == 2
    assert all(e["code"] == "RATE_LIMITED" and e["limit"] == "concurrency" for e in refused)


@pytest.fixture(scope="module")
def slow_stack(settings: Settings, database: str) -> Iterator[str]:
    port = free_port()
    own = settings.model_copy(
        update={
            "queue_name": f"fluxgate:limits:{uuid.uuid4().hex[:8]}",
            "public_url": f"http://127.0.0.1:{port}",
        }
    )
    runner = SlowRunner(Catalog.load(own.models), step_seconds=0.4)
    with ThreadedServer(own, port) as server, ThreadedWorker(own, runner=runner):
        yield server.url


async def test_concurrency_cap_until_the_job_finishes(
    slow_stack: str, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    # The free plan's concurrency (1); requests unmetered so the test may poll.
    account = await free_account(sessions, settings, requests_per_minute=None)
    async with httpx.AsyncClient(base_url=slow_stack, timeout=30) as http:
        first = await gql(http, SUBMIT, {"input": SMALL}, key=account.api_key)
        job = first["data"]["generateImage"]["id"]
        second = await gql(http, SUBMIT, {"input": SMALL}, key=account.api_key)
        [error] = second["errors"]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["limit"] == "concurrency"
        assert error["extensions"]["retryAfter"] > 0
        assert (await wait_for_final(http, account.api_key, job))["status"] == "completed"
        third = await gql(http, SUBMIT, {"input": SMALL}, key=account.api_key)
        assert "errors" not in third, third


async def test_daily_cap_at_the_utc_day_boundary(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    account = await free_account(sessions, settings, concurrent_jobs=None, jobs_per_day=3)
    request = validate(
        RawImageRequest(provider="flux-dev", prompt="d", width=256, height=256),
        catalog=Catalog.load(settings.models),
        prices=default_price_table(),
        limits=Limits(),
    )
    midnight = datetime(2031, 5, 2, tzinfo=UTC)

    async def submit_at(now: datetime) -> None:
        async with unit_of_work_without_dispatch(sessions) as uow:
            await generations.submit(
                uow, account_id=account.id, api_key_id=None, request=t2i_job(request), now=now
            )

    day = midnight - timedelta(days=1)
    await submit_at(day - timedelta(seconds=1))  # the day before: does not count
    for seconds in (0, 12 * 3600, 23 * 3600):
        await submit_at(day + timedelta(seconds=seconds))
    with pytest.raises(RateLimited) as refused:
        await submit_at(midnight - timedelta(seconds=1))
    assert (refused.value.limit, refused.value.retry_after) == ("daily", 1)
    await submit_at(midnight)  # a new UTC day
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    # Five accepted (held, 10 credits each: nothing runs them here); the refused one: none.
    assert (cached.available, cached.reserved) == (950, 50)


@pytest.fixture(scope="module")
def idle_api(settings: Settings, database: str) -> Iterator[str]:
    """An API whose queue no worker serves: accepted jobs stay queued (active)."""
    port = free_port()
    own = settings.model_copy(
        update={"queue_name": f"fluxgate:idle:{uuid.uuid4().hex[:8]}",
                "public_url": f"http://127.0.0.1:{port}"}
    )  # fmt: skip
    with ThreadedServer(own, port) as server:
        yield server.url


async def test_racing_requests_cannot_overshoot_the_caps(
    idle_api: str, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    account = await free_account(
        sessions, settings, requests_per_minute=None, concurrent_jobs=3, jobs_per_day=5
    )
    async with httpx.AsyncClient(base_url=idle_api, timeout=60) as http:
        results = await asyncio.gather(
            *(gql(http, SUBMIT, {"input": SMALL}, key=account.api_key) for _ in range(12))
        )
    accepted = [r for r in results if r["data"] and r["data"]["generateImage"]]
    refused = [r["errors"][0]["extensions"] for r in results if r.get("errors")]
    assert len(accepted) == 3  # exactly the cap, though all 12 raced
    assert len(refused) == 9
    assert {e["limit"] for e in refused} == {"concurrency"}
    cached, summed = await audit(sessions, account.id)
    assert cached == summed and (cached.available, cached.reserved) == (970, 30)


async def test_unlimited_plan_headers_are_absent_but_requests_pass(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    account = await free_account(sessions, settings, requests_per_minute=None)
    response = await client.post("/graphql", json={"query": ME}, headers=account.bearer)
    me = response.json()["data"]["me"]
    assert me["limits"] == {"requestsPerMinute": None, "concurrentJobs": 1, "jobsPerDay": 100}
    assert "X-RateLimit-Limit" not in response.headers
