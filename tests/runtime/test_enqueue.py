"""The dispatcher enqueues a job in one round trip (a script) exactly as arq's
``enqueue_job`` would: the same job record and queue entry, an expiry, and a refusal of
an id whose job or result already exists. Real Redis."""

from __future__ import annotations

import uuid

from arq.constants import job_key_prefix
from arq.jobs import Job, JobStatus

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
