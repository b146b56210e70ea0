"""Requests per minute, per account, in Redis (the ``limits`` library's moving window), so
the limit holds across every API process. What an operation counts, and what happens when
it does not fit, is the GraphQL extension's (``schema.ratelimit``); the app builds the
limiter, the context carries it, the middleware writes its status as headers.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class RateStatus:
    """What the X-RateLimit-* headers say."""

    limit: int
    remaining: int
    reset_at: float  # Unix time when the window has room again
    allowed: bool = True

    @property
    def reset(self) -> int:
        return math.ceil(self.reset_at)

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_at - time.time()))

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class RequestLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        # The app's Redis connection pool: closed with it at shutdown.
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=f"{prefix}:limits",
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # limits types options as scalars
        )
        self._limiter = MovingWindowRateLimiter(storage)

    async def hit(
        self, account_id: uuid.UUID, per_minute: int | None, cost: int
    ) -> RateStatus | None:
        """Count ``cost`` requests if they fit; None when the account is unmetered."""
        if per_minute is None:
            return None
        item = RateLimitItemPerMinute(per_minute)
        if cost > per_minute:
            # Never fits: not counted, and the window is reported as it is (no Retry-After).
            return await self._status(item, account_id, True)
        allowed = await self._limiter.hit(item, str(account_id), cost=cost)
        return await self._status(item, account_id, allowed)

    async def peek(self, account_id: uuid.UUID, per_minute: int | None) -> RateStatus | None:
        if per_minute is None:
            return None
        item = RateLimitItemPerMinute(per_minute)
        return await self._status(item, account_id, True)

    async def _status(
        self, item: RateLimitItemPerMinute, account_id: uuid.UUID, allowed: bool
    ) -> RateStatus:
        stats = await self._limiter.get_window_stats(item, str(account_id))
        return RateStatus(
            limit=item.amount,
            remaining=max(0, stats.remaining),
            reset_at=stats.reset_time,
            allowed=allowed,
        )
