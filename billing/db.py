"""Engine, sessions and the unit of work.

Transactions open and commit at the edge (one per mutation, REST request or arq job);
service functions take the unit of work, only ``flush()``, and record side effects as
events. The edge opens its units of work from a ``Store``, which dispatches the events
*after* commit — so a rolled-back job is never enqueued, and no call site can forget to
enqueue a committed one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from billing.catalog import DEFAULT_POOL

# A pooled connection idle this long is pinged before use (a restarted or terminated
# server is noticed there, and the pool reconnects); one back in use sooner is not: it
# was working a moment ago, and a ping per checkout is a round trip per transaction.
PING_IDLE_S = 1.0


def make_engine(url: str, *, pool_size: int = 20, max_overflow: int = 10) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _idle_since(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        # SQLAlchemy's pessimistic disconnect handling with a custom ping: a
        # DisconnectionError makes the pool replace the connection and check out again.
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_S:
            return  # just connected, or in use a moment ago
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise DisconnectionError("the pooled connection is dead") from exc

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@dataclass(frozen=True, slots=True)
class GenerationAccepted:
    """A job was committed as queued: enqueue it on its pool's queue."""

    generation_id: str
    pool: str = DEFAULT_POOL  # billing.catalog.pool_of(the job's params)
    priority: int = 1  # models.Priority rank: orders it in the queue (runtime/queue.py)


@dataclass(frozen=True, slots=True)
class GenerationUpdated:
    """A job's state changed: announce it to subscribers.

    ``snapshot`` is the committed row (``billing.models.snapshot``); ``live`` carries what
    is not stored: ``eta_seconds``, ``preview``.
    """

    snapshot: dict[str, Any]
    live: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GenerationRequeued:
    """A job whose worker vanished was put back in the queue: drop what is left of the
    dead run in the queue, then enqueue it again (on its pool's queue)."""

    generation_id: str
    pool: str = DEFAULT_POOL
    priority: int = 1


@dataclass(frozen=True, slots=True)
class GenerationCancelled:
    """A job was cancelled: take it off its pool's queue, or interrupt the worker running
    it."""

    generation_id: str
    pool: str = DEFAULT_POOL


@dataclass(frozen=True, slots=True)
class WebhookQueued:
    """A webhook event is due at ``due``: queue its delivery for then."""

    event_id: str
    due: datetime


@dataclass(frozen=True, slots=True)
class StripeEventReceived:
    """A verified Stripe event was stored: apply it in a job."""

    event_id: str


@dataclass(frozen=True, slots=True)
class ApiKeyRevoked:
    """An API key was revoked: end the live subscriptions opened with it, on every API
    process (new requests are refused by the database check already)."""

    api_key_id: str
    account_id: str


Event = (
    GenerationAccepted | GenerationUpdated | GenerationRequeued | GenerationCancelled
    | WebhookQueued
    | StripeEventReceived | ApiKeyRevoked
)  # fmt: skip


@dataclass
class UnitOfWork:
    session: AsyncSession
    events: list[Event] = field(default_factory=list)
    # Set once the transaction has committed, before its events are dispatched: whoever
    # sees the block fail can tell a failed commit from an interrupted dispatch.
    committed: bool = False

    def emit(self, event: Event) -> None:
        self.events.append(event)


class Dispatch(Protocol):
    """Performs the side effects of committed events (``runtime.queue.Dispatcher.dispatch``).

    Called only after commit, so it must not raise for an event it cannot deliver: the
    change is committed all the same, and the caller must not see it as failed (log it;
    whatever is not delivered is healed later, by the next update or a sweeper)."""

    async def __call__(self, events: Sequence[Event]) -> None: ...


@dataclass(frozen=True, slots=True)
class Store:
    """The database and where its committed events go: what an edge (the app, a worker,
    a CLI command) opens its units of work from."""

    sessions: async_sessionmaker[AsyncSession]
    dispatch: Dispatch

    @asynccontextmanager
    async def unit_of_work(self, session: AsyncSession | None = None) -> AsyncIterator[UnitOfWork]:
        """One transaction. Commits on success, then dispatches its events; on error rolls
        back and drops them. Leaving the block by ``return`` commits and dispatches too.

        ``session``: continue the transaction a request opened to authenticate its caller
        (one transaction per accepted job); the session is closed at the end."""
        async with unit_of_work_without_dispatch(self.sessions, session) as uow:
            yield uow
        await self.dispatch(uow.events)


@asynccontextmanager
async def unit_of_work_without_dispatch(
    sessions: async_sessionmaker[AsyncSession],
    session: AsyncSession | None = None,
) -> AsyncIterator[UnitOfWork]:
    """One transaction whose events nobody performs: they stay on ``uow.events``. For
    tests that inspect them or set up state; everything else uses ``Store.unit_of_work``.
    Commits on success; on error rolls back and drops the events. ``session``: an open
    one to continue (see ``Store.unit_of_work``) instead of a new one."""
    opened = session if session is not None else sessions()
    async with opened as session:
        uow = UnitOfWork(session)
        try:
            yield uow
            await session.commit()
            uow.committed = True
        except BaseException:
            uow.events.clear()
            await session.rollback()
            raise
