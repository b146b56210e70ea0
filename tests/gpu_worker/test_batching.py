"""Batching (FLUXGATE_BATCH_MAX) on the real stack: real Postgres, Redis and arq worker,
the tiny FLUX model. Jobs queued before the worker starts are served by one pipeline
call, each still claimed, settled and charged on its own, each image the one its seed
gives alone; incompatible and cancelled jobs stay out of the batch."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import kinds
from billing import repository as repo
from billing.catalog import Catalog, pool_of
from billing.db import GenerationRequeued, unit_of_work_without_dispatch
from billing.models import Generation
from billing.pricing import default_price_table
from billing.requests import Limits, RawImageRequest, validate
from billing.service import generations
from gpu_worker.pipeline import PipelineRunner, RenderJob
from runtime import queue
from runtime.settings import Settings
from runtime.storage import storage_from_settings
from tests.conftest import ThreadedWorker, own_queue
from tests.factories import TestAccount, audit, t2i_job


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Catalog:
    return Catalog.load(settings.models)


@pytest.fixture
def batch_settings(settings: Settings) -> Settings:
    return own_queue(settings, "batch", batch_max=4)


@pytest.fixture
async def pool(batch_settings: Settings) -> AsyncIterator[ArqRedis]:
    redis = await queue.connect(batch_settings.redis_url, batch_settings.queue_name)
    yield redis
    await redis.aclose(close_connection_pool=True)


async def submit(
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
    seed: int,
    size: int = 256,
) -> Generation:
    request = validate(
        RawImageRequest(
            provider="flux-dev", prompt=f"a quiet harbour {seed}", width=size, height=size,
            seed=seed,
        ),
        catalog=catalog,
        prices=default_price_table(),
        limits=Limits(),
    )  # fmt: skip
    async with unit_of_work_without_dispatch(sessions) as uow:
        return await generations.submit(
            uow, account_id=account.id, api_key_id=account.api_key_id, request=t2i_job(request)
        )


async def enqueue(pool: ArqRedis, settings: Settings, g: Generation) -> None:
    dispatcher = queue.Dispatcher(pool, settings.queue_name)
    added = await dispatcher.enqueue(
        queue.RUN_GENERATION,
        g.id,
        queue.job_id(g.id),
        queue=queue.pool_queue(settings.queue_name, pool_of(g.params)),
    )
    assert added


async def fetch(sessions: async_sessionmaker[AsyncSession], generation_id: str) -> Generation:
    async with sessions() as s:
        g = await repo.get_generation(s, generation_id)
    assert g is not None
    return g


async def wait_final(
    sessions: async_sessionmaker[AsyncSession], ids: list[str], timeout: float = 60
) -> list[Generation]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [await fetch(sessions, i) for i in ids]
        if all(r.status in ("completed", "failed", "cancelled") for r in rows):
            return rows
        assert time.monotonic() < deadline, [r.status for r in rows]
        await asyncio.sleep(0.05)


async def entries_of(sessions: async_sessionmaker[AsyncSession], g: Generation) -> list[str]:
    async with sessions() as s:
        entries = await repo.list_entries(s, g.account_id)
    return [e.kind for e in entries if e.generation_id == g.id]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


async def test_queued_jobs_run_in_one_call_each_charged_and_alike(
    batch_settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    jobs = [await submit(sessions, catalog, account, seed) for seed in (11, 22, 33, 44)]
    for g in jobs:
        await enqueue(pool, batch_settings, g)
    runner = PipelineRunner(catalog, device="cpu", dtype="float32")
    with ThreadedWorker(batch_settings, runner=runner):
        done = await wait_final(sessions, [g.id for g in jobs])
    assert runner.calls == 1
    assert [g.status for g in done] == ["completed"] * 4
    assert all(g.meta["batch"] == 4 for g in done)
    for g in done:
        assert await entries_of(sessions, g) == ["reserve", "capture"]
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    assert (cached.available, cached.reserved) == (1000 - sum(g.credit_cost for g in jobs), 0)
    # Each image is the one its seed gives alone (up to the rounding of batched kernels).
    storage = storage_from_settings(batch_settings)
    kind = kinds.get("text_to_image")
    for g in done:
        assert g.image_key is not None
        alone = await runner.render(RenderJob(kind, g.params, {}), lambda *_: None)
        difference = np.abs(pixels(await storage.get(g.image_key)) - pixels(alone.outputs[0].data))
        assert difference.max() <= 2, difference.max()
    # The batched jobs left nothing in the queue for another worker.
    queue_name = queue.pool_queue(batch_settings.queue_name, pool_of(jobs[0].params))
    assert await pool.zcard(queue_name) == 0


async def test_incompatible_and_cancelled_jobs_stay_out(
    batch_settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    first, cancelled, other_size, second = [
        await submit(sessions, catalog, account, 1),
        await submit(sessions, catalog, account, 2),
        await submit(sessions, catalog, account, 3, size=320),
        await submit(sessions, catalog, account, 4),
    ]
    for g in (first, cancelled, other_size, second):
        await enqueue(pool, batch_settings, g)
    async with unit_of_work_without_dispatch(sessions) as uow:  # its arq job stays queued
        await generations.cancel(uow, account.id, cancelled.id)
    runner = PipelineRunner(catalog, device="cpu", dtype="float32")
    with ThreadedWorker(batch_settings, runner=runner):
        rows = await wait_final(sessions, [first.id, cancelled.id, other_size.id, second.id])
    done = {g.id: g for g in rows}
    assert runner.calls == 2  # the two 256² jobs together, the 320² one alone
    assert done[first.id].meta["batch"] == done[second.id].meta["batch"] == 2
    assert "batch" not in done[other_size.id].meta
    assert done[other_size.id].status == "completed"
    assert done[cancelled.id].status == "cancelled"
    assert await entries_of(sessions, cancelled) == ["reserve", "release"]
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    charged = first.credit_cost + second.credit_cost + other_size.credit_cost
    assert (cached.available, cached.reserved) == (1000 - charged, 0)


async def test_a_taken_job_is_never_run_by_arq_and_can_be_requeued(
    batch_settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    g = await submit(sessions, catalog, account, 7)
    await enqueue(pool, batch_settings, g)
    queue_name = queue.pool_queue(batch_settings.queue_name, pool_of(g.params))
    jid = queue.job_id(g.id)
    head = queue.QueueHead(pool)
    assert await head.due(queue_name, 10) == [g.id]
    assert await head.take(queue_name, g.id, "token", 60_000)
    assert not await head.take(queue_name, g.id, "other", 60_000)  # taken once
    assert await pool.zscore(queue_name, jid) is None
    assert await pool.exists(job_key_prefix + jid) == 0
    assert await pool.get(in_progress_key_prefix + jid) == b"token"
    await head.release(g.id, "other")  # not its mark: kept
    assert await pool.get(in_progress_key_prefix + jid) == b"token"
    # Put back the normal way: its arq keys cleared and the job queued again.
    await queue.Dispatcher(pool, batch_settings.queue_name).dispatch(
        [GenerationRequeued(g.id, pool_of(g.params), g.priority)]
    )
    assert await pool.exists(in_progress_key_prefix + jid) == 0
    assert await head.due(queue_name, 10) == [g.id]
    # A job an arq worker started (in progress) is not taken.
    await pool.set(in_progress_key_prefix + jid, b"1")
    assert not await head.take(queue_name, g.id, "token", 60_000)
    await pool.delete(in_progress_key_prefix + jid)
    await head.release(g.id, "token")


def test_only_plain_flux1_jobs_batch() -> None:
    """What `batch_key` lets batch: a plain one-image FLUX.1 job; not FLUX.2 (untested),
    nor two images, a negative prompt, LoRAs or previews."""
    kind = kinds.get("text_to_image")
    model = {"provider": "flux-dev", "version": "flux-dev", "path": "/m",
             "pipeline": "FluxPipeline", "max_sequence_length": 64, "pool": "default"}  # fmt: skip
    plain: dict[str, object] = {
        "model": model, "prompt": "p", "width": 256, "height": 256, "steps": 4,
        "guidance": 3.5, "count": 1,
    }  # fmt: skip
    assert kind.batch_key(plain) is not None
    assert kind.batch_key({**plain, "format": "jpeg"}) == kind.batch_key(plain)
    flux2 = {**plain, "model": {**model, "pipeline": "Flux2KleinPipeline"}}
    for other in (flux2, {**plain, "count": 2}, {**plain, "negative_prompt": "x"},
                  {**plain, "loras": [{"id": "a"}]}, {**plain, "preview": True}):  # fmt: skip
        assert kind.batch_key(other) is None, other
