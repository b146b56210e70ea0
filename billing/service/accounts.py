"""Accounts and API keys."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession

from billing import keys
from billing import repository as repo
from billing.db import ApiKeyRevoked, UnitOfWork
from billing.errors import BadUserInput, Conflict, Forbidden, NotFound, Unauthenticated
from billing.models import Account, ApiKey, utcnow
from billing.plans import DAILY, PlanBook, default_plan_book, validate_overrides
from billing.service import ledger

# How often a key's "last used" time is written (a write per request would cost more
# than the information is worth).
TOUCH_INTERVAL = timedelta(minutes=1)
# What every surface answers a banned account's keys (FORBIDDEN; an admin bans, issue 13).
BANNED_MESSAGE = ledger.BANNED_MESSAGE


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated account behind a request."""

    account: Account
    api_key_id: uuid.UUID
    # When the key was last recorded as used (see touch_key): None if never.
    key_last_used_at: datetime | None = None

    def key_touch_due(self, now: datetime) -> bool:
        """Whether this request should record the key's use (at most once a minute)."""
        last = self.key_last_used_at
        return last is None or last < now - TOUCH_INTERVAL


@dataclass(frozen=True, slots=True)
class Profile:
    """An account's profile (seed 000's ``/api/user/profile``), kept in ``accounts.profile``.
    Only ``default_model`` changes what a request does: the model of a seed-000 request
    that names none. The others are kept and shown back (Fluxgate sends no email, and
    webhooks are given per request)."""

    display_name: str | None = None
    default_model: str | None = None
    default_quality: str | None = None
    email_notifications: bool = False
    webhook_enabled: bool = True

    @classmethod
    def of(cls, account: Account) -> Profile:
        stored = account.profile or {}
        return cls(**{f.name: stored[f.name] for f in fields(cls) if f.name in stored})


PROFILE_TEXT_LIMITS = {"display_name": 64, "default_model": 64, "default_quality": 32}


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    secret: str  # the full key: shown once, never stored


async def create_key(
    session: AsyncSession, account_id: uuid.UUID, pepper: bytes, *, name: str = "default"
) -> NewKey:
    secret = keys.generate_api_key()
    key = ApiKey(
        account_id=account_id,
        name=name,
        prefix=keys.display_prefix(secret),
        key_hash=keys.hash_api_key(secret, pepper),
    )
    await repo.add(session, key)
    return NewKey(key=key, secret=secret)


async def create_account(
    session: AsyncSession,
    *,
    email: str,
    plan: str,
    credits: int,
    pepper: bytes,
    is_admin: bool = False,
) -> tuple[Account, NewKey]:
    email = email.strip().lower()
    if "@" not in email:
        raise BadUserInput("email", "email must be an email address")
    default_plan_book().check_plan(plan)
    if credits < 0:
        raise BadUserInput("credits", "credits must not be negative")
    if await repo.get_account_by_email(session, email) is not None:
        raise BadUserInput("email", f"an account with email {email} already exists")
    account = Account(
        email=email, plan=plan, is_admin=is_admin, webhook_secret=keys.generate_webhook_secret()
    )
    await repo.add(session, account)
    if credits:
        await ledger.grant(
            session, account.id, credits, reference=f"signup:{account.id}", note="initial credits"
        )
    new_key = await create_key(session, account.id, pepper)
    await session.refresh(account)
    return account, new_key


async def resume(session: AsyncSession, account_id: uuid.UUID, key_id: uuid.UUID) -> Caller | None:
    """A dashboard session's caller, if the key it signed in with is still valid (a revoked
    key ends its sessions too)."""
    found = await repo.get_active_key(session, key_id)
    if found is None or found[1].id != account_id or found[1].banned_at is not None:
        return None
    return Caller(account=found[1], api_key_id=found[0].id)


async def authenticate(session: AsyncSession, secret: str | None, pepper: bytes) -> Caller:
    if not secret or not keys.is_well_formed(secret):
        raise Unauthenticated()
    found = await repo.find_key_by_hash(session, keys.hash_api_key(secret, pepper))
    if found is None:
        raise Unauthenticated()
    api_key, account = found
    if account.banned_at is not None:
        # Read by the same statement as the key: refusing a ban costs no query.
        raise Forbidden(BANNED_MESSAGE)
    return Caller(account=account, api_key_id=api_key.id, key_last_used_at=api_key.last_used_at)


async def revoke_key(
    uow: UnitOfWork,
    key_id: uuid.UUID,
    *,
    account_id: uuid.UUID | None = None,
    allow_last: bool = False,
) -> ApiKey:
    """Revoke a key (of ``account_id`` only, when given). Every API process checks keys
    against the database on each request, so it stops working at once everywhere; the
    ``ApiKeyRevoked`` event ends the live subscriptions opened with it, and the
    dashboard sessions signed in with it end too.

    An account's last active key is refused (:class:`Conflict`) unless ``allow_last``
    (operators): without a key it could reach neither the API nor the dashboard."""
    session = uow.session
    found = await repo.get_active_key(session, key_id)
    if found is not None and account_id in (None, found[1].id):
        # The account row is locked first, so two revocations at once cannot each see
        # the other's key still active and leave none.
        await repo.lock_account(session, found[1].id)
    key = await repo.revoke_key(session, key_id, account_id=account_id)
    if key is None:
        raise NotFound("API key")
    if not allow_last and await repo.count_active_keys(session, key.account_id) == 0:
        raise Conflict("This is the account's last active API key: create another key first")
    await repo.revoke_dashboard_sessions(session, api_key_id=key.id)
    uow.emit(ApiKeyRevoked(api_key_id=str(key.id), account_id=str(key.account_id)))
    return key


async def list_keys(session: AsyncSession, account_id: uuid.UUID) -> Sequence[ApiKey]:
    return await repo.list_keys(session, account_id)


async def touch_key(session: AsyncSession, key_id: uuid.UUID) -> None:
    """Record that a key was used, at most once a minute (a write per request would cost
    more than the information is worth; ``Caller.key_touch_due`` says when to call)."""
    await repo.touch_key(session, key_id, utcnow(), min_interval=TOUCH_INTERVAL)


async def set_plan(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    plan: str | None,
    overrides: dict[str, Any] | None,
    plans: PlanBook,
    merge: bool = False,
) -> Account:
    """Change an account's plan and/or its limit overrides: they replace the stored ones
    (an empty dict clears them), or with ``merge`` only the limits named change (``daily``
    per kind); the row is locked so that concurrent merges do not lose one another."""
    account = await locked(session, account_id)
    if plan is not None:
        account.plan = plans.check_plan(plan)
    if overrides is not None:
        changes = validate_overrides(overrides)
        if merge:
            stored = dict(account.limit_overrides or {})
            if DAILY in changes:
                changes[DAILY] = {**(stored.get(DAILY) or {}), **changes[DAILY]}
            changes = {**stored, **changes}
        account.limit_overrides = changes or None
    await repo.add(session, account)
    return account


async def update_profile(
    uow: UnitOfWork, account_id: uuid.UUID, changes: Mapping[str, Any], *, models: Sequence[str]
) -> Account:
    """Set the profile fields in ``changes`` (``Profile``'s names; None clears a text field
    back to its default). ``default_model`` must be one of ``models``."""
    unknown = sorted(set(changes) - {f.name for f in fields(Profile)})
    if unknown:
        raise BadUserInput(unknown[0], f"unknown profile field {unknown[0]!r}")
    for name, limit in PROFILE_TEXT_LIMITS.items():
        value = changes.get(name)
        if value is not None and not 1 <= len(value.strip()) <= limit:
            raise BadUserInput(name, f"{name} must be 1 to {limit} characters")
    model = changes.get("default_model")
    if model is not None and model not in models:
        raise BadUserInput(
            "default_model", f"unknown model {model!r}; available: {', '.join(models)}"
        )
    account = await locked(uow.session, account_id)
    merged = {**asdict(Profile.of(account)), **changes}
    for name in PROFILE_TEXT_LIMITS:
        if isinstance(merged[name], str):
            merged[name] = merged[name].strip()
    account.profile = {k: v for k, v in merged.items() if v is not None}
    await repo.add(uow.session, account)
    return account


async def find_account(session: AsyncSession, id_or_email: str) -> Account:
    """An account by its id or its email (operator tools)."""
    try:
        found = await repo.get_account(session, uuid.UUID(id_or_email))
    except ValueError:
        found = await repo.get_account_by_email(session, id_or_email.strip().lower())
    if found is None:
        raise NotFound("Account")
    return found


async def locked(session: AsyncSession, account_id: uuid.UUID) -> Account:
    """The account, its row locked until commit (NOT_FOUND: no such account)."""
    try:
        return await repo.lock_account(session, account_id)
    except NoResultFound:
        raise NotFound("Account") from None


async def get_account(session: AsyncSession, account_id: uuid.UUID) -> Account:
    account = await repo.get_account(session, account_id)
    if account is None:
        raise NotFound("Account")
    return account
