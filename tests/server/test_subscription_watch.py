"""The safety net of live subscriptions (issue 15, the live path): one sweep per API
process (schema/watch.py) instead of a timer per subscriber. Idle subscriptions cost one
transaction per sweep in all, and none when nothing is open; a key revoked by hand in SQL
and a job change whose event was never published reach their subscribers at the next
sweep. And a subscription ends when its client leaves even if a library swallowed the
cancellation (the bench's 1,000 subscribers found that one).

Against a real uvicorn server (a thread of this process, so that its engine and its sweeps
can be observed), Postgres and Redis. No worker takes this module's queue: jobs stay
queued. Tests wait on the sweeps themselves, never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from billing import models
from billing.db import unit_of_work_without_dispatch
from billing.models import utcnow
from billing.service import generations
from runtime.settings import Settings
from schema.live import REVOKED_MESSAGE
from schema.watch import Sweep
from tests.conftest import ThreadedServer, own_queue
from tests.factories import TestAccount, create_account, gql, subscribed
from tests.wsclient import LEGACY_WS, TRANSPORT_WS, GraphQLWebSocket

FOLLOW = "subscription F($id: ID!) { generationUpdated(id: $id) { id status } }"
FOLLOW_ALL = "subscription { generationsUpdated { id status } }"
SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
# Short, so that a test sees several sweeps at once; it waits on the sweeps themselves.
SWEEP_S = 0.1


class Swallowing:
    """The server's queue-position estimate, made to swallow one cancellation as redis-py
    does on Python 3.11 (it sends each command under ``asyncio.wait_for``, which drops a
    cancellation that arrives as the command completes). Armed, its next call blocks until
    cancelled, then answers as if nothing had happened."""

    def __init__(self, app: Starlette) -> None:
        self.inspector = app.state.services.queue
        self.real = self.inspector.eta_queued
        self.loop = asyncio.get_running_loop()
        self.blocked = asyncio.Event()
        self.armed = False
        self.inspector.eta_queued = self  # the instance's attribute: this server only

    async def __call__(self, *args: Any) -> tuple[int | None, float | None]:
        if not self.armed:
            return await self.real(*args)  # type: ignore[no-any-return]  # the real one
        self.armed = False
        self.loop.call_soon_threadsafe(self.blocked.set)
        with contextlib.suppress(asyncio.CancelledError):  # swallowed
            await asyncio.Event().wait()  # until cancelled
        return await self.real(*args)  # type: ignore[no-any-return]  # as if nothing happened

    def close(self) -> None:
        del self.inspector.eta_queued


class Sweeps:
    """A server's sweeps as they complete, each with the number of transactions its
    engine had begun by then: counted in the server's thread when the sweep completes, so
    nothing that begins later is counted against it."""

    def __init__(self, app: Starlette) -> None:
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Queue[tuple[int, Sweep, int]] = asyncio.Queue()
        self.begun = 0
        self.completed = 0  # sweeps so far (the server's thread counts)
        self.engine = app.state.services.sessions.kw["bind"].sync_engine
        event.listen(self.engine, "begin", self._begin)
        app.state.watch.observers.append(self._swept)

    def _begin(self, connection: object) -> None:
        self.begun += 1

    def _swept(self, sweep: Sweep) -> None:
        self.completed += 1
        self.loop.call_soon_threadsafe(self.done.put_nowait, (self.completed, sweep, self.begun))

    async def next(self) -> tuple[Sweep, int]:
        _, sweep, begun = await asyncio.wait_for(self.done.get(), 30)
        return sweep, begun

    async def after(self, begun: int) -> tuple[Sweep, int]:
        """The first sweep to complete once ``begun`` transactions had begun (counts only
        grow: it completed after each of those began)."""
        while True:
            sweep, count = await self.next()
            if count >= begun:
                return sweep, count

    async def until(self, wanted: Callable[[Sweep], bool], *, started_after: int = -1) -> Sweep:
        """The next sweep that is ``wanted`` (and started once ``started_after`` sweeps had
        completed: the one that may have been under way then is skipped)."""
        async with asyncio.timeout(30):
            while True:
                seq, sweep, _ = await self.done.get()
                if seq > started_after + 1 and wanted(sweep):
                    return sweep

    def close(self) -> None:
        event.remove(self.engine, "begin", self._begin)


@dataclass
class Watched:
    url: str
    settings: Settings
    sweeps: Sweeps
    app: Starlette


@pytest.fixture
async def watched(settings: Settings, database: str) -> AsyncIterator[Watched]:
    """A server of its own (only this test's subscriptions are open on it), sweeping every
    SWEEP_S."""
    own = own_queue(settings, "watch", subscription_recheck_s=SWEEP_S)
    with ThreadedServer.of(own) as server:
        app = server.server.config.app
        assert isinstance(app, Starlette)
        sweeps = Sweeps(app)
        try:
            yield Watched(server.url, own, sweeps, app)
        finally:
            sweeps.close()


async def queued_job(url: str, account: TestAccount) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        body = await gql(
            http,
            SUBMIT,
            {"input": {"service": "flux-dev", "prompt": "a lighthouse", "width": 256,
                       "height": 256}},
            key=account.api_key,
        )  # fmt: skip
    assert "errors" not in body, body
    job_id: str = body["data"]["generateImage"]["id"]
    return job_id


async def follow(ws: GraphQLWebSocket, job_id: str) -> None:
    """Subscribe to one job, until its first result: by then the job was read and the
    subscription listens."""
    await ws.subscribe(FOLLOW, {"id": job_id})
    data = await ws.next()
    assert data is not None and data["generationUpdated"]["status"] == "queued", data


async def ended(ws: GraphQLWebSocket, count: int) -> dict[str, list[dict[str, Any]]]:
    """The errors that end ``count`` subscriptions of a socket, by operation id (each
    error, then the end of its operation)."""
    errors: dict[str, list[dict[str, Any]]] = {}
    completed: set[str] = set()
    while len(errors) < count or not completed >= errors.keys():
        message = await ws.receive()
        payload: Any = message.get("payload")
        if message["type"] in ("next", "data"):
            assert payload.get("errors"), message  # nothing more once the key is revoked
            errors[message["id"]] = payload["errors"]
        elif message["type"] == "error":
            errors[message["id"]] = payload
            completed.add(message["id"])  # an error ends a graphql-transport-ws operation
        else:
            assert message["type"] == "complete", message
            completed.add(message["id"])
    return errors


async def test_idle_subscriptions_cost_one_transaction_per_sweep(
    watched: Watched, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """Twenty idle subscriptions (two accounts, both operations, both protocols, followed
    jobs queued): each sweep is one transaction, and nothing else touches the database."""
    owners = [await create_account(sessions, settings) for _ in range(2)]
    async with (
        GraphQLWebSocket(watched.url, TRANSPORT_WS, owners[0].bearer) as first,
        GraphQLWebSocket(watched.url, LEGACY_WS, owners[1].bearer) as second,
    ):
        for ws, owner in ((first, owners[0]), (second, owners[1])):
            for _ in range(3):
                await follow(ws, await queued_job(watched.url, owner))
            for _ in range(7):
                await ws.subscribe(FOLLOW_ALL)
            # Slots are taken after authenticating: opening them is over.
            await subscribed(watched.settings, owner, 10)
        sweep, begun = await watched.sweeps.after(watched.sweeps.begun)
        for _ in range(5):
            assert sweep == Sweep(keys=2, jobs=6, revoked=frozenset(), queried=True)
            sweep, then = await watched.sweeps.next()
            assert then - begun == 1, "one transaction per sweep, and nothing else"
            begun = then


async def test_nothing_is_queried_while_no_subscription_is_open(
    watched: Watched, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    account = await create_account(sessions, settings)
    _, begun = await watched.sweeps.next()
    for _ in range(3):
        sweep, then = await watched.sweeps.next()
        assert sweep == Sweep(keys=0, jobs=0, revoked=frozenset(), queried=False)
        assert then == begun

    # One opens: swept. It closes: no query again.
    async with GraphQLWebSocket(watched.url, TRANSPORT_WS, account.bearer) as ws:
        await ws.subscribe(FOLLOW_ALL)
        sweep = await watched.sweeps.until(lambda sweep: sweep.queried)  # it listens
        assert (sweep.keys, sweep.jobs) == (1, 0)
    # Until the server has seen the socket close.
    await watched.sweeps.until(lambda sweep: not sweep.queried)
    _, begun = await watched.sweeps.next()
    for _ in range(3):
        sweep, then = await watched.sweeps.next()
        assert not sweep.queried
        assert then == begun


async def test_a_key_revoked_by_hand_in_sql_ends_idle_subscriptions_at_the_next_sweep(
    watched: Watched, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """No revocation event is published: the sweep finds the key revoked and ends its
    subscriptions with the error the event gives."""
    account = await create_account(sessions, settings)
    other = await create_account(sessions, settings)
    job_id = await queued_job(watched.url, account)
    async with (
        GraphQLWebSocket(watched.url, TRANSPORT_WS, account.bearer) as ws,
        GraphQLWebSocket(watched.url, TRANSPORT_WS, other.bearer) as bystander,
    ):
        await follow(ws, job_id)
        await ws.subscribe(FOLLOW_ALL)
        await bystander.subscribe(FOLLOW_ALL)
        await subscribed(watched.settings, account, 2)
        await subscribed(watched.settings, other)
        sweep, _ = await watched.sweeps.after(watched.sweeps.begun)
        assert sweep.revoked == frozenset()  # swept while the key was active: kept open

        async with sessions() as s:
            await s.execute(
                update(models.ApiKey)
                .where(models.ApiKey.id == account.api_key_id)  # type: ignore[arg-type]  # SQLModel column
                .values(revoked_at=utcnow())
            )
            await s.commit()

        errors = await ended(ws, 2)  # both of its subscriptions
        for [error] in errors.values():
            assert error["extensions"]["code"] == "UNAUTHENTICATED"
            assert error["message"] == REVOKED_MESSAGE
        # The other account's subscription is untouched: it still gets its events.
        other_job = await queued_job(watched.url, other)
        data = await bystander.next()
        assert data == {"generationsUpdated": {"id": other_job, "status": "queued"}}
    sweep = await watched.sweeps.until(lambda sweep: bool(sweep.revoked))
    assert sweep.revoked == {str(account.api_key_id)}


async def test_a_change_whose_event_was_lost_reaches_its_subscriber_at_the_next_sweep(
    watched: Watched, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """A job cancelled and committed, its event never published (a publication that
    failed after commit): the sweep's revision is newer than the one shown, and the
    subscriber re-reads the job and ends with its final state."""
    account = await create_account(sessions, settings)
    job_id = await queued_job(watched.url, account)
    async with GraphQLWebSocket(watched.url, LEGACY_WS, account.bearer) as ws:
        await follow(ws, job_id)
        async with unit_of_work_without_dispatch(sessions) as uow:
            await generations.cancel(uow, account.id, job_id)
        assert uow.events  # committed; nobody published them
        data = await ws.next()
        assert data == {"generationUpdated": {"id": job_id, "status": "cancelled"}}
        assert await ws.next() is None  # final: the subscription is complete


async def test_a_subscription_whose_cancellation_was_swallowed_still_ends(
    watched: Watched, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """The client leaves while its subscription estimates the queue position, and the
    cancellation is lost on the way (redis-py on Python 3.11): the subscription ends all
    the same, instead of following the job on unseen, its slot held."""
    account = await create_account(sessions, settings)
    job_id = await queued_job(watched.url, account)
    swallowing = Swallowing(watched.app)
    try:
        async with GraphQLWebSocket(watched.url, TRANSPORT_WS, account.bearer) as ws:
            await follow(ws, job_id)
            swallowing.armed = True  # the next queue-position tick blocks
            await asyncio.wait_for(swallowing.blocked.wait(), 30)
            open_by = watched.sweeps.completed  # the subscription is open by then
        # The socket is closed: the server cancels the operation, the estimate swallows it.
        # Until nothing is open: the subscription ended.
        await watched.sweeps.until(lambda sweep: not sweep.queried, started_after=open_by)
    finally:
        swallowing.close()
