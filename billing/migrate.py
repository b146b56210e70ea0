"""Apply Alembic migrations programmatically (``fluxgate db upgrade``, tests, ``make run``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _admin_engine(database_url: str) -> tuple[AsyncEngine, str]:
    """An autocommit engine on the server's ``postgres`` database, and the URL's database."""
    url = make_url(database_url)
    assert url.database, "the database URL names no database"
    engine = create_async_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    return engine, url.database


async def drop_database(database_url: str) -> None:
    """Drop the database named in the URL, disconnecting its sessions (tests, benchmarks)."""
    engine, name = _admin_engine(database_url)
    try:
        async with engine.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(name)
            await conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        await engine.dispose()


async def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL if it does not exist. True if created."""
    engine, name = _admin_engine(database_url)
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            )
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            await conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        await engine.dispose()


async def upgrade(database_url: str, revision: str = "head") -> None:
    await ensure_database(database_url)
    await run_alembic(database_url, lambda config: command.upgrade(config, revision))


async def run_alembic(database_url: str, operation: Callable[[Config], None]) -> None:
    """Run an alembic command on one connection of ``database_url``, in one transaction."""
    config = alembic_config()

    def _run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        operation(config)

    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def upgrade_sync(database_url: str, revision: str = "head") -> None:
    asyncio.run(upgrade(database_url, revision))
