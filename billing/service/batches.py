"""Batches (issue 13): up to ``MAX_ITEMS`` jobs of any kinds accepted together, priced and
reserved in one transaction (all or nothing), idempotent on the client's batch id, queued
with one priority; read with their items' states, and cancelled as a whole.

Each item is an ordinary job (``generations``): it runs, settles and is cancelled like any
other. What a batch adds lives in its row and in ``batch_progress`` (its completion)."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.catalog import pool_of
from billing.db import GenerationAccepted, GenerationUpdated, UnitOfWork
from billing.errors import BadUserInput, BatchIdReused, InsufficientCredits, NotFound
from billing.models import Batch, Priority, snapshot, utcnow
from billing.plans import PlanBook
from billing.service import generations, ledger, quotas
from billing.service.batch_progress import BatchView, ordered, validate_events
from billing.service.generations import JobSpec
from billing.text import unstorable

MAX_ITEMS = 10
MAX_PAGE = 100
# An Idempotency-Key (at most 255 characters, as a single job's) must fit: the REST v2
# surface sends it as the batch's id.
MAX_CLIENT_BATCH_ID = 255
MAX_CLIENT_ID = 64


def check_size(count: int) -> None:
    if not 1 <= count <= MAX_ITEMS:
        raise BadUserInput("items", f"a batch has 1 to {MAX_ITEMS} items, not {count}")


def check_client_batch_id(value: str | None) -> None:
    if value is not None and not 0 < len(value) <= MAX_CLIENT_BATCH_ID:
        raise BadUserInput("clientBatchId", "clientBatchId must be 1 to 255 characters")


def check_client_ids(ids: Sequence[str | None]) -> list[str | None] | None:
    """The items' client ids (``items.N.clientId``): each 1 to ``MAX_CLIENT_ID``
    characters, storable. None when no item has one (nothing is stored then)."""
    for index, value in enumerate(ids):
        if value is None:
            continue
        field = f"items.{index}.clientId"
        if not 0 < len(value) <= MAX_CLIENT_ID:
            raise BadUserInput(field, f"{field} must be 1 to {MAX_CLIENT_ID} characters")
        if unstorable(value):
            raise BadUserInput(field, f"{field} contains a NUL character or a lone surrogate")
    return list(ids) if any(i is not None for i in ids) else None


@dataclass(frozen=True, slots=True)
class Created:
    view: BatchView
    replay: bool  # the client batch id named an existing batch: nothing new was accepted


async def create(
    uow: UnitOfWork,
    *,
    account_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    items: Sequence[JobSpec],
    priority: Priority,
    request_hash: str,
    client_batch_id: str | None = None,
    client_ids: Sequence[str | None] | None = None,
    webhook_url: str | None = None,
    webhook_events: Sequence[str] | None = None,
    plans: PlanBook,
    now: datetime | None = None,
) -> Created:
    """Accept every item or none: the caps are counted for all of them, and their total
    price is reserved, under the account's row lock, in this one transaction.

    A ``client_batch_id`` already used by the account returns that batch when the request
    is the same (nothing is charged again, whatever the caps say now) and is refused
    (IDEMPOTENCY_KEY_REUSED) when it differs: ``request_hash`` is the fingerprint of all
    of it, the items' ``client_ids`` and the ``webhook_events`` included.
    INSUFFICIENT_CREDITS names the whole batch's price and the balance; nothing is written
    then.
    """
    check_size(len(items))
    check_client_batch_id(client_batch_id)
    item_client_ids = check_client_ids(client_ids) if client_ids is not None else None
    if item_client_ids is not None and len(item_client_ids) != len(items):
        raise BadUserInput("items", "client ids must be given for every item or none")
    events = validate_events(webhook_events, "webhookEvents")
    session = uow.session
    now = now or utcnow()
    # Always locked (unlike a single job on a plan without caps): the idempotency check,
    # the caps and the total's balance check must all see the same account state.
    plan, overrides, storage_used = await repo.lock_account_quota(session, account_id)
    limits = plans.limits(plan, overrides)
    if client_batch_id is not None:
        existing = await repo.get_batch_by_client_id(session, account_id, client_batch_id)
        if existing is not None:
            return Created(await _replay(session, existing, request_hash), replay=True)
    await generations.check_caps(session, account_id, limits, now, adding=len(items))
    total = sum(item.credits for item in items)
    available, _ = await repo.balance_cache(session, account_id)
    if available < total:
        raise InsufficientCredits(required=total, available=available)
    batch_id = generations.new_generation_id()
    item_ids = [generations.new_generation_id() for _ in items]
    batch = await repo.insert_batch(
        session,
        {
            "id": batch_id,
            "account_id": account_id,
            "api_key_id": api_key_id,
            "client_batch_id": client_batch_id,
            "request_hash": request_hash,
            "priority": priority.value,
            "item_ids": item_ids,
            "credit_cost": total,
            "webhook_url": webhook_url,
            "created_at": now,
            # Left out when null: a JSONB column given None would store JSON's null.
            **({"item_client_ids": item_client_ids} if item_client_ids is not None else {}),
            **({"webhook_events": events} if events is not None else {}),
        },
    )
    if batch is None:  # unreachable under the row lock; kept for a direct caller
        assert client_batch_id is not None
        existing = await repo.get_batch_by_client_id(session, account_id, client_batch_id)
        assert existing is not None
        return Created(await _replay(session, existing, request_hash), replay=True)
    accepted = []
    expires = quotas.expires_at(limits, now)
    for item_id, item in zip(item_ids, items, strict=True):
        spec = replace(item, priority=priority.rank)
        # The plan's quotas, item by item: the items inserted before count towards a
        # daily quota of their kind. A refusal rolls back the whole batch.
        await quotas.check(
            session, account_id, limits, kind=spec.kind, width=spec.width, height=spec.height,
            storage_used=storage_used, now=now,
        )  # fmt: skip
        row = generations.generation_row(item_id, account_id, api_key_id, spec, now)
        generation = await repo.insert_generation(session, {**row, "batch_id": batch_id})
        assert generation is not None  # no idempotency key: nothing to conflict with
        # Each item holds its own credits (settled alone, like any job); the total was
        # checked above, so none of these can fall short.
        if await ledger.reserve(session, account_id, item_id, spec.credits):
            await quotas.low_credit(uow, account_id, item_id, webhook_url)
        await repo.insert_assets(
            session,
            [
                {**generations.asset_row(a, account_id, item_id, now), "expires_at": expires}
                for a in spec.inputs
            ],
        )
        uow.emit(GenerationAccepted(item_id, pool_of(spec.params), spec.priority))
        uow.emit(GenerationUpdated(snapshot(generation)))
        accepted.append(generation)
    return Created(ordered(batch, accepted), replay=False)


async def _replay(session: AsyncSession, existing: Batch, request_hash: str) -> BatchView:
    if existing.request_hash != request_hash:
        raise BatchIdReused()
    return ordered(existing, await repo.batch_items(session, [existing.id]))


async def get(session: AsyncSession, account_id: uuid.UUID, batch_id: str) -> BatchView:
    """The caller's batch; another account's is indistinguishable from a missing one."""
    batch = await repo.get_batch_for_account(session, account_id, batch_id)
    if batch is None:
        raise NotFound("Batch")
    return ordered(batch, await repo.batch_items(session, [batch.id]))


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[BatchView]
    next_cursor: str | None


def _encode_cursor(b: Batch) -> str:
    return base64.urlsafe_b64encode(f"{b.created_at.isoformat()}|{b.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, bid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), bid
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadUserInput("after", "after is not a cursor returned by this API") from exc


async def list_page(
    session: AsyncSession, account_id: uuid.UUID, *, first: int, after: str | None
) -> Page:
    """The caller's batches, newest first, with their items (two queries a page)."""
    if not 1 <= first <= MAX_PAGE:
        raise BadUserInput("first", f"first must be between 1 and {MAX_PAGE}")
    rows = await repo.list_batches(
        session, account_id, limit=first + 1, after=_decode_cursor(after) if after else None
    )
    shown = rows[:first]
    items = await repo.batch_items(session, [b.id for b in shown])
    views = [ordered(b, items) for b in shown]
    more = len(rows) > first
    return Page(items=views, next_cursor=_encode_cursor(shown[-1]) if more and shown else None)


async def cancel(uow: UnitOfWork, account_id: uuid.UUID, batch_id: str) -> BatchView:
    """Cancel every item not yet final, releasing exactly those items' credits (each
    through ``generations.cancel``); finished items are left as they are. A batch with
    nothing left to cancel is returned unchanged."""
    session = uow.session
    await get(session, account_id, batch_id)
    for item_id in await repo.lock_active_batch_items(session, batch_id):
        await generations.cancel(uow, account_id, item_id)
    return await get(session, account_id, batch_id)
