"""The arq job against real Postgres, Redis and the tiny FLUX pipeline: failures release
credits, a job run twice is charged once, a job whose worker died is retried or swept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from billing import repository as repo
from billing.catalog import Catalog
from billing.db import unit_of_work_without_dispatch
from billing.models import Generation, utcnow
from billing.pricing import default_price_table
from billing.requests import Limits, RawImageRequest, validate
from billing.service import generations
from gpu_worker.pipeline import PipelineRunner
from gpu_worker.worker import (
    FAILURE_MESSAGE,
    STOPPED,
    TIMEOUT_MARGIN_S,
    TIMEOUT_MESSAGE,
    run_generation,
    shutdown,
    startup,
    sweep_stale,
)
from runtime import queue
from runtime.settings import Settings
from runtime.thumbnails import thumbnail_key
from tests.factories import TestAccount, audit, t2i_job
from tests.runners import ExplodingRunner, SlowRunner


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Catalog:
    return Catalog.load(settings.models)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[ArqRedis]:
    redis = await queue.connect(settings.redis_url, settings.queue_name)
    yield redis
    await redis.aclose(close_connection_pool=True)


async def make_ctx(
    settings: Settings, pool: ArqRedis, runner: PipelineRunner, **overrides: Any
) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "settings": settings.model_copy(update=overrides),
        "redis": pool,
        "runner": runner,
    }
    await startup(ctx)
    return ctx


async def submit_unqueued(
    sessions: async_sessionmaker[AsyncSession], catalog: Catalog, account: TestAccount
) -> Generation:
    """Accept a job (row + hold) without enqueueing it, so only this test runs it."""
    request = validate(
        RawImageRequest(provider="flux-dev", prompt="a quiet harbour", width=256, height=256),
        catalog=catalog,
        prices=default_price_table(),
        limits=Limits(),
    )
    async with unit_of_work_without_dispatch(sessions) as uow:
        g = await generations.submit(
            uow, account_id=account.id, api_key_id=account.api_key_id, request=t2i_job(request)
        )
    return g


async def settle_entries(sessions: async_sessionmaker[AsyncSession], g: Generation) -> list[str]:
    async with sessions() as s:
        entries = await repo.list_entries(s, g.account_id)
    return [e.kind for e in entries if e.generation_id == g.id]


async def fetch(sessions: async_sessionmaker[AsyncSession], generation_id: str) -> Generation:
    async with sessions() as s:
        g = await repo.get_generation(s, generation_id)
    assert g is not None
    return g


async def test_pipeline_failure_marks_failed_and_releases(
    settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    ctx = await make_ctx(settings, pool, ExplodingRunner(catalog))
    try:
        g = await submit_unqueued(sessions, catalog, account)
        assert (await audit(sessions, account.id))[0].reserved == g.credit_cost
        assert await run_generation(ctx, g.id) == "failed"
    finally:
        await shutdown(ctx)
    failed = await fetch(sessions, g.id)
    assert failed.status == "failed"
    assert failed.error == FAILURE_MESSAGE
    assert "CUDA" not in (failed.error or "")  # internals stay in the log
    assert failed.completed_at is not None
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    assert (cached.available, cached.reserved) == (1000, 0)
    assert await settle_entries(sessions, g) == ["reserve", "release"]


async def test_job_run_twice_is_charged_once(
    settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    runner = PipelineRunner(catalog, device="cpu", dtype="float32")
    ctx = await make_ctx(settings, pool, runner)
    try:
        g = await submit_unqueued(sessions, catalog, account)
        # Two deliveries of the same arq job at once, and one more afterwards.
        first, second = await asyncio.gather(run_generation(ctx, g.id), run_generation(ctx, g.id))
        third = await run_generation(ctx, g.id)
    finally:
        await shutdown(ctx)
    # The duplicate either finds the job finished, loses the race to complete it, or
    # is stopped mid-run when its progress write finds the job no longer processing.
    assert sorted([first, second]) in (
        ["completed", "skipped: no longer processing"],
        ["completed", "skipped: already finished"],
        ["completed", STOPPED],
    )
    assert third == "skipped: already finished"
    done = await fetch(sessions, g.id)
    assert done.status == "completed"
    assert done.image_key is not None and done.image_key.startswith(f"{g.id}-")
    assert (settings.storage_dir / done.image_key).stat().st_size > 0
    # The losing run left no second image (or thumbnail) behind.
    assert sorted(p.name for p in settings.storage_dir.glob(f"{g.id}-*")) == sorted(
        [done.image_key, thumbnail_key(done.image_key)]
    )
    assert await settle_entries(sessions, g) == ["reserve", "capture"]
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    assert (cached.available, cached.reserved) == (1000 - g.credit_cost, 0)


async def test_job_whose_worker_died_is_retried_and_charged_once(
    settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    g = await submit_unqueued(sessions, catalog, account)
    # A worker claimed the job and was killed before finishing it.
    async with unit_of_work_without_dispatch(sessions) as uow:
        claimed = await generations.begin_processing(uow, g.id)
    assert claimed is not None and claimed.status == "processing"

    ctx = await make_ctx(settings, pool, PipelineRunner(catalog, device="cpu"))
    try:
        assert await run_generation(ctx, g.id) == "completed"  # arq's retry
    finally:
        await shutdown(ctx)
    done = await fetch(sessions, g.id)
    assert (done.status, done.attempts) == ("completed", 2)
    assert await settle_entries(sessions, g) == ["reserve", "capture"]


async def test_progress_is_recorded_while_processing(
    settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    ctx = await make_ctx(settings, pool, SlowRunner(catalog, device="cpu"))
    g = await submit_unqueued(sessions, catalog, account)
    seen: list[tuple[str, int, int]] = []
    try:
        job = asyncio.create_task(run_generation(ctx, g.id))
        while not job.done():
            current = await fetch(sessions, g.id)
            seen.append((current.status, current.step, current.progress))
            await asyncio.sleep(0.05)
        assert job.result() == "completed"
    finally:
        await shutdown(ctx)
    steps = [step for status, step, _ in seen if status == "processing"]
    assert steps == sorted(steps)  # never goes backwards
    assert {1, 2, 3} <= set(steps)  # each intermediate step was written
    assert all(0 <= p < 100 for status, _, p in seen if status == "processing")
    done = await fetch(sessions, g.id)
    assert (done.step, done.total_steps, done.progress) == (4, 4, 100)


async def test_sweeper_releases_holds_of_vanished_workers(
    settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    stale = await submit_unqueued(sessions, catalog, account)
    fresh = await submit_unqueued(sessions, catalog, account)
    async with unit_of_work_without_dispatch(sessions) as uow:
        await generations.begin_processing(uow, stale.id)
        await generations.begin_processing(uow, fresh.id)
        # The stale job's worker stopped renewing its lease two hours ago.
        await uow.session.execute(
            update(Generation)
            .where(Generation.id == stale.id)  # type: ignore[arg-type]
            .values(heartbeat_at=utcnow() - timedelta(hours=2))
        )
    # Its one allowed run is spent: failed and released (not retried).
    ctx = await make_ctx(settings, pool, ExplodingRunner(catalog), job_max_tries=1)
    try:
        result = await sweep_stale(ctx)
        again = await sweep_stale(ctx)
    finally:
        await shutdown(ctx)
    assert stale.id in result["failed"]
    assert fresh.id not in result["failed"]
    assert stale.id not in again["failed"]
    assert (await fetch(sessions, stale.id)).status == "failed"
    assert (await fetch(sessions, fresh.id)).status == "processing"
    assert await settle_entries(sessions, stale) == ["reserve", "release"]
    assert await settle_entries(sessions, fresh) == ["reserve"]


async def test_sweeper_enqueues_jobs_that_never_reached_the_queue(
    settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
    worker: object,
) -> None:
    """A job committed while Redis was unreachable is picked up by the sweeper and run
    by the real worker."""
    lost = await submit_unqueued(sessions, catalog, account)
    async with unit_of_work_without_dispatch(sessions) as uow:
        await uow.session.execute(
            update(Generation)
            .where(Generation.id == lost.id)  # type: ignore[arg-type]
            .values(updated_at=utcnow() - timedelta(minutes=5))
        )
    ctx = await make_ctx(settings, pool, ExplodingRunner(catalog))
    try:
        result = await sweep_stale(ctx)
    finally:
        await shutdown(ctx)
    assert lost.id in result["requeued"]
    deadline = time.monotonic() + 30
    while (await fetch(sessions, lost.id)).status != "completed":
        assert time.monotonic() < deadline, "the re-enqueued job did not run"
        await asyncio.sleep(0.1)
    assert await settle_entries(sessions, lost) == ["reserve", "capture"]


async def test_a_job_that_runs_too_long_fails_and_releases(
    settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    """The job gives up before arq's own timeout, so it can still release the credits."""
    runner = SlowRunner(catalog, step_seconds=1.0)
    ctx = await make_ctx(settings, pool, runner, job_timeout_s=TIMEOUT_MARGIN_S + 1)
    try:
        g = await submit_unqueued(sessions, catalog, account)
        started = time.monotonic()
        assert await run_generation(ctx, g.id) == "failed"
        assert time.monotonic() - started < 3
    finally:
        await shutdown(ctx)
    failed = await fetch(sessions, g.id)
    assert (failed.status, failed.error) == ("failed", TIMEOUT_MESSAGE)
    assert await settle_entries(sessions, g) == ["reserve", "release"]


async def test_a_job_from_before_job_kinds_runs_on_its_registry_model(
    settings: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    """A job queued before migration 0008 has params without a model path (the migration
    cannot know it): the worker resolves that job's model from its registry and runs it."""
    g = await submit_unqueued(sessions, catalog, account)
    async with sessions() as s, s.begin():
        legacy = {**g.params, "model": {"provider": g.provider, "version": g.version}}
        await s.execute(update(Generation).where(col(Generation.id) == g.id).values(params=legacy))
    ctx = await make_ctx(settings, pool, PipelineRunner(catalog, device="cpu", dtype="float32"))
    try:
        assert await run_generation(ctx, g.id) == "completed"
    finally:
        await shutdown(ctx)
    done = await fetch(sessions, g.id)
    assert done.status == "completed" and done.params["model"] == legacy["model"]
    [output] = done.outputs
    assert (output["width"], output["height"], output["format"]) == (256, 256, "png")
    assert (settings.storage_dir / output["key"]).stat().st_size > 0
    assert await settle_entries(sessions, g) == ["reserve", "capture"]
