"""The dispatcher enqueues a job in one round trip (a script) exactly as arq's
``enqueue_job`` would: the same job record and queue entry, an expiry, and a refusal of
an id whose job or result already exists. Real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from arq.constants import job_key_prefix
from arq.jobs import Job, JobStatus

from billing.db import GenerationAccepted, GenerationUpdated
from runtime.queue import RUN_GENERATION, Dispatcher, deserialize, new_pool, serialize
from runtime.settings import Settings


async def test_the_scripted_enqueue_is_arqs(settings: Settings) -> None:
    queue = f"fluxgate:enqueue:{uuid.uuid4().hex[:8]}"
    pool = new_pool(settings.redis_url, queue)
    try:
        ours = Dispatcher(pool, queue)
        assert await ours.enqueue(RUN_GENERATION, "g1", "generation:g1") is True
        assert await ours.enqueue(RUN_GENERATION, "g1", "generation:g1") is False  # duplicate
        # arq's own enqueue of another job, for comparison.
        await pool.enqueue_job(RUN_GENERATION, "g2", _job_id="generation:g2", _queue_name=queue)
        mine = await Job("generation:g1", pool, queue, deserialize).info()
        arqs = await Job("generation:g2", pool, queue, deserialize).info()
        assert mine is not None and arqs is not None
        # JSON keeps the arguments as a list, for arq's own enqueue too.
        assert (mine.function, list(mine.args), mine.kwargs) == (RUN_GENERATION, ["g1"], {})
        assert list(arqs.args) == ["g2"]
        assert (mine.function, mine.kwargs, mine.job_try) == (
            arqs.function,
            arqs.kwargs,
            arqs.job_try,
        )
        status = await Job("generation:g1", pool, queue, deserialize).status()
        assert status == JobStatus.queued
        assert [j.decode() for j in await pool.zrange(queue, 0, -1)] == [
            "generation:g1", "generation:g2",
        ]  # fmt: skip
        ttl = await pool.pttl(job_key_prefix + "generation:g1")
        arq_ttl = await pool.pttl(job_key_prefix + "generation:g2")
        assert abs(ttl - arq_ttl) < 5_000 and ttl > 0  # the same expiry (a day), give or take
        assert serialize({"x": 1}) == b'{"x":1}'
    finally:
        await pool.delete(queue, *(job_key_prefix + j for j in ("generation:g1", "generation:g2")))
        await pool.aclose(close_connection_pool=True)


async def test_an_accepted_job_is_enqueued_and_announced_in_one_script_call(
    settings: Settings,
) -> None:
    """submit's two events (the job accepted, its first state) are one round trip: the
    enqueue script publishes the state too; other events still go one by one."""
    queue = f"fluxgate:enqueue:{uuid.uuid4().hex[:8]}"
    pool = new_pool(settings.redis_url, queue)
    ours = Dispatcher(pool, queue)
    calls: list[list[str]] = []
    script = ours._enqueue_script

    async def counted(*, keys: list[str], args: list[Any]) -> object:
        calls.append([str(a) for a in args])
        return await script(keys=keys, args=args)

    ours._enqueue_script = counted  # type: ignore[assignment]
    pubsub = pool.pubsub()
    try:
        await pubsub.subscribe(ours.keys.events)
        snapshot = {"id": "g1", "status": "queued", "revision": 0}
        later = {"id": "g2", "status": "failed", "revision": 3}
        await ours.dispatch(
            [
                GenerationAccepted("g1"),
                GenerationUpdated(snapshot),
                GenerationUpdated(later),  # no acceptance of its own: published alone
            ]
        )
        assert len(calls) == 1 and calls[0][-1] == json.dumps(
            {"snapshot": snapshot, "live": {}}, separators=(",", ":")
        )
        assert await Job("generation:g1", pool, queue, deserialize).status() == JobStatus.queued
        heard: list[str] = []
        async with asyncio.timeout(30):  # a bound on a failure, not a synchronisation
            while len(heard) < 2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:  # None: nothing yet, or the subscribe confirmation
                    heard.append(json.loads(message["data"])["snapshot"]["id"])
        assert heard == ["g1", "g2"]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        await pool.delete(queue, job_key_prefix + "generation:g1")
        await pool.aclose(close_connection_pool=True)
