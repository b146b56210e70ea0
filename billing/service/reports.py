"""What the billing dashboard shows: ledger history and usage per day."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.models import LedgerEntry, utcnow


@dataclass(frozen=True, slots=True)
class LedgerPage:
    entries: Sequence[LedgerEntry]
    page: int
    pages: int


async def ledger_history(
    session: AsyncSession, account_id: uuid.UUID, *, page: int, per_page: int = 25
) -> LedgerPage:
    page = max(1, page)
    entries, total = await repo.ledger_page(
        session, account_id, limit=per_page, offset=(page - 1) * per_page
    )
    return LedgerPage(entries=entries, page=page, pages=max(1, -(-total // per_page)))


@dataclass(frozen=True, slots=True)
class UsageDay:
    day: date
    credits: int
    jobs: int


async def usage(
    session: AsyncSession, account_id: uuid.UUID, *, days: int = 14, now: datetime | None = None
) -> list[UsageDay]:
    """Credits spent (captured) and jobs submitted per UTC day, oldest first, zeros included."""
    today = (now or utcnow()).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    credits = await repo.credits_spent_by_day(session, account_id, since)
    jobs = await repo.jobs_by_day(session, account_id, since)
    return [
        UsageDay(day=d, credits=credits.get(d, 0), jobs=jobs.get(d, 0))
        for d in (first + timedelta(days=i) for i in range(days))
    ]
