"""The arq queue as the API and the worker see it: JSON serialization, job names, and the
dispatcher that turns committed domain events into queue operations."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from billing.db import Event, GenerationAccepted

log = logging.getLogger(__name__)

RUN_GENERATION = "run_generation"


def serialize(data: dict[str, Any]) -> bytes:
    # JSON, not pickle: a job carries ids only, and nobody who can write to Redis gets to
    # run code in the worker.
    return json.dumps(data, separators=(",", ":")).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(data)
    return result


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


async def connect(url: str, queue_name: str) -> ArqRedis:
    return await create_pool(
        redis_settings(url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
    )


def job_id(generation_id: str) -> str:
    return f"generation:{generation_id}"


class Dispatcher:
    """Performs the side effects of committed events. Call only after commit."""

    def __init__(self, pool: ArqRedis, queue_name: str) -> None:
        self.pool = pool
        self.queue_name = queue_name

    async def dispatch(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, GenerationAccepted):
                try:
                    # _job_id makes a duplicate enqueue (retry, sweeper) a no-op.
                    await self.pool.enqueue_job(
                        RUN_GENERATION,
                        event.generation_id,
                        _job_id=job_id(event.generation_id),
                        _queue_name=self.queue_name,
                    )
                except Exception:
                    # The job is committed and its credits held; the sweeper enqueues
                    # queued jobs again, so an unreachable Redis delays it, never loses it.
                    log.exception("could not enqueue generation %s", event.generation_id)
