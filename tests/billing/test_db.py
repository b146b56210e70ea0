"""The unit of work a ``Store`` opens: its events are dispatched once, after commit, and
dropped when it rolls back. The engine's pool pings only connections that sat idle."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import db
from billing.db import (
    Event,
    GenerationAccepted,
    Store,
    UnitOfWork,
    make_engine,
    unit_of_work_without_dispatch,
)
from billing.models import Account
from billing.service import accounts

Sessions = async_sessionmaker[AsyncSession]


class Recorder:
    """A dispatch that records each call, and whether the accounts written in the unit of
    work were visible to another connection at that moment (committed)."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.calls: list[list[Event]] = []
        self.written: list[uuid.UUID] = []
        self.visible: list[bool] = []

    async def __call__(self, events: Sequence[Event]) -> None:
        self.calls.append(list(events))
        async with self.sessions() as session:
            self.visible.extend([await session.get(Account, i) is not None for i in self.written])


async def open_account(uow: UnitOfWork, recorder: Recorder) -> uuid.UUID:
    account, _ = await accounts.create_account(
        uow.session,
        email=f"uow-{uuid.uuid4().hex[:10]}@example.com",
        plan="free",
        credits=0,
        pepper=b"pepper",
    )
    recorder.written.append(account.id)
    return account.id


async def exists(sessions: Sessions, account_id: uuid.UUID) -> bool:
    async with sessions() as session:
        return await session.get(Account, account_id) is not None


async def test_events_are_dispatched_once_after_commit(sessions: Sessions) -> None:
    recorder = Recorder(sessions)
    async with Store(sessions, recorder).unit_of_work() as uow:
        await open_account(uow, recorder)
        uow.emit(GenerationAccepted("g-1"))
        assert recorder.calls == []
        assert not uow.committed
    assert recorder.calls == [[GenerationAccepted("g-1")]]
    assert recorder.visible == [True]
    assert uow.committed


async def test_a_rolled_back_unit_of_work_dispatches_nothing(sessions: Sessions) -> None:
    recorder = Recorder(sessions)
    with pytest.raises(RuntimeError, match="boom"):
        async with Store(sessions, recorder).unit_of_work() as uow:
            account_id = await open_account(uow, recorder)
            uow.emit(GenerationAccepted("g-2"))
            raise RuntimeError("boom")
    assert recorder.calls == []
    assert uow.events == [] and not uow.committed
    assert not await exists(sessions, account_id)


async def test_returning_from_the_block_commits_and_dispatches(sessions: Sessions) -> None:
    recorder = Recorder(sessions)
    store = Store(sessions, recorder)

    async def accept() -> uuid.UUID:
        async with store.unit_of_work() as uow:
            uow.emit(GenerationAccepted("g-3"))
            return await open_account(uow, recorder)

    account_id = await accept()
    assert recorder.calls == [[GenerationAccepted("g-3")]]
    assert await exists(sessions, account_id)


async def test_a_dispatch_cut_short_leaves_the_commit_in_place(sessions: Sessions) -> None:
    """What the worker relies on to keep a completed job's image: ``committed`` tells a
    failed commit from an interrupted dispatch."""

    async def cancelled(events: Sequence[Event]) -> None:
        raise asyncio.CancelledError

    uow: UnitOfWork | None = None
    with pytest.raises(asyncio.CancelledError):
        async with Store(sessions, cancelled).unit_of_work() as uow:
            account_id = await open_account(uow, Recorder(sessions))
    assert uow is not None and uow.committed
    assert await exists(sessions, account_id)


async def test_without_dispatch_the_events_stay_on_the_unit_of_work(sessions: Sessions) -> None:
    async with unit_of_work_without_dispatch(sessions) as uow:
        uow.emit(GenerationAccepted("g-4"))
    assert uow.committed
    assert uow.events == [GenerationAccepted("g-4")]


# --- the pool's ping -------------------------------------------------------------------


class Pings:
    """Counts the pings the pool sends (the asyncpg adapter's ``ping``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = AsyncAdapt_asyncpg_connection.ping

        def counted(adapter: AsyncAdapt_asyncpg_connection) -> None:
            self.count += 1
            original(adapter)  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy

        monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)


async def test_a_connection_back_in_use_at_once_is_not_pinged(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = Pings(monkeypatch)
    engine = make_engine(database, pool_size=1, max_overflow=0)
    try:
        monkeypatch.setattr(db, "PING_IDLE_S", 3600.0)
        for _ in range(3):
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT 1")) == 1
        assert pings.count == 0
        monkeypatch.setattr(db, "PING_IDLE_S", 0.0)  # every return counts as idle now
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT 1")) == 1
        assert pings.count == 1
    finally:
        await engine.dispose()


async def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    database: str, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle past PING_IDLE_S is pinged; a dead one is replaced, and the
    caller never sees the failure (a restarted or terminated server)."""
    monkeypatch.setattr(db, "PING_IDLE_S", 0.0)
    engine = make_engine(database, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            dead = await conn.scalar(text("SELECT pg_backend_pid()"))
        async with sessions() as session:
            assert await session.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": dead})
            # Wait for the backend itself to be gone (the event, not a sleep).
            while await session.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": dead}
            ):
                await asyncio.sleep(0.01)
        async with engine.connect() as conn:
            alive = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert alive != dead
    finally:
        await engine.dispose()
