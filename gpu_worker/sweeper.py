"""The sweeper: what keeps a job from being stuck, run in the background of every worker.

- A processing job whose lease expired (its worker died) is retried, or failed and its
  credits released once ``job_max_tries`` runs died.
- A queued job no worker took within ``max_queue_wait_s`` is failed and released.
- A queued job Redis may have lost (a Redis restart) is enqueued again, on its own pool's
  queue (arq ignores a duplicate of a job it still has).
- On GPU workers (which hold the storage): images whose retention ended (``expires_at``)
  are deleted, files and rows, in bounded batches (``sweep_assets``).

Every sweeper looks at every pool's jobs: a pool with no live worker still has its jobs
failed and released after the maximum wait, by whichever worker sweeps.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

from billing.db import Store
from billing.models import GenerationStatus
from billing.service import generations, quotas
from runtime.settings import Settings
from runtime.storage import Storage

log = logging.getLogger(__name__)

# Jitter only (not a secret); its own generator, so it never disturbs the global one.
_JITTER = random.Random()


async def sweep_periodically(interval: float, sweep_once: Callable[[], Awaitable[object]]) -> None:
    """Run ``sweep_once`` every ``interval`` seconds (±10 %, so processes spread out),
    beside the job slots: as an arq cron job it would wait its turn in the queue behind
    every job queued before it (a GPU worker runs one job at a time), so a backlog would
    delay the recovery of a crashed worker's job by as long as the backlog. Every GPU
    worker and every webhook worker sweeps: so jobs queued for a model no GPU worker
    serves (or with no GPU worker running at all) still fail after the maximum queue wait
    and release their credits. Concurrent sweeps are safe: each change is a conditional
    UPDATE."""
    while True:
        await asyncio.sleep(interval * _JITTER.uniform(0.9, 1.1))  # not a secret
        try:
            await sweep_once()
        except Exception:  # the next sweep tries again; the worker keeps running jobs
            log.exception("sweep failed")


async def sweep(
    store: Store, settings: Settings, storage: Storage | None = None
) -> dict[str, list[str]]:
    """Retry or fail processing jobs whose worker vanished (lease expired), fail jobs
    queued past the maximum wait, and enqueue again queued jobs Redis may have lost.
    With ``storage`` (the GPU workers'), also delete the images whose retention ended.

    One transaction per job: a job that a worker settles or renews meanwhile is skipped
    (each change is conditional), and one error does not undo the others.
    """
    lease = timedelta(seconds=settings.job_lease_s)
    max_wait = timedelta(seconds=settings.max_queue_wait_s)
    async with store.sessions() as session:
        stale = await generations.find_stale(
            session,
            lease=lease,
            # A queued job is normally in Redis at once; one queued a couple of sweeps
            # ago may have been lost with a Redis restart (arq de-duplicates by id).
            requeue_after=timedelta(seconds=2 * settings.sweep_interval_s),
            max_queue_wait=max_wait,
        )
    retried: list[str] = []
    failed: list[str] = []
    for generation_id in stale.expired:
        async with store.unit_of_work() as uow:
            outcome = await generations.recover(
                uow, generation_id, lease=lease, max_tries=settings.job_max_tries
            )
        if outcome is not None:
            is_failed = outcome.status == GenerationStatus.FAILED.value
            (failed if is_failed else retried).append(generation_id)
    expired: list[str] = []
    for generation_id in stale.overdue:
        async with store.unit_of_work() as uow:
            if await generations.expire_queued(uow, generation_id, max_wait):
                expired.append(generation_id)
    async with store.unit_of_work() as uow:
        for generation_id in stale.queued:
            await generations.requeue(uow, generation_id)
    swept = await sweep_assets(store, storage) if storage is not None else []
    if retried or failed or expired:
        log.warning(
            "sweeper: lease expired: retried %s, failed %s; queued too long: failed %s",
            retried, failed, expired,
        )  # fmt: skip
    return {
        "retried": retried,
        "failed": failed,
        "expired": expired,
        "requeued": stale.queued,
        "assets_expired": swept,
    }


async def sweep_assets(
    store: Store, storage: Storage, *, batch: int = quotas.SWEEP_BATCH, max_batches: int = 10
) -> list[str]:
    """Delete the assets whose retention ended (files, then rows, one transaction per
    batch of ``batch``), at most ``max_batches`` per sweep so a backlog never holds a
    sweep up for long; the next sweep goes on."""
    swept: list[str] = []
    for _ in range(max_batches):
        async with store.unit_of_work() as uow:
            ids = await quotas.sweep_expired(uow, storage.delete, limit=batch)
        swept.extend(str(i) for i in ids)
        if len(ids) < batch:
            break
    if swept:
        log.info("sweeper: %d expired assets deleted", len(swept))
    return swept
