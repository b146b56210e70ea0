"""Many concurrent requests from one account; Idempotency-Key on both surfaces."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import repository as repo
from runtime.settings import Settings
from tests.factories import TestAccount, audit, create_account, gql

GENERATE = """mutation G($input: GenerateInput!) { generate(input: $input) { id creditCost } }"""


def variables(prompt: str = "a red kite over dunes", width: int = 512) -> dict[str, Any]:
    return {
        "input": {
            "type": "IMAGE",
            "provider": "flux-pro",
            "input": {"text": prompt},
            "options": {"width": width, "height": 512, "version": "flux-pro"},
        }
    }


async def test_fifty_concurrent_generates_with_credit_for_five(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    # 512x512 on flux-pro costs 10 credits: the balance covers exactly five jobs.
    payer = await create_account(sessions, settings, credits=50)
    results = await asyncio.gather(
        *(gql(client, GENERATE, variables(f"city {i}"), key=payer.api_key) for i in range(50))
    )
    accepted = [r["data"]["generate"] for r in results if r.get("data") and r["data"]["generate"]]
    refused = [r["errors"][0] for r in results if r.get("errors")]
    assert len(accepted) == 5
    assert len(refused) == 45
    assert len({a["id"] for a in accepted}) == 5
    assert all(a["creditCost"] == 10 for a in accepted)
    for error in refused:
        assert error["extensions"]["code"] == "INSUFFICIENT_CREDITS"
        assert error["extensions"]["creditsRequired"] == 10
        assert 0 <= error["extensions"]["creditsAvailable"] < 10

    cached, summed = await audit(sessions, payer.id)
    assert cached == summed
    assert cached.available == 0
    # Held or already captured by the worker: either way exactly 50 credits left.
    async with sessions() as s:
        entries = await repo.list_entries(s, payer.id)
    reserves = [e for e in entries if e.kind == "reserve"]
    assert len(reserves) == 5
    assert sum(e.available_delta for e in entries) == 0


async def test_same_idempotency_key_and_body_is_one_job(
    client: httpx.AsyncClient, account: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await gql(client, GENERATE, variables(), key=account.api_key, headers=headers)
    second = await gql(client, GENERATE, variables(), key=account.api_key, headers=headers)
    assert first["data"]["generate"]["id"] == second["data"]["generate"]["id"]
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    assert cached.available + cached.reserved == 1000
    assert cached.available == 990  # charged once, whether it is still held or captured

    other = await gql(
        client, GENERATE, variables("another prompt"), key=account.api_key, headers=headers
    )
    [error] = other["errors"]
    assert error["extensions"] == {"code": "IDEMPOTENCY_KEY_REUSED", "field": "Idempotency-Key"}
    assert (await audit(sessions, account.id))[0].available == 990


async def test_concurrent_retries_with_one_key_charge_once(
    client: httpx.AsyncClient, account: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers = {"Idempotency-Key": "retry-storm"}
    results = await asyncio.gather(
        *(
            gql(client, GENERATE, variables(), key=account.api_key, headers=headers)
            for _ in range(10)
        )
    )
    ids = {r["data"]["generate"]["id"] for r in results}
    assert len(ids) == 1
    assert (await audit(sessions, account.id))[0].available == 990


async def test_idempotency_on_rest(
    client: httpx.AsyncClient,
    account: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    body = {
        "service": "flux-pro",
        "prompt": "rest retry",
        "width": 512,
        "height": 512,
        "version": "flux-pro",
    }
    headers = {"X-API-Key": account.api_key, "Idempotency-Key": "rest-1"}
    first = await client.post("/v1/text_to_image", json=body, headers=headers)
    again = await client.post("/v1/text_to_image", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert (
        first.json()["data"]["generateImage"]["id"] == again.json()["data"]["generateImage"]["id"]
    )
    changed = await client.post("/v1/text_to_image", json={**body, "width": 768}, headers=headers)
    assert changed.status_code == 422
    assert changed.json()["errors"][0]["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # Keys are per account: another account may use the same key for its own job.
    other = await create_account(sessions, settings, credits=100)
    theirs = await client.post(
        "/v1/text_to_image", json=body, headers={**headers, "X-API-Key": other.api_key}
    )
    assert theirs.status_code == 200
    assert (
        theirs.json()["data"]["generateImage"]["id"] != first.json()["data"]["generateImage"]["id"]
    )
    assert (await audit(sessions, account.id))[0].available == 990
