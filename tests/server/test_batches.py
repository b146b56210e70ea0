"""Batches with priority (issue 13), end to end: the real API, Postgres, Redis, arq GPU
workers on the tiny model, and the webhook worker. A batch is priced and reserved whole or
not at all, idempotent on its client id, ordered in the queue by its priority without
starving older jobs, cancelled item by item with exactly the unfinished items released,
followed live, and announced once by ``batch.completed``."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.catalog import Catalog
from billing.db import unit_of_work_without_dispatch
from billing.errors import BadUserInput
from billing.models import Batch, Generation, LedgerEntry, WebhookEvent
from billing.plans import default_plan_book
from billing.pricing import default_price_table
from billing.requests import Limits, RawImageRequest, validate
from billing.service import accounts, batches, generations
from billing.service.ledger import Balance
from gpu_worker.webhooks import build_webhook_worker
from runtime.queue import PRIORITY_STEP_MS, Dispatcher, job_id, new_pool
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, audit, balance, create_account, gql, t2i_job
from tests.gpu_worker.test_webhooks import Receiver
from tests.runners import SlowRunner
from tests.wsclient import TRANSPORT_WS, GraphQLWebSocket, collect

BATCH_FIELDS = """id clientBatchId priority status total queued processing completed failed
cancelled progress creditCost completedAt items { id status creditCost queuePosition }"""
CREATE = f"""mutation B($input: CreateBatchInput!) {{ createBatch(input: $input) {{
  {BATCH_FIELDS} }} }}"""
GET = f"query G($id: ID!) {{ batch(id: $id) {{ {BATCH_FIELDS} }} }}"
LIST = """query L($after: String) {
  batches(first: 2, after: $after) { items { id total } nextCursor hasMore } }"""
CANCEL = f"mutation C($id: ID!) {{ cancelBatch(id: $id) {{ {BATCH_FIELDS} }} }}"
FOLLOW = """subscription F($id: ID!) {
  batchUpdated(id: $id) { status progress completed items { status } } }"""
CREATE_JOB = """mutation J($input: JSON!) {
  createJob(kind: "text_to_image", input: $input) { id creditCost } }"""
JOB = "query Q($id: ID!) { generation(id: $id) { status queuePosition startedAt } }"
PRICE = 'query P($input: JSON!) { priceJob(kind: "text_to_image", input: $input) { credits } }'


_G = Generation.__table__.c  # type: ignore[attr-defined]  # SQLModel tables expose __table__
_L = LedgerEntry.__table__.c  # type: ignore[attr-defined]
_W = WebhookEvent.__table__.c  # type: ignore[attr-defined]


def t2i(prompt: str = "a lighthouse", steps: int = 2) -> dict[str, Any]:
    return {"kind": "text_to_image",
            "input": {"service": "flux-dev", "prompt": prompt, "width": 256, "height": 256,
                      "steps": steps}}  # fmt: skip


def item(**values: Any) -> dict[str, Any]:
    return {"kind": "text_to_image", "input": {"service": "flux-dev", **values}}


@pytest.fixture(scope="module")
def batch_settings(settings: Settings) -> Settings:
    return own_queue(
        settings,
        "batches",
        webhook_allowed_hosts="127.0.0.1",
        webhook_retry_schedule="0.3,0.3,0.3",
        webhook_timeout_s=2.0,
    )


@pytest.fixture(scope="module")
def batch_api(batch_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(batch_settings) as server:
        yield server.url


@pytest.fixture
async def http(batch_api: str) -> Any:
    async with httpx.AsyncClient(base_url=batch_api, timeout=60) as client:
        yield client


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], batch_settings: Settings
) -> TestAccount:
    return await create_account(sessions, batch_settings, credits=1000)


async def create(
    http: httpx.AsyncClient, key: str, items: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return await gql(http, CREATE, {"input": {"items": items, **extra}}, key=key)


def created(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body
    batch: dict[str, Any] = body["data"]["createBatch"]
    return batch


def error(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("errors"), body
    extensions: dict[str, Any] = body["errors"][0]["extensions"]
    return extensions


async def rows(sessions: async_sessionmaker[AsyncSession], model: Any, account: TestAccount) -> int:
    async with sessions() as session:
        found = await session.scalar(
            select(func.count()).select_from(model).where(model.account_id == account.id)
        )
    return int(found or 0)


async def wait_batch(
    http: httpx.AsyncClient, key: str, batch_id: str, done: Any, timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = (await gql(http, GET, {"id": batch_id}, key=key))["data"]["batch"]
        if done(batch):
            return batch
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.05)


async def test_a_batch_beyond_the_balance_is_refused_whole(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], batch_settings: Settings,
    customer: TestAccount,
) -> None:  # fmt: skip
    price = await gql(http, PRICE, {"input": t2i()["input"]}, key=customer.api_key)
    assert "errors" not in price, price
    each = price["data"]["priceJob"]["credits"]
    poor = await create_account(sessions, batch_settings, credits=9 * each)
    body = await create(http, poor.api_key, [t2i(f"item {n}") for n in range(10)])
    ext = error(body)
    assert ext["code"] == "INSUFFICIENT_CREDITS"
    assert (ext["creditsRequired"], ext["creditsAvailable"]) == (10 * each, 9 * each)
    # Nothing reserved, no job, no batch.
    assert await balance(sessions, poor.id) == Balance(9 * each, 0)
    assert await rows(sessions, Generation, poor) == 0
    assert await rows(sessions, Batch, poor) == 0
    assert await rows(sessions, LedgerEntry, poor) == 1  # the grant only
    # Nine fit.
    nine = created(await create(http, poor.api_key, [t2i(f"item {n}") for n in range(9)]))
    assert (nine["total"], nine["creditCost"], nine["status"]) == (9, 9 * each, "queued")
    after = await balance(sessions, poor.id)
    assert (after.available, after.reserved) == (0, 9 * each)
    cached, summed = await audit(sessions, poor.id)
    assert cached == summed
    await gql(http, CANCEL, {"id": nine["id"]}, key=poor.api_key)


async def test_client_batch_id_makes_it_idempotent(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], customer: TestAccount
) -> None:
    items = [t2i("one"), t2i("two")]
    first = created(await create(http, customer.api_key, items, clientBatchId="b-1"))
    spent = await balance(sessions, customer.id)
    again = created(await create(http, customer.api_key, items, clientBatchId="b-1"))
    assert again["id"] == first["id"]
    assert [i["id"] for i in again["items"]] == [i["id"] for i in first["items"]]
    assert await balance(sessions, customer.id) == spent  # charged once
    assert await rows(sessions, Generation, customer) == 2
    other = error(await create(http, customer.api_key, [t2i("three")], clientBatchId="b-1"))
    assert (other["code"], other["field"]) == ("IDEMPOTENCY_KEY_REUSED", "clientBatchId")
    reprioritised = await create(http, customer.api_key, items, clientBatchId="b-1",
                                 priority="HIGH")  # fmt: skip
    assert error(reprioritised)["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await rows(sessions, Generation, customer) == 2
    cancelled = (await gql(http, CANCEL, {"id": first["id"]}, key=customer.api_key))["data"]
    assert cancelled["cancelBatch"]["status"] == "cancelled"
    assert await balance(sessions, customer.id) == Balance(1000, 0)


WITH_IDS = """mutation B($input: CreateBatchInput!) { createBatch(input: $input) {
  id clientBatchId webhookEvents items { id clientId } } }"""
GET_IDS = "query G($id: ID!) { batch(id: $id) { clientBatchId webhookEvents items { clientId } } }"


async def test_item_client_ids_round_trip_and_are_part_of_the_request(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], customer: TestAccount
) -> None:
    key = customer.api_key
    items = [{**t2i("one"), "clientId": "req_001"}, t2i("two"), {**t2i("three"), "clientId": "r3"}]
    sent = {"items": items, "clientBatchId": "ids-1", "webhookEvents": ["batch.completed"]}
    first = created(await gql(http, WITH_IDS, {"input": sent}, key=key))
    assert [i["clientId"] for i in first["items"]] == ["req_001", None, "r3"]
    assert first["webhookEvents"] == ["batch.completed"]
    shown = (await gql(http, GET_IDS, {"id": first["id"]}, key=key))["data"]["batch"]
    assert (shown["clientBatchId"], shown["webhookEvents"]) == ("ids-1", ["batch.completed"])
    assert [i["clientId"] for i in shown["items"]] == ["req_001", None, "r3"]
    spent = await balance(sessions, customer.id)
    again = created(await gql(http, WITH_IDS, {"input": sent}, key=key))
    assert again["id"] == first["id"] and again["items"] == first["items"]
    # Other client ids, or another body for the webhook, under the same clientBatchId: a
    # different request, refused, nothing charged.
    renamed = [{**items[0], "clientId": "req_002"}, *items[1:]]
    for changed in (
        {**sent, "items": renamed},
        {**sent, "items": [t2i("one"), *items[1:]]},
        {**sent, "webhookEvents": ["batch.complete"]},
    ):
        ext = error(await gql(http, WITH_IDS, {"input": changed}, key=key))
        assert (ext["code"], ext["field"]) == ("IDEMPOTENCY_KEY_REUSED", "clientBatchId")
    assert await balance(sessions, customer.id) == spent
    assert await rows(sessions, Batch, customer) == 1
    await gql(http, CANCEL, {"id": first["id"]}, key=key)


def test_client_ids_are_checked_for_every_caller() -> None:
    """What the GraphQL layer refuses before (NUL, lone surrogates), the service refuses
    too, for a caller that reaches it directly."""
    assert batches.check_client_ids([None, None]) is None
    assert batches.check_client_ids([None, "a"]) == [None, "a"]
    for bad in ("a\x00b", "a\ud800", "", "x" * 65):
        with pytest.raises(BadUserInput) as refused:
            batches.check_client_ids(["ok", bad])
        assert refused.value.field == "items.1.clientId"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"items": [t2i(), {**t2i(), "clientId": "x" * 65}]}, "items.1.clientId"),
        ({"items": [{**t2i(), "clientId": ""}]}, "items.0.clientId"),
        # Refused with every variable's text (hostile input), named by its path.
        ({"items": [{**t2i(), "clientId": "a\u0000b"}]}, "input.items.0.clientId"),
        ({"webhookEvents": ["batch.done"]}, "webhookEvents"),
        ({"webhookEvents": []}, "webhookEvents"),
        ({"webhookEvents": ["completed"]}, "webhookEvents"),
        ({"webhookEvents": ["batch.completed", "batch.complete"]}, "webhookEvents"),
    ],
)
async def test_bad_client_ids_and_webhook_events_cost_nothing(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], customer: TestAccount,
    extra: dict[str, Any], field: str,
) -> None:  # fmt: skip
    sent = {"items": [t2i()], "webhookUrl": "https://example.com/hook", **extra}
    ext = error(await gql(http, WITH_IDS, {"input": sent}, key=customer.api_key))
    assert (ext["code"], ext["field"]) == ("BAD_USER_INPUT", field), ext
    assert await rows(sessions, Batch, customer) == 0
    assert await rows(sessions, Generation, customer) == 0
    assert await balance(sessions, customer.id) == Balance(1000, 0)


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items"),
        ([t2i()] * 11, "items"),
        ([t2i(), t2i(), {"kind": "no_such_kind", "input": {}}], "items.2.kind"),
        ([t2i(), t2i(), t2i(), item(width=256)], "items.3.prompt"),
        ([t2i(), item(prompt="x", width=100000)], "items.1.width"),
        ([{"kind": "text_to_image", "input": {"prompt": "x", "webhookUrl": "http://a/"}}],
         "items.0.webhookUrl"),
    ],
)  # fmt: skip
async def test_bad_input_names_the_item_and_costs_nothing(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], customer: TestAccount,
    items: list[dict[str, Any]], field: str,
) -> None:  # fmt: skip
    ext = error(await create(http, customer.api_key, items))
    assert (ext["code"], ext["field"]) == ("BAD_USER_INPUT", field)
    assert await rows(sessions, Generation, customer) == 0
    assert await rows(sessions, Batch, customer) == 0
    assert await balance(sessions, customer.id) == Balance(1000, 0)


async def test_another_accounts_batch_is_not_found(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], batch_settings: Settings,
    customer: TestAccount,
) -> None:  # fmt: skip
    mine = created(await create(http, customer.api_key, [t2i()]))
    stranger = await create_account(sessions, batch_settings)
    for document in (GET, CANCEL):
        ext = error(await gql(http, document, {"id": mine["id"]}, key=stranger.api_key))
        assert ext["code"] == "NOT_FOUND"
    listed = await gql(http, LIST, {}, key=stranger.api_key)
    assert listed["data"]["batches"]["items"] == []
    # Still queued, still held: the stranger's cancel did nothing.
    assert (await gql(http, GET, {"id": mine["id"]}, key=customer.api_key))["data"]["batch"][
        "status"
    ] == "queued"
    # The owner pages through theirs.
    more = [created(await create(http, customer.api_key, [t2i()]))["id"] for _ in range(2)]
    page = (await gql(http, LIST, {}, key=customer.api_key))["data"]["batches"]
    assert [b["id"] for b in page["items"]] == [more[1], more[0]] and page["hasMore"]
    rest = await gql(http, LIST, {"after": page["nextCursor"]}, key=customer.api_key)
    assert [b["id"] for b in rest["data"]["batches"]["items"]] == [mine["id"]]
    for batch_id in (mine["id"], *more):
        await gql(http, CANCEL, {"id": batch_id}, key=customer.api_key)


async def test_priority_reorders_the_queue(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], database: str
) -> None:
    """Normal jobs first, then a high batch, with no worker: the batch's items are ahead
    in the queue; a worker then runs them first."""
    queue_settings = own_queue(settings, "priority")
    account = await create_account(sessions, queue_settings, credits=1000)
    key = account.api_key
    with ThreadedServer.of(queue_settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            normal = []
            for n in range(3):
                body = await gql(http, CREATE_JOB, {"input": t2i(f"normal {n}")["input"]}, key=key)
                normal.append(body["data"]["createJob"]["id"])
            batch = created(
                await create(http, key, [t2i("high 0"), t2i("high 1")], priority="HIGH")
            )
            high = [i["id"] for i in batch["items"]]
            assert [i["queuePosition"] for i in batch["items"]] == [0, 1]
            positions = [(await gql(http, JOB, {"id": j}, key=key))["data"]["generation"]
                         ["queuePosition"] for j in normal]  # fmt: skip
            assert positions == [2, 3, 4]
            low = created(await create(http, key, [t2i("low")], priority="LOW"))
            assert low["items"][0]["queuePosition"] == 5
            with ThreadedWorker(queue_settings):
                await wait_batch(http, key, low["id"], lambda b: b["completedAt"])
                done = await wait_batch(http, key, batch["id"], lambda b: b["completedAt"])
            assert (done["status"], done["completed"], done["progress"]) == ("completed", 2, 1.0)
    async with sessions() as session:
        started: dict[str, Any] = dict(
            (await session.execute(
                select(_G.id, _G.started_at).where(_G.account_id == account.id)
            )).all()
        )  # fmt: skip
    order = sorted(started, key=lambda j: started[j])
    assert order[:2] == high and order[2:5] == normal


async def test_an_old_low_job_is_not_starved(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], database: str
) -> None:
    """A low job queued more than two priority steps before a high one runs first; one
    queued less than that is overtaken. The dispatcher's clock is set back, so the ages
    are exact without waiting."""
    queue_settings = own_queue(settings, "starve")
    account = await create_account(sessions, queue_settings, credits=1000)
    request = validate(
        RawImageRequest(provider="flux-dev", prompt="p", width=256, height=256),
        catalog=Catalog.load(queue_settings.models),
        prices=default_price_table(),
        limits=Limits(),
    )
    pool = new_pool(queue_settings.redis_url, queue_settings.queue_name)
    base = int(time.time() * 1000) - 10 * PRIORITY_STEP_MS
    plan = [("low", 0, base), ("late high", 2, base + 2 * PRIORITY_STEP_MS + 1),
            ("early high", 2, base + 2 * PRIORITY_STEP_MS - 1)]  # fmt: skip
    ids: dict[str, str] = {}
    try:
        for name, rank, at in plan:
            async with unit_of_work_without_dispatch(sessions) as uow:
                job = await generations.submit(
                    uow, account_id=account.id, api_key_id=None,
                    request=dataclasses.replace(t2i_job(request), priority=rank),
                )  # fmt: skip
            ids[name] = job.id
            clock = functools.partial(int, at)
            await Dispatcher(pool, queue_settings.queue_name, clock=clock).dispatch(uow.events)
        queued = [j.decode() for j in await pool.zrange(queue_settings.queue_name, 0, -1)]
        assert queued == [job_id(ids[n]) for n in ("early high", "low", "late high")]
        with ThreadedWorker(queue_settings):
            deadline = time.monotonic() + 120
            while True:
                async with sessions() as session:
                    found = (await session.execute(
                        select(_G.id, _G.status, _G.started_at).where(_G.account_id == account.id)
                    )).all()  # fmt: skip
                if all(s == "completed" for _, s, _ in found):
                    break
                assert time.monotonic() < deadline, found
                await asyncio.sleep(0.05)
        started = {i: at for i, _, at in found}
        by_name = {name: started[i] for name, i in ids.items()}
        assert by_name["early high"] < by_name["low"] < by_name["late high"]
    finally:
        await pool.aclose(close_connection_pool=True)


async def test_cancel_batch_releases_exactly_the_unfinished_items_and_hooks_once(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], batch_settings: Settings,
    customer: TestAccount,
) -> None:  # fmt: skip
    receiver = Receiver()
    try:
        items = [t2i("first", steps=2), t2i("second", steps=30), t2i("third", steps=30)]
        batch = created(await create(http, customer.api_key, items, webhookUrl=receiver.url))
        costs = [i["creditCost"] for i in batch["items"]]
        runner = SlowRunner(Catalog.load(batch_settings.models), step_seconds=0.2)
        with ThreadedWorker(batch_settings, runner=runner):
            await wait_batch(
                http, customer.api_key, batch["id"],
                lambda b: b["items"][0]["status"] == "completed",
            )  # fmt: skip
            body = await gql(http, CANCEL, {"id": batch["id"]}, key=customer.api_key)
        cancelled = body["data"]["cancelBatch"]
        assert [i["status"] for i in cancelled["items"]] == ["completed", "cancelled", "cancelled"]
        assert (cancelled["status"], cancelled["completed"], cancelled["cancelled"]) == (
            "partially_failed",
            1,
            2,
        )
        assert cancelled["completedAt"] is not None and cancelled["progress"] == 1.0
        now = await balance(sessions, customer.id)
        assert (now.available, now.reserved) == (1000 - costs[0], 0)
        async with sessions() as session:
            entries = (await session.execute(
                select(_L.generation_id, _L.kind, _L.available_delta)
                .where(_L.account_id == customer.id, _L.kind != "grant")
            )).all()  # fmt: skip
        ids = [i["id"] for i in batch["items"]]
        settled = {(g, k, d) for g, k, d in entries if k != "reserve"}
        assert settled == {(ids[0], "capture", 0), (ids[1], "release", costs[1]),
                           (ids[2], "release", costs[2])}  # fmt: skip
        cached, summed = await audit(sessions, customer.id)
        assert cached == summed
        # Cancelling again changes nothing.
        again = (await gql(http, CANCEL, {"id": batch["id"]}, key=customer.api_key))["data"]
        assert again["cancelBatch"]["completedAt"] == cancelled["completedAt"]
        # batch.completed: one event, delivered once.
        with ThreadedWorker(batch_settings, build=build_webhook_worker):
            deadline = time.monotonic() + 60
            while not receiver.requests:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            async with sessions() as session:
                while True:
                    events = (await session.execute(
                        select(_W.event, _W.status).where(_W.account_id == customer.id)
                    )).all()  # fmt: skip
                    await session.rollback()
                    if all(s == "delivered" for _, s in events):
                        break
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        assert [e for e, _ in events] == ["batch.completed"]
        [request] = receiver.requests
        sent = json.loads(request["body"])
        assert (sent["event"], sent["id"], sent["status"]) == (
            "batch.completed",
            batch["id"],
            "partially_failed",
        )
        assert [i["status"] for i in sent["items"]] == ["completed", "cancelled", "cancelled"]
    finally:
        receiver.close()


async def test_seed_000s_event_name_gets_seed_000s_body_when_cancelled(
    http: httpx.AsyncClient, batch_settings: Settings, customer: TestAccount
) -> None:
    """``webhookEvents: ["batch.complete"]``: the body is seed 000's, built where the batch
    ended (here the API's cancelBatch, which names the finished item's image URL too)."""
    key = customer.api_key
    receiver = Receiver()
    try:
        items = [{**t2i("first", steps=2), "clientId": "first"}, t2i("second", steps=30)]
        sent = {"items": items, "webhookUrl": receiver.url, "webhookEvents": ["batch.complete"]}
        batch = created(await gql(http, WITH_IDS, {"input": sent}, key=key))
        runner = SlowRunner(Catalog.load(batch_settings.models), step_seconds=0.2)
        with ThreadedWorker(batch_settings, runner=runner):
            first = await wait_batch(
                http, key, batch["id"], lambda b: b["items"][0]["status"] == "completed"
            )
            await gql(http, CANCEL, {"id": batch["id"]}, key=key)
        found = await gql(
            http, "query U($id: ID!) { generation(id: $id) { url } }",
            {"id": first["items"][0]["id"]}, key=key,
        )  # fmt: skip
        url = found["data"]["generation"]["url"]
        with ThreadedWorker(batch_settings, build=build_webhook_worker):
            deadline = time.monotonic() + 60
            while not receiver.requests:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        secret = (await gql(http, "{ me { webhookSecret } }", key=key))["data"]["me"][
            "webhookSecret"
        ]
    finally:
        receiver.close()
    [request] = receiver.requests
    text = request["body"].decode()
    body = json.loads(text)
    assert list(body) == ["event", "timestamp", "data", "signature"]
    unsigned = text[: text.rindex(',"signature":"sha256=')] + "}"
    expected = "sha256=" + hmac.new(secret.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(body["signature"], expected)
    data = body["data"]
    assert body["event"] == "batch.complete" and data["batch_id"] == f"batch_{batch['id']}"
    assert (data["status"], data["total"], data["completed"], data["cancelled"]) == (
        "completed", 2, 1, 1,
    )  # fmt: skip
    ids = [i["id"] for i in batch["items"]]
    assert [j["id"] for j in data["jobs"]] == ["first", ids[1]]
    assert [j["image_id"] for j in data["jobs"]] == ids
    assert [j["status"] for j in data["jobs"]] == ["completed", "failed"]
    assert [j["url"] for j in data["jobs"]] == [url, None] and url
    assert data["jobs"][1]["error_message"] == "The generation was cancelled"


async def test_batch_updated_follows_every_item_to_the_end(
    http: httpx.AsyncClient, batch_api: str, batch_settings: Settings, customer: TestAccount,
) -> None:  # fmt: skip
    batch = created(await create(http, customer.api_key, [t2i("a"), t2i("b")]))
    params = {"Authorization": f"Bearer {customer.api_key}"}
    async with GraphQLWebSocket(batch_api, TRANSPORT_WS, params) as ws:
        await ws.subscribe(FOLLOW, {"id": batch["id"]})
        first = await ws.next()
        assert first is not None and first["batchUpdated"]["status"] == "queued"
        with ThreadedWorker(batch_settings):
            states = [first["batchUpdated"], *await collect(ws, "batchUpdated")]
    statuses = [s["status"] for s in states]
    assert statuses[-1] == "completed" and states[-1]["progress"] == 1.0
    assert "processing" in statuses
    # One state per change: the items' statuses move forward only.
    done = [s["completed"] for s in states]
    assert done == sorted(done) and done[-1] == 2


async def test_the_plans_caps_count_every_item(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], batch_settings: Settings
) -> None:
    capped = await create_account(sessions, batch_settings, credits=1000)
    async with sessions() as s:
        await accounts.set_plan(
            s, capped.id, plan=None, overrides={"concurrent_jobs": 3, "jobs_per_day": 5},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    ext = error(await create(http, capped.api_key, [t2i(), t2i(), t2i(), t2i()]))
    assert (ext["code"], ext["limit"]) == ("RATE_LIMITED", "concurrency")
    assert await rows(sessions, Generation, capped) == 0
    first = created(await create(http, capped.api_key, [t2i(), t2i(), t2i()]))
    ext = error(await create(http, capped.api_key, [t2i()]))
    assert (ext["code"], ext["limit"]) == ("RATE_LIMITED", "concurrency")
    await gql(http, CANCEL, {"id": first["id"]}, key=capped.api_key)
    # Three today already: three more would pass five a day.
    ext = error(await create(http, capped.api_key, [t2i(), t2i(), t2i()]))
    assert (ext["code"], ext["limit"]) == ("RATE_LIMITED", "daily")
    second = created(await create(http, capped.api_key, [t2i(), t2i()]))
    await gql(http, CANCEL, {"id": second["id"]}, key=capped.api_key)
    assert await balance(sessions, capped.id) == Balance(1000, 0)
