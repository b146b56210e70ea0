"""Accounts and API keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from billing import keys
from billing import repository as repo
from billing.errors import BadUserInput, NotFound, Unauthenticated
from billing.models import Account, ApiKey
from billing.service import ledger

PLANS = ("free", "starter", "pro", "enterprise")


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated account behind a request."""

    account: Account
    api_key_id: uuid.UUID


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
) -> tuple[Account, NewKey]:
    email = email.strip().lower()
    if "@" not in email:
        raise BadUserInput("email", "email must be an email address")
    if plan not in PLANS:
        raise BadUserInput("plan", f"plan must be one of {', '.join(PLANS)}")
    if credits < 0:
        raise BadUserInput("credits", "credits must not be negative")
    if await repo.get_account_by_email(session, email) is not None:
        raise BadUserInput("email", f"an account with email {email} already exists")
    account = Account(email=email, plan=plan, webhook_secret=keys.generate_webhook_secret())
    await repo.add(session, account)
    if credits:
        await ledger.grant(
            session, account.id, credits, reference=f"signup:{account.id}", note="initial credits"
        )
    new_key = await create_key(session, account.id, pepper)
    await session.refresh(account)
    return account, new_key


async def authenticate(session: AsyncSession, secret: str | None, pepper: bytes) -> Caller:
    if not secret or not keys.is_well_formed(secret):
        raise Unauthenticated()
    found = await repo.find_key_by_hash(session, keys.hash_api_key(secret, pepper))
    if found is None:
        raise Unauthenticated()
    api_key, account = found
    return Caller(account=account, api_key_id=api_key.id)


async def revoke_key(session: AsyncSession, key_id: uuid.UUID) -> None:
    if not await repo.revoke_key(session, key_id):
        raise NotFound("API key")


async def get_account(session: AsyncSession, account_id: uuid.UUID) -> Account:
    account = await repo.get_account(session, account_id)
    if account is None:
        raise NotFound("Account")
    return account
