"""The credit ledger against a real Postgres database (``billing.service.ledger``).

Every test works in accounts of its own, so the shared session database never leaks
state between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import repository as repo
from billing.catalog import Catalog
from billing.db import GenerationAccepted, GenerationUpdated, unit_of_work_without_dispatch
from billing.errors import BadUserInput, ErrorCode, InsufficientCredits
from billing.models import Generation, GenerationStatus, LedgerEntry, LedgerKind, snapshot, utcnow
from billing.pricing import default_price_table
from billing.requests import ImageRequest, Limits, RawImageRequest, validate
from billing.service import generations, ledger
from runtime.settings import ROOT, Settings
from tests.factories import TestAccount, audit, balance, create_account, output, t2i_job

Sessions = async_sessionmaker[AsyncSession]
_G = Generation.__table__.c  # type: ignore[attr-defined]  # SQLModel tables expose __table__
_L = LedgerEntry.__table__.c  # type: ignore[attr-defined]

CATALOG: Catalog | None = None


def request(
    *,
    provider: str = "flux-schnell",
    width: int = 512,
    height: int = 512,
    quality: str = "standard",
    version: str | None = None,
) -> ImageRequest:
    global CATALOG
    if CATALOG is None:
        CATALOG = Catalog.load(ROOT / "deploy" / "models.dev.toml")
    return validate(
        RawImageRequest(
            provider=provider,
            prompt="a lighthouse at dusk",
            width=width,
            height=height,
            quality=quality,
            version=version,
        ),
        catalog=CATALOG,
        prices=default_price_table(),
        limits=Limits(),
    )


def test_request_costs() -> None:
    """The costs the tests below rely on, straight from the shipped price table."""
    assert request().quote.credits == 10
    assert request(quality="high").quote.credits == 13
    assert request(width=1024, height=1024).quote.credits == 15
    assert request(provider="flux-pro", width=1024, height=1024).quote.credits == 17


async def submit(
    sessions: Sessions, account: TestAccount, req: ImageRequest | None = None
) -> Generation:
    async with unit_of_work_without_dispatch(sessions) as uow:
        generation = await generations.submit(
            uow,
            account_id=account.id,
            api_key_id=account.api_key_id,
            request=t2i_job(req or request()),
        )
        assert uow.events == [
            GenerationAccepted(generation.id),
            GenerationUpdated(snapshot(generation)),
        ]
    return generation


async def insert_unreserved_job(sessions: Sessions, account_id: uuid.UUID, cost: int) -> str:
    """A generations row with no hold, so ``ledger.reserve`` can be called on it directly.
    Only the ledger is under test: the row is never to run, so it is not left ``queued``
    (the workers' sweeper would enqueue a queued job it finds nowhere in Redis)."""
    req = request()
    generation_id = generations.new_generation_id()
    now = utcnow()
    async with sessions() as s:
        inserted = await repo.insert_generation(
            s,
            {
                "id": generation_id,
                "account_id": account_id,
                "provider": req.provider,
                "version": req.version,
                "quality": req.quality,
                "prompt": req.prompt,
                "width": req.width,
                "height": req.height,
                "steps": req.steps,
                "guidance": req.guidance,
                "seed": req.seed,
                "credit_cost": cost,
                "status": GenerationStatus.CANCELLED.value,
                "metadata": {},
                "created_at": now,
                "updated_at": now,
            },
        )
        assert inserted
        await s.commit()
    return generation_id


async def entries(sessions: Sessions, account_id: uuid.UUID) -> list[LedgerEntry]:
    async with sessions() as s:
        return list(await repo.list_entries(s, account_id))


async def assert_consistent(sessions: Sessions, account_id: uuid.UUID) -> ledger.Balance:
    cached, summed = await audit(sessions, account_id)
    assert cached == summed
    assert cached.available >= 0
    assert cached.reserved >= 0
    return cached


async def assert_balance(
    sessions: Sessions, account_id: uuid.UUID, available: int, reserved: int
) -> None:
    assert await balance(sessions, account_id) == ledger.Balance(available, reserved)
    assert await assert_consistent(sessions, account_id) == ledger.Balance(available, reserved)


# --- grants ----------------------------------------------------------------------


async def test_signup_credits_are_a_grant(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=123)
    await assert_balance(sessions, acct.id, 123, 0)
    [entry] = await entries(sessions, acct.id)
    assert entry.kind == LedgerKind.GRANT.value
    assert (entry.available_delta, entry.reserved_delta) == (123, 0)
    assert entry.movement_key == f"grant:signup:{acct.id}"
    assert entry.generation_id is None


async def test_account_without_credits_has_no_entries(
    sessions: Sessions, settings: Settings
) -> None:
    acct = await create_account(sessions, settings, credits=0)
    await assert_balance(sessions, acct.id, 0, 0)
    assert await entries(sessions, acct.id) == []


async def test_grant_applied_once_per_reference(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=0)
    reference = f"payment-{uuid.uuid4()}"
    async with sessions() as s:
        assert await ledger.grant(s, acct.id, 100, reference=reference, note="top-up") is True
        await s.commit()
    await assert_balance(sessions, acct.id, 100, 0)

    # the same reference again, in a later transaction: nothing happens
    async with sessions() as s:
        assert await ledger.grant(s, acct.id, 100, reference=reference, note="retry") is False
        await s.commit()
    await assert_balance(sessions, acct.id, 100, 0)

    # even with a different amount
    async with sessions() as s:
        assert await ledger.grant(s, acct.id, 999, reference=reference, note=None) is False
        # ... and within the same transaction as another grant
        assert await ledger.grant(s, acct.id, 5, reference=reference + "-b", note=None) is True
        assert await ledger.grant(s, acct.id, 5, reference=reference + "-b", note=None) is False
        await s.commit()
    await assert_balance(sessions, acct.id, 105, 0)

    rows = await entries(sessions, acct.id)
    assert [(e.kind, e.available_delta, e.movement_key) for e in rows] == [
        ("grant", 100, f"grant:{reference}"),
        ("grant", 5, f"grant:{reference}-b"),
    ]
    assert rows[0].note == "top-up"


async def test_concurrent_duplicate_grants_apply_once(
    sessions: Sessions, settings: Settings
) -> None:
    acct = await create_account(sessions, settings, credits=0)
    reference = f"webhook-{uuid.uuid4()}"

    async def attempt() -> bool:
        async with sessions() as s:
            done = await ledger.grant(s, acct.id, 40, reference=reference, note=None)
            await s.commit()
            return done

    results = await asyncio.gather(*(attempt() for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    await assert_balance(sessions, acct.id, 40, 0)


@pytest.mark.parametrize("amount", [0, -1, -50])
async def test_grant_must_be_positive(sessions: Sessions, settings: Settings, amount: int) -> None:
    acct = await create_account(sessions, settings, credits=20)
    async with sessions() as s:
        with pytest.raises(BadUserInput) as info:
            await ledger.grant(s, acct.id, amount, reference=f"bad-{uuid.uuid4()}", note=None)
        await s.commit()
    assert info.value.field == "amount"
    assert info.value.code is ErrorCode.BAD_USER_INPUT
    await assert_balance(sessions, acct.id, 20, 0)
    assert len(await entries(sessions, acct.id)) == 1


# --- reserve ---------------------------------------------------------------------


async def test_submit_reserves_the_quoted_cost(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=50)
    job = await submit(sessions, acct, request(provider="flux-pro", width=1024, height=1024))
    assert job.credit_cost == 17
    assert job.status == GenerationStatus.QUEUED.value
    await assert_balance(sessions, acct.id, 33, 17)
    _grant, hold = await entries(sessions, acct.id)
    assert hold.kind == LedgerKind.RESERVE.value
    assert (hold.available_delta, hold.reserved_delta) == (-17, 17)
    assert hold.generation_id == job.id
    assert hold.movement_key == f"reserve:{job.id}"


async def test_reserve_moves_available_to_reserved(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=30)
    job_id = await insert_unreserved_job(sessions, acct.id, 12)
    async with sessions() as s:
        await ledger.reserve(s, acct.id, job_id, 12)
        await s.commit()
    await assert_balance(sessions, acct.id, 18, 12)


async def test_reserve_exact_balance(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=10)
    await submit(sessions, acct)
    await assert_balance(sessions, acct.id, 0, 10)


async def test_reserve_short_raises_and_changes_nothing(
    sessions: Sessions, settings: Settings
) -> None:
    acct = await create_account(sessions, settings, credits=25)
    await submit(sessions, acct)  # 10
    await assert_balance(sessions, acct.id, 15, 10)

    with pytest.raises(InsufficientCredits) as info:
        await submit(sessions, acct, request(provider="flux-pro", width=1024, height=1024))
    assert (info.value.required, info.value.available) == (17, 15)
    assert info.value.extensions == {
        "code": "INSUFFICIENT_CREDITS",
        "creditsRequired": 17,
        "creditsAvailable": 15,
    }
    await assert_balance(sessions, acct.id, 15, 10)
    # the job row was rolled back with the failed hold
    async with sessions() as s:
        count = await s.scalar(
            select(func.count()).select_from(Generation).where(_G.account_id == acct.id)
        )
    assert count == 1
    assert len(await entries(sessions, acct.id)) == 2


async def test_direct_reserve_short_raises(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=15)
    job_id = await insert_unreserved_job(sessions, acct.id, 16)
    async with sessions() as s:
        with pytest.raises(InsufficientCredits) as info:
            await ledger.reserve(s, acct.id, job_id, 16)
        await s.commit()
    assert (info.value.required, info.value.available) == (16, 15)
    await assert_balance(sessions, acct.id, 15, 0)
    assert [e.kind for e in await entries(sessions, acct.id)] == ["grant"]


async def test_reserve_with_no_credits(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=0)
    with pytest.raises(InsufficientCredits) as info:
        await submit(sessions, acct)
    assert (info.value.required, info.value.available) == (10, 0)
    await assert_balance(sessions, acct.id, 0, 0)


async def test_reserve_twice_for_one_job_keeps_cache_and_ledger_equal(
    sessions: Sessions, settings: Settings
) -> None:
    """``reserve:<job>`` is a movement key, so a job is held at most once. A second reserve
    for the same job must neither move credits without a ledger row nor leave the cached
    balance disagreeing with the ledger."""
    acct = await create_account(sessions, settings, credits=50)
    job_id = await insert_unreserved_job(sessions, acct.id, 10)
    async with sessions() as s:
        await ledger.reserve(s, acct.id, job_id, 10)
        await s.commit()
    async with sessions() as s:
        with contextlib.suppress(InsufficientCredits):  # refusing is also acceptable
            await ledger.reserve(s, acct.id, job_id, 10)
        await s.commit()
    cached, summed = await audit(sessions, acct.id)
    assert summed == ledger.Balance(40, 10)
    assert cached == summed
    assert len([e for e in await entries(sessions, acct.id) if e.kind == "reserve"]) == 1


# --- settle ----------------------------------------------------------------------


async def test_capture_spends_the_hold_once(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=40)
    job = await submit(sessions, acct)  # 10
    await assert_balance(sessions, acct.id, 30, 10)

    async with sessions() as s:
        assert await ledger.settle(s, acct.id, job.id, job.credit_cost, capture=True) is True
        await s.commit()
    await assert_balance(sessions, acct.id, 30, 0)

    async with sessions() as s:
        assert await ledger.settle(s, acct.id, job.id, job.credit_cost, capture=True) is False
        await s.commit()
    await assert_balance(sessions, acct.id, 30, 0)

    # releasing a captured job refunds nothing: capture and release share settle:<job>
    async with sessions() as s:
        assert await ledger.settle(s, acct.id, job.id, job.credit_cost, capture=False) is False
        await s.commit()
    await assert_balance(sessions, acct.id, 30, 0)

    settles = [e for e in await entries(sessions, acct.id) if e.generation_id == job.id]
    assert [(e.kind, e.available_delta, e.reserved_delta) for e in settles] == [
        ("reserve", -10, 10),
        ("capture", 0, -10),
    ]
    assert settles[1].movement_key == f"settle:{job.id}"


async def test_release_refunds_the_hold_once(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=40)
    job = await submit(sessions, acct, request(quality="high"))  # 13
    await assert_balance(sessions, acct.id, 27, 13)

    async with sessions() as s:
        assert await ledger.settle(s, acct.id, job.id, job.credit_cost, capture=False) is True
        await s.commit()
    await assert_balance(sessions, acct.id, 40, 0)

    async with sessions() as s:
        assert await ledger.settle(s, acct.id, job.id, job.credit_cost, capture=False) is False
        assert await ledger.settle(s, acct.id, job.id, job.credit_cost, capture=True) is False
        await s.commit()
    await assert_balance(sessions, acct.id, 40, 0)

    kinds = [e.kind for e in await entries(sessions, acct.id) if e.generation_id == job.id]
    assert kinds == ["reserve", "release"]


async def test_settle_is_per_job(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=100)
    a = await submit(sessions, acct)
    b = await submit(sessions, acct)
    async with sessions() as s:
        assert await ledger.settle(s, acct.id, a.id, a.credit_cost, capture=True)
        assert await ledger.settle(s, acct.id, b.id, b.credit_cost, capture=False)
        await s.commit()
    await assert_balance(sessions, acct.id, 90, 0)


async def test_concurrent_capture_and_release_settle_once(
    sessions: Sessions, settings: Settings
) -> None:
    """A retried worker and the sweeper racing to settle one job: exactly one wins."""
    acct = await create_account(sessions, settings, credits=100)
    job = await submit(sessions, acct, request(width=1024, height=1024))  # 15

    async def attempt(capture: bool) -> bool:
        async with sessions() as s:
            done = await ledger.settle(s, acct.id, job.id, job.credit_cost, capture=capture)
            await s.commit()
            return done

    results = await asyncio.gather(*(attempt(i % 2 == 0) for i in range(8)))
    assert results.count(True) == 1
    cached = await assert_consistent(sessions, acct.id)
    assert cached.reserved == 0
    assert cached.available in (85, 100)
    settles = [e for e in await entries(sessions, acct.id) if e.kind in ("capture", "release")]
    assert len(settles) == 1
    assert cached.available == (85 if settles[0].kind == "capture" else 100)


async def test_complete_then_fail_settles_once(sessions: Sessions, settings: Settings) -> None:
    """The lifecycle functions: a completed job captures; a late failure refunds nothing."""
    acct = await create_account(sessions, settings, credits=50)
    job = await submit(sessions, acct)
    async with unit_of_work_without_dispatch(sessions) as uow:
        running = await generations.begin_processing(uow, job.id)
        assert running is not None
        assert running.status == GenerationStatus.PROCESSING.value
    async with unit_of_work_without_dispatch(sessions) as uow:
        done = await generations.complete(uow, job.id, outputs=[output()], metadata={"a": 1})
        assert done is not None
        [event] = uow.events
        assert isinstance(event, GenerationUpdated)
        assert event.snapshot["status"] == GenerationStatus.COMPLETED.value
        assert event.snapshot["id"] == job.id
    await assert_balance(sessions, acct.id, 40, 0)
    async with unit_of_work_without_dispatch(sessions) as uow:
        assert await generations.fail(uow, job.id, "late failure") is None
        assert uow.events == []
    await assert_balance(sessions, acct.id, 40, 0)


async def test_fail_releases_then_complete_captures_nothing(
    sessions: Sessions, settings: Settings
) -> None:
    acct = await create_account(sessions, settings, credits=50)
    job = await submit(sessions, acct)
    async with unit_of_work_without_dispatch(sessions) as uow:
        assert await generations.begin_processing(uow, job.id) is not None
    async with unit_of_work_without_dispatch(sessions) as uow:
        failed = await generations.fail(uow, job.id, "out of memory")
        assert failed is not None
        assert failed.status == GenerationStatus.FAILED.value
    await assert_balance(sessions, acct.id, 50, 0)
    async with unit_of_work_without_dispatch(sessions) as uow:
        assert await generations.complete(uow, job.id, outputs=[output("k")], metadata={}) is None
    await assert_balance(sessions, acct.id, 50, 0)


# --- audit -----------------------------------------------------------------------


async def test_audit_after_a_sequence_of_movements(sessions: Sessions, settings: Settings) -> None:
    acct = await create_account(sessions, settings, credits=100)
    await assert_balance(sessions, acct.id, 100, 0)

    j1 = await submit(sessions, acct)  # 10
    j2 = await submit(sessions, acct, request(width=1024, height=1024))  # 15
    j3 = await submit(sessions, acct, request(provider="flux-pro", width=1024, height=1024))  # 17
    await assert_balance(sessions, acct.id, 58, 42)

    async with sessions() as s:
        await ledger.settle(s, acct.id, j1.id, j1.credit_cost, capture=True)
        await ledger.settle(s, acct.id, j2.id, j2.credit_cost, capture=False)
        assert await ledger.grant(s, acct.id, 7, reference=f"bonus-{uuid.uuid4()}", note=None)
        await s.commit()
    await assert_balance(sessions, acct.id, 58 + 15 + 7, 17)

    big = request(width=2048, height=2048, quality="high")
    assert big.quote.credits == 38
    await submit(sessions, acct, big)
    await submit(sessions, acct, big)
    await assert_balance(sessions, acct.id, 80 - 76, 17 + 76)
    with pytest.raises(InsufficientCredits) as info:
        await submit(sessions, acct, big)
    assert (info.value.required, info.value.available) == (38, 4)
    async with sessions() as s:
        await ledger.settle(s, acct.id, j3.id, j3.credit_cost, capture=True)
        await s.commit()

    cached, summed = await audit(sessions, acct.id)
    assert cached == summed
    assert cached == ledger.Balance(100 + 7 - 10 - 17 - 38 * 2, 38 * 2)

    rows = await entries(sessions, acct.id)
    assert sum(e.available_delta for e in rows) == cached.available
    assert sum(e.reserved_delta for e in rows) == cached.reserved
    by_kind = {
        k: sum(1 for e in rows if e.kind == k) for k in ("grant", "reserve", "capture", "release")
    }
    assert by_kind == {"grant": 2, "reserve": 5, "capture": 2, "release": 1}


# --- what the database itself enforces ----------------------------------------------


async def test_ledger_refuses_update(sessions: Sessions, account: TestAccount) -> None:
    async with sessions() as s:
        with pytest.raises(DBAPIError, match="append-only") as info:
            await s.execute(
                text("UPDATE ledger_entries SET available_delta = 1000000 WHERE account_id = :a"),
                {"a": account.id},
            )
        await s.rollback()
    assert info.value.orig.sqlstate == "P0001"  # type: ignore[union-attr]  # raise_exception
    async with sessions() as s:
        with pytest.raises(DBAPIError, match="append-only"):
            await s.execute(
                update(LedgerEntry).where(_L.account_id == account.id).values(note="rewritten")
            )
        await s.rollback()
    await assert_balance(sessions, account.id, 1000, 0)
    [entry] = await entries(sessions, account.id)
    assert entry.note == "initial credits"
    assert entry.available_delta == 1000


async def test_ledger_refuses_delete(sessions: Sessions, account: TestAccount) -> None:
    async with sessions() as s:
        with pytest.raises(DBAPIError, match="append-only"):
            await s.execute(
                text("DELETE FROM ledger_entries WHERE account_id = :a"), {"a": account.id}
            )
        await s.rollback()
    async with sessions() as s:
        with pytest.raises(DBAPIError, match="append-only"):
            await s.execute(delete(LedgerEntry).where(_L.account_id == account.id))
        await s.rollback()
    async with sessions() as s:
        [entry] = await repo.list_entries(s, account.id)
        await s.delete(entry)
        with pytest.raises(DBAPIError, match="append-only"):
            await s.flush()
        await s.rollback()
    assert len(await entries(sessions, account.id)) == 1
    await assert_balance(sessions, account.id, 1000, 0)


async def test_ledger_refuses_truncate(sessions: Sessions, account: TestAccount) -> None:
    """Append-only means no statement erases history; TRUNCATE skips row triggers, so it
    needs a statement-level trigger of its own. (Run in a transaction that is rolled back
    either way.)"""
    async with sessions() as s:
        try:
            with pytest.raises(DBAPIError, match="append-only"):
                await s.execute(text("TRUNCATE ledger_entries"))
        finally:
            await s.rollback()
    assert len(await entries(sessions, account.id)) == 1


async def test_ledger_insert_still_allowed(sessions: Sessions, account: TestAccount) -> None:
    async with sessions() as s:
        assert await ledger.grant(s, account.id, 1, reference=f"r-{uuid.uuid4()}", note=None)
        await s.commit()
    await assert_balance(sessions, account.id, 1001, 0)


async def test_movement_key_is_unique_in_the_database(
    sessions: Sessions, account: TestAccount
) -> None:
    async with sessions() as s:
        with pytest.raises(IntegrityError):
            await s.execute(
                text(
                    "INSERT INTO ledger_entries (account_id, kind, available_delta,"
                    " reserved_delta, movement_key, created_at)"
                    " VALUES (:a, 'grant', 1, 0, :k, now())"
                ),
                {"a": account.id, "k": f"grant:signup:{account.id}"},
            )
        await s.rollback()


@pytest.mark.parametrize(
    ("column", "constraint"),
    [
        ("credits_available", "ck_accounts_available_nonneg"),
        ("credits_reserved", "ck_accounts_reserved_nonneg"),
    ],
)
async def test_balance_cannot_go_negative(
    sessions: Sessions, account: TestAccount, column: str, constraint: str
) -> None:
    async with sessions() as s:
        with pytest.raises(IntegrityError, match=constraint):
            await s.execute(
                text(f"UPDATE accounts SET {column} = -1 WHERE id = :a"),
                {"a": account.id},
            )
        await s.rollback()
    # bypassing the conditional debit: the CHECK is the last line of defence
    deltas = (-1001, 0) if column == "credits_available" else (0, -1)
    async with sessions() as s:
        with pytest.raises(IntegrityError, match=constraint):
            await repo.adjust_balance(s, account.id, *deltas)
        await s.rollback()
    await assert_balance(sessions, account.id, 1000, 0)


async def test_hold_credits_refuses_more_than_available_and_records_once(
    sessions: Sessions, settings: Settings
) -> None:
    acct = await create_account(sessions, settings, credits=5)
    job = await insert_unreserved_job(sessions, acct.id, 3)
    async with sessions() as s:
        # Short: neither the debit nor the ledger row happens.
        assert await repo.hold_credits(s, acct.id, job, 6) == (False, False)
        assert await repo.hold_credits(s, acct.id, job, 3) == (True, True)
        # The job's hold exists: the debit happens, the row does not (the caller undoes it).
        assert await repo.hold_credits(s, acct.id, job, 1) == (True, False)
        assert await repo.hold_credits(s, acct.id, job, 2) == (False, False)
        entries = [e for e in await repo.list_entries(s, acct.id) if e.kind == "reserve"]
        assert [(e.available_delta, e.reserved_delta, e.movement_key) for e in entries] == [
            (-3, 3, f"reserve:{job}")
        ]
        await s.rollback()
    await assert_balance(sessions, acct.id, 5, 0)


# --- concurrency -----------------------------------------------------------------


async def test_concurrent_reserves_never_overdraw(sessions: Sessions, settings: Settings) -> None:
    """20 simultaneous 10-credit jobs on a 50-credit account: exactly 5 are accepted."""
    acct = await create_account(sessions, settings, credits=50)
    req = request()
    assert req.quote.credits == 10

    async def attempt() -> Generation:
        async with unit_of_work_without_dispatch(sessions) as uow:
            return await generations.submit(
                uow, account_id=acct.id, api_key_id=acct.api_key_id, request=t2i_job(req)
            )

    results = await asyncio.gather(*(attempt() for _ in range(20)), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, Generation)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    others = [r for r in results if not isinstance(r, Generation | InsufficientCredits)]
    assert others == []
    assert len(accepted) == 5
    assert len(refused) == 15
    assert all((e.required, e.available) == (10, 0) for e in refused)
    assert len({g.id for g in accepted}) == 5

    await assert_balance(sessions, acct.id, 0, 50)
    rows = await entries(sessions, acct.id)
    assert [e.kind for e in rows] == ["grant"] + ["reserve"] * 5
    assert {e.generation_id for e in rows if e.kind == "reserve"} == {g.id for g in accepted}
    async with sessions() as s:
        job_ids = set(
            (await s.execute(select(_G.id).where(_G.account_id == acct.id))).scalars().all()
        )
    assert job_ids == {g.id for g in accepted}


async def test_concurrent_direct_reserves_never_overdraw(
    sessions: Sessions, settings: Settings
) -> None:
    """The same race on ``ledger.reserve`` alone, each attempt in its own transaction."""
    acct = await create_account(sessions, settings, credits=50)
    job_ids = [await insert_unreserved_job(sessions, acct.id, 10) for _ in range(20)]

    async def attempt(job_id: str) -> bool:
        async with sessions() as s:
            try:
                await ledger.reserve(s, acct.id, job_id, 10)
            except InsufficientCredits as exc:
                assert (exc.required, exc.available) == (10, 0)
                await s.rollback()
                return False
            await s.commit()
            return True

    results = await asyncio.gather(*(attempt(j) for j in job_ids))
    assert results.count(True) == 5
    assert results.count(False) == 15
    await assert_balance(sessions, acct.id, 0, 50)
