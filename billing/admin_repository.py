"""Every SQL statement of administration (issue 13): account search, bans, the audit log
and system statistics. Functions take the session first and never commit. Kept apart
from ``repository.py``, whose statements are the request path's: nothing here runs on
it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, String, cast, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import (
    Account,
    AdminAuditEntry,
    ApiKey,
    DashboardSession,
    Generation,
    GenerationStatus,
    Payment,
    utcnow,
)

_A = Account.__table__.c  # type: ignore[attr-defined]  # SQLModel tables expose __table__
_K = ApiKey.__table__.c  # type: ignore[attr-defined]
_G = Generation.__table__.c  # type: ignore[attr-defined]
_P = Payment.__table__.c  # type: ignore[attr-defined]
_AU = AdminAuditEntry.__table__.c  # type: ignore[attr-defined]
_DS = DashboardSession.__table__.c  # type: ignore[attr-defined]
_ACTIVE = [GenerationStatus.QUEUED.value, GenerationStatus.PROCESSING.value]


def _like(text: str) -> str:
    """``text`` as a LIKE prefix/infix, its wildcards taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_accounts(
    session: AsyncSession,
    *,
    query: str | None,
    plan: str | None,
    banned: bool | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Account], int]:
    """Accounts matching every given filter (``query``: a part of the email, or a prefix
    of the id), oldest first, and how many match in all."""
    conditions: list[Any] = []
    if query:
        text = _like(query.strip().lower())
        conditions.append(
            or_(
                func.lower(_A.email).like(f"%{text}%", escape="\\"),
                cast(_A.id, String).like(f"{text}%", escape="\\"),
            )
        )
    if plan is not None:
        conditions.append(_A.plan == plan)
    if banned is not None:
        conditions.append(_A.banned_at.is_not(None) if banned else _A.banned_at.is_(None))
    total = await session.execute(select(func.count()).select_from(Account).where(*conditions))
    rows = await session.execute(
        select(Account)
        .where(*conditions)
        .order_by(_A.created_at, _A.id)
        .limit(limit)
        .offset(offset)
    )
    return rows.scalars().all(), int(total.scalar_one())


async def set_ban(
    session: AsyncSession, account_id: uuid.UUID, *, banned: bool, reason: str | None
) -> Account | None:
    """Ban or unban, only if the account is not already in that state (None otherwise:
    one conditional UPDATE, so two admins acting at once change it once)."""
    query = update(Account).where(_A.id == account_id)
    if banned:
        query = query.where(_A.banned_at.is_(None)).values(banned_at=utcnow(), ban_reason=reason)
    else:
        query = query.where(_A.banned_at.is_not(None)).values(banned_at=None, ban_reason=None)
    result = await session.execute(
        query.returning(Account).execution_options(populate_existing=True)
    )
    return result.scalars().first()


async def active_job_ids(session: AsyncSession, account_id: uuid.UUID) -> list[str]:
    """The account's queued and processing jobs, oldest first."""
    result = await session.execute(
        select(_G.id)
        .where(_G.account_id == account_id, _G.status.in_(_ACTIVE))
        .order_by(_G.created_at, _G.id)
    )
    return list(result.scalars())


async def active_key_ids(session: AsyncSession, account_id: uuid.UUID) -> list[uuid.UUID]:
    result = await session.execute(
        select(_K.id).where(_K.account_id == account_id, _K.revoked_at.is_(None))
    )
    return list(result.scalars())


async def end_dashboard_sessions(session: AsyncSession, account_id: uuid.UUID) -> int:
    result = await session.execute(
        update(DashboardSession)
        .where(_DS.account_id == account_id, _DS.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def add_audit(session: AsyncSession, entry: AdminAuditEntry) -> None:
    session.add(entry)
    await session.flush()


async def audit_page(
    session: AsyncSession,
    *,
    target_account_id: uuid.UUID | None,
    action: str | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[AdminAuditEntry], int]:
    """Newest first, and the total count."""
    conditions: list[Any] = []
    if target_account_id is not None:
        conditions.append(_AU.target_account_id == target_account_id)
    if action is not None:
        conditions.append(_AU.action == action)
    total = await session.execute(
        select(func.count()).select_from(AdminAuditEntry).where(*conditions)
    )
    rows = await session.execute(
        select(AdminAuditEntry)
        .where(*conditions)
        .order_by(_AU.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return rows.scalars().all(), int(total.scalar_one())


# --- statistics ----------------------------------------------------------------------

# The pool a job was queued on, as billing.catalog.pool_of reads it from its params.
_POOL = func.coalesce(func.nullif(_G.params["model"]["pool"].astext, ""), "default")
_RUN_SECONDS = func.extract("epoch", _G.completed_at - _G.started_at)


@dataclass(frozen=True, slots=True)
class JobCount:
    model: str
    pool: str
    status: str
    jobs: int
    gpu_seconds: float


async def job_counts(session: AsyncSession) -> list[JobCount]:
    """Jobs per (model, pool, status), with the run time of those that ran (started and
    finished): what the GPUs spent on them."""
    result = await session.execute(
        select(
            _G.version,
            _POOL,
            _G.status,
            func.count(),
            func.coalesce(
                func.sum(cast(_RUN_SECONDS, Float)).filter(
                    _G.started_at.is_not(None), _G.completed_at.is_not(None)
                ),
                0.0,
            ),
        )
        .group_by(_G.version, _POOL, _G.status)
        .order_by(_G.version, _POOL, _G.status)
    )
    return [
        JobCount(model=str(m), pool=str(p), status=str(s), jobs=int(n), gpu_seconds=float(g))
        for m, p, s, n, g in result.all()
    ]


async def revenue(session: AsyncSession, since: datetime | None) -> dict[str, tuple[int, int]]:
    """Per currency: (payments, amount kept: paid less refunded, in the smallest unit)."""
    query = select(_P.currency, func.count(), func.sum(_P.amount - _P.refunded_amount))
    if since is not None:
        query = query.where(_P.created_at >= since)
    result = await session.execute(query.group_by(_P.currency).order_by(_P.currency))
    return {str(c): (int(n), int(total or 0)) for c, n, total in result.all()}


async def count_accounts(session: AsyncSession) -> tuple[int, int]:
    """(accounts, banned accounts)."""
    result = await session.execute(
        select(func.count(), func.count().filter(_A.banned_at.is_not(None))).select_from(Account)
    )
    total, banned = result.one()
    return int(total), int(banned)


async def active_accounts(session: AsyncSession, since: datetime) -> int:
    """Accounts that used an API key (authenticated; recorded at most once a minute) or
    submitted a job since ``since``."""
    used = select(_K.account_id.label("account_id")).where(_K.last_used_at >= since)
    submitted = select(_G.account_id.label("account_id")).where(_G.created_at >= since)
    either = used.union(submitted).subquery()
    result = await session.execute(select(func.count()).select_from(either))
    return int(result.scalar_one())
