"""Administration over GraphQL (issue 13): thin adapters over ``billing/service/admin.py``.

Every field here is for admin accounts only: anyone else gets ``FORBIDDEN`` (a test
introspects ``AdminQuery`` and ``AdminMutation`` and calls each field as a non-admin).
"""

from __future__ import annotations

import logging
import uuid

import strawberry
from redis.exceptions import RedisError
from strawberry.scalars import JSON
from strawberry.types import Info

from billing import models
from billing.admin_repository import JobCount
from billing.errors import Forbidden, NotFound
from billing.service import accounts
from billing.service import admin as service
from billing.service.accounts import Caller
from schema.context import Context
from schema.scalars import UtcDateTime
from schema.types import Account, Limits

log = logging.getLogger(__name__)
Ctx = Info[Context, None]
ADMIN_ONLY = "Only an admin account may do this"


async def admin_caller(ctx: Context) -> Caller:
    """The caller, if an admin (FORBIDDEN otherwise; UNAUTHENTICATED without a key)."""
    caller = await ctx.caller()
    if not caller.account.is_admin:
        raise Forbidden(ADMIN_ONLY)
    return caller


def _account_id(value: strawberry.ID) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound("Account", field="accountId") from None


@strawberry.type(description="An account as an admin sees it (no secrets).")
class AdminAccount:
    id: strawberry.ID
    email: str
    plan: str
    is_admin: bool
    banned: bool
    banned_at: UtcDateTime | None
    ban_reason: str | None
    credits_available: int
    credits_reserved: int
    limits: Limits = strawberry.field(description="From the plan and any overrides.")
    limit_overrides: JSON | None = strawberry.field(
        description="The account's own limits replacing the plan's (null: none)."
    )
    created_at: UtcDateTime

    @classmethod
    def from_model(cls, ctx: Context, a: models.Account) -> AdminAccount:
        limits = ctx.services.plans.limits(a.plan, a.limit_overrides)
        return cls(
            id=strawberry.ID(str(a.id)),
            email=a.email,
            plan=a.plan,
            is_admin=a.is_admin,
            banned=a.banned_at is not None,
            banned_at=UtcDateTime(a.banned_at) if a.banned_at else None,
            ban_reason=a.ban_reason,
            credits_available=a.credits_available,
            credits_reserved=a.credits_reserved,
            # The account type's own conversion: whatever limits plans gain, shown alike.
            limits=Account.from_model(a, limits).limits,
            limit_overrides=JSON(dict(a.limit_overrides)) if a.limit_overrides else None,
            created_at=UtcDateTime(a.created_at),
        )


@strawberry.type
class AdminAccountPage:
    items: list[AdminAccount]
    total: int = strawberry.field(description="Accounts matching the filters, in all.")
    offset: int


@strawberry.type(description="One admin action: who did what, to whom, when.")
class AdminAuditEntry:
    id: strawberry.ID
    actor: str = strawberry.field(description="The admin's email, or cli:<user>.")
    actor_account_id: strawberry.ID | None
    action: str = strawberry.field(description="grant | deduct | set_plan | ban | unban")
    target_account_id: strawberry.ID | None
    details: JSON
    created_at: UtcDateTime

    @classmethod
    def from_model(cls, e: models.AdminAuditEntry) -> AdminAuditEntry:
        return cls(
            id=strawberry.ID(str(e.id)),
            actor=e.actor,
            actor_account_id=strawberry.ID(str(e.actor_account_id)) if e.actor_account_id else None,
            action=e.action,
            target_account_id=(
                strawberry.ID(str(e.target_account_id)) if e.target_account_id else None
            ),
            details=JSON(dict(e.details)),
            created_at=UtcDateTime(e.created_at),
        )


@strawberry.type
class AdminAuditPage:
    items: list[AdminAuditEntry]
    total: int
    offset: int


@strawberry.type(description="A grant or a deduct, and the balance after it.")
class AdminCreditChange:
    account: AdminAccount
    applied: bool = strawberry.field(
        description="False: this reference was already applied; nothing more moved."
    )
    audit_entry: AdminAuditEntry | None


@strawberry.type
class AdminBanResult:
    account: AdminAccount
    cancelled_job_ids: list[strawberry.ID] = strawberry.field(
        description="The queued and running jobs cancelled, their credits released."
    )


@strawberry.type(description="Jobs of one model, pool and status.")
class AdminJobCount:
    model: str
    pool: str
    status: str
    count: int
    gpu_seconds: float = strawberry.field(description="Their run time (started to finished).")

    @classmethod
    def from_count(cls, c: JobCount) -> AdminJobCount:
        return cls(
            model=c.model, pool=c.pool, status=c.status, count=c.jobs,
            gpu_seconds=round(c.gpu_seconds, 3),
        )  # fmt: skip


@strawberry.type
class AdminQueueDepth:
    pool: str
    depth: int | None = strawberry.field(
        description="Jobs in the pool's queue, waiting or started (null: Redis unreachable)."
    )
    live_workers: int | None


@strawberry.type(description="Payments less refunds, in the currency's smallest unit.")
class AdminRevenue:
    currency: str
    payments: int
    amount: int


@strawberry.type
class AdminStatistics:
    accounts: int
    banned_accounts: int
    active_accounts_24h: int = strawberry.field(
        description="Accounts that used a key or submitted a job in the last 24 hours."
    )
    active_accounts_30d: int
    jobs: list[AdminJobCount]
    gpu_seconds: float = strawberry.field(description="Run time of every job that ran.")
    queues: list[AdminQueueDepth]
    revenue: list[AdminRevenue] = strawberry.field(description="All time, per currency.")
    revenue_30d: list[AdminRevenue]
    at: UtcDateTime


async def _queues(ctx: Context) -> list[AdminQueueDepth]:
    pools = ctx.services.catalog.pools
    try:
        depths = await ctx.services.queue.depths(pools)
        live = await ctx.services.queue.live_workers(pools)
    except (RedisError, OSError) as exc:
        log.warning("queue depths unknown: %s", exc)
        return [AdminQueueDepth(pool=p, depth=None, live_workers=None) for p in pools]
    return [AdminQueueDepth(pool=p, depth=depths[p], live_workers=live[p]) for p in pools]


def _revenue(rows: list[service.Revenue]) -> list[AdminRevenue]:
    return [AdminRevenue(currency=r.currency, payments=r.payments, amount=r.amount) for r in rows]


@strawberry.type
class AdminQuery:
    @strawberry.field(
        description="Admin only: accounts whose email contains `query` or whose id starts "
        "with it, of `plan`, banned or not; oldest first."
    )
    async def admin_accounts(
        self,
        info: Ctx,
        query: str | None = None,
        plan: str | None = None,
        banned: bool | None = None,
        first: int = 50,
        offset: int = 0,
    ) -> AdminAccountPage:
        await admin_caller(info.context)
        async with info.context.read() as session:
            page = await service.search_accounts(
                session, query=query, plan=plan, banned=banned, first=first, offset=offset
            )
        return AdminAccountPage(
            items=[AdminAccount.from_model(info.context, a) for a in page.items],
            total=page.total,
            offset=page.offset,
        )

    @strawberry.field(description="Admin only: one account.")
    async def admin_account(self, info: Ctx, id: strawberry.ID) -> AdminAccount:
        await admin_caller(info.context)
        async with info.context.read() as session:
            account = await accounts.get_account(session, _account_id(id))
        return AdminAccount.from_model(info.context, account)

    @strawberry.field(
        description="Admin only: jobs by status per model and pool, queue depths, GPU "
        "seconds, revenue, active accounts."
    )
    async def admin_statistics(self, info: Ctx) -> AdminStatistics:
        await admin_caller(info.context)
        async with info.context.read() as session:
            stats = await service.statistics(session)
        return AdminStatistics(
            accounts=stats.accounts,
            banned_accounts=stats.banned_accounts,
            active_accounts_24h=stats.active_24h,
            active_accounts_30d=stats.active_30d,
            jobs=[AdminJobCount.from_count(c) for c in stats.jobs],
            gpu_seconds=stats.gpu_seconds,
            queues=await _queues(info.context),
            revenue=_revenue(stats.revenue),
            revenue_30d=_revenue(stats.revenue_30d),
            at=UtcDateTime(stats.at),
        )

    @strawberry.field(description="Admin only: every admin action, newest first.")
    async def admin_audit_log(
        self,
        info: Ctx,
        account_id: strawberry.ID | None = None,
        action: str | None = None,
        first: int = 50,
        offset: int = 0,
    ) -> AdminAuditPage:
        await admin_caller(info.context)
        target = _account_id(account_id) if account_id is not None else None
        async with info.context.read() as session:
            page = await service.audit_log(
                session, target_account_id=target, action=action, first=first, offset=offset
            )
        return AdminAuditPage(
            items=[AdminAuditEntry.from_model(e) for e in page.items],
            total=page.total,
            offset=page.offset,
        )


def _change(ctx: Context, change: service.CreditChange) -> AdminCreditChange:
    return AdminCreditChange(
        account=AdminAccount.from_model(ctx, change.account),
        applied=change.applied,
        audit_entry=AdminAuditEntry.from_model(change.entry) if change.entry else None,
    )


@strawberry.type
class AdminMutation:
    @strawberry.mutation(
        description="Admin only: add credits to an account (a ledger grant), with a reason. "
        "A repeated `reference` adds nothing more."
    )
    async def admin_grant_credits(
        self,
        info: Ctx,
        account_id: strawberry.ID,
        amount: int,
        reason: str,
        reference: str | None = None,
    ) -> AdminCreditChange:
        caller = await admin_caller(info.context)
        async with info.context.transaction() as uow:
            change = await service.grant_credits(
                uow, service.Actor.of(caller.account), _account_id(account_id), amount, reason,
                reference=reference,
            )  # fmt: skip
        return _change(info.context, change)

    @strawberry.mutation(
        description="Admin only: take credits from an account's available balance (a ledger "
        "entry), with a reason. BAD_USER_INPUT when fewer are available: the balance never "
        "goes below 0."
    )
    async def admin_deduct_credits(
        self,
        info: Ctx,
        account_id: strawberry.ID,
        amount: int,
        reason: str,
        reference: str | None = None,
    ) -> AdminCreditChange:
        caller = await admin_caller(info.context)
        async with info.context.transaction() as uow:
            change = await service.deduct_credits(
                uow, service.Actor.of(caller.account), _account_id(account_id), amount, reason,
                reference=reference,
            )  # fmt: skip
        return _change(info.context, change)

    @strawberry.mutation(
        description="Admin only: ban an account. Its keys are refused with FORBIDDEN "
        "everywhere, its open subscriptions end, and its queued and running jobs are "
        "cancelled and their credits released."
    )
    async def admin_ban_account(
        self, info: Ctx, account_id: strawberry.ID, reason: str
    ) -> AdminBanResult:
        caller = await admin_caller(info.context)
        async with info.context.transaction() as uow:
            result = await service.ban(
                uow, service.Actor.of(caller.account), _account_id(account_id), reason
            )
        return AdminBanResult(
            account=AdminAccount.from_model(info.context, result.account),
            cancelled_job_ids=[strawberry.ID(j) for j in result.cancelled],
        )

    @strawberry.mutation(description="Admin only: lift a ban; the account's keys work again.")
    async def admin_unban_account(
        self, info: Ctx, account_id: strawberry.ID, reason: str
    ) -> AdminAccount:
        caller = await admin_caller(info.context)
        async with info.context.transaction() as uow:
            account = await service.unban(
                uow, service.Actor.of(caller.account), _account_id(account_id), reason
            )
        return AdminAccount.from_model(info.context, account)
