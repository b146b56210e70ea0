"""``DriverStatement`` (billing/db.py): the accept path's statements run on the asyncpg
connection itself must give exactly what SQLAlchemy's execution gives — the same typed
rows — inside the session's transaction (committed with it, rolled back with it, begun by
it when it is the first statement), and fail the way SQLAlchemy fails: a constraint
violation is an ``IntegrityError``, a connection killed under it is a ``DBAPIError`` with
``connection_invalidated``, after which the pool hands out a working connection."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from billing import repository as repo
from billing.db import DriverStatement
from billing.keys import hash_api_key
from billing.models import Account, Generation, LedgerEntry, utcnow
from billing.service import accounts, generations
from runtime.settings import Settings
from tests.billing.test_ledger import request
from tests.factories import t2i_job

Sessions = async_sessionmaker[AsyncSession]


async def _account_with_key(sessions: Sessions, settings: Settings) -> tuple[Account, str]:
    async with sessions() as session:
        account, new_key = await accounts.create_account(
            session, email=f"driver-{uuid.uuid4().hex[:10]}@example.com", plan="free",
            credits=100, pepper=_pepper(settings),
        )  # fmt: skip
        await session.commit()
    return account, new_key.secret


def _pepper(settings: Settings) -> bytes:
    return settings.secret_key.get_secret_value().encode()


async def test_rows_are_typed_exactly_as_sqlalchemy_types_them(
    sessions: Sessions, settings: Settings
) -> None:
    account, secret = await _account_with_key(sessions, settings)
    key_hash = hash_api_key(secret, _pepper(settings))
    async with sessions() as session:
        fast = await DriverStatement(repo._FIND_KEY).rows(session, {"key_hash": key_hash})
        connection = await session.connection()
        core = (await connection.execute(repo._FIND_KEY, {"key_hash": key_hash})).all()
    assert len(fast) == 1
    assert fast == [tuple(row) for row in core]
    # Types, not only equality: UUIDs are uuid.UUID, datetimes aware, JSON decoded.
    assert [type(v) for v in fast[0]] == [type(v) for v in core[0]]
    found = await _find(sessions, key_hash)
    assert found is not None and found[1].id == account.id


async def _find(sessions: Sessions, key_hash: str) -> tuple[object, Account] | None:
    async with sessions() as session:
        return await repo.find_key_by_hash(session, key_hash)


def _row(account_id: uuid.UUID) -> dict[str, Any]:
    return generations.generation_row(
        generations.new_generation_id(), account_id, None, t2i_job(request()), utcnow()
    )


async def test_the_first_statement_begins_the_sessions_transaction(
    sessions: Sessions, settings: Settings
) -> None:
    account, _ = await _account_with_key(sessions, settings)
    # Rolled back: the job and its hold (the session's first statements) are undone.
    row = _row(account.id)
    async with sessions() as session:
        inserted = await repo.insert_generation(session, row)
        assert inserted is not None and inserted.id == row["id"]
        debited, recorded = await repo.hold_credits(session, account.id, row["id"], 30)
        assert (debited, recorded) == (True, True)
        await session.rollback()
    assert await _balance(sessions, account.id) == (100, 0)
    assert await _entries(sessions, row["id"]) == 0
    async with sessions() as session:
        assert await session.get(Generation, row["id"]) is None
    # Committed: it stays, once; the inserted job is the row the ORM loads.
    row = _row(account.id)
    job = row["id"]
    async with sessions() as session:
        inserted = await repo.insert_generation(session, row)
        assert await repo.hold_credits(session, account.id, job, 30) == (True, True)
        # Within the same transaction, the ORM sees the driver's write.
        reread = await session.scalar(
            select(col(Account.credits_available)).where(col(Account.id) == account.id)
        )
        assert reread == 70
        await session.commit()
    assert await _balance(sessions, account.id) == (70, 30)
    assert await _entries(sessions, job) == 1
    async with sessions() as session:
        loaded = await session.get(Generation, job)
        assert loaded is not None and inserted is not None
        for attribute in Generation.model_fields:
            assert getattr(inserted, attribute) == getattr(loaded, attribute), attribute
            assert type(getattr(inserted, attribute)) is type(getattr(loaded, attribute))
    # The same movement again: debited but not recorded (the caller undoes the debit).
    async with sessions() as session:
        assert await repo.hold_credits(session, account.id, job, 30) == (True, False)
        await session.rollback()
    # More than is there: nothing.
    async with sessions() as session:
        assert await repo.hold_credits(session, account.id, f"{job}x", 1000) == (False, False)
        await session.rollback()


async def _balance(sessions: Sessions, account_id: uuid.UUID) -> tuple[int, int]:
    async with sessions() as session:
        row = (
            await session.execute(
                select(col(Account.credits_available), col(Account.credits_reserved)).where(
                    col(Account.id) == account_id
                )
            )
        ).one()
        return int(row[0]), int(row[1])


async def _entries(sessions: Sessions, job: str) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(col(LedgerEntry.generation_id) == job)
        )
        return int(count or 0)


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(
    sessions: Sessions, settings: Settings
) -> None:
    account, _ = await _account_with_key(sessions, settings)
    duplicate = DriverStatement(
        insert(LedgerEntry.__table__).returning(LedgerEntry.__table__.c.id),  # type: ignore[attr-defined]
        ["account_id", "kind", "available_delta", "reserved_delta", "movement_key", "created_at"],
    )
    values = {
        "account_id": account.id, "kind": "grant", "available_delta": 0, "reserved_delta": 0,
        "movement_key": f"dup:{uuid.uuid4().hex}", "created_at": func.now(),
    }  # fmt: skip
    async with sessions() as session:
        values["created_at"] = await session.scalar(select(func.now()))
        assert len(await duplicate.rows(session, values)) == 1
        with pytest.raises(IntegrityError):
            await duplicate.rows(session, values)
        await session.rollback()
    async with sessions() as session:  # the pool's connection is fine afterwards
        assert await session.scalar(text("SELECT 1")) == 1


async def test_a_killed_connection_is_invalidated_like_sqlalchemys_own(
    sessions: Sessions, settings: Settings
) -> None:
    _, secret = await _account_with_key(sessions, settings)
    key_hash = hash_api_key(secret, _pepper(settings))
    async with sessions() as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        async with sessions() as killer:
            assert await killer.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(DBAPIError) as raised:
            await repo.find_key_by_hash(session, key_hash)
        assert raised.value.connection_invalidated
        await session.rollback()
    # The next request gets a live connection and finds the key.
    assert await _find(sessions, key_hash) is not None


def test_a_default_that_needs_python_is_refused() -> None:
    from sqlalchemy import Column, Integer, MetaData, Table
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    table = Table(
        "t", MetaData(), Column("id", Integer, primary_key=True),
        Column("n", Integer, default=lambda: 1),
    )  # fmt: skip
    with pytest.raises(ValueError, match="only scalar defaults"):
        DriverStatement(insert(table), ["id"])._compile(dialect())  # type: ignore[no-untyped-call]


async def test_the_one_statement_accept_commits_by_itself_or_joins_the_transaction(
    sessions: Sessions, settings: Settings
) -> None:
    account, _ = await _account_with_key(sessions, settings)
    # No transaction open: the job, its hold and its ledger row are committed as the
    # statement returns, whatever the session does next.
    row = _row(account.id)
    async with sessions() as session:
        accepted = await repo.accept_job(session, row, 30)
        assert accepted is not None
        job, crossed = accepted
        assert job.id == row["id"] and job.status == "queued" and not crossed
        assert await _balance(sessions, account.id) == (70, 30)  # seen from elsewhere
        await session.rollback()
    assert await _entries(sessions, row["id"]) == 1
    async with sessions() as session:
        loaded = await session.get(Generation, row["id"])
        assert loaded is not None
        for attribute in Generation.model_fields:
            assert getattr(job, attribute) == getattr(loaded, attribute), attribute
    # A transaction open (a read before it): the accept is part of it, and a rollback
    # undoes all of it.
    row = _row(account.id)
    async with sessions() as session:
        await session.scalar(select(col(Account.plan)).where(col(Account.id) == account.id))
        assert await repo.accept_job(session, row, 30) is not None
        await session.rollback()
    assert await _balance(sessions, account.id) == (70, 30)
    assert await _entries(sessions, row["id"]) == 0
    async with sessions() as session:
        assert await session.get(Generation, row["id"]) is None


async def test_a_refused_accept_writes_nothing(sessions: Sessions, settings: Settings) -> None:
    account, _ = await _account_with_key(sessions, settings)
    row = _row(account.id)
    async with sessions() as session:
        assert await repo.accept_job(session, row, 101) is None  # one more than it has
        await session.commit()
    assert await _balance(sessions, account.id) == (100, 0)
    assert await _entries(sessions, row["id"]) == 0
    async with sessions() as session:
        assert await session.get(Generation, row["id"]) is None
        await session.execute(
            text("UPDATE accounts SET banned_at = now() WHERE id = :id"), {"id": account.id}
        )
        await session.commit()
    async with sessions() as session:  # banned: refused however much it has
        assert await repo.accept_job(session, _row(account.id), 1) is None
    assert await _balance(sessions, account.id) == (100, 0)


async def test_the_accept_reports_crossing_the_low_credit_threshold(
    sessions: Sessions, settings: Settings
) -> None:
    account, _ = await _account_with_key(sessions, settings)
    async with sessions() as session:
        await session.execute(
            text("UPDATE accounts SET low_credit_threshold = 50 WHERE id = :id"),
            {"id": account.id},
        )
        await session.commit()
    crossings = []
    for _ in range(3):  # 100 -> 70 -> 40 (crosses 50) -> 10
        async with sessions() as session:
            accepted = await repo.accept_job(session, _row(account.id), 30)
            assert accepted is not None
            crossings.append(accepted[1])
    assert crossings == [False, True, False]
