"""Live jobs over websockets (both protocols), against real uvicorn servers, a real arq
worker (its pipeline slowed so that every state can be watched) and Redis pub/sub."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from arq.jobs import Job
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect

from billing import repository as repo
from billing.catalog import Catalog
from gpu_worker.worker import STOPPED
from runtime import queue
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue, spawn_api
from tests.factories import TestAccount, audit, create_account, gql, subscribed
from tests.runners import SlowRunner
from tests.wsclient import (
    LEGACY_WS,
    PROTOCOLS,
    TRANSPORT_WS,
    GraphQLWebSocket,
    SubscriptionError,
    collect,
)

FIELDS = "id status progress step totalSteps queuePosition etaSeconds url error preview"
FOLLOW = f"subscription F($id: ID!) {{ generationUpdated(id: $id) {{ {FIELDS} }} }}"
FOLLOW_ALL = f"subscription {{ generationsUpdated {{ {FIELDS} }} }}"
SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
CANCEL = """mutation C($id: ID!) { cancelGeneration(id: $id) { id status } }"""
STEP_SECONDS = 0.3


@pytest.fixture(scope="module")
def live_settings(settings: Settings) -> Settings:
    # Its own queue, so only this module's worker runs these jobs.
    return own_queue(settings, "live")


@pytest.fixture(scope="module")
def live_api(live_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(live_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def slow_worker(live_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    runner = SlowRunner(Catalog.load(live_settings.models), step_seconds=STEP_SECONDS)
    with ThreadedWorker(live_settings, runner=runner) as worker:
        yield worker


@pytest.fixture
async def http(live_api: str) -> Any:
    async with httpx.AsyncClient(base_url=live_api, timeout=60) as client:
        yield client


async def submit(
    http: httpx.AsyncClient, key: str, *, preview: bool = False, steps_provider: str = "flux-dev"
) -> str:
    body = await gql(
        http,
        SUBMIT,
        {"input": {"service": steps_provider, "prompt": "a comet over a harbour", "width": 256,
                   "height": 256, "preview": preview}},
        key=key,
    )  # fmt: skip
    assert "errors" not in body, body
    job_id: str = body["data"]["generateImage"]["id"]
    return job_id


def params(account: TestAccount) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.api_key}"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_queued_processing_completed(
    http: httpx.AsyncClient, live_api: str, slow_worker: ThreadedWorker,
    account: TestAccount, protocol: str,
) -> None:  # fmt: skip
    ahead = await submit(http, account.api_key)
    job = await submit(http, account.api_key)
    async with GraphQLWebSocket(live_api, protocol, params(account)) as ws:
        await ws.subscribe(FOLLOW, {"id": job})
        states = await collect(ws, "generationUpdated")

    assert {s["id"] for s in states} == {job}
    statuses = [s["status"] for s in states]
    assert statuses[0] == "queued"
    assert statuses[-1] == "completed"
    assert set(statuses) == {"queued", "processing", "completed"}
    assert statuses.index("processing") > statuses.index("queued")
    queued = [s for s in states if s["status"] == "queued"]
    # 0 when `ahead` is already running, 1 while it still waits (test_queue_position.py).
    assert queued[0]["queuePosition"] in (0, 1)
    assert all(s["url"] is None for s in states[:-1])
    processing = [s for s in states if s["status"] == "processing"]
    progress = [s["progress"] for s in processing]
    assert progress == sorted(progress) and len(set(progress)) >= 3  # increasing, step by step
    assert all(s["totalSteps"] == 4 for s in processing)
    # After the first measured job, ETAs come from measured step times.
    assert any(s["etaSeconds"] is not None and s["etaSeconds"] > 0 for s in processing)
    final = states[-1]
    assert final["progress"] == 100 and final["url"]
    assert (await http.get(final["url"])).status_code == 200
    assert ahead != job


async def test_eta_reflects_measured_step_time(
    http: httpx.AsyncClient, live_api: str, slow_worker: ThreadedWorker, account: TestAccount
) -> None:
    first = await submit(http, account.api_key)
    async with GraphQLWebSocket(live_api, TRANSPORT_WS, params(account)) as ws:
        await ws.subscribe(FOLLOW, {"id": first})
        await collect(ws, "generationUpdated")
    # Measured now: 4 steps of ~0.3 s. A new job's ETA is in that range, not a constant.
    second = await submit(http, account.api_key)
    body = await gql(
        http, "query Q($id: ID!) { generation(id: $id) { status etaSeconds queuePosition } }",
        {"id": second}, key=account.api_key,
    )  # fmt: skip
    g = body["data"]["generation"]
    assert g["status"] in ("queued", "processing")
    assert g["etaSeconds"] is not None
    assert 0.2 <= g["etaSeconds"] <= 4 * STEP_SECONDS * 3


async def test_two_api_processes(
    live_settings: Settings, slow_worker: ThreadedWorker, live_api: str, account: TestAccount
) -> None:
    """Subscribe on one API process, submit through another (a real `fluxgate serve`)."""
    with spawn_api(live_settings) as other_url:
        async with GraphQLWebSocket(live_api, TRANSPORT_WS, params(account)) as ws:
            await ws.subscribe(FOLLOW_ALL)
            await subscribed(live_settings, account)  # before submitting
            async with httpx.AsyncClient(base_url=other_url, timeout=30) as elsewhere:
                job = await submit(elsewhere, account.api_key)
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["status"] != "completed":
                data = await ws.next(timeout=30)
                assert data is not None
                update = data["generationsUpdated"]
                assert update["id"] == job
                seen.append(update)
        assert seen[0]["status"] == "queued"
        assert "processing" in [s["status"] for s in seen]


async def test_late_join_and_join_after_the_end(
    http: httpx.AsyncClient, live_api: str, slow_worker: ThreadedWorker, account: TestAccount
) -> None:
    job = await submit(http, account.api_key)
    # Wait until it is processing, then join: the first message is the current state.
    async with GraphQLWebSocket(live_api, LEGACY_WS, params(account)) as watcher:
        await watcher.subscribe(FOLLOW, {"id": job})
        while (await watcher.next())["generationUpdated"]["status"] != "processing":  # type: ignore[index]
            pass
        async with GraphQLWebSocket(live_api, TRANSPORT_WS, params(account)) as late:
            await late.subscribe(FOLLOW, {"id": job})
            states = await collect(late, "generationUpdated")
        assert states[0]["status"] == "processing"
        assert states[-1]["status"] == "completed"
        await collect(watcher, "generationUpdated")

    for protocol in PROTOCOLS:
        async with GraphQLWebSocket(live_api, protocol, params(account)) as after:
            await after.subscribe(FOLLOW, {"id": job})
            first = await after.next()
            assert first is not None
            assert first["generationUpdated"]["status"] == "completed"
            assert first["generationUpdated"]["url"]
            assert await after.next() is None  # and the stream ends


async def test_reconnect_mid_job_resumes_from_current_state(
    http: httpx.AsyncClient, live_api: str, slow_worker: ThreadedWorker, account: TestAccount
) -> None:
    job = await submit(http, account.api_key)
    async with GraphQLWebSocket(live_api, TRANSPORT_WS, params(account)) as ws:
        await ws.subscribe(FOLLOW, {"id": job})
        while True:
            state = (await ws.next())["generationUpdated"]  # type: ignore[index]
            if state["status"] == "processing" and state["step"] >= 1:
                break
    last_step = state["step"]
    async with GraphQLWebSocket(live_api, TRANSPORT_WS, params(account)) as again:
        await again.subscribe(FOLLOW, {"id": job})
        states = await collect(again, "generationUpdated")
    assert states[0]["status"] in ("processing", "completed")
    assert states[0]["step"] >= last_step
    assert states[-1]["status"] == "completed"


async def test_cancel_queued_and_processing(
    http: httpx.AsyncClient, live_api: str, slow_worker: ThreadedWorker, live_settings: Settings,
    sessions: async_sessionmaker[AsyncSession], settings: Settings,
) -> None:  # fmt: skip
    payer = await create_account(sessions, settings, credits=100)
    running = await submit(http, payer.api_key)
    waiting = await submit(http, payer.api_key)
    after = await submit(http, payer.api_key)

    async with GraphQLWebSocket(live_api, TRANSPORT_WS, params(payer)) as ws:
        await ws.subscribe(FOLLOW, {"id": running})
        while True:
            state = (await ws.next())["generationUpdated"]  # type: ignore[index]
            if state["status"] == "processing" and state["step"] >= 1:
                break
        # Cancel the queued one over REST, the processing one over GraphQL.
        queued = await http.post(
            f"/v1/text_to_image/{waiting}/cancel", headers={"X-API-Key": payer.api_key}
        )
        assert queued.status_code == 200
        assert queued.json()["data"]["cancelGeneration"]["status"] == "cancelled"
        cancelled_at = time.monotonic()
        cancel_sent = datetime.now(UTC)
        body = await gql(http, CANCEL, {"id": running}, key=payer.api_key)
        assert body["data"]["cancelGeneration"]["status"] == "cancelled"
        states = [state, *await collect(ws, "generationUpdated")]
    assert states[-1]["status"] == "cancelled"
    assert states[-1]["url"] is None

    # The worker stops the run within a step and goes on to the next job.
    async with GraphQLWebSocket(live_api, TRANSPORT_WS, params(payer)) as ws:
        await ws.subscribe(FOLLOW, {"id": after})
        final = (await collect(ws, "generationUpdated"))[-1]
    assert final["status"] == "completed"
    async with sessions() as s:
        stopped = await repo.get_generation(s, running)
        skipped = await repo.get_generation(s, waiting)
    assert stopped is not None and skipped is not None
    assert stopped.status == "cancelled" and stopped.step < stopped.total_steps
    # The worker's run ended within about one denoising step of the cancel.
    pool = await queue.connect(live_settings.redis_url, live_settings.queue_name)
    try:
        result = await Job(
            queue.job_id(running), pool, _deserializer=queue.deserialize
        ).result_info()
    finally:
        await pool.aclose(close_connection_pool=True)
    assert result is not None and result.result == STOPPED
    assert (result.finish_time - cancel_sent).total_seconds() < 2 * STEP_SECONDS + 0.5
    assert stopped.image_key is None
    assert not list(live_settings.storage_dir.glob(f"{running}*"))  # no image to fetch
    assert skipped.status == "cancelled" and skipped.attempts == 0 and skipped.started_at is None
    assert time.monotonic() - cancelled_at < 30

    cached, summed = await audit(sessions, payer.id)
    assert cached == summed
    # Both cancelled holds released in full; only `after` was charged.
    assert (cached.available, cached.reserved) == (100 - 10, 0)

    again = await gql(http, CANCEL, {"id": after}, key=payer.api_key)
    assert again["errors"][0]["extensions"]["code"] == "CONFLICT"
    rest_again = await http.post(
        f"/v1/text_to_image/{after}/cancel", headers={"X-API-Key": payer.api_key}
    )
    assert rest_again.status_code == 409


async def test_previews_while_processing(
    http: httpx.AsyncClient, live_api: str, slow_worker: ThreadedWorker, account: TestAccount
) -> None:
    job = await submit(http, account.api_key, preview=True)
    async with GraphQLWebSocket(live_api, TRANSPORT_WS, params(account)) as ws:
        await ws.subscribe(FOLLOW, {"id": job})
        states = await collect(ws, "generationUpdated")
    previews = [s["preview"] for s in states if s["preview"]]
    assert previews, states
    prefix = "data:image/png;base64,"
    assert all(p.startswith(prefix) for p in previews)
    assert base64.b64decode(previews[0][len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    assert states[-1]["status"] == "completed" and states[-1]["preview"] is None


async def test_generations_updated_sees_only_own_jobs(
    http: httpx.AsyncClient, live_api: str, slow_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession], settings: Settings, live_settings: Settings,
) -> None:  # fmt: skip
    mine = await create_account(sessions, settings, credits=100)
    theirs = await create_account(sessions, settings, credits=100)
    async with GraphQLWebSocket(live_api, LEGACY_WS, params(mine)) as ws:
        await ws.subscribe(FOLLOW_ALL)
        await subscribed(live_settings, mine)
        foreign = await submit(http, theirs.api_key)
        own = await submit(http, mine.api_key)
        done = False
        while not done:
            data = await ws.next(timeout=30)
            assert data is not None
            update = data["generationsUpdated"]
            assert update["id"] == own, "another account's job leaked"
            done = update["status"] == "completed"
    assert foreign != own


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_unauthenticated_and_foreign_subscriptions_are_refused(
    http: httpx.AsyncClient, live_api: str, slow_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession], settings: Settings, protocol: str,
) -> None:  # fmt: skip
    owner = await create_account(sessions, settings, credits=100)
    job = await submit(http, owner.api_key)
    for bad in (None, {"Authorization": "Bearer fgk_nope"}, {"apiKey": "x" * 42}):
        client = GraphQLWebSocket(live_api, protocol, bad)
        if protocol == TRANSPORT_WS:
            with pytest.raises(Exception):  # noqa: B017  # the socket closes during the handshake
                async with client:
                    pass
            # Reconnect to read the close code the server sends on connection_init.
            async with connect(
                client.url,
                subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
            ) as raw:
                await raw.send(json.dumps({"type": "connection_init", "payload": bad or {}}))
                await asyncio.wait_for(raw.wait_closed(), 10)
                assert raw.close_code == 4403
        else:
            with pytest.raises(SubscriptionError) as refused:
                async with client:
                    pass
            assert refused.value.payload["type"] == "connection_error"
            assert refused.value.payload["payload"]["code"] == "UNAUTHENTICATED"

    intruder = await create_account(sessions, settings, credits=100)
    for key_in in ("params", "header"):
        ws = GraphQLWebSocket(
            live_api,
            protocol,
            params(intruder) if key_in == "params" else None,
            headers={"Authorization": f"Bearer {intruder.api_key}"} if key_in == "header" else None,
        )
        async with ws:
            await ws.subscribe(FOLLOW, {"id": job})
            with pytest.raises(SubscriptionError) as denied:
                await ws.next()
        [error] = denied.value.payload
        assert error["extensions"]["code"] == "NOT_FOUND"
        assert "prompt" not in str(error)
