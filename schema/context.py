"""What resolvers get: the services the app built at start-up, and the caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.catalog import Catalog
from billing.db import Store, UnitOfWork
from billing.models import utcnow
from billing.netguard import AddressPolicy
from billing.packs import PackList
from billing.plans import PlanBook, PlanLimits
from billing.pricing import PriceTable
from billing.requests import Limits
from billing.service import accounts
from billing.stripe_client import StripeGateway
from runtime.events import Broker
from runtime.queue import QueueInspector
from runtime.storage import Storage
from schema.limiter import RateStatus, RequestLimiter


@dataclass(frozen=True)
class Payments:
    """Stripe, when configured (``gateway`` is None when purchases are off)."""

    gateway: StripeGateway | None
    webhook_secrets: list[str]
    success_url: str
    cancel_url: str


@dataclass(frozen=True)
class InputLimits:
    """Image inputs of the job kinds (FLUXGATE_MAX_INPUT_*, FLUXGATE_INPUT_FETCH_TIMEOUT_S)."""

    max_bytes: int = 16 * 1024 * 1024
    max_megapixels: float = 16.0
    fetch_timeout_s: float = 10.0


@dataclass
class Services:
    """Built once by the app's lifespan; shared by every request."""

    # Its units of work dispatch their events after commit (the app's Dispatcher).
    store: Store
    catalog: Catalog
    prices: PriceTable
    limits: Limits
    storage: Storage
    inputs: InputLimits
    queue: QueueInspector
    broker: Broker
    pepper: bytes
    policy: AddressPolicy
    webhook_grace: timedelta
    plans: PlanBook
    limiter: RequestLimiter
    packs: PackList
    payments: Payments

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """For reads, and writes that emit no events."""
        return self.store.sessions


def key_from_params(params: dict[str, Any] | None) -> str | None:
    """The API key in a websocket's connection_init payload — browsers cannot set headers
    on a websocket. Accepts {"Authorization": "Bearer <key>"}, {"X-API-Key": "<key>"} and
    {"apiKey": "<key>"}, in any case."""
    if not params:
        return None
    lowered = {str(k).lower(): v for k, v in params.items() if isinstance(v, str)}
    authorization = lowered.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return lowered.get("x-api-key") or lowered.get("apikey") or lowered.get("api_key")


@dataclass
class Context:
    services: Services
    api_key: str | None
    idempotency_key: str | None = None
    # Set by strawberry from a websocket's connection_init payload.
    connection_params: dict[str, Any] | None = None
    # Where the X-RateLimit-* headers of an HTTP response are read from (request.state).
    state: Any = None
    # A websocket's context lives as long as the connection: its key is checked again on
    # every operation, so a revoked key stops working on open sockets too.
    websocket: bool = False
    _caller: accounts.Caller | None = field(default=None, repr=False)
    # An HTTP request's session, its connection checked out by authenticating the caller:
    # the request's first unit of work continues on it (one pool checkout per request).
    # The key lookup begins no transaction (a standalone read, billing/db.py), so an
    # accepted job's one-statement accept needs no BEGIN or COMMIT either. Closed by
    # ``close`` at the end of the request.
    _session: AsyncSession | None = field(default=None, repr=False)
    _limits: PlanLimits | None = field(default=None, repr=False)

    async def caller(self) -> accounts.Caller:
        """The authenticated caller, looked up once per request (or websocket connection);
        raises UNAUTHENTICATED."""
        if self._caller is None or self.websocket:
            secret = self.api_key or key_from_params(self.connection_params)
            if self.websocket:
                # Checked again on every operation of a long-lived socket: its own session.
                async with _session(self.services.sessions) as session:
                    caller = await accounts.authenticate(session, secret, self.services.pepper)
            else:
                await self.close()
                self._session = self.services.sessions()
                try:
                    caller = await accounts.authenticate(
                        self._session, secret, self.services.pepper
                    )
                except BaseException:
                    await self.close()
                    raise
            # No write on most requests: the key's use is recorded at most once a minute.
            if caller.key_touch_due(utcnow()):
                async with self.services.sessions() as session:
                    await accounts.touch_key(session, caller.api_key_id)
                    await session.commit()
            self._caller = caller
            # The plan's limits, computed once for the request (rate limit, caps, headers).
            self._limits = self.services.plans.limits(
                caller.account.plan, caller.account.limit_overrides
            )
            if self.state is not None:
                self.state.fluxgate_caller = (caller.account.id, self._limits.requests_per_minute)
        return self._caller

    async def limits(self) -> PlanLimits:
        """The caller's plan limits (raises UNAUTHENTICATED as ``caller`` does)."""
        await self.caller()
        assert self._limits is not None
        return self._limits

    async def close(self) -> None:
        """End the request's session, if authentication left one open (rolled back: it
        only read)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def rate_unavailable(self) -> None:
        """The limiter could not reach Redis: the response goes without X-RateLimit-*
        headers rather than waiting on Redis again for them."""
        if self.state is not None:
            self.state.fluxgate_rate_unavailable = True

    @property
    def rate(self) -> RateStatus | None:
        return getattr(self.state, "fluxgate_rate", None) if self.state is not None else None

    @rate.setter
    def rate(self, status: RateStatus) -> None:
        if self.state is not None:
            self.state.fluxgate_rate = status

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """One transaction for a mutation; its side effects are dispatched after commit.
        The request's first continues on the session its authentication used (it only
        read the caller's key and account, outside the ORM's identity map)."""
        session, self._session = self._session, None
        return self.services.store.unit_of_work(session)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with _session(self.services.sessions) as session:
            yield session


@asynccontextmanager
async def _session(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session closed even when its task is cancelled meanwhile (a subscriber whose
    client left mid-read): the close runs shielded, so its connection always goes back to
    the pool (or is discarded) instead of being left to the garbage collector."""
    session = sessions()
    try:
        yield session
    finally:
        await asyncio.shield(session.close())
