"""Engine, sessions and the unit of work.

Transactions open and commit at the edge (one per mutation, REST request or arq job);
service functions take the unit of work, only ``flush()``, and record side effects as
events. The edge opens its units of work from a ``Store``, which dispatches the events
*after* commit — so a rolled-back job is never enqueued, and no call site can forget to
enqueue a committed one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Dialect, event
from sqlalchemy.engine import Compiled
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql import ClauseElement

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


class DriverStatement:
    """A statement of the accept path run on the session's asyncpg connection itself.

    SQLAlchemy spends ~80 µs of CPU around each statement it executes (its execution
    context, cache lookup, cursor and result objects, greenlet switches): a third of the
    per-request CPU of an accepted job went there. A DriverStatement is compiled once
    for the dialect and then bound, run and typed the way SQLAlchemy would do it — its
    parameters through the bind processors of their types, the rows through the result
    processors of their columns — with nothing in between, and inside the session's
    transaction: if SQLAlchemy has not begun it on the connection yet (it begins lazily),
    it is begun here exactly as SQLAlchemy's asyncpg adapter begins it, so the commit or
    rollback of the session ends it. A failure is translated as SQLAlchemy translates it
    (``DBAPIError`` subclasses), and a connection lost is invalidated as SQLAlchemy would.

    A ``standalone`` statement is complete on its own (one statement is atomic by itself):
    it joins the session's transaction when one is open, and otherwise runs in its own,
    without BEGIN and COMMIT round trips — the session's commit then has nothing to end.
    The accept path's key lookup and its one-statement accept (repository.accept_job) run
    so: an accepted job is two round trips to Postgres.

    ``column_keys``: for an INSERT, the columns the values name (the rest take their
    scalar defaults, as SQLAlchemy's would); statements whose defaults need a Python call
    are refused when compiled. Only for the asyncpg dialect."""

    def __init__(self, statement: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._dialect: Dialect | None = None
        self._sql = ""
        self._names: tuple[str, ...] = ()
        self._binds: tuple[Any, ...] = ()
        self._defaults: dict[str, Any] = {}
        self._types: tuple[Any, ...] = ()
        # The columns' result processors, made on the first run: some need the column's
        # type as the server describes it (SQLAlchemy reads it from the cursor).
        self._results: tuple[Any, ...] | None = None

    def _compile(self, dialect: Dialect) -> None:
        compiled: Compiled = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
        defaults: dict[str, Any] = {}
        for column in [*compiled.insert_prefetch, *compiled.update_prefetch]:  # type: ignore[attr-defined]
            default = column.default
            if default is None or not default.is_scalar:
                raise ValueError(f"{column.name}: only scalar defaults run outside SQLAlchemy")
            defaults[column.key] = default.arg
        names = tuple(compiled.positiontup or ())  # type: ignore[attr-defined]
        binds = compiled.binds  # type: ignore[attr-defined]
        for name in names:  # a bound literal (an INSERT ... SELECT's column default)
            if name not in defaults and not binds[name].required:
                if binds[name].callable is not None:
                    raise ValueError(f"{name}: only scalar defaults run outside SQLAlchemy")
                defaults[name] = binds[name].value
        self._sql = compiled.string
        self._names = names
        self._binds = tuple(binds[name].type._cached_bind_processor(dialect) for name in names)
        self._defaults = defaults
        self._types = tuple(entry[3] for entry in getattr(compiled, "_result_columns", None) or ())
        self._results = None
        self._dialect = dialect

    async def rows(
        self, session: AsyncSession, params: dict[str, Any], *, standalone: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run the statement with ``params`` in the session's transaction (begun here if
        it is not yet; a ``standalone`` statement only joins one already open): its rows."""
        connection = await session.connection()
        sync = connection.sync_connection
        assert sync is not None
        dialect = sync.dialect
        if self._dialect is not dialect:
            self._compile(dialect)
        values = {**self._defaults, **params} if self._defaults else params
        args = [
            value if bind is None else bind(value)
            for bind, value in zip(self._binds, (values[name] for name in self._names), strict=True)
        ]
        adapter = sync.connection.dbapi_connection  # AsyncAdapt_asyncpg_connection
        assert adapter is not None
        try:
            async with adapter._execute_mutex:
                if adapter._transaction is None and not standalone:
                    await adapter._start_transaction()
                results = self._results
                if results is None:
                    prepared = await adapter._connection.prepare(self._sql)
                    results = self._results = tuple(
                        kind._cached_result_processor(dialect, attribute.type.oid)
                        for kind, attribute in zip(
                            self._types, prepared.get_attributes(), strict=True
                        )
                    )
                    records = await prepared.fetch(*args)
                else:
                    records = await adapter._connection.fetch(self._sql, *args)
        except Exception as error:
            raise await _translated(connection, adapter, error, self._sql, args) from error
        return [
            tuple(
                value if result is None else result(value)
                for result, value in zip(results, record, strict=True)
            )
            for record in records
        ]


async def _translated(
    connection: AsyncConnection, adapter: Any, error: Exception, sql: str, args: list[Any]
) -> Exception:
    """``error`` as SQLAlchemy raises it (the adapter's DBAPI error wrapped in the matching
    ``DBAPIError`` subclass), the connection invalidated if it was lost."""
    dialect = connection.dialect
    dbapi_error: Exception
    try:
        adapter._handle_exception(error)
        dbapi_error = error  # it always raises; kept for the type checker
    except Exception as translated:
        dbapi_error = translated
    base = dialect.loaded_dbapi.Error
    if not isinstance(dbapi_error, base):
        return dbapi_error
    lost = dialect.is_disconnect(dbapi_error, adapter, None)
    if lost:
        await connection.invalidate(dbapi_error)
    return DBAPIError.instance(
        sql, args, dbapi_error, base, connection_invalidated=lost, dialect=dialect
    )


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
    # A stored file's public URL (the edge's ``Storage.url``), for what is written in the
    # transaction and names images it did not make: a batch's seed-000 webhook body lists
    # every item's image, whichever edge settles its last item. None where the edge has
    # no storage: such bodies carry no URLs.
    urls: Callable[[str], str] | None = None

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
    urls: Callable[[str], str] | None = None  # see UnitOfWork.urls

    @asynccontextmanager
    async def unit_of_work(self, session: AsyncSession | None = None) -> AsyncIterator[UnitOfWork]:
        """One transaction. Commits on success, then dispatches its events; on error rolls
        back and drops them. Leaving the block by ``return`` commits and dispatches too.

        ``session``: continue the transaction a request opened to authenticate its caller
        (one transaction per accepted job); the session is closed at the end."""
        async with unit_of_work_without_dispatch(self.sessions, session, urls=self.urls) as uow:
            yield uow
        await self.dispatch(uow.events)


@asynccontextmanager
async def unit_of_work_without_dispatch(
    sessions: async_sessionmaker[AsyncSession],
    session: AsyncSession | None = None,
    *,
    urls: Callable[[str], str] | None = None,
) -> AsyncIterator[UnitOfWork]:
    """One transaction whose events nobody performs: they stay on ``uow.events``. For
    tests that inspect them or set up state; everything else uses ``Store.unit_of_work``.
    Commits on success; on error rolls back and drops the events. ``session``: an open
    one to continue (see ``Store.unit_of_work``) instead of a new one."""
    opened = session if session is not None else sessions()
    async with opened as session:
        uow = UnitOfWork(session, urls=urls)
        try:
            yield uow
            await session.commit()
            uow.committed = True
        except BaseException:
            uow.events.clear()
            await session.rollback()
            raise
