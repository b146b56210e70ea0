"""Credit movements. The ledger is the truth; ``accounts.credits_*`` is a cache of its sums
updated in the same transaction as each entry (checked by :func:`audit`).

Movement         available   reserved   key
grant N          +N          0          grant:<external id>
reversal N       -N          0          reversal:<payment>:<refunded amount>
deduct N         -N          0          deduct:<reference> (an admin; never below 0)
reserve job      -cost       +cost      reserve:<job>
capture job      0           -cost      settle:<job>
release job      +cost       -cost      settle:<job>

Capture and release share the key ``settle:<job>``: a job is settled exactly once, even if
a retried worker and the sweeper race to settle it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.errors import BadUserInput, Forbidden, InsufficientCredits
from billing.models import LedgerKind

# Said here, not imported from service.accounts (which imports this module).
BANNED_MESSAGE = "This account is banned"


@dataclass(frozen=True, slots=True)
class Balance:
    available: int
    reserved: int


async def grant(
    session: AsyncSession, account_id: uuid.UUID, amount: int, *, reference: str, note: str | None
) -> bool:
    """Add credits once per ``reference`` (a payment id, a CLI grant id).

    Returns False, and adds nothing, when that reference was already granted.
    """
    if amount <= 0:
        raise BadUserInput("amount", "amount must be a positive number of credits")
    inserted = await repo.insert_entry(
        session,
        account_id=account_id,
        kind=LedgerKind.GRANT,
        available_delta=amount,
        reserved_delta=0,
        movement_key=f"grant:{reference}",
        note=note,
    )
    if inserted:
        await repo.adjust_balance(session, account_id, amount, 0)
    return inserted


async def reserve(
    session: AsyncSession, account_id: uuid.UUID, generation_id: str, cost: int
) -> bool:
    """Hold ``cost`` credits for a job, once per job, or raise :class:`InsufficientCredits`.
    True when this hold took the balance below the account's low-credit threshold (it was
    at or above it before): the caller sends ``credits.low``.

    Nothing is written when the credits are short, so the caller may even commit after
    the error. The debit comes first because it is the statement that serializes
    concurrent reserves of one account (row lock) and refuses a negative balance.
    """
    debited, recorded, crossed = await repo.reserve_credits(
        session, account_id, generation_id, cost
    )
    if not debited:
        raise await refusal(session, account_id, cost)
    if not recorded:
        # The job already holds its credits: undo this debit in the same transaction, so
        # the cached balance never moves without a ledger entry.
        await repo.adjust_balance(session, account_id, cost, -cost)
        return False
    return crossed


async def refusal(session: AsyncSession, account_id: uuid.UUID, cost: int) -> Exception:
    """Why a hold of ``cost`` did not happen: the account was banned since its caller
    authenticated, or its credits are short (what it has is in the error)."""
    if await repo.is_banned(session, account_id):
        return Forbidden(BANNED_MESSAGE)
    available, _ = await repo.balance_cache(session, account_id)
    return InsufficientCredits(required=cost, available=available)


async def settle(
    session: AsyncSession, account_id: uuid.UUID, generation_id: str, cost: int, *, capture: bool
) -> bool:
    """Capture (spend) or release (refund) a job's hold, at most once per job."""
    kind = LedgerKind.CAPTURE if capture else LedgerKind.RELEASE
    available_delta = 0 if capture else cost
    inserted = await repo.insert_entry(
        session,
        account_id=account_id,
        kind=kind,
        available_delta=available_delta,
        reserved_delta=-cost,
        movement_key=f"settle:{generation_id}",
        generation_id=generation_id,
    )
    if inserted:
        await repo.adjust_balance(session, account_id, available_delta, -cost)
    return inserted


async def reverse(
    session: AsyncSession, account_id: uuid.UUID, credits: int, *, reference: str, note: str
) -> int:
    """Take back up to ``credits`` of the available balance (a refund), once per
    ``reference``. Returns what was taken: never more than is available, since the
    balance cannot go negative."""
    if credits <= 0:
        return 0
    available = await repo.lock_available(session, account_id)
    taken = min(credits, available)
    if taken == 0:
        return 0
    inserted = await repo.insert_entry(
        session,
        account_id=account_id,
        kind=LedgerKind.REVERSAL,
        available_delta=-taken,
        reserved_delta=0,
        movement_key=f"reversal:{reference}",
        note=note,
    )
    if not inserted:
        return 0
    await repo.adjust_balance(session, account_id, -taken, 0)
    return taken


async def deduct(
    session: AsyncSession, account_id: uuid.UUID, amount: int, *, reference: str, note: str | None
) -> bool:
    """Take ``amount`` credits off the available balance (an admin's correction), once per
    ``reference``, or raise :class:`BadUserInput` when fewer are available: a deduct never
    takes the balance below 0, and never touches credits held by unfinished jobs. The
    account row is locked before the balance is compared, so a job accepted meanwhile
    cannot spend what this deduct counted on."""
    if amount <= 0:
        raise BadUserInput("amount", "amount must be a positive number of credits")
    available = await repo.lock_available(session, account_id)
    if amount > available:
        raise BadUserInput(
            "amount",
            f"Cannot deduct {amount} credits: the account has {available} available "
            "(a deduct never takes the balance below 0)",
        )
    inserted = await repo.insert_entry(
        session,
        account_id=account_id,
        kind=LedgerKind.DEDUCT,
        available_delta=-amount,
        reserved_delta=0,
        movement_key=f"deduct:{reference}",
        note=note,
    )
    if inserted:
        await repo.adjust_balance(session, account_id, -amount, 0)
    return inserted


async def balance(session: AsyncSession, account_id: uuid.UUID) -> Balance:
    available, reserved = await repo.balance_cache(session, account_id)
    return Balance(available=available, reserved=reserved)


async def audit(session: AsyncSession, account_id: uuid.UUID) -> tuple[Balance, Balance]:
    """(cached balance, sum of ledger entries). Equal unless something bypassed the ledger."""
    cached = await balance(session, account_id)
    available, reserved = await repo.ledger_sums(session, account_id)
    return cached, Balance(available=available, reserved=reserved)
