"""The public service status: per model service, whether a worker serves it now, its
queue and its measured job time. No key is needed (seed 000's ``GET /api/status`` is
this query in the seed's shape); nothing in it is an account's."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from enum import Enum

import strawberry
from redis.exceptions import RedisError
from strawberry.types import Info

from schema.context import Context, Services
from schema.scalars import UtcDateTime

log = logging.getLogger(__name__)

Ctx = Info[Context, None]


@strawberry.enum(description="Whether a model can run jobs now.")
class Availability(Enum):
    AVAILABLE = "available"  # a live worker of its pool
    UNAVAILABLE = "unavailable"  # its pool has no live worker: its jobs wait
    UNKNOWN = "unknown"  # Redis is unreachable


@strawberry.type(description="A model service: its default version's pool, and that pool's state.")
class ModelStatus:
    service: str
    pool: str
    availability: Availability
    queue_size: int | None = strawberry.field(
        description="Jobs in the pool's queue, waiting or running (null: unknown)."
    )
    live_workers: int | None
    average_job_seconds: float | None = strawberry.field(
        description="Moving average of the pool's job run times (null: none measured)."
    )


@strawberry.type(description="Whether the service can run jobs, per model.")
class ServiceStatus:
    operational: bool = strawberry.field(
        description="Every model's pool has a live worker (false also when Redis is down)."
    )
    models: list[ModelStatus]
    at: UtcDateTime


# Public and unmetered: a process reads Redis for it at most once per this many seconds,
# however many requests (or aliases in one document) ask meanwhile.
CACHE_S = 1.0
_LATEST: dict[int, tuple[float, asyncio.Task[ServiceStatus]]] = {}


async def service_status(ctx: Context) -> ServiceStatus:
    """The status, read once per ``CACHE_S`` per app (the read in flight is shared)."""
    key = id(ctx.services)
    now = time.monotonic()
    found = _LATEST.get(key)
    if (
        found is None
        or now - found[0] >= CACHE_S
        or found[1].get_loop() is not asyncio.get_running_loop()  # another app's, gone
    ):
        found = (now, asyncio.ensure_future(_read(ctx.services)))
        _LATEST[key] = found
    # Shielded: one caller going away does not cancel the read the others await.
    return await asyncio.shield(found[1])


async def _read(services: Services) -> ServiceStatus:
    pools: dict[str, str] = {}
    for entry in services.catalog.entries:
        if entry.is_default or entry.provider not in pools:
            pools[entry.provider] = entry.pool
    names = sorted(set(pools.values()))
    queue = services.queue
    try:
        depths = await queue.depths(names)
        live = await queue.live_workers(names)
        seconds = await queue.job_seconds(names)
    except (RedisError, OSError) as exc:
        log.warning("service status unknown: %s", exc)
        depths, live, seconds = {}, {}, {}
    models = [
        ModelStatus(
            service=service,
            pool=pool,
            availability=Availability.UNKNOWN if pool not in live
            else Availability.AVAILABLE if live[pool] else Availability.UNAVAILABLE,
            queue_size=depths.get(pool),
            live_workers=live.get(pool),
            average_job_seconds=None if seconds.get(pool) is None
            else round(float(seconds[pool] or 0), 2),
        )
        for service, pool in sorted(pools.items())
    ]  # fmt: skip
    operational = bool(live) and all(live.values())
    return ServiceStatus(operational=operational, models=models, at=UtcDateTime(datetime.now(UTC)))


@strawberry.type
class StatusQuery:
    @strawberry.field(
        description="Public (no key needed): per model service, whether a worker serves it "
        "now, its queue and its average job time."
    )
    async def service_status(self, info: Ctx) -> ServiceStatus:
        return await service_status(info.context)
