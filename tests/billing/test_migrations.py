"""The Alembic migrations match the models, and go down and back up cleanly."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import billing.models  # noqa: F401  # registers the tables on SQLModel.metadata
from billing.migrate import alembic_config, drop_database, ensure_database, run_alembic, upgrade

TABLES = {"accounts", "api_keys", "generations", "ledger_entries"}


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, SQLModel.metadata))


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def _schema_state(url: str) -> dict[str, Any]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return {
                "tables": await conn.run_sync(_tables),
                "revision": await conn.run_sync(_current_revision),
                "diff": await conn.run_sync(_diff),
                "trigger": await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_trigger"
                        " WHERE tgname = 'ledger_entries_append_only' AND NOT tgisinternal"
                    )
                ),
                "function": await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_proc WHERE proname = 'ledger_entries_append_only'"
                    )
                ),
            }
    finally:
        await engine.dispose()


async def _database_exists(url: str) -> bool:
    parsed = make_url(url)
    admin = create_async_engine(parsed.set(database="postgres"), poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            found = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}
            )
            return found is not None
    finally:
        await admin.dispose()


@pytest.fixture
async def throwaway_url(database: str) -> AsyncIterator[str]:
    """A database of this test's own, dropped afterwards whatever happens."""
    name = f"fluxgate_test_migrations_{uuid.uuid4().hex[:12]}"
    url = make_url(database).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        await drop_database(url)
    assert not await _database_exists(url)


async def insert_account(conn: AsyncConnection, account_id: uuid.UUID, email: str) -> None:
    """An account row as the schema of an older revision takes it (5 credits, none held)."""
    await conn.execute(
        text(
            "INSERT INTO accounts (id, email, plan, webhook_secret, credits_available,"
            " credits_reserved, created_at)"
            " VALUES (:id, :email, 'free', 'whsec_x', 5, 0, now())"
        ),
        {"id": account_id, "email": email},
    )


async def test_models_match_migrated_database(database: str) -> None:
    """``alembic revision --autogenerate`` against the test database would find nothing."""
    engine = create_async_engine(database, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
            revision = await conn.run_sync(_current_revision)
            tables = await conn.run_sync(_tables)
    finally:
        await engine.dispose()
    assert diff == []
    assert revision == _head()
    assert tables >= TABLES


def test_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    assert [r.revision for r in script.walk_revisions()][-1] == "0001"


async def test_downgrade_base_then_upgrade_head(throwaway_url: str) -> None:
    url = throwaway_url
    assert not await _database_exists(url)

    await upgrade(url)  # creates the database, then migrates it
    up = await _schema_state(url)
    assert up["tables"] >= TABLES
    assert up["revision"] == _head()
    assert up["diff"] == []
    assert (up["trigger"], up["function"]) == (1, 1)

    # upgrading an up-to-date database is a no-op
    assert await ensure_database(url) is False
    await upgrade(url)
    assert (await _schema_state(url))["revision"] == _head()

    await run_alembic(url, lambda config: command.downgrade(config, "base"))
    down = await _schema_state(url)
    assert down["tables"] & TABLES == set()
    assert down["revision"] is None
    assert (down["trigger"], down["function"]) == (0, 0)

    await upgrade(url)
    again = await _schema_state(url)
    assert again == up

    # the re-created database works: the append-only trigger is back
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            account_id = uuid.uuid4()
            await conn.execute(
                text(
                    "INSERT INTO accounts (id, email, plan, webhook_secret, credits_available,"
                    " credits_reserved, created_at)"
                    " VALUES (:id, 'a@example.com', 'free', 'whsec_x', 5, 0, now())"
                ),
                {"id": account_id},
            )
            await conn.execute(
                text(
                    "INSERT INTO ledger_entries (account_id, kind, available_delta,"
                    " reserved_delta, movement_key, created_at)"
                    " VALUES (:id, 'grant', 5, 0, 'grant:x', now())"
                ),
                {"id": account_id},
            )
            await conn.commit()
            with pytest.raises(DBAPIError, match="append-only"):
                await conn.execute(text("DELETE FROM ledger_entries"))
            await conn.rollback()
    finally:
        await engine.dispose()


async def test_job_kinds_migration_carries_existing_jobs_over(throwaway_url: str) -> None:
    """0008: a job from before job kinds becomes a text_to_image job whose params are its
    old columns, and a completed job's image becomes its output asset."""
    url = throwaway_url
    await upgrade(url, "0007")
    engine = create_async_engine(url, poolclass=NullPool)
    account_id = uuid.uuid4()
    columns = (
        "account_id, type, provider, version, quality, prompt, width, height, steps, guidance,"
        " seed, credit_cost, status, progress, step, total_steps, metadata, preview, revision,"
        " attempts, created_at, updated_at"
    )
    try:
        async with engine.begin() as conn:
            await insert_account(conn, account_id, "legacy@example.com")
            for job_id, status, key in (("done1", "completed", "done1-abc.png"),
                                        ("queued1", "queued", None)):  # fmt: skip
                await conn.execute(
                    text(
                        f"INSERT INTO generations (id, image_key, completed_at, {columns})"
                        " VALUES (:id, CAST(:key AS varchar),"
                        " CASE WHEN CAST(:key AS varchar) IS NULL THEN NULL ELSE now() END,"
                        " :account, 'IMAGE', 'flux-dev', 'flux-dev', 'high', 'a lighthouse',"
                        " 512, 256, 4, 3.5, 42, 15, :status, 0, 0, 4,"
                        " '{\"bytes\": 1234}', false, 0, 0, now(), now())"
                    ),
                    {"id": job_id, "key": key, "account": account_id, "status": status},
                )
    finally:
        await engine.dispose()

    await upgrade(url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            rows = {
                r.id: r
                for r in await conn.execute(
                    text("SELECT id, kind, params, outputs FROM generations ORDER BY id")
                )
            }
            assets = (await conn.execute(text("SELECT * FROM assets"))).mappings().all()
    finally:
        await engine.dispose()
    assert {r.kind for r in rows.values()} == {"text_to_image"}
    params = rows["queued1"].params
    assert params["model"] == {"provider": "flux-dev", "version": "flux-dev"}
    assert (params["prompt"], params["width"], params["height"]) == ("a lighthouse", 512, 256)
    assert (params["steps"], params["guidance"], params["seed"]) == (4, 3.5, 42)
    assert (params["quality"], params["format"], params["count"]) == ("high", "png", 1)
    assert rows["queued1"].outputs == []
    [asset] = assets
    assert (asset["generation_id"], asset["role"], asset["key"]) == (
        "done1",
        "output",
        "done1-abc.png",
    )
    assert (asset["width"], asset["height"], asset["bytes"]) == (512, 256, 1234)
    assert rows["done1"].outputs == [
        {"id": str(asset["id"]), "key": "done1-abc.png", "width": 512, "height": 256,
         "format": "png"}
    ]  # fmt: skip


async def test_batch_client_ids_move_to_their_column(throwaway_url: str) -> None:
    """0015: the REST v2 surface's ``{"v2": key, "ids": [...]}`` client_batch_id becomes
    the key, its ids the items' client ids; a key already taken (by an older batch of the
    account) is dropped from the later one; anything else is left as it was. Down again,
    the old form comes back."""
    url = throwaway_url
    await upgrade(url, "0014")
    engine = create_async_engine(url, poolclass=NullPool)
    account_id = uuid.uuid4()
    two = '["i1", "i2"]'
    rows = [
        # id, client_batch_id, item_ids
        ("b1", '{"v2":"key-1","ids":["req_001",null]}', two),
        ("b2", '{"v2":"key-1","ids":["req_009",null]}', two),  # the key reused, other ids
        ("b3", '{"v2":"0f1e2d3c4b5a6978","ids":["a","b"]}', two),  # a nonce, no key
        ("b4", '{"v2":"key-4","ids":[]}', two),  # a key, no ids
        ("b5", "plain-graphql-id", two),
        ("b6", '{"v2":broken', two),
        ("b7", None, two),
    ]
    try:
        async with engine.begin() as conn:
            await insert_account(conn, account_id, "batches@example.com")
            for n, (batch_id, client_batch_id, item_ids) in enumerate(rows):
                await conn.execute(
                    text(
                        "INSERT INTO batches (id, account_id, client_batch_id, request_hash,"
                        " priority, item_ids, credit_cost, created_at)"
                        " VALUES (:id, :account, :cbid, 'h', 'normal', CAST(:items AS jsonb),"
                        " 10, now() + make_interval(secs => :n))"
                    ),
                    {"id": batch_id, "account": account_id, "cbid": client_batch_id,
                     "items": item_ids, "n": n},
                )  # fmt: skip
    finally:
        await engine.dispose()

    async def read(ids: str = "item_client_ids::text") -> dict[str, tuple[Any, ...]]:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                found = await conn.execute(
                    text(f"SELECT id, client_batch_id, {ids} AS ids FROM batches")
                )
                return {
                    r.id: (r.client_batch_id, None if r.ids is None else json.loads(r.ids))
                    for r in found
                }
        finally:
            await engine.dispose()

    await upgrade(url)
    assert await read() == {
        "b1": ("key-1", ["req_001", None]),
        "b2": (None, ["req_009", None]),
        "b3": ("0f1e2d3c4b5a6978", ["a", "b"]),
        "b4": ("key-4", None),
        "b5": ("plain-graphql-id", None),
        "b6": ('{"v2":broken', None),
        "b7": (None, None),
    }
    await run_alembic(url, lambda config: command.downgrade(config, "0014"))
    down = await read(ids="NULL")  # the column is gone
    assert down["b1"] == ('{"v2":"key-1","ids":["req_001",null]}', None)
    assert down["b2"] == ('{"v2":"migrated-b2","ids":["req_009",null]}', None)
    assert (down["b4"], down["b5"], down["b7"]) == (
        ("key-4", None), ("plain-graphql-id", None), (None, None),
    )  # fmt: skip
