"""Open subscriptions and the keys behind them (issue 9, items 11 and 12): a revoked key's
subscriptions end at once, busy or idle, on every API process; an account's open
subscriptions are capped by its plan, counted across API processes. Against real uvicorn
servers (a thread and a `fluxgate serve` subprocess), Postgres, Redis pub/sub, an arq
worker (its pipeline slowed so that an account stays busy) and gql as the client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from redis.asyncio import Redis
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from billing import models
from billing.catalog import Catalog
from billing.plans import default_plan_book
from billing.service import accounts
from runtime import queue
from runtime.events import SubscriberSlots
from runtime.settings import ROOT, Settings
from tests.conftest import ThreadedServer, ThreadedWorker, free_port, own_queue, spawn_api
from tests.factories import TestAccount, create_account, gql
from tests.runners import SlowRunner
from tests.wsclient import LEGACY_WS, PROTOCOLS, TRANSPORT_WS, GraphQLWebSocket, SubscriptionError

FOLLOW_ALL = "subscription { generationsUpdated { id status progress } }"
SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
REVOKE = """mutation R($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"""
CANCEL = """mutation C($id: ID!) { cancelGeneration(id: $id) { id } }"""
STEP_SECONDS = 0.3


@pytest.fixture(scope="module")
def live_settings(settings: Settings) -> Settings:
    # Its own queue, so only this module's worker runs these jobs.
    return own_queue(settings, "subs")


@pytest.fixture(scope="module")
def live_api(live_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(live_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def other_api(live_settings: Settings, database: str) -> Iterator[str]:
    """A second API *process* sharing the database, Redis and queue."""
    with spawn_api(live_settings) as url:
        yield url


@pytest.fixture(scope="module")
def slow_worker(live_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    runner = SlowRunner(Catalog.load(live_settings.models), step_seconds=STEP_SECONDS)
    with ThreadedWorker(live_settings, runner=runner) as worker:
        yield worker


@pytest.fixture
async def redis(live_settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(live_settings.redis_url)
    yield client
    await client.aclose()


def ws_transport(base: str, protocol: str, key: str) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=base.replace("http://", "ws://") + "/graphql",
        subprotocols=[protocol],
        init_payload={"Authorization": f"Bearer {key}"},
    )


async def second_key(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, account: TestAccount
) -> str:
    async with sessions() as s:
        new = await accounts.create_key(
            s, account.id, settings.secret_key.get_secret_value().encode(), name="ops"
        )
        await s.commit()
    return new.secret


async def unfinished(sessions: async_sessionmaker[AsyncSession], account_id: uuid.UUID) -> int:
    async with sessions() as s:
        count = await s.scalar(
            select(func.count()).where(
                models.Generation.account_id == account_id,  # type: ignore[arg-type]  # SQLModel column
                models.Generation.status.in_(("queued", "processing")),  # type: ignore[attr-defined]  # as above
            )
        )
    return int(count or 0)


RANKS = {"queued": 0, "processing": 1, "completed": 2, "failed": 2, "cancelled": 2}


def state_of(status: str, progress: int | None) -> tuple[int, int]:
    """How far a job had got, comparable: by status, then by progress."""
    return RANKS[status], progress or 0


async def job_states(
    sessions: async_sessionmaker[AsyncSession], account_id: uuid.UUID
) -> dict[str, tuple[int, int]]:
    async with sessions() as s:
        found = await s.scalars(
            select(models.Generation).where(models.Generation.account_id == account_id)  # type: ignore[arg-type]  # SQLModel column
        )
    return {g.id: state_of(g.status, g.progress) for g in found}


def cli_revoke(settings: Settings, key_id: uuid.UUID) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLUXGATE_DATABASE_URL": settings.database_url,
        "FLUXGATE_REDIS_URL": settings.redis_url,
        "FLUXGATE_QUEUE_NAME": settings.queue_name,
        "FLUXGATE_SECRET_KEY": settings.secret_key.get_secret_value(),
    }
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "key", "revoke", str(key_id)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(("protocol", "revoked_through"), [
    (LEGACY_WS, "graphql on another API process"),
    (TRANSPORT_WS, "the fluxgate CLI"),
])  # fmt: skip
async def test_revoking_a_key_ends_its_busy_subscription_at_once(
    live_api: str, other_api: str, slow_worker: ThreadedWorker, live_settings: Settings,
    sessions: async_sessionmaker[AsyncSession], settings: Settings,
    protocol: str, revoked_through: str,
) -> None:  # fmt: skip
    account = await create_account(sessions, settings, credits=1000)
    ops_key = await second_key(sessions, settings, account)
    async with httpx.AsyncClient(base_url=other_api, timeout=60) as elsewhere:
        jobs = []
        for n in range(8):  # ~10 s of work: the stream never pauses for long
            body = await gql(
                elsewhere, SUBMIT,
                {"input": {"service": "flux-dev", "prompt": f"busy {n}", "width": 256,
                           "height": 256}},
                key=ops_key,
            )  # fmt: skip
            jobs.append(body["data"]["generateImage"]["id"])

        after_revocation: list[dict[str, Any]] = []
        at_revocation: dict[str, tuple[int, int]] = {}
        revoked = False
        client = Client(transport=ws_transport(live_api, protocol, account.api_key))
        async with asyncio.timeout(120), client as session:
            with pytest.raises(TransportQueryError) as ended:
                async for data in session.subscribe(GraphQLRequest(FOLLOW_ALL)):
                    update = data["generationsUpdated"]
                    if revoked:
                        after_revocation.append(update)
                    elif update["status"] == "processing":
                        # Busy: revoke now, while updates keep coming.
                        if revoked_through == "the fluxgate CLI":
                            result = await asyncio.to_thread(
                                cli_revoke, live_settings, account.api_key_id
                            )
                            assert result.returncode == 0, result.stderr
                        else:
                            body = await gql(
                                elsewhere, REVOKE, {"id": str(account.api_key_id)}, key=ops_key
                            )
                            assert body["data"]["revokeApiKey"]["revokedAt"], body
                        at_revocation = await job_states(sessions, account.id)
                        revoked = True
            still_busy = await unfinished(sessions, account.id)

        assert revoked
        assert ended.value.errors is not None
        [error] = ended.value.errors
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        # It ended while the account was still busy, and nothing that happened after the
        # revocation got through: every update read after it (the client buffered some
        # while the revocation ran) shows a state its job had already reached by then.
        assert still_busy > 0
        for update in after_revocation:
            assert state_of(update["status"], update["progress"]) <= at_revocation[update["id"]]

        for job in jobs:  # tidy up: the rest need not run
            await gql(elsewhere, CANCEL, {"id": job}, key=ops_key)


async def test_a_revoked_key_ends_idle_subscriptions_too(
    live_api: str, other_api: str, live_settings: Settings, redis: Redis,
    sessions: async_sessionmaker[AsyncSession], settings: Settings,
) -> None:  # fmt: skip
    account = await create_account(sessions, settings, credits=100)
    ops_key = await second_key(sessions, settings, account)
    async with GraphQLWebSocket(live_api, LEGACY_WS, account.bearer) as idle:
        await idle.subscribe(FOLLOW_ALL)
        await idle.subscribe("subscription { generationsUpdated { id } }")
        await wait_for_slots(redis, live_settings, account.id, 2)  # both registered
        async with httpx.AsyncClient(base_url=other_api, timeout=60) as elsewhere:
            body = await gql(elsewhere, REVOKE, {"id": str(account.api_key_id)}, key=ops_key)
        assert body["data"]["revokeApiKey"]["revokedAt"]
        for _ in range(2):
            with pytest.raises(SubscriptionError) as ended:
                await idle.next(timeout=30)
            assert ended.value.payload[0]["extensions"]["code"] == "UNAUTHENTICATED"
            assert await idle.next() is None  # and that subscription is over
    await wait_for_slots(redis, live_settings, account.id, 0)  # their slots are free


def slots_prefix(settings: Settings) -> str:
    """Where the API processes of ``settings`` count subscriptions (see ``Broker``)."""
    return f"{queue.Keys(settings.queue_name).events}:subscribers"


async def wait_for_slots(
    redis: Redis, settings: Settings, account_id: uuid.UUID, count: int
) -> None:
    """Until the account holds ``count`` subscription slots: subscriptions register and
    unregister asynchronously, after the client's message."""
    key = SubscriberSlots(redis, slots_prefix(settings)).key(str(account_id))
    async with asyncio.timeout(30):
        while await redis.zcard(key) != count:
            await asyncio.sleep(0.05)


async def capped_account(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, cap: int
) -> TestAccount:
    account = await create_account(sessions, settings, credits=100)
    async with sessions() as s:
        await accounts.set_plan(
            s, account.id, plan=None, overrides={"max_subscriptions": cap},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    return account


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_open_subscriptions_are_capped_per_account_across_processes(
    live_api: str, other_api: str, live_settings: Settings, redis: Redis,
    sessions: async_sessionmaker[AsyncSession], settings: Settings, protocol: str,
) -> None:  # fmt: skip
    account = await capped_account(sessions, settings, 2)
    async with GraphQLWebSocket(live_api, protocol, account.bearer) as here:
        await here.subscribe(FOLLOW_ALL)
        async with GraphQLWebSocket(other_api, protocol, account.bearer) as there:
            await there.subscribe(FOLLOW_ALL)
            await wait_for_slots(redis, live_settings, account.id, 2)

            # The third, on either process and on a connection of its own: refused.
            client = Client(transport=ws_transport(live_api, protocol, account.api_key))
            async with client as session:
                with pytest.raises(TransportQueryError) as refused:
                    async for _ in session.subscribe(GraphQLRequest(FOLLOW_ALL)):
                        pass
            [error] = refused.value.errors or []
            assert error["extensions"]["code"] == "RATE_LIMITED"
            assert error["extensions"]["limit"] == "subscriptions"
            assert error["extensions"]["retryAfter"] >= 1
            assert "2 open" in error["message"]
        # Closing one (here: its whole connection, on the other process) frees its slot.
        await wait_for_slots(redis, live_settings, account.id, 1)
        async with GraphQLWebSocket(live_api, protocol, account.bearer) as again:
            await again.subscribe(FOLLOW_ALL)
            await wait_for_slots(redis, live_settings, account.id, 2)
    await wait_for_slots(redis, live_settings, account.id, 0)


async def test_a_crashed_process_slots_expire(redis: Redis, live_settings: Settings) -> None:
    """A slot is never refreshed once its process is gone, and expires: the account gets
    its subscriptions back without the dead process releasing anything."""
    prefix = slots_prefix(live_settings)
    dead = SubscriberSlots(redis, prefix, ttl_s=0.5)  # never started: no heartbeat
    alive = SubscriberSlots(redis, prefix, ttl_s=0.5, heartbeat_s=0.1)
    account = str(uuid.uuid4())
    assert await dead.acquire(account, 2) is not None
    await alive.start()
    try:
        kept = await alive.acquire(account, 2)
        assert kept is not None
        assert await alive.acquire(account, 2) is None  # full
        async with asyncio.timeout(30):  # until the dead process's slot has expired
            while (member := await alive.acquire(account, 2)) is None:
                await asyncio.sleep(0.05)
        # The live one's slot was refreshed all along: the account is full again.
        assert await redis.zscore(dead.key(account), kept) is not None
        assert await alive.acquire(account, 2) is None
        await alive.release(account, member)
        await alive.release(account, kept)
        assert await redis.zcard(alive.key(account)) == 0
    finally:
        await alive.stop()


async def test_idle_subscriptions_do_not_poll_the_database(
    live_settings: Settings, database: str, redis: Redis,
    sessions: async_sessionmaker[AsyncSession], settings: Settings,
) -> None:  # fmt: skip
    """Idle subscribers wait on events (revocation included) instead of re-reading the
    database every few seconds: over an idle period longer than the old 5 s recheck, ten
    idle subscriptions start no transaction per subscriber (they start none at all)."""
    port = free_port()
    own = live_settings.model_copy(
        # The process-wide safety-net sweep (one transaction per interval, whatever the
        # number of subscriptions: tests/server/test_subscription_watch.py) kept out of
        # this window, which is about the subscribers themselves.
        update={
            "public_url": f"http://127.0.0.1:{port}",
            "ws_keepalive_s": 0.25,
            "subscription_recheck_s": 3600.0,
        }
    )
    subscriptions = 10
    with ThreadedServer(own, port) as server:
        app = server.server.config.app
        assert isinstance(app, Starlette)
        engine = app.state.services.sessions.kw["bind"].sync_engine
        begun: list[object] = []

        def count(connection: object) -> None:
            begun.append(connection)

        event.listen(engine, "begin", count)
        try:
            account = await create_account(sessions, settings, credits=100)
            async with GraphQLWebSocket(server.url, LEGACY_WS, account.bearer) as ws:
                assert ws.ws is not None
                for _ in range(subscriptions):
                    await ws.subscribe(FOLLOW_ALL)
                await wait_for_slots(redis, live_settings, account.id, subscriptions)
                before = len(begun)
                # Idle for 7 s, as the server's own keep-alive frames measure it.
                idle_from = loop_time = asyncio.get_running_loop().time()
                while loop_time - idle_from < 7:
                    frame = json.loads(await asyncio.wait_for(ws.ws.recv(), 30))
                    assert frame == {"type": "ka"}, frame  # nothing else while idle
                    loop_time = asyncio.get_running_loop().time()
                idle_work = len(begun) - before
        finally:
            event.remove(engine, "begin", count)
    assert idle_work < subscriptions, idle_work
    assert idle_work == 0, idle_work
