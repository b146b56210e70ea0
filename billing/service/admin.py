"""Administration (issue 13): what an admin does to other accounts, each action recorded
in the append-only audit log in the same transaction as the change itself.

Who may call these is the edges' business (GraphQL and the dashboard require an admin
caller; the CLI is the operator); every function here takes the ``Actor`` it records.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from billing import admin_repository as admin_repo
from billing.db import ApiKeyRevoked, UnitOfWork
from billing.errors import BadUserInput, Conflict
from billing.models import Account, AdminAuditEntry, utcnow
from billing.plans import PlanBook
from billing.service import accounts, generations, ledger

MAX_PAGE = 100
MAX_REASON = 500
MAX_QUERY = 320
T = TypeVar("T")


class Action:
    """The actions the audit log records."""

    GRANT = "grant"
    DEDUCT = "deduct"
    SET_PLAN = "set_plan"
    BAN = "ban"
    UNBAN = "unban"
    # The LoRA catalogue (billing/service/loras.py): what every user's jobs may apply.
    LORA_ADD = "lora_add"
    LORA_UPDATE = "lora_update"
    LORA_REMOVE = "lora_remove"
    ALL = (GRANT, DEDUCT, SET_PLAN, BAN, UNBAN, LORA_ADD, LORA_UPDATE, LORA_REMOVE)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an admin account (GraphQL, dashboard), or the operator's CLI."""

    label: str  # the admin's email, or cli:<user>
    account_id: uuid.UUID | None = None

    @classmethod
    def of(cls, account: Account) -> Actor:
        return cls(label=account.email, account_id=account.id)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    total: int
    offset: int


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not 0 < len(reason) <= MAX_REASON or not reason.isprintable():
        raise BadUserInput("reason", f"reason must be 1 to {MAX_REASON} printable characters")
    return reason


def _window(first: int, offset: int) -> None:
    if not 0 < first <= MAX_PAGE:
        raise BadUserInput("first", f"first must be 1 to {MAX_PAGE}")
    if offset < 0:
        raise BadUserInput("offset", "offset must not be negative")


async def _record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    target: uuid.UUID | None,
    details: dict[str, Any],
) -> AdminAuditEntry:
    entry = AdminAuditEntry(
        actor_account_id=actor.account_id,
        actor=actor.label,
        action=action,
        target_account_id=target,
        details=details,
    )
    await admin_repo.add_audit(session, entry)
    return entry


async def record_lora_change(
    session: AsyncSession, actor: Actor, action: str, lora_id: str, changes: Any = None
) -> None:
    """Record a change to the LoRA catalogue (``Action.LORA_*``) in the audit log, in the
    caller's transaction: the LoRA's id and the fields set (a ``LoraChanges``; None for a
    removal)."""
    if action not in (Action.LORA_ADD, Action.LORA_UPDATE, Action.LORA_REMOVE):
        raise ValueError(f"not a LoRA action: {action}")
    details: dict[str, Any] = {"lora": lora_id}
    if changes is not None:
        details["changes"] = {
            name: list(value) if isinstance(value, tuple | list) else value
            for name in changes.__slots__
            if (value := getattr(changes, name)) is not None
        }
    await _record(session, actor, action, None, details)


async def search_accounts(
    session: AsyncSession,
    *,
    query: str | None = None,
    plan: str | None = None,
    banned: bool | None = None,
    first: int = 50,
    offset: int = 0,
) -> Page[Account]:
    """Accounts whose email contains ``query`` or whose id starts with it, of ``plan``,
    banned or not; oldest first."""
    _window(first, offset)
    if query is not None and len(query) > MAX_QUERY:
        raise BadUserInput("query", f"query must be at most {MAX_QUERY} characters")
    items, total = await admin_repo.search_accounts(
        session, query=query or None, plan=plan, banned=banned, limit=first, offset=offset
    )
    return Page(items=items, total=total, offset=offset)


@dataclass(frozen=True, slots=True)
class CreditChange:
    account: Account
    balance: ledger.Balance
    applied: bool  # False: this reference was already applied (nothing more moved)
    entry: AdminAuditEntry | None


async def _credits(
    uow: UnitOfWork,
    actor: Actor,
    account_id: uuid.UUID,
    amount: int,
    reason: str,
    reference: str | None,
    *,
    deduct: bool,
) -> CreditChange:
    reason = _reason(reason)
    if reference is not None and not 0 < len(reference) <= 200:
        raise BadUserInput("reference", "reference must be 1 to 200 characters")
    session = uow.session
    account = await accounts.get_account(session, account_id)
    # One keyed ledger entry per action; a client's reference makes a retry apply nothing.
    ref = f"admin:{reference or uuid.uuid4()}"
    move = ledger.deduct if deduct else ledger.grant
    applied = await move(session, account.id, amount, reference=ref, note=reason)
    balance = await ledger.balance(session, account.id)
    await session.refresh(account)  # the balance just moved
    entry = None
    if applied:
        entry = await _record(
            session, actor, Action.DEDUCT if deduct else Action.GRANT, account.id,
            {"amount": amount, "reason": reason, "reference": ref,
             "available_after": balance.available},
        )  # fmt: skip
    return CreditChange(account=account, balance=balance, applied=applied, entry=entry)


async def record_grant(
    session: AsyncSession,
    actor: Actor,
    account_id: uuid.UUID,
    amount: int,
    *,
    reference: str,
    note: str | None,
    available_after: int,
) -> None:
    """A grant applied outside this module (the operator's ``fluxgate credits grant``), in
    the audit log like ``grant_credits``' own."""
    await _record(
        session, actor, Action.GRANT, account_id,
        {"amount": amount, "reason": note, "reference": reference,
         "available_after": available_after},
    )  # fmt: skip


async def grant_credits(
    uow: UnitOfWork,
    actor: Actor,
    account_id: uuid.UUID,
    amount: int,
    reason: str,
    *,
    reference: str | None = None,
) -> CreditChange:
    """Add credits (a ``grant`` ledger entry keyed ``grant:admin:<reference>``)."""
    return await _credits(uow, actor, account_id, amount, reason, reference, deduct=False)


async def deduct_credits(
    uow: UnitOfWork,
    actor: Actor,
    account_id: uuid.UUID,
    amount: int,
    reason: str,
    *,
    reference: str | None = None,
) -> CreditChange:
    """Take credits back (a ``deduct`` ledger entry); refused when fewer are available."""
    return await _credits(uow, actor, account_id, amount, reason, reference, deduct=True)


async def set_plan(
    uow: UnitOfWork,
    actor: Actor,
    account_id: uuid.UUID,
    *,
    plan: str | None,
    overrides: dict[str, Any] | None,
    plans: PlanBook,
    merge: bool = False,
) -> Account:
    """``accounts.set_plan``, recorded."""
    before = await accounts.locked(uow.session, account_id)
    old_plan, old_overrides = before.plan, before.limit_overrides
    account = await accounts.set_plan(
        uow.session, account_id, plan=plan, overrides=overrides, plans=plans, merge=merge
    )
    await _record(
        uow.session, actor, Action.SET_PLAN, account.id,
        {"plan": {"from": old_plan, "to": account.plan},
         "overrides": {"from": old_overrides, "to": account.limit_overrides}},
    )  # fmt: skip
    return account


@dataclass(frozen=True, slots=True)
class BanResult:
    account: Account
    cancelled: list[str] = field(default_factory=list)  # jobs cancelled and released


async def ban(uow: UnitOfWork, actor: Actor, account_id: uuid.UUID, reason: str) -> BanResult:
    """Ban an account: from commit on its keys are refused (FORBIDDEN) on every surface,
    its open subscriptions end (the keys' revocation events), its dashboard sessions end,
    and its queued and running jobs are cancelled and their holds released (a running one
    stops at its next step, as on any cancel).

    The ban is one conditional UPDATE of the account row. A submission authenticated just
    before it waits on that row lock to hold its credits, then finds the account banned
    (``repository._HOLD``), so no job slips in between the ban and the cancels."""
    reason = _reason(reason)
    if actor.account_id == account_id:
        raise BadUserInput("accountId", "An admin cannot ban their own account")
    await accounts.get_account(uow.session, account_id)  # NOT_FOUND first
    account = await admin_repo.set_ban(uow.session, account_id, banned=True, reason=reason)
    if account is None:
        raise Conflict("This account is already banned")
    cancelled = []
    for job_id in await admin_repo.active_job_ids(uow.session, account_id):
        try:
            await generations.cancel(uow, account_id, job_id)
        except Conflict:
            continue  # it finished meanwhile: settled by its worker
        cancelled.append(job_id)
    for key_id in await admin_repo.active_key_ids(uow.session, account_id):
        # After commit every API process ends the subscriptions opened with these keys
        # (the keys themselves stay valid, for an unban).
        uow.emit(ApiKeyRevoked(api_key_id=str(key_id), account_id=str(account_id)))
    await admin_repo.end_dashboard_sessions(uow.session, account_id)
    await _record(
        uow.session, actor, Action.BAN, account_id, {"reason": reason, "cancelled": cancelled}
    )
    await uow.session.refresh(account)  # the releases moved its balance
    return BanResult(account=account, cancelled=cancelled)


async def unban(uow: UnitOfWork, actor: Actor, account_id: uuid.UUID, reason: str) -> Account:
    """Lift a ban: the account's keys work again at once."""
    reason = _reason(reason)
    await accounts.get_account(uow.session, account_id)
    account = await admin_repo.set_ban(uow.session, account_id, banned=False, reason=None)
    if account is None:
        raise Conflict("This account is not banned")
    await _record(uow.session, actor, Action.UNBAN, account_id, {"reason": reason})
    return account


async def audit_log(
    session: AsyncSession,
    *,
    target_account_id: uuid.UUID | None = None,
    action: str | None = None,
    first: int = 50,
    offset: int = 0,
) -> Page[AdminAuditEntry]:
    """The admin actions, newest first."""
    _window(first, offset)
    if action is not None and action not in Action.ALL:
        raise BadUserInput("action", f"action must be one of {', '.join(Action.ALL)}")
    items, total = await admin_repo.audit_page(
        session, target_account_id=target_account_id, action=action, limit=first, offset=offset
    )
    return Page(items=items, total=total, offset=offset)


@dataclass(frozen=True, slots=True)
class Revenue:
    currency: str
    payments: int
    amount: int  # paid less refunded, in the currency's smallest unit


@dataclass(frozen=True, slots=True)
class Statistics:
    """What the database says (queue depths come from Redis: the edge adds them)."""

    jobs: list[admin_repo.JobCount]
    gpu_seconds: float
    revenue: list[Revenue]
    revenue_30d: list[Revenue]
    accounts: int
    banned_accounts: int
    active_24h: int
    active_30d: int
    at: datetime


async def statistics(session: AsyncSession, *, now: datetime | None = None) -> Statistics:
    now = now or utcnow()
    jobs = await admin_repo.job_counts(session)
    total, banned = await admin_repo.count_accounts(session)

    def revenue(rows: dict[str, tuple[int, int]]) -> list[Revenue]:
        return [Revenue(currency=c, payments=n, amount=a) for c, (n, a) in rows.items()]

    return Statistics(
        jobs=jobs,
        gpu_seconds=round(sum(j.gpu_seconds for j in jobs), 3),
        revenue=revenue(await admin_repo.revenue(session, None)),
        revenue_30d=revenue(await admin_repo.revenue(session, now - timedelta(days=30))),
        accounts=total,
        banned_accounts=banned,
        active_24h=await admin_repo.active_accounts(session, now - timedelta(hours=24)),
        active_30d=await admin_repo.active_accounts(session, now - timedelta(days=30)),
        at=now,
    )
