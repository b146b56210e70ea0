"""What resolvers get: the services the app built at start-up, and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.catalog import Catalog
from billing.db import UnitOfWork, unit_of_work
from billing.pricing import PriceTable
from billing.requests import Limits
from billing.service import accounts
from gpu_worker.queue import Dispatcher
from gpu_worker.storage import Storage


@dataclass
class Services:
    """Built once by the app's lifespan; shared by every request."""

    sessions: async_sessionmaker[AsyncSession]
    catalog: Catalog
    prices: PriceTable
    limits: Limits
    storage: Storage
    dispatcher: Dispatcher
    pepper: bytes


@dataclass
class Context:
    services: Services
    api_key: str | None
    idempotency_key: str | None = None
    _caller: accounts.Caller | None = field(default=None, repr=False)

    async def caller(self) -> accounts.Caller:
        """The authenticated caller, looked up once per request; raises UNAUTHENTICATED."""
        if self._caller is None:
            async with self.services.sessions() as session:
                self._caller = await accounts.authenticate(
                    session, self.api_key, self.services.pepper
                )
        return self._caller

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """One transaction for a mutation; its side effects are dispatched after commit."""
        async with unit_of_work(self.services.sessions) as uow:
            yield uow
        await self.services.dispatcher.dispatch(uow.events)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.services.sessions() as session:
            yield session
