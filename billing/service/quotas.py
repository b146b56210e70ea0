"""Plan quotas (issue 13): storage, retention, daily jobs per kind, largest image; the
usage report; and the low-credit alert.

Where each costs nothing extra on the accept path (``generations.submit``):

- the storage used is read by the statement that already locks the account for the caps
  (``repo.lock_account_quota``); ``accounts.storage_bytes`` is kept by triggers on
  ``assets`` (migration 0010), so every path that adds or removes an asset moves it in
  its own transaction;
- a kind's daily quota is one count, run only when the plan has a quota for that kind;
- the largest image is arithmetic on the request;
- the low-credit crossing is read from the debit statement itself
  (``repo.reserve_credits``): only a debit that crossed pays for sending the alert.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.db import UnitOfWork, WebhookQueued
from billing.errors import BadUserInput, QuotaExceeded
from billing.models import WebhookEventStatus, utcnow
from billing.plans import PlanBook, PlanLimits, default_plan_book

MB = 1024 * 1024
LOW_CREDIT_EVENT = "credits.low"
MAX_USAGE_DAYS = 90
SWEEP_BATCH = 200


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def reset_at(now: datetime) -> datetime:
    """When the daily quotas start again: the next UTC midnight."""
    return day_start(now) + timedelta(days=1)


def expires_at(limits: PlanLimits, created: datetime) -> datetime | None:
    """When an asset stored now goes (None: kept forever)."""
    if limits.retention_days is None:
        return None
    return created + timedelta(days=limits.retention_days)


def megabytes(n: int) -> float:
    return round(n / MB, 2)


def check_resolution(limits: PlanLimits, width: int, height: int) -> None:
    """Each image a job makes is at most the plan's ``max_megapixels``."""
    if limits.max_megapixels is None:
        return
    megapixels = width * height / 1_000_000
    if megapixels > limits.max_megapixels:
        raise QuotaExceeded(
            "resolution",
            round(megapixels, 3),
            limits.max_megapixels,
            f"{width}x{height} is {megapixels:.2f} megapixels; the plan allows at most "
            f"{limits.max_megapixels}",
        )


async def check(
    session: AsyncSession,
    account_id: uuid.UUID,
    limits: PlanLimits,
    *,
    kind: str,
    width: int,
    height: int,
    storage_used: int | None,
    now: datetime,
) -> None:
    """Refuse a job (QUOTA_EXCEEDED, before anything is written or charged) over a quota.
    ``storage_used``: as read under the account's lock (None when no lock was needed,
    then the plan has no storage quota)."""
    check_resolution(limits, width, height)
    quota_mb = limits.storage_quota_mb
    if quota_mb is not None and storage_used is not None and storage_used >= quota_mb * MB:
        raise QuotaExceeded(
            "storage",
            megabytes(storage_used),
            quota_mb,
            f"Storage quota reached ({megabytes(storage_used)} of {quota_mb} MB used); "
            "delete images or wait for them to expire",
        )
    quota = limits.daily_quota(kind)
    if quota is not None:
        start = day_start(now)
        used = await repo.count_kind_since(session, account_id, kind, start)
        if used >= quota:
            raise QuotaExceeded(
                "daily",
                used,
                quota,
                f"Daily {kind} quota reached ({quota} per UTC day)",
                kind=kind,
                resetAt=_iso(reset_at(now)),
            )


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


# --- usage ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date
    jobs: int
    credits: int


@dataclass(frozen=True, slots=True)
class KindUsage:
    kind: str
    jobs: int  # over the report's days
    today: int
    daily_quota: int | None
    remaining: int | None


@dataclass(frozen=True, slots=True)
class Usage:
    days: list[DayUsage]
    kinds: list[KindUsage]
    credits_spent: int
    jobs_today: int
    jobs_per_day: int | None
    jobs_remaining: int | None
    storage_used_bytes: int
    storage_quota_mb: int | None
    retention_days: int | None
    max_megapixels: float | None
    reset_at: datetime

    @property
    def storage_used_mb(self) -> float:
        return megabytes(self.storage_used_bytes)

    @property
    def storage_percent(self) -> float | None:
        if not self.storage_quota_mb:
            return None
        return round(100 * self.storage_used_bytes / (self.storage_quota_mb * MB), 1)


async def usage(
    session: AsyncSession,
    account_id: uuid.UUID,
    limits: PlanLimits,
    *,
    days: int = 14,
    now: datetime | None = None,
) -> Usage:
    """Jobs and credits spent per UTC day (oldest first, zeros included), jobs per kind,
    storage, and what is left of each quota today."""
    if not 1 <= days <= MAX_USAGE_DAYS:
        raise BadUserInput("days", f"days must be between 1 and {MAX_USAGE_DAYS}")
    now = now or utcnow()
    today = day_start(now)
    first = today - timedelta(days=days - 1)
    credits = await repo.credits_spent_by_day(session, account_id, first)
    jobs = await repo.jobs_by_day(session, account_id, first)
    per_kind = await repo.jobs_by_kind(session, account_id, first)
    today_kind = await repo.jobs_by_kind(session, account_id, today)
    used = await repo.storage_used(session, account_id)
    series = [
        DayUsage(day=d, jobs=jobs.get(d, 0), credits=credits.get(d, 0))
        for d in (first.date() + timedelta(days=i) for i in range(days))
    ]
    kinds = []
    for kind in sorted(set(per_kind) | set(limits.daily)):
        quota = limits.daily_quota(kind)
        done = today_kind.get(kind, 0)
        kinds.append(
            KindUsage(
                kind=kind,
                jobs=per_kind.get(kind, 0),
                today=done,
                daily_quota=quota,
                remaining=None if quota is None else max(0, quota - done),
            )
        )
    jobs_today = sum(today_kind.values())
    return Usage(
        days=series,
        kinds=kinds,
        credits_spent=sum(credits.values()),
        jobs_today=jobs_today,
        jobs_per_day=limits.jobs_per_day,
        jobs_remaining=(
            None if limits.jobs_per_day is None else max(0, limits.jobs_per_day - jobs_today)
        ),
        storage_used_bytes=used,
        storage_quota_mb=limits.storage_quota_mb,
        retention_days=limits.retention_days,
        max_megapixels=limits.max_megapixels,
        reset_at=reset_at(now),
    )


# --- retention -----------------------------------------------------------------------


async def limits_of_job(
    session: AsyncSession, generation_id: str, plans: PlanBook | None = None
) -> PlanLimits:
    """The limits of the account a job belongs to (the retention of its outputs)."""
    plan, overrides = await repo.account_plan_of_job(session, generation_id)
    return (plans or default_plan_book()).limits(plan, overrides)


async def sweep_expired(
    uow: UnitOfWork,
    delete_file: Callable[[str], Awaitable[None]],
    *,
    limit: int = SWEEP_BATCH,
    now: datetime | None = None,
) -> list[uuid.UUID]:
    """Remove up to ``limit`` assets whose retention ended: their rows (the storage
    trigger takes their bytes off each account) and their files, deleted before the
    transaction commits: when a delete fails, the rows stay and the next sweep tries
    again (deleting a file already gone is not an error)."""
    taken = await repo.take_expired_assets(uow.session, now or utcnow(), limit)
    for _, key in taken:
        await delete_file(key)
    return list(dict.fromkeys(asset_id for asset_id, _ in taken))


# --- low-credit alert ----------------------------------------------------------------


async def set_low_credit_threshold(
    session: AsyncSession,
    account_id: uuid.UUID,
    threshold: int | None,
    webhook_url: str | None,
) -> None:
    """``threshold`` None turns the alert off. ``webhook_url`` (already validated) is
    where ``credits.low`` goes; None: the URL of the job whose debit crossed."""
    if threshold is not None and threshold < 1:
        raise BadUserInput("threshold", "threshold must be a positive number of credits")
    await repo.set_low_credit(session, account_id, threshold, webhook_url)


async def low_credit(
    uow: UnitOfWork, account_id: uuid.UUID, generation_id: str, job_url: str | None
) -> bool:
    """Queue ``credits.low`` (the debit of job ``generation_id`` just crossed the
    threshold). At most once per job (the outbox's unique (job, event)); a later
    crossing is another job's. False when there is nowhere to send it."""
    threshold, url, available = await repo.low_credit_state(uow.session, account_id)
    target = url or job_url
    if threshold is None or not target:
        return False
    now = utcnow()
    event_id = "msg_" + secrets.token_hex(12)
    body = {
        "id": event_id,
        "event": LOW_CREDIT_EVENT,
        "accountId": str(account_id),
        "creditsAvailable": available,
        "threshold": threshold,
        "generationId": generation_id,
        "createdAt": _iso(now),
    }
    inserted = await repo.insert_webhook_event(
        uow.session,
        {
            "id": event_id,
            "account_id": account_id,
            "generation_id": generation_id,
            "event": LOW_CREDIT_EVENT,
            "url": target,
            "body": json.dumps(body, separators=(",", ":")),
            "status": WebhookEventStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )
    if inserted:
        uow.emit(WebhookQueued(event_id, due=now))
    return inserted


async def low_credit_settings(
    session: AsyncSession, account_id: uuid.UUID
) -> tuple[int | None, str | None, int]:
    """(threshold, webhook URL, credits available)."""
    return await repo.low_credit_state(session, account_id)


def below_threshold(available: int, threshold: int | None) -> bool:
    """What the dashboard's notice shows."""
    return threshold is not None and available < threshold
