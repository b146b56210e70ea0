"""Every SQL statement the core runs. Functions take the session first and never commit."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached

from billing.db import DriverStatement
from billing.models import (
    Account,
    ApiKey,
    Asset,
    Batch,
    DashboardSession,
    Generation,
    GenerationStatus,
    LedgerEntry,
    LedgerKind,
    Lora,
    Payment,
    StripeEvent,
    WebhookAttempt,
    WebhookEvent,
    WebhookEventStatus,
    utcnow,
)

_G = Generation.__table__.c  # type: ignore[attr-defined]  # SQLModel tables expose __table__
_A = Account.__table__.c  # type: ignore[attr-defined]
_L = LedgerEntry.__table__.c  # type: ignore[attr-defined]
_K = ApiKey.__table__.c  # type: ignore[attr-defined]
_AS = Asset.__table__.c  # type: ignore[attr-defined]
_ACCOUNTS = Account.__table__  # type: ignore[attr-defined]
# Accept-path statements, built once (their values are passed when executed) and run as
# Core on the session's connection: no per-request statement building, cache-key
# generation or ORM bulk evaluation.
_INSERT_GENERATION = (
    insert(Generation.__table__)  # type: ignore[attr-defined]
    .on_conflict_do_nothing(constraint="uq_generations_idempotency")
    .returning(*Generation.__table__.c)  # type: ignore[attr-defined]
)
_FIND_KEY = (
    select(*ApiKey.__table__.c, *Account.__table__.c)  # type: ignore[attr-defined]
    .join_from(ApiKey, Account, _A.id == _K.account_id)
    .where(_K.key_hash == bindparam("key_hash"), _K.revoked_at.is_(None))
)
_LOCK_PLAN = (
    select(_A.plan, _A.limit_overrides)
    .where(_A.id == bindparam("account_id"))
    # NO KEY UPDATE: it serializes submissions like FOR UPDATE, without blocking the
    # foreign-key checks of rows that point at the account (jobs, ledger entries).
    .with_for_update(key_share=True)
)


def _attributes(model: type[Any]) -> list[str]:
    """The model attribute of each of its table's columns, in column order
    ("metadata" is ``meta`` on a job)."""
    by_column = {attr.columns[0].name: attr.key for attr in sa_inspect(model).column_attrs}
    return [by_column[column.name] for column in model.__table__.c]


_M = TypeVar("_M")
_GEN_ATTRS = _attributes(Generation)
_KEY_ATTRS = _attributes(ApiKey)
_ACCOUNT_ATTRS = _attributes(Account)


def _detached(model: type[_M], attributes: list[str], values: Sequence[Any]) -> _M:
    """A row made into its model as the ORM loads one (no constructor, no validation:
    the values come from the database), detached from any session."""
    instance: _M = sa_inspect(model).class_manager.new_instance()
    instance.__dict__.update(zip(attributes, values, strict=True))
    make_transient_to_detached(instance)
    return instance


_INSERT_ENTRY = (
    insert(LedgerEntry.__table__)  # type: ignore[attr-defined]
    .on_conflict_do_nothing(index_elements=["movement_key"])
    .returning(_L.id)
)
# A job's credit hold in one statement: the conditional debit, and the ledger row only
# if the debit happened (at most one per movement key). Counts what each part did.
_HOLD = (
    update(_ACCOUNTS)
    # Not for a banned account: a submission authenticated just before the ban committed
    # waits here on the ban's row lock, then finds the account banned (no job, no hold).
    .where(
        _A.id == bindparam("account_id"),
        _A.credits_available >= bindparam("amount"),
        _A.banned_at.is_(None),
    )
    .values(
        credits_available=_A.credits_available - bindparam("amount"),
        credits_reserved=_A.credits_reserved + bindparam("amount"),
    )
    # The new balance and the low-credit threshold: whether this debit crossed it is read
    # from the same statement (free on the accept path; see reserve_credits).
    .returning(_A.id, _A.credits_available, _A.low_credit_threshold)
    .cte("hold")
)
_HOLD_ENTRY = (
    insert(LedgerEntry.__table__)  # type: ignore[attr-defined]
    .from_select(
        [
            "account_id",
            "kind",
            "available_delta",
            "reserved_delta",
            "movement_key",
            "generation_id",
            "created_at",
        ],
        select(
            _HOLD.c.id,
            bindparam("entry_kind"),
            -bindparam("amount", type_=BigInteger),
            bindparam("amount", type_=BigInteger),
            bindparam("entry_key"),
            bindparam("entry_job"),
            bindparam("entry_at"),
        ),
    )
    .on_conflict_do_nothing(index_elements=["movement_key"])
    .returning(_L.id)
    .cte("hold_entry")
)
# Crossed the threshold: from >= threshold before the debit to < threshold after.
_CROSSED = (
    select(func.count())
    .select_from(_HOLD)
    .where(
        _HOLD.c.low_credit_threshold.is_not(None),
        _HOLD.c.credits_available < _HOLD.c.low_credit_threshold,
        _HOLD.c.credits_available + bindparam("amount", type_=BigInteger)
        >= _HOLD.c.low_credit_threshold,
    )
    .scalar_subquery()
)
_RESERVE = select(
    select(func.count()).select_from(_HOLD).scalar_subquery(),
    select(func.count()).select_from(_HOLD_ENTRY).scalar_subquery(),
    _CROSSED,
)
# The accept path's statements run on the driver connection (billing/db.py).
_FIND_KEY_FAST = DriverStatement(_FIND_KEY)
_RESERVE_FAST = DriverStatement(_RESERVE)
_INSERTS_FAST: dict[tuple[str, ...], DriverStatement] = {}
_ACCEPTS_FAST: dict[tuple[str, ...], DriverStatement] = {}


def _per_columns(
    cache: dict[tuple[str, ...], DriverStatement],
    values: dict[str, Any],
    build: Callable[[tuple[str, ...]], DriverStatement],
) -> DriverStatement:
    """The statement for the set of columns ``values`` names, built once per set (one per
    set the code names: a handful)."""
    keys = tuple(sorted(values))
    statement = cache.get(keys)
    if statement is None:
        statement = cache[keys] = build(keys)
    return statement


def _accept_statement(columns: Sequence[str]) -> DriverStatement:
    """A job accepted in one statement: the conditional debit (``_HOLD``), the job row and
    its ``reserve:`` ledger row inserted only if the debit happened, and whether the debit
    crossed the low-credit threshold. Its rows: the job's columns, then that flag; none
    when the debit did not happen (credits short, or the account banned)."""
    table = Generation.__table__  # type: ignore[attr-defined]
    job = (
        insert(table)
        .from_select(
            list(columns),
            select(*(bindparam(f"job_{c}", type_=table.c[c].type) for c in columns)).select_from(
                _HOLD
            ),
        )
        .returning(*table.c)
        .cte("job")
    )
    entered = select(func.count()).select_from(_HOLD_ENTRY).scalar_subquery()
    return DriverStatement(select(*job.c, entered, _CROSSED))


# The plan, overrides and storage used, the account row locked (see lock_account_plan):
# the storage quota is checked with no statement of its own.
_LOCK_QUOTA = (
    select(_A.plan, _A.limit_overrides, _A.storage_bytes)
    .where(_A.id == bindparam("account_id"))
    .with_for_update(key_share=True)
)
_W = WebhookEvent.__table__.c  # type: ignore[attr-defined]
_WA = WebhookAttempt.__table__.c  # type: ignore[attr-defined]


# --- accounts and keys -------------------------------------------------------------


async def add(session: AsyncSession, *rows: Any) -> None:
    session.add_all(rows)
    await session.flush()


async def get_account(session: AsyncSession, account_id: uuid.UUID) -> Account | None:
    return await session.get(Account, account_id)


async def lock_account_plan(
    session: AsyncSession, account_id: uuid.UUID
) -> tuple[str, dict[str, Any] | None]:
    """The account's plan and limit overrides, its row locked until commit (see
    ``lock_account``): what accepting a job needs, without loading the whole account."""
    connection = await session.connection()
    result = await connection.execute(_LOCK_PLAN, {"account_id": account_id})
    plan, overrides = result.one()
    return str(plan), overrides


async def lock_account(session: AsyncSession, account_id: uuid.UUID) -> Account:
    """The account row, locked until commit (SELECT … FOR UPDATE).

    Serializes one account's submissions: the concurrency and daily caps are counted and
    the new job inserted while no other submission of the account can do the same, so
    racing requests cannot overshoot either cap. Other accounts are not blocked.
    """
    result = await session.execute(
        select(Account)
        .where(_A.id == account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.scalars().one()


async def count_active_generations(session: AsyncSession, account_id: uuid.UUID) -> int:
    result = await session.execute(
        select(func.count())
        .select_from(Generation)
        .where(
            _G.account_id == account_id,
            _G.status.in_([GenerationStatus.QUEUED.value, GenerationStatus.PROCESSING.value]),
        )
    )
    return int(result.scalar_one())


async def count_generations_since(
    session: AsyncSession, account_id: uuid.UUID, since: datetime
) -> int:
    result = await session.execute(
        select(func.count())
        .select_from(Generation)
        .where(_G.account_id == account_id, _G.created_at >= since)
    )
    return int(result.scalar_one())


async def get_account_by_email(session: AsyncSession, email: str) -> Account | None:
    result = await session.execute(select(Account).where(_A.email == email))
    return result.scalars().first()


async def find_key_by_hash(session: AsyncSession, key_hash: str) -> tuple[ApiKey, Account] | None:
    """An active key and its account (detached), as Core: this runs on every request."""
    # Standalone: the request's first statement begins no transaction for a read.
    rows = await _FIND_KEY_FAST.rows(session, {"key_hash": key_hash}, standalone=True)
    if not rows:
        return None
    row = rows[0]
    split = len(_KEY_ATTRS)
    return (
        _detached(ApiKey, _KEY_ATTRS, row[:split]),
        _detached(Account, _ACCOUNT_ATTRS, row[split:]),
    )


async def get_active_key(session: AsyncSession, key_id: uuid.UUID) -> tuple[ApiKey, Account] | None:
    result = await session.execute(
        select(ApiKey, Account)
        .join(Account, _A.id == _K.account_id)
        .where(_K.id == key_id, _K.revoked_at.is_(None))
    )
    row = result.first()
    return None if row is None else (row[0], row[1])


async def revoke_key(
    session: AsyncSession, key_id: uuid.UUID, *, account_id: uuid.UUID | None
) -> ApiKey | None:
    query = update(ApiKey).where(_K.id == key_id, _K.revoked_at.is_(None))
    if account_id is not None:
        query = query.where(_K.account_id == account_id)
    result = await session.execute(
        query.values(revoked_at=utcnow())
        .returning(ApiKey)
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


async def list_keys(session: AsyncSession, account_id: uuid.UUID) -> Sequence[ApiKey]:
    result = await session.execute(
        select(ApiKey).where(_K.account_id == account_id).order_by(_K.created_at)
    )
    return result.scalars().all()


async def touch_key(
    session: AsyncSession, key_id: uuid.UUID, now: datetime, *, min_interval: timedelta
) -> None:
    await session.execute(
        update(ApiKey)
        .where(
            _K.id == key_id,
            or_(_K.last_used_at.is_(None), _K.last_used_at < now - min_interval),
        )
        .values(last_used_at=now)
    )


# --- ledger --------------------------------------------------------------------------


async def hold_credits(
    session: AsyncSession, account_id: uuid.UUID, generation_id: str, amount: int
) -> tuple[bool, bool]:
    """Debit ``amount`` from available to reserved if, and only if, it is there, and
    record it as the job's ``reserve:`` ledger row, in one statement: (debited, recorded).

    The conditional UPDATE row-locks the account, so concurrent holds for one account are
    serialized and each re-checks the committed balance; the ledger row is inserted only
    when the debit happened, and not at all when the job already has one (recorded is
    then False and the caller must undo the debit)."""
    debited, recorded, _ = await reserve_credits(session, account_id, generation_id, amount)
    return debited, recorded


async def reserve_credits(
    session: AsyncSession, account_id: uuid.UUID, generation_id: str, amount: int
) -> tuple[bool, bool, bool]:
    """``hold_credits`` plus whether the debit took the balance from at least the
    account's low-credit threshold to below it (one statement all the same)."""
    rows = await _RESERVE_FAST.rows(
        session,
        {
            "account_id": account_id,
            "amount": amount,
            "entry_kind": LedgerKind.RESERVE.value,
            "entry_key": f"reserve:{generation_id}",
            "entry_job": generation_id,
            "entry_at": utcnow(),
        },
    )
    ((debited, recorded, crossed),) = rows
    return bool(debited), bool(recorded), bool(crossed)


async def adjust_balance(
    session: AsyncSession, account_id: uuid.UUID, available_delta: int, reserved_delta: int
) -> None:
    await session.execute(
        update(Account)
        .where(_A.id == account_id)
        .values(
            credits_available=_A.credits_available + available_delta,
            credits_reserved=_A.credits_reserved + reserved_delta,
        )
    )


async def insert_entry(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    kind: LedgerKind,
    available_delta: int,
    reserved_delta: int,
    movement_key: str,
    generation_id: str | None = None,
    note: str | None = None,
) -> bool:
    """Append one ledger row; False if a row with ``movement_key`` already exists."""
    connection = await session.connection()
    result = await connection.execute(
        _INSERT_ENTRY,
        {
            "account_id": account_id,
            "kind": kind.value,
            "available_delta": available_delta,
            "reserved_delta": reserved_delta,
            "movement_key": movement_key,
            "generation_id": generation_id,
            "note": note,
            "created_at": utcnow(),
        },
    )
    return result.first() is not None


async def is_banned(session: AsyncSession, account_id: uuid.UUID) -> bool:
    result = await session.execute(select(_A.banned_at).where(_A.id == account_id))
    return result.scalar_one_or_none() is not None


async def balance_cache(session: AsyncSession, account_id: uuid.UUID) -> tuple[int, int]:
    result = await session.execute(
        select(_A.credits_available, _A.credits_reserved).where(_A.id == account_id)
    )
    row = result.one()
    return int(row[0]), int(row[1])


async def ledger_sums(session: AsyncSession, account_id: uuid.UUID) -> tuple[int, int]:
    result = await session.execute(
        select(
            func.coalesce(func.sum(_L.available_delta), 0),
            func.coalesce(func.sum(_L.reserved_delta), 0),
        ).where(_L.account_id == account_id)
    )
    row = result.one()
    return int(row[0]), int(row[1])


async def list_entries(session: AsyncSession, account_id: uuid.UUID) -> Sequence[LedgerEntry]:
    result = await session.execute(
        select(LedgerEntry).where(_L.account_id == account_id).order_by(_L.id)
    )
    return result.scalars().all()


# --- generations ---------------------------------------------------------------------


async def accept_job(
    session: AsyncSession, values: dict[str, Any], amount: int
) -> tuple[Generation, bool] | None:
    """Insert a job row (``values``, with no idempotency key: a fresh id cannot conflict)
    and hold its ``amount`` credits, in one statement: all of it or nothing. The job and
    whether the hold crossed the account's low-credit threshold; None when the credits
    are short or the account is banned (nothing written).

    Standalone (billing/db.py): in the session's transaction if one is open, otherwise a
    transaction of its own — committed when it returns."""
    statement = _per_columns(_ACCEPTS_FAST, values, _accept_statement)
    params = {f"job_{key}": value for key, value in values.items()}
    generation_id = values["id"]
    params.update(
        account_id=values["account_id"],
        amount=amount,
        entry_kind=LedgerKind.RESERVE.value,
        entry_key=f"reserve:{generation_id}",
        entry_job=generation_id,
        entry_at=values["created_at"],
    )
    rows = await statement.rows(session, params, standalone=True)
    if not rows:
        return None
    ((*row, entered, crossed),) = rows
    assert entered == 1, "a new job's hold is recorded once"
    return _detached(Generation, _GEN_ATTRS, row), bool(crossed)


async def insert_generation(session: AsyncSession, values: dict[str, Any]) -> Generation | None:
    """Insert a job row and return it; None when the account already used this
    idempotency key.

    ON CONFLICT DO NOTHING makes a concurrent duplicate wait for the first transaction
    and then see its row, instead of failing with a unique violation.
    """
    statement = _per_columns(
        _INSERTS_FAST, values, lambda keys: DriverStatement(_INSERT_GENERATION, keys)
    )
    rows = await statement.rows(session, values)
    if not rows:
        return None
    row = rows[0]
    # The row as inserted, made into the model without an ORM load (not in the session).
    return _detached(Generation, _GEN_ATTRS, row)


async def insert_assets(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(Asset).values(list(rows)))


async def assets_of(session: AsyncSession, generation_id: str) -> Sequence[Asset]:
    """A job's assets: inputs (image, mask) then outputs, each in order."""
    result = await session.execute(
        select(Asset).where(_AS.generation_id == generation_id).order_by(_AS.role, _AS.position)
    )
    return result.scalars().all()


async def get_asset_for_account(
    session: AsyncSession, account_id: uuid.UUID, asset_id: uuid.UUID
) -> Asset | None:
    result = await session.execute(
        select(Asset).where(_AS.id == asset_id, _AS.account_id == account_id)
    )
    return result.scalars().first()


async def first_output_for_account(
    session: AsyncSession, account_id: uuid.UUID, generation_id: str
) -> Asset | None:
    result = await session.execute(
        select(Asset).where(
            _AS.generation_id == generation_id,
            _AS.account_id == account_id,
            _AS.role == "output",
            _AS.position == 0,
        )
    )
    return result.scalars().first()


async def get_generation(session: AsyncSession, generation_id: str) -> Generation | None:
    return await session.get(Generation, generation_id, populate_existing=True)


async def get_generation_for_account(
    session: AsyncSession, account_id: uuid.UUID, generation_id: str
) -> Generation | None:
    result = await session.execute(
        select(Generation)
        .where(_G.id == generation_id, _G.account_id == account_id)
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


async def get_by_idempotency_key(
    session: AsyncSession, account_id: uuid.UUID, key: str
) -> Generation | None:
    result = await session.execute(
        select(Generation).where(_G.account_id == account_id, _G.idempotency_key == key)
    )
    return result.scalars().first()


async def list_generations(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    status: str | None,
) -> Sequence[Generation]:
    """Newest first, keyset-paginated on (created_at, id)."""
    query = select(Generation).where(_G.account_id == account_id)
    if status is not None:
        query = query.where(_G.status == status)
    if after is not None:
        query = query.where(tuple_(_G.created_at, _G.id) < tuple_(*after))
    query = query.order_by(_G.created_at.desc(), _G.id.desc()).limit(limit)
    result = await session.execute(query)
    return result.scalars().all()


async def transition(
    session: AsyncSession,
    generation_id: str,
    *,
    from_statuses: Sequence[GenerationStatus],
    values: dict[str, Any],
    where: Sequence[ColumnElement[bool]] = (),
) -> Generation | None:
    """Conditionally move a job between states. None if it was not in ``from_statuses``
    (or did not meet the further conditions ``where``).

    Each state change is one conditional UPDATE, so two workers running the same job (arq
    runs a job at least once) cannot both complete it, nor complete a cancelled one.
    """
    result = await session.execute(
        update(Generation)
        .where(_G.id == generation_id, _G.status.in_([s.value for s in from_statuses]), *where)
        .values(updated_at=utcnow(), revision=_G.revision + 1, **values)
        .returning(Generation)
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


async def set_progress(
    session: AsyncSession, generation_id: str, *, step: int, total_steps: int, progress: int
) -> Generation | None:
    """Record progress of a processing job; None if it is no longer processing."""
    result = await session.execute(
        update(Generation)
        .where(_G.id == generation_id, _G.status == GenerationStatus.PROCESSING.value)
        .values(
            step=step,
            total_steps=total_steps,
            progress=progress,
            updated_at=utcnow(),
            revision=_G.revision + 1,
        )
        .returning(Generation)
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


def _lease_expired(lease: timedelta) -> Any:
    # Database time on both sides (the worker renews with now() too), so clock skew
    # between worker machines cannot expire a live lease. Rows from before leases existed
    # fall back to their last change.
    return func.coalesce(_G.heartbeat_at, _G.updated_at) < func.now() - lease


def _waited(max_wait: timedelta) -> Any:
    return func.coalesce(_G.queued_at, _G.created_at) < func.now() - max_wait


async def renew_lease(session: AsyncSession, generation_id: str, attempt: int) -> bool:
    """Renew the lease of run number ``attempt`` of a processing job. False when that run
    no longer owns the job (cancelled, finished, or handed to another run). Not a state
    change: no revision, no event."""
    result = await session.execute(
        update(Generation)
        .where(
            _G.id == generation_id,
            _G.status == GenerationStatus.PROCESSING.value,
            _G.attempts == attempt,
        )
        .values(heartbeat_at=func.now())
        .returning(_G.id)
    )
    return result.first() is not None


async def stale_generations(
    session: AsyncSession, *, lease: timedelta, queued_before: datetime, max_wait: timedelta
) -> Sequence[tuple[str, str, bool]]:
    """(id, status, waited too long) of the jobs the sweeper must look at: processing jobs
    whose lease expired, and queued jobs not changed since ``queued_before`` (they may
    never have reached Redis) or waiting longer than ``max_wait``."""
    queued = _G.status == GenerationStatus.QUEUED.value
    result = await session.execute(
        select(_G.id, _G.status, and_(queued, _waited(max_wait))).where(
            or_(
                and_(_G.status == GenerationStatus.PROCESSING.value, _lease_expired(lease)),
                and_(queued, or_(_G.updated_at < queued_before, _waited(max_wait))),
            )
        )
    )
    return [(row[0], row[1], bool(row[2])) for row in result.all()]


async def take_expired(
    session: AsyncSession,
    generation_id: str,
    lease: timedelta,
    values: dict[str, Any],
    *,
    attempts_below: int | None = None,
) -> Generation | None:
    """Move a processing job whose lease expired (and, if given, with fewer than
    ``attempts_below`` runs) to ``values``. None when a run renewed the lease meanwhile,
    or the job is no longer processing: the conditions are re-checked in the UPDATE."""
    conditions = [_lease_expired(lease)]
    if attempts_below is not None:
        conditions.append(_G.attempts < attempts_below)
    return await transition(
        session,
        generation_id,
        from_statuses=(GenerationStatus.PROCESSING,),
        values=values,
        where=conditions,
    )


async def take_overdue(
    session: AsyncSession, generation_id: str, max_wait: timedelta, values: dict[str, Any]
) -> Generation | None:
    """Move a job still queued after ``max_wait`` to ``values``; None otherwise."""
    return await transition(
        session,
        generation_id,
        from_statuses=(GenerationStatus.QUEUED,),
        values=values,
        where=[_waited(max_wait)],
    )


# --- webhooks ------------------------------------------------------------------------


async def insert_webhook_event(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert an event; False if this job already has this event (a job run twice)."""
    result = await session.execute(
        insert(WebhookEvent)
        .values(**values)
        .on_conflict_do_nothing(constraint="uq_webhook_events_generation_event")
        .returning(_W.id)
    )
    return result.first() is not None


async def get_webhook_event(session: AsyncSession, event_id: str) -> WebhookEvent | None:
    return await session.get(WebhookEvent, event_id, populate_existing=True)


async def lease_webhook_event(
    session: AsyncSession, event_id: str, until: datetime
) -> WebhookEvent | None:
    """Claim a pending event for one attempt, unless another worker holds a live lease."""
    now = utcnow()
    result = await session.execute(
        update(WebhookEvent)
        .where(
            _W.id == event_id,
            _W.status == WebhookEventStatus.PENDING.value,
            # An early duplicate job does not jump the backoff (2 s of slack for clocks).
            _W.next_attempt_at <= now + timedelta(seconds=2),
            or_(_W.locked_until.is_(None), _W.locked_until < now),
        )
        .values(locked_until=until)
        .returning(WebhookEvent)
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


async def update_webhook_event(
    session: AsyncSession, event_id: str, values: dict[str, Any]
) -> WebhookEvent:
    result = await session.execute(
        update(WebhookEvent)
        .where(_W.id == event_id)
        .values(**values)
        .returning(WebhookEvent)
        .execution_options(populate_existing=True)
    )
    return result.scalars().one()


async def list_webhook_events(
    session: AsyncSession, account_id: uuid.UUID, *, generation_id: str | None, limit: int
) -> Sequence[WebhookEvent]:
    query = select(WebhookEvent).where(_W.account_id == account_id)
    if generation_id is not None:
        query = query.where(_W.generation_id == generation_id)
    result = await session.execute(query.order_by(_W.created_at.desc(), _W.id).limit(limit))
    return result.scalars().all()


async def list_webhook_attempts(
    session: AsyncSession, event_ids: Sequence[str]
) -> Sequence[WebhookAttempt]:
    if not event_ids:
        return []
    result = await session.execute(
        select(WebhookAttempt).where(_WA.event_id.in_(event_ids)).order_by(_WA.id)
    )
    return result.scalars().all()


async def overdue_webhook_events(
    session: AsyncSession, due_before: datetime
) -> list[tuple[str, datetime]]:
    now = utcnow()
    result = await session.execute(
        select(_W.id, _W.next_attempt_at).where(
            _W.status == WebhookEventStatus.PENDING.value,
            _W.next_attempt_at < due_before,
            or_(_W.locked_until.is_(None), _W.locked_until < now),
        )
    )
    return [(row[0], row[1]) for row in result.all()]


# --- payments ------------------------------------------------------------------------


async def lock_available(session: AsyncSession, account_id: uuid.UUID) -> int:
    """The available balance, with the account row locked until commit."""
    result = await session.execute(
        select(_A.credits_available).where(_A.id == account_id).with_for_update()
    )
    return int(result.scalar_one())


async def insert_stripe_event(
    session: AsyncSession, *, event_id: str, type: str, payload: dict[str, Any]
) -> bool:
    result = await session.execute(
        insert(StripeEvent)
        .values(id=event_id, type=type, payload=payload, received_at=utcnow())
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(StripeEvent.__table__.c.id)  # type: ignore[attr-defined]
    )
    return result.first() is not None


async def stripe_event_handled(session: AsyncSession, event_id: str) -> bool:
    table = StripeEvent.__table__.c  # type: ignore[attr-defined]
    result = await session.execute(select(table.handled_at).where(table.id == event_id))
    return result.scalar_one_or_none() is not None


async def unhandled_stripe_events(session: AsyncSession, received_before: datetime) -> list[str]:
    table = StripeEvent.__table__.c  # type: ignore[attr-defined]
    result = await session.execute(
        select(table.id)
        .where(
            table.handled_at.is_(None),
            table.dead_at.is_(None),
            table.received_at < received_before,
        )
        .order_by(table.received_at)
        .limit(1000)
    )
    return [row[0] for row in result.all()]


async def lock_stripe_event(session: AsyncSession, event_id: str) -> StripeEvent | None:
    result = await session.execute(
        select(StripeEvent)
        .where(StripeEvent.__table__.c.id == event_id)  # type: ignore[attr-defined]
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


async def insert_payment(session: AsyncSession, payment: Payment) -> None:
    values = payment.model_dump()
    await session.execute(
        insert(Payment)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["checkout_session_id"])
    )


async def lock_payment_by_intent(session: AsyncSession, intent: str) -> Payment | None:
    table = Payment.__table__.c  # type: ignore[attr-defined]
    result = await session.execute(
        select(Payment)
        .where(table.payment_intent == intent)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


# --- reports -------------------------------------------------------------------------


async def ledger_page(
    session: AsyncSession, account_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[Sequence[LedgerEntry], int]:
    """Newest first, and the total count."""
    total = await session.execute(
        select(func.count()).select_from(LedgerEntry).where(_L.account_id == account_id)
    )
    rows = await session.execute(
        select(LedgerEntry)
        .where(_L.account_id == account_id)
        .order_by(_L.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return rows.scalars().all(), int(total.scalar_one())


async def credits_spent_by_day(
    session: AsyncSession, account_id: uuid.UUID, since: datetime
) -> dict[date, int]:
    day = func.date(func.timezone("UTC", _L.created_at))
    result = await session.execute(
        select(day, func.sum(-_L.reserved_delta))
        .where(
            _L.account_id == account_id,
            _L.kind == LedgerKind.CAPTURE.value,
            _L.created_at >= since,
        )
        .group_by(day)
    )
    return {row[0]: int(row[1]) for row in result.all()}


async def jobs_by_day(
    session: AsyncSession, account_id: uuid.UUID, since: datetime
) -> dict[date, int]:
    day = func.date(func.timezone("UTC", _G.created_at))
    result = await session.execute(
        select(day, func.count())
        .where(_G.account_id == account_id, _G.created_at >= since)
        .group_by(day)
    )
    return {row[0]: int(row[1]) for row in result.all()}


# --- Stripe inbox failures (dead letters) --------------------------------------------

_SE = StripeEvent.__table__.c  # type: ignore[attr-defined]


async def stripe_event_pending(session: AsyncSession, event_id: str) -> bool:
    """Neither applied nor given up on."""
    result = await session.execute(
        select(_SE.id).where(_SE.id == event_id, _SE.handled_at.is_(None), _SE.dead_at.is_(None))
    )
    return result.first() is not None


async def record_stripe_failure(
    session: AsyncSession, event_id: str, error: str, *, max_attempts: int, give_up: bool
) -> tuple[int, bool] | None:
    """Count a failed attempt and store its error; dead-letter the event once it has
    failed ``max_attempts`` times (at once with ``give_up``). (attempts, dead), or None
    when the event is applied or unknown."""
    values: dict[str, Any] = {"attempts": _SE.attempts + 1, "error": error[:4000]}
    if give_up:
        values["dead_at"] = func.coalesce(_SE.dead_at, utcnow())
    else:
        values["dead_at"] = case(
            (_SE.attempts + 1 >= max_attempts, func.coalesce(_SE.dead_at, utcnow())),
            else_=_SE.dead_at,
        )
    result = await session.execute(
        update(StripeEvent)
        .where(_SE.id == event_id, _SE.handled_at.is_(None))
        .values(**values)
        .returning(_SE.attempts, _SE.dead_at)
    )
    row = result.first()
    return None if row is None else (int(row[0]), row[1] is not None)


async def note_stripe_event(session: AsyncSession, event_id: str, note: str) -> None:
    """Why an event waits (not a failure: nothing is counted)."""
    await session.execute(
        update(StripeEvent)
        .where(_SE.id == event_id, _SE.handled_at.is_(None))
        .values(error=note[:4000])
    )


async def dead_stripe_events(session: AsyncSession, *, limit: int = 100) -> Sequence[StripeEvent]:
    result = await session.execute(
        select(StripeEvent)
        .where(_SE.dead_at.is_not(None), _SE.handled_at.is_(None))
        .order_by(_SE.dead_at.desc())
        .limit(limit)
    )
    return result.scalars().all()


async def revive_stripe_event(session: AsyncSession, event_id: str) -> bool:
    """Give a dead letter a fresh set of attempts (after the cause was fixed)."""
    result = await session.execute(
        update(StripeEvent)
        .where(_SE.id == event_id, _SE.handled_at.is_(None), _SE.dead_at.is_not(None))
        .values(dead_at=None, attempts=0)
        .returning(_SE.id)
    )
    return result.first() is not None


# --- dashboard sessions --------------------------------------------------------------

_DS = DashboardSession.__table__.c  # type: ignore[attr-defined]


async def count_active_keys(session: AsyncSession, account_id: uuid.UUID) -> int:
    result = await session.execute(
        select(func.count())
        .select_from(ApiKey)
        .where(_K.account_id == account_id, _K.revoked_at.is_(None))
    )
    return int(result.scalar_one())


async def live_dashboard_session(
    session: AsyncSession, session_id: str, now: datetime
) -> tuple[DashboardSession, ApiKey, Account] | None:
    """A session not revoked nor expired, whose key is not revoked either."""
    result = await session.execute(
        select(DashboardSession, ApiKey, Account)
        .join(ApiKey, _K.id == _DS.api_key_id)
        .join(Account, _A.id == _DS.account_id)
        .where(
            _DS.id == session_id,
            _DS.revoked_at.is_(None),
            _DS.expires_at > now,
            _K.revoked_at.is_(None),
            _K.account_id == _DS.account_id,
        )
    )
    row = result.first()
    return None if row is None else (row[0], row[1], row[2])


async def delete_ended_dashboard_sessions(
    session: AsyncSession, account_id: uuid.UUID, ended_before: datetime
) -> None:
    """Forget an account's sessions that expired or were revoked before ``ended_before``."""
    await session.execute(
        delete(DashboardSession).where(
            _DS.account_id == account_id,
            or_(_DS.expires_at < ended_before, _DS.revoked_at < ended_before),
        )
    )


async def revoke_dashboard_sessions(
    session: AsyncSession, *, session_id: str | None = None, api_key_id: uuid.UUID | None = None
) -> int:
    """End one session, or every session opened with a key."""
    query = update(DashboardSession).where(_DS.revoked_at.is_(None))
    if session_id is not None:
        query = query.where(_DS.id == session_id)
    if api_key_id is not None:
        query = query.where(_DS.api_key_id == api_key_id)
    result = await session.execute(query.values(revoked_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


# --- live subscriptions --------------------------------------------------------------
# The safety net of an API process's open subscriptions (schema/watch.py) asks about all of
# them at once: each statement takes the ids as one array parameter (one statement text,
# prepared once, whatever the count, and no limit on the number of bound parameters).

_ACTIVE_KEYS = (
    select(_K.id)
    .join_from(ApiKey, Account, _A.id == _K.account_id)
    # A banned account's keys count as revoked: its subscriptions end (issue 13).
    .where(_K.id == func.any(bindparam("ids")), _K.revoked_at.is_(None), _A.banned_at.is_(None))
)
_REVISIONS = select(_G.id, _G.revision).where(_G.id == func.any(bindparam("ids")))


async def active_key_ids(session: AsyncSession, key_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``key_ids`` are active keys; the others were revoked (or are gone)."""
    connection = await session.connection()
    result = await connection.execute(_ACTIVE_KEYS, {"ids": list(key_ids)})
    return set(result.scalars())


async def generation_revisions(
    session: AsyncSession, generation_ids: Sequence[str]
) -> dict[str, int]:
    """The stored revision of each of these jobs (those that exist)."""
    connection = await session.connection()
    result = await connection.execute(_REVISIONS, {"ids": list(generation_ids)})
    return {job_id: int(revision) for job_id, revision in result.all()}


# --- the LoRA catalogue (issue 13) ------------------------------------------------------


async def get_lora(session: AsyncSession, lora_id: str) -> Lora | None:
    return await session.get(Lora, lora_id)


async def loras_by_id(session: AsyncSession, lora_ids: Sequence[str]) -> list[Lora]:
    """The catalogue rows of ``lora_ids`` that exist (enabled or not), in one query."""
    result = await session.execute(select(Lora).where(Lora.id.in_(list(lora_ids))))  # type: ignore[attr-defined]  # a SQLModel column
    return list(result.scalars())


async def list_loras(
    session: AsyncSession, *, category: str | None = None, enabled_only: bool = True
) -> list[Lora]:
    query = select(Lora).order_by(Lora.category, Lora.name)
    if category is not None:
        query = query.where(Lora.category == category)  # type: ignore[arg-type]  # a SQLModel column
    if enabled_only:
        query = query.where(Lora.enabled.is_(True))  # type: ignore[attr-defined]  # a SQLModel column
    result = await session.execute(query)
    return list(result.scalars())


async def delete_lora(session: AsyncSession, lora: Lora) -> None:
    await session.delete(lora)
    await session.flush()


# --- batches (issue 13) -----------------------------------------------------------------

_B = Batch.__table__.c  # type: ignore[attr-defined]  # SQLModel tables expose __table__
_ACTIVE_STATUSES = [GenerationStatus.QUEUED.value, GenerationStatus.PROCESSING.value]


async def insert_batch(session: AsyncSession, values: dict[str, Any]) -> Batch | None:
    """Insert a batch row; None when the account already used its client batch id (a
    concurrent duplicate waits for the first transaction, then sees its row)."""
    result = await session.execute(
        insert(Batch)
        .values(values)
        .on_conflict_do_nothing(constraint="uq_batches_client_batch_id")
        .returning(Batch)
    )
    return result.scalars().first()


async def get_batch_for_account(
    session: AsyncSession, account_id: uuid.UUID, batch_id: str
) -> Batch | None:
    result = await session.execute(
        select(Batch)
        .where(_B.id == batch_id, _B.account_id == account_id)
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


async def get_batch_by_client_id(
    session: AsyncSession, account_id: uuid.UUID, client_batch_id: str
) -> Batch | None:
    result = await session.execute(
        select(Batch).where(_B.account_id == account_id, _B.client_batch_id == client_batch_id)
    )
    return result.scalars().first()


async def list_batches(
    session: AsyncSession, account_id: uuid.UUID, *, limit: int, after: tuple[datetime, str] | None
) -> Sequence[Batch]:
    """Newest first, keyset-paginated on (created_at, id)."""
    query = select(Batch).where(_B.account_id == account_id)
    if after is not None:
        query = query.where(tuple_(_B.created_at, _B.id) < tuple_(*after))
    result = await session.execute(query.order_by(_B.created_at.desc(), _B.id.desc()).limit(limit))
    return result.scalars().all()


async def batch_items(session: AsyncSession, batch_ids: Sequence[str]) -> Sequence[Generation]:
    """The jobs of the batches ``batch_ids`` (any order: the batches' ``item_ids`` say it)."""
    if not batch_ids:
        return []
    result = await session.execute(
        select(Generation)
        .where(_G.batch_id.in_(list(batch_ids)))
        .execution_options(populate_existing=True)
    )
    return result.scalars().all()


async def lock_active_batch_items(session: AsyncSession, batch_id: str) -> list[str]:
    """The batch's queued and processing jobs, their rows locked in primary-key order:
    cancelling a batch then takes its locks in the order a worker settling one item does
    (the job, then the account, then the batch), so the two cannot deadlock."""
    result = await session.execute(
        select(_G.id)
        .where(_G.batch_id == batch_id, _G.status.in_(_ACTIVE_STATUSES))
        .order_by(_G.id)
        .with_for_update()
    )
    return [str(i) for i in result.scalars()]


async def lock_batch_unfinished(session: AsyncSession, batch_id: str) -> int:
    """Lock the batch row (until commit), then count its unfinished jobs.

    Serializes the settlements of one batch's items: each counts only after the previous
    one committed (READ COMMITTED re-reads after the lock), so the last one to settle
    always sees zero, and only one transaction can be the last."""
    await session.execute(select(_B.id).where(_B.id == batch_id).with_for_update())
    result = await session.execute(
        select(func.count())
        .select_from(Generation)
        .where(_G.batch_id == batch_id, _G.status.in_(_ACTIVE_STATUSES))
    )
    return int(result.scalar_one())


async def mark_batch_completed(session: AsyncSession, batch_id: str) -> Batch | None:
    """Stamp ``completed_at`` once; None if it was already stamped."""
    result = await session.execute(
        update(Batch)
        .where(_B.id == batch_id, _B.completed_at.is_(None))
        .values(completed_at=utcnow())
        .returning(Batch)
        .execution_options(populate_existing=True)
    )
    return result.scalars().first()


# --- quotas (issue 13) ---------------------------------------------------------------


async def lock_account_quota(
    session: AsyncSession, account_id: uuid.UUID
) -> tuple[str, dict[str, Any] | None, int]:
    """``lock_account_plan`` plus the account's storage used (bytes), same statement."""
    connection = await session.connection()
    result = await connection.execute(_LOCK_QUOTA, {"account_id": account_id})
    plan, overrides, used = result.one()
    return str(plan), overrides, int(used)


async def account_plan_of_job(
    session: AsyncSession, generation_id: str
) -> tuple[str, dict[str, Any] | None]:
    """The plan and overrides of the account a job belongs to (free plan if it is gone)."""
    result = await session.execute(
        select(_A.plan, _A.limit_overrides)
        .join_from(Generation, Account, _A.id == _G.account_id)
        .where(_G.id == generation_id)
    )
    row = result.first()
    return ("free", None) if row is None else (str(row[0]), row[1])


async def count_kind_since(
    session: AsyncSession, account_id: uuid.UUID, kind: str, since: datetime
) -> int:
    """Jobs of ``kind`` submitted since ``since`` (ix_generations_account_created)."""
    result = await session.execute(
        select(func.count())
        .select_from(Generation)
        .where(_G.account_id == account_id, _G.created_at >= since, _G.kind == kind)
    )
    return int(result.scalar_one())


async def jobs_by_kind(
    session: AsyncSession, account_id: uuid.UUID, since: datetime
) -> dict[str, int]:
    result = await session.execute(
        select(_G.kind, func.count())
        .where(_G.account_id == account_id, _G.created_at >= since)
        .group_by(_G.kind)
    )
    return {str(row[0]): int(row[1]) for row in result.all()}


async def storage_used(session: AsyncSession, account_id: uuid.UUID) -> int:
    result = await session.execute(select(_A.storage_bytes).where(_A.id == account_id))
    return int(result.scalar_one())


async def take_expired_assets(
    session: AsyncSession, now: datetime, limit: int
) -> list[tuple[uuid.UUID, str]]:
    """Delete up to ``limit`` assets whose retention ended, returning (id, storage key)
    of each file they had (image, thumbnail): the caller deletes the files before it
    commits. SKIP LOCKED: concurrent sweepers take
    different rows; the storage trigger takes the bytes off each account."""
    expired = (
        select(_AS.id)
        .where(_AS.expires_at.is_not(None), _AS.expires_at <= now)
        .order_by(_AS.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = await session.execute(
        delete(Asset).where(_AS.id.in_(expired)).returning(_AS.id, _AS.key, _AS.thumbnail_key)
    )
    # The library's thumbnail goes with its image.
    return [(row[0], key) for row in result.all() for key in (row[1], row[2]) if key is not None]


async def set_low_credit(
    session: AsyncSession, account_id: uuid.UUID, threshold: int | None, url: str | None
) -> None:
    await session.execute(
        update(Account)
        .where(_A.id == account_id)
        .values(low_credit_threshold=threshold, low_credit_webhook_url=url)
    )


async def low_credit_state(
    session: AsyncSession, account_id: uuid.UUID
) -> tuple[int | None, str | None, int]:
    """(threshold, webhook URL, available credits)."""
    result = await session.execute(
        select(_A.low_credit_threshold, _A.low_credit_webhook_url, _A.credits_available).where(
            _A.id == account_id
        )
    )
    threshold, url, available = result.one()
    return threshold, url, int(available)
