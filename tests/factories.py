"""Plain factory functions and helpers for tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.requests import ImageRequest
from billing.service import accounts, ledger
from billing.service.generations import JobSpec, NewAsset
from kinds.text_to_image import plan_request
from runtime.queue import Keys
from runtime.settings import Settings


@dataclass
class TestAccount:
    __test__ = False  # not a test class

    id: uuid.UUID
    email: str
    api_key: str
    api_key_id: uuid.UUID

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


async def create_account(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    credits: int = 1000,
    # Enterprise: the suite polls faster than a smaller plan's requests per minute allow.
    plan: str = "enterprise",
) -> TestAccount:
    async with sessions() as session:
        account, key = await accounts.create_account(
            session,
            email=f"user-{uuid.uuid4().hex[:10]}@example.com",
            plan=plan,
            credits=credits,
            pepper=settings.secret_key.get_secret_value().encode(),
        )
        await session.commit()
    return TestAccount(
        id=account.id, email=account.email, api_key=key.secret, api_key_id=key.key.id
    )


async def gql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=h
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


GENERATION_QUERY = """
query G($id: ID!) { generation(id: $id) {
  id status url width height metadata creditCost progress step totalSteps error duration
} }"""


async def wait_for_final(
    client: httpx.AsyncClient, key: str, generation_id: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = await gql(client, GENERATION_QUERY, {"id": generation_id}, key=key)
        g: dict[str, Any] = body["data"]["generation"]
        if g["status"] in ("completed", "failed", "cancelled"):
            return g
        if time.monotonic() > deadline:
            raise AssertionError(f"generation {generation_id} still {g['status']}")
        await asyncio.sleep(0.1)


async def balance(
    sessions: async_sessionmaker[AsyncSession], account_id: uuid.UUID
) -> ledger.Balance:
    async with sessions() as session:
        return await ledger.balance(session, account_id)


async def audit(
    sessions: async_sessionmaker[AsyncSession], account_id: uuid.UUID
) -> tuple[ledger.Balance, ledger.Balance]:
    async with sessions() as session:
        return await ledger.audit(session, account_id)


async def subscribed(settings: Settings, account: TestAccount, count: int = 1) -> None:
    """Until the account holds ``count`` open subscriptions: the slot the API takes in
    Redis (counted across API processes) right before it starts listening."""
    key = f"{Keys(settings.queue_name).events}:subscribers:{account.id}"
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        deadline = time.monotonic() + 30
        while await client.zcard(key) < count:
            assert time.monotonic() < deadline, "the subscription did not start"
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()


def t2i_job(request: ImageRequest) -> JobSpec:
    """A validated seed-001 request as the text_to_image job the API accepts for it."""
    return plan_request(request).job(
        "text_to_image",
        request_hash=request.request_hash,
        webhook_url=request.webhook_url,
        webhook_events=request.webhook_events,
        preview=request.preview,
    )


def output(key: str = "k.png", width: int = 256, height: int = 256) -> NewAsset:
    """An output image's record, as a worker completes a job with."""
    return NewAsset(
        role="output", key=key, mime="image/png", width=width, height=height, bytes=10,
        sha256="0" * 64,
    )  # fmt: skip
