"""The generation lifecycle: accept (price + reserve), run, complete (capture) or fail
(release), and the sweeper for jobs whose worker vanished."""

from __future__ import annotations

import base64
import binascii
import math
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func
from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.catalog import pool_of
from billing.db import (
    GenerationAccepted,
    GenerationCancelled,
    GenerationRequeued,
    GenerationUpdated,
    UnitOfWork,
)
from billing.errors import BadUserInput, Conflict, IdempotencyKeyReused, NotFound, RateLimited
from billing.models import AssetRole, Generation, GenerationStatus, snapshot, utcnow
from billing.plans import PlanBook, PlanLimits, default_plan_book
from billing.service import batch_progress, ledger, library, quotas, webhooks

MAX_PAGE = 100
MAX_IDEMPOTENCY_KEY = 255
_ACTIVE = (GenerationStatus.QUEUED, GenerationStatus.PROCESSING)


def new_generation_id() -> str:
    return secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class NewAsset:
    """An image stored for a job (an input, or an output of its run)."""

    role: str
    key: str
    mime: str
    width: int
    height: int
    bytes: int
    sha256: str | None
    position: int = 0
    format: str = "png"
    thumbnail_key: str | None = None  # an output's WebP thumbnail (the library's)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A priced job of any kind, ready to accept. ``params`` is everything the worker
    needs (frozen here); the other fields are the summary every surface shows."""

    kind: str
    params: dict[str, Any]
    credits: int
    provider: str
    version: str
    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    quality: str
    metadata: dict[str, Any]
    request_hash: str
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    preview: bool = False
    type: str = "IMAGE"
    inputs: tuple[NewAsset, ...] = ()
    priority: int = 1  # models.Priority rank: 0 low, 1 normal, 2 high


async def submit(
    uow: UnitOfWork,
    *,
    account_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    request: JobSpec,
    idempotency_key: str | None = None,
    plans: PlanBook | None = None,
    now: datetime | None = None,
    limits: PlanLimits | None = None,
) -> Generation:
    """Accept a job: the caps are checked, and the row and the credit hold written, in one
    transaction under the account's row lock.

    With an idempotency key, a retry with the same body returns the first job and charges
    nothing (and is not subject to the caps); the same key with a different body is
    refused. ``now`` is injectable so tests can stand at a day's boundary.
    ``limits``: the account's plan limits as its caller was authenticated with; when
    they set no caps, the row lock for counting is skipped.
    """
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise BadUserInput("Idempotency-Key", "Idempotency-Key must be 1 to 255 characters")
    now = now or utcnow()
    book = plans or default_plan_book()
    storage_used: int | None = None
    if limits is None or limits.needs_lock(request.kind):
        # The caps are counted under the account's row lock, so racing submissions
        # cannot overshoot them; the plan is re-read under it. An account without caps
        # takes no lock here: its credit hold (a conditional UPDATE of the same row) is
        # what serializes it, for as short a time as the bare writes need. The same
        # statement reads the storage used (quotas: no round trip of its own).
        plan, overrides, storage_used = await repo.lock_account_quota(uow.session, account_id)
        limits = book.limits(plan, overrides)
    if idempotency_key is not None:
        existing = await repo.get_by_idempotency_key(uow.session, account_id, idempotency_key)
        if existing is not None:
            if existing.request_hash != request.request_hash:
                raise IdempotencyKeyReused()
            return existing
    await _check_caps(uow.session, account_id, limits, now)
    await quotas.check(
        uow.session,
        account_id,
        limits,
        kind=request.kind,
        width=request.width,
        height=request.height,
        storage_used=storage_used,
        now=now,
    )
    generation_id = new_generation_id()
    row = generation_row(generation_id, account_id, api_key_id, request, now, idempotency_key)
    if idempotency_key is None and not request.inputs:
        # The common case in one statement: the job row, its hold and its ledger row,
        # committed by themselves unless a transaction is open already (the caps' or
        # quotas' reads). What follows is recoverable on its own if it fails: the
        # enqueue (the sweeper enqueues a queued job Redis does not hold) and the
        # low-credit notice; without an idempotency key a client cannot tell a refused
        # request from an accepted one whose answer was lost anyway.
        accepted = await repo.accept_job(uow.session, row, request.credits)
        if accepted is None:
            raise await ledger.refusal(uow.session, account_id, request.credits)
        generation, crossed = accepted
    else:
        inserted = await repo.insert_generation(uow.session, row)
        if inserted is None:
            assert idempotency_key is not None  # only the idempotency constraint conflicts
            existing = await repo.get_by_idempotency_key(uow.session, account_id, idempotency_key)
            assert existing is not None
            if existing.request_hash != request.request_hash:
                raise IdempotencyKeyReused()
            return existing
        generation = inserted
        crossed = await ledger.reserve(uow.session, account_id, generation_id, request.credits)
    if crossed:
        await quotas.low_credit(uow, account_id, generation_id, request.webhook_url)
    expires = quotas.expires_at(limits, now)
    await repo.insert_assets(
        uow.session,
        [
            {**_asset_row(a, account_id, generation_id, now), "expires_at": expires}
            for a in request.inputs
        ],
    )
    uow.emit(GenerationAccepted(generation_id, pool_of(request.params), request.priority))
    uow.emit(GenerationUpdated(snapshot(generation)))
    return generation


def generation_row(
    generation_id: str,
    account_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    request: JobSpec,
    now: datetime,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """The row of a job accepted now (``repo.insert_generation``'s values)."""
    return {
        "id": generation_id,
        "account_id": account_id,
        "api_key_id": api_key_id,
        "type": request.type,
        "kind": request.kind,
        "params": {**request.params, "preview": request.preview},
        "provider": request.provider,
        "version": request.version,
        "quality": request.quality,
        "prompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "guidance": request.guidance,
        "seed": request.seed,
        "credit_cost": request.credits,
        "status": GenerationStatus.QUEUED.value,
        "total_steps": request.steps,
        "webhook_url": request.webhook_url,
        "webhook_events": request.webhook_events,
        "preview": request.preview,
        "metadata": {**request.metadata, "duration": None},
        "idempotency_key": idempotency_key,
        "request_hash": request.request_hash if idempotency_key else None,
        "created_at": now,
        "updated_at": now,
        "priority": request.priority,
    }


CONCURRENCY_RETRY_AFTER_S = 5


async def _check_caps(
    session: AsyncSession,
    account_id: uuid.UUID,
    limits: PlanLimits,
    now: datetime,
    adding: int = 1,
) -> None:
    """Refuse ``adding`` more jobs (a batch's items together) past the plan's caps."""
    if limits.concurrent_jobs is not None:
        active = await repo.count_active_generations(session, account_id)
        if active + adding > limits.concurrent_jobs:
            raise RateLimited(
                "concurrency",
                CONCURRENCY_RETRY_AFTER_S,
                f"Concurrent job limit reached ({limits.concurrent_jobs} queued or "
                "processing); retry when one finishes",
            )
    if limits.jobs_per_day is not None:
        day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        today = await repo.count_generations_since(session, account_id, day_start)
        if today + adding > limits.jobs_per_day:
            tomorrow = day_start + timedelta(days=1)
            raise RateLimited(
                "daily",
                max(1, math.ceil((tomorrow - now).total_seconds())),
                f"Daily job limit reached ({limits.jobs_per_day} per UTC day)",
            )


check_caps = _check_caps  # for batches, which count all their items at once


def _asset_row(
    asset: NewAsset, account_id: uuid.UUID, generation_id: str, now: datetime
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "account_id": account_id,
        "generation_id": generation_id,
        "role": asset.role,
        "position": asset.position,
        "key": asset.key,
        "mime": asset.mime,
        "width": asset.width,
        "height": asset.height,
        "bytes": asset.bytes,
        "sha256": asset.sha256,
        "created_at": now,
        "thumbnail_key": asset.thumbnail_key,
    }


asset_row = _asset_row  # for batches, which write their items' rows themselves


async def assets(session: AsyncSession, generation: Generation) -> Sequence[Any]:
    """A job's stored images: inputs, then outputs."""
    return await repo.assets_of(session, generation.id)


async def source_image(
    session: AsyncSession, account_id: uuid.UUID, image_id: str, field: str
) -> Any:
    """The stored image an ``image_id`` names: an output asset's id, or a job's id (its
    first output). Another account's image is indistinguishable from a missing one."""
    asset = None
    try:
        asset_id = uuid.UUID(image_id)
    except ValueError:
        if 0 < len(image_id) <= 40:
            asset = await repo.first_output_for_account(session, account_id, image_id)
    else:
        asset = await repo.get_asset_for_account(session, account_id, asset_id)
    if asset is None:
        raise NotFound("Image", field)
    return asset


async def get(session: AsyncSession, account_id: uuid.UUID, generation_id: str) -> Generation:
    """The caller's job. Another account's job is indistinguishable from a missing one."""
    generation = await repo.get_generation_for_account(session, account_id, generation_id)
    if generation is None:
        raise NotFound("Generation")
    return generation


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[Generation]
    next_cursor: str | None


def _encode_cursor(g: Generation) -> str:
    return base64.urlsafe_b64encode(f"{g.created_at.isoformat()}|{g.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, gid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), gid
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadUserInput("after", "after is not a cursor returned by this API") from exc


async def list_page(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    first: int,
    after: str | None,
    status: str | None,
) -> Page:
    if not 1 <= first <= MAX_PAGE:
        raise BadUserInput("first", f"first must be between 1 and {MAX_PAGE}")
    if status is not None and status not in {s.value for s in GenerationStatus}:
        raise BadUserInput("status", f"unknown status {status!r}")
    rows = await repo.list_generations(
        session,
        account_id,
        limit=first + 1,
        after=_decode_cursor(after) if after else None,
        status=status,
    )
    items = rows[:first]
    more = len(rows) > first
    return Page(items=items, next_cursor=_encode_cursor(items[-1]) if more and items else None)


# --- worker side -------------------------------------------------------------------


async def begin_processing(uow: UnitOfWork, generation_id: str) -> Generation | None:
    """Claim a job for running. None when it is already final (a duplicate delivery).

    A job found ``processing`` is claimed again: its previous worker died mid-run and
    arq is retrying it. Settlement happens once whatever the number of runs.
    """
    generation = await repo.transition(
        uow.session,
        generation_id,
        from_statuses=_ACTIVE,
        values={
            "status": GenerationStatus.PROCESSING.value,
            "started_at": utcnow(),
            "heartbeat_at": func.now(),  # the run's lease (see renew_lease)
            "attempts": Generation.attempts + 1,  # SQL expression: attempts = attempts + 1
            "step": 0,
            "progress": 0,
        },
    )
    if generation is not None:
        uow.emit(GenerationUpdated(snapshot(generation)))
        await webhooks.record(uow, generation, "started")
    return generation


async def find_queued(session: AsyncSession, generation_id: str) -> Generation | None:
    """A job still queued, whoever's; None otherwise. The worker's batching reads the
    jobs it may take this way; only ``begin_processing`` then claims one."""
    generation = await repo.get_generation(session, generation_id)
    if generation is None or generation.status != GenerationStatus.QUEUED.value:
        return None
    return generation


async def record_progress(
    uow: UnitOfWork,
    generation_id: str,
    step: int,
    total_steps: int,
    live: dict[str, Any] | None = None,
    previous_step: int = 0,
) -> Generation | None:
    """Store a processing job's step (the last one stored was ``previous_step``). None
    when it is no longer processing (cancelled)."""
    progress = _progress(step, total_steps)
    generation = await repo.set_progress(
        uow.session, generation_id, step=step, total_steps=total_steps, progress=progress
    )
    if generation is not None:
        uow.emit(GenerationUpdated(snapshot(generation), live or {}))
        # Only the marks crossed since the last write: one insert per mark, not per write.
        for mark in webhooks.progress_marks(_progress(previous_step, total_steps), progress):
            await webhooks.record(uow, generation, f"progress.{mark}")
    return generation


def _progress(step: int, total_steps: int) -> int:
    return min(99, int(100 * step / total_steps)) if total_steps else 0


async def complete(
    uow: UnitOfWork,
    generation_id: str,
    *,
    outputs: Sequence[NewAsset],
    metadata: dict[str, Any],
    output_urls: Sequence[str] = (),
) -> Generation | None:
    """Mark done and capture the hold. None if the job was no longer processing.

    The worker writes progress at most every ``progress_interval_s``, so a fast job may
    finish before its last steps (or any) were written: completion records the final
    step, and queues the progress webhooks of every mark not yet announced (each is
    recorded at most once per job, so marks already sent are not repeated)."""
    now = utcnow()
    ids = [uuid.uuid4() for _ in outputs]
    # Retention: the account's plan's as it is when the images are stored (null: forever).
    expires = quotas.expires_at(await quotas.limits_of_job(uow.session, generation_id), now)
    summary = [
        {"id": str(i), "key": o.key, "width": o.width, "height": o.height, "format": o.format,
         "expires_at": expires.isoformat() if expires else None}
        for i, o in zip(ids, outputs, strict=True)
    ]  # fmt: skip
    columns = Generation.__table__.c  # type: ignore[attr-defined]  # SQLModel tables expose __table__
    total = case((columns.total_steps > 0, columns.total_steps), else_=columns.steps)
    generation = await repo.transition(
        uow.session,
        generation_id,
        from_statuses=(GenerationStatus.PROCESSING,),
        values={
            "status": GenerationStatus.COMPLETED.value,
            "image_key": outputs[0].key if outputs else None,
            "outputs": summary,
            "metadata": metadata,
            "progress": 100,
            "step": total,
            "total_steps": total,
            "completed_at": now,
            "error": None,
        },
    )
    if generation is None:
        return None
    rows = []
    for asset_id, (position, output) in zip(ids, enumerate(outputs), strict=True):
        row = _asset_row(output, generation.account_id, generation.id, now)
        rows.append({**row, "id": asset_id, "position": position, "role": AssetRole.OUTPUT.value,
                     "expires_at": expires})  # fmt: skip
        rows[-1].update(library.output_fields(generation))
    await repo.insert_assets(uow.session, rows)
    for mark in webhooks.PROGRESS_MARKS:
        await webhooks.record(uow, generation, f"progress.{mark}")
    await _settle(uow, generation, capture=True, output_urls=output_urls)
    return generation


async def fail(uow: UnitOfWork, generation_id: str, message: str) -> Generation | None:
    """Mark failed and release the hold. None if the job had already finished."""
    generation = await repo.transition(
        uow.session,
        generation_id,
        from_statuses=_ACTIVE,
        values={
            "status": GenerationStatus.FAILED.value,
            "error": message[:2000],
            "completed_at": utcnow(),
        },
    )
    if generation is None:
        return None
    await _settle(uow, generation, capture=False)
    return generation


async def cancel(uow: UnitOfWork, account_id: uuid.UUID, generation_id: str) -> Generation:
    """Cancel the caller's queued or processing job and release its hold in full.

    After commit the job is taken off the queue, or the worker running it is told to stop
    (it checks between denoising steps). Whatever the worker does next, the conditional
    state changes keep the job cancelled and uncharged.
    """
    existing = await get(uow.session, account_id, generation_id)
    generation = await repo.transition(
        uow.session,
        generation_id,
        from_statuses=_ACTIVE,
        values={"status": GenerationStatus.CANCELLED.value, "completed_at": utcnow()},
    )
    if generation is None:
        raise Conflict(
            f"Generation is already {existing.status}; only queued or processing "
            "generations can be cancelled"
        )
    uow.emit(GenerationCancelled(generation.id, pool_of(generation.params)))
    await _settle(uow, generation, capture=False)
    return generation


async def _settle(
    uow: UnitOfWork, generation: Generation, *, capture: bool, output_urls: Sequence[str] = ()
) -> None:
    """What every final state does: capture or release the hold (once per job), announce
    the state to subscribers, and queue its webhook (the event is named by the status)."""
    await ledger.settle(
        uow.session, generation.account_id, generation.id, generation.credit_cost, capture=capture
    )
    uow.emit(GenerationUpdated(snapshot(generation)))
    await webhooks.record(uow, generation, generation.status, output_urls=output_urls)
    if generation.batch_id is not None:
        # The last item of a batch to settle completes it (once; batch.completed).
        await batch_progress.item_settled(uow, generation.batch_id)


STALE_MESSAGE = "The worker running this job stopped; credits released"


def queue_timeout_message(max_wait: timedelta) -> str:
    return (
        f"No worker took this job within {int(max_wait.total_seconds())} seconds; "
        "the credits were released"
    )


@dataclass(frozen=True, slots=True)
class Stale:
    expired: list[str]  # processing, lease expired: retried or failed (recover)
    queued: list[str]  # queued a while: perhaps never reached Redis (requeue)
    overdue: list[str]  # queued past the maximum wait (expire_queued)


async def find_stale(
    session: AsyncSession,
    *,
    lease: timedelta,
    requeue_after: timedelta,
    max_queue_wait: timedelta,
) -> Stale:
    """Jobs the sweeper must act on, each then in its own transaction.

    A ``processing`` job whose worker has not renewed its lease for ``lease`` lost its
    worker (killed, or cut off from the database): :func:`recover` retries or fails it.
    A job ``queued`` for ``requeue_after`` may have been committed while Redis was
    unreachable, or lost with a Redis restart: it is enqueued again (arq de-duplicates
    by id). One queued longer than ``max_queue_wait`` has no worker that can run it:
    :func:`expire_queued` fails it and releases its credits.
    """
    rows = await repo.stale_generations(
        session,
        lease=lease,
        queued_before=utcnow() - requeue_after,
        max_wait=max_queue_wait,
    )
    return Stale(
        expired=[i for i, status, _ in rows if status == GenerationStatus.PROCESSING.value],
        queued=[
            i for i, status, late in rows if status == GenerationStatus.QUEUED.value and not late
        ],
        overdue=[i for i, _, late in rows if late],
    )


async def requeue(uow: UnitOfWork, generation_id: str) -> None:
    """Enqueue a queued job again, on its pool's queue (read from its row; a job that is
    gone or no longer queued is left alone)."""
    generation = await repo.get_generation(uow.session, generation_id)
    if generation is not None and generation.status == GenerationStatus.QUEUED.value:
        uow.emit(GenerationAccepted(generation_id, pool_of(generation.params), generation.priority))


async def renew_lease(uow: UnitOfWork, generation_id: str, attempt: int) -> bool:
    """Renew the lease of the run ``attempt`` (the job's ``attempts`` when it began).
    False: the run no longer owns the job and should stop."""
    return await repo.renew_lease(uow.session, generation_id, attempt)


async def recover(
    uow: UnitOfWork, generation_id: str, *, lease: timedelta, max_tries: int
) -> Generation | None:
    """A processing job whose lease expired: back to the queue for another run while it
    has had fewer than ``max_tries``, else failed and released. None when a run renewed
    the lease meanwhile, or the job finished: the conditions are re-checked in each
    conditional UPDATE, so a live run never loses its job to the sweeper. A run that did
    lose it stops at its next renewal, and settlement stays once per job whatever runs.
    """
    requeued = await repo.take_expired(
        uow.session,
        generation_id,
        lease,
        {
            "status": GenerationStatus.QUEUED.value,
            "queued_at": func.now(),
            "heartbeat_at": None,
            "step": 0,
            "progress": 0,
        },
        attempts_below=max_tries,
    )
    if requeued is not None:
        uow.emit(GenerationRequeued(generation_id, pool_of(requeued.params), requeued.priority))
        uow.emit(GenerationUpdated(snapshot(requeued)))
        return requeued
    failed = await repo.take_expired(
        uow.session,
        generation_id,
        lease,
        {
            "status": GenerationStatus.FAILED.value,
            "error": STALE_MESSAGE,
            "completed_at": utcnow(),
        },
    )
    if failed is not None:
        # Off the queue too: the dead run's entry would stay there (counted in the
        # pool's queue size) until a worker took it only to skip it.
        uow.emit(GenerationCancelled(failed.id, pool_of(failed.params)))
        await _settle(uow, failed, capture=False)
    return failed


async def expire_queued(
    uow: UnitOfWork, generation_id: str, max_wait: timedelta
) -> Generation | None:
    """Fail a job still queued after ``max_wait`` (no live worker serves its model) and
    release its credits. None if it started or finished meanwhile."""
    generation = await repo.take_overdue(
        uow.session,
        generation_id,
        max_wait,
        {
            "status": GenerationStatus.FAILED.value,
            "error": queue_timeout_message(max_wait),
            "completed_at": utcnow(),
        },
    )
    if generation is not None:
        # Off the queue too, so no worker spends a run on it (it would be skipped).
        uow.emit(GenerationCancelled(generation.id, pool_of(generation.params)))
        await _settle(uow, generation, capture=False)
    return generation
