"""me, price, generation and the paginated generations list."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runtime.settings import Settings
from tests.conftest import ThreadedWorker
from tests.factories import TestAccount, audit, create_account, gql, wait_for_final

GENERATE_IMAGE = """mutation G($input: ImageGenerationInput!) {
  generateImage(input: $input) { id status creditCost createdAt } }"""
PRICE = """query P($input: ImageGenerationInput!) {
  price(input: $input) {
    credits tier megapixels width height service version quality creditsAvailable sufficient
  } }"""


async def test_me_reports_balance_and_holds(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    someone = await create_account(sessions, settings, credits=77, plan="starter")
    body = await gql(
        client,
        "{ me { id email plan creditsAvailable creditsReserved createdAt } }",
        key=someone.api_key,
    )
    me = body["data"]["me"]
    assert me["id"] == str(someone.id)
    assert (me["email"], me["plan"]) == (someone.email, "starter")
    assert (me["creditsAvailable"], me["creditsReserved"]) == (77, 0)
    assert me["createdAt"].endswith("Z")

    await gql(
        client,
        GENERATE_IMAGE,
        {"input": {"service": "flux-pro", "prompt": "x", "width": 512, "height": 512}},
        key=someone.api_key,
    )
    after = (await gql(client, "{ me { creditsAvailable creditsReserved } }", key=someone.api_key))[
        "data"
    ]["me"]
    # Either still held (reserved) or already captured by the worker.
    assert after["creditsAvailable"] == 65
    assert after["creditsReserved"] in (0, 12)


async def test_price_matches_the_charge_and_costs_nothing(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    buyer = await create_account(sessions, settings, credits=30)
    request = {
        "service": "flux-pro",
        "prompt": "p",
        "width": 2048,
        "height": 2048,
        "version": "flux-pro-1.1",
        "quality": "high",
    }
    quote = (await gql(client, PRICE, {"input": request}, key=buyer.api_key))["data"]["price"]
    assert quote == {
        "credits": 40,
        "tier": "high",
        "megapixels": 4.19,
        "width": 2048,
        "height": 2048,
        "service": "flux-pro",
        "version": "flux-pro-1.1",
        "quality": "high",
        "creditsAvailable": 30,
        "sufficient": False,
    }
    assert 30 <= quote["credits"] <= 50  # SPEC: high resolution costs 30-50
    cached, _ = await audit(sessions, buyer.id)
    assert (cached.available, cached.reserved) == (30, 0)

    small = {**request, "width": 1024, "height": 1024, "quality": "standard"}
    small_quote = (await gql(client, PRICE, {"input": small}, key=buyer.api_key))["data"]["price"]
    assert small_quote["sufficient"] is True
    charged = await gql(client, GENERATE_IMAGE, {"input": small}, key=buyer.api_key)
    assert charged["data"]["generateImage"]["creditCost"] == small_quote["credits"]
    assert 10 <= small_quote["credits"] <= 20  # SPEC: standard resolution costs 10-20

    bad = await gql(client, PRICE, {"input": {**request, "width": 1000}}, key=buyer.api_key)
    assert bad["errors"][0]["extensions"] == {
        "code": "BAD_USER_INPUT",
        "field": "width",
    }


async def test_generations_are_paginated_newest_first(
    client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    worker: ThreadedWorker,
) -> None:
    lister = await create_account(sessions, settings, credits=1000)
    ids = []
    for i in range(5):
        body = await gql(
            client,
            GENERATE_IMAGE,
            {"input": {"service": "flux-schnell", "prompt": f"p{i}", "width": 256, "height": 256}},
            key=lister.api_key,
        )
        ids.append(body["data"]["generateImage"]["id"])
    for job_id in ids:
        assert (await wait_for_final(client, lister.api_key, job_id))["status"] == "completed"

    query = """query L($after: String) {
      generations(first: 2, after: $after) {
        items { id prompt status url } nextCursor hasMore } }"""
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = (await gql(client, query, {"after": after}, key=lister.api_key))["data"][
            "generations"
        ]
        pages += 1
        seen += [item["id"] for item in page["items"]]
        assert all(item["url"] for item in page["items"])
        if not page["hasMore"]:
            assert page["nextCursor"] is None
            break
        after = page["nextCursor"]
    assert pages == 3
    assert seen == list(reversed(ids))

    completed = await gql(
        client,
        '{ generations(status: "completed", first: 100) { items { id } } }',
        key=lister.api_key,
    )
    assert len(completed["data"]["generations"]["items"]) == 5
    for bad_query, field in [
        ("{ generations(first: 0) { hasMore } }", "first"),
        ("{ generations(first: 101) { hasMore } }", "first"),
        ('{ generations(after: "garbage!") { hasMore } }', "after"),
        ('{ generations(status: "lost") { hasMore } }', "status"),
    ]:
        error = (await gql(client, bad_query, key=lister.api_key))["errors"][0]
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, bad_query


async def test_metadata_of_a_completed_job(
    client: httpx.AsyncClient, account: TestAccount, worker: ThreadedWorker
) -> None:
    body = await gql(
        client,
        GENERATE_IMAGE.replace("createdAt", "createdAt seed"),
        {"input": {"service": "flux-dev", "prompt": "m", "width": 384, "height": 256}},
        key=account.api_key,
    )
    job = body["data"]["generateImage"]
    done = await wait_for_final(client, account.api_key, job["id"])
    meta = done["metadata"]
    assert (meta["width"], meta["height"], meta["steps"], meta["version"]) == (
        384,
        256,
        4,
        "flux-dev",
    )
    assert meta["seed"] == job["seed"]
    assert meta["duration"] == done["duration"] > 0
    assert meta["format"] == "png" and meta["bytes"] > 0
