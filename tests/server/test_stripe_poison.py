"""Poison Stripe events (issue 9, item 15): correctly signed but malformed events are
dead-lettered with their error instead of crashing the webhook worker forever; a failing
event is retried a bounded number of times, then dead-lettered, listed by the CLI and
revived by it; money beyond int32 fits; signed non-JSON bodies and future-dated
signatures are refused with a JSON 400.

Real uvicorn, Postgres, Redis and the real webhook worker; events are signed the way
Stripe signs them (the live Stripe API cannot send to this machine). The "failing
every time" case is a Postgres trigger on this test's own payment row: a real
database error, injected for one row only."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import repository as repo
from billing.models import Payment, StripeEvent, utcnow
from gpu_worker.webhooks import build_webhook_worker, requeue_stripe_inbox, shutdown, startup
from runtime import queue
from runtime.settings import ROOT, Settings
from tests.conftest import ThreadedServer, ThreadedWorker, free_port
from tests.factories import TestAccount, audit, create_account
from tests.server.test_stripe import SECRET, checkout_completed, post_event, signed

MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def poison_settings(settings: Settings, database: str) -> Iterator[Settings]:
    port = free_port()
    own = settings.model_copy(
        update={
            "queue_name": f"fluxgate:poison:{uuid.uuid4().hex[:8]}",
            "public_url": f"http://127.0.0.1:{port}",
            "stripe_webhook_secret": SecretStr(SECRET),
            "stripe_event_max_attempts": MAX_ATTEMPTS,
            "stripe_event_retry_s": 0.2,
        }
    )
    with ThreadedServer(own, port), ThreadedWorker(own, build=build_webhook_worker):
        yield own


@pytest.fixture
async def http(poison_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=poison_settings.public_url, timeout=30) as client:
        yield client


async def stored(sessions: async_sessionmaker[AsyncSession], event_id: str) -> StripeEvent:
    async with sessions() as s:
        event = await s.get(StripeEvent, event_id)
    assert event is not None
    return event


async def wait_until_settled(
    sessions: async_sessionmaker[AsyncSession], event_id: str
) -> StripeEvent:
    """The event once it is applied or dead-lettered (polled, generous deadline)."""
    deadline = time.monotonic() + 30
    while True:
        event = await stored(sessions, event_id)
        if event.handled_at is not None or event.dead_at is not None:
            return event
        assert time.monotonic() < deadline, (event.attempts, event.error)
        await asyncio.sleep(0.05)


async def sweep(own: Settings) -> list[str]:
    """Run the inbox sweeper's cron job once, with the events made old enough for it."""
    pool = await queue.connect(own.redis_url, own.queue_name)
    ctx: dict[str, Any] = {"settings": own, "redis": pool}
    await startup(ctx)
    try:
        return await requeue_stripe_inbox(ctx)
    finally:
        await shutdown(ctx)
        await pool.aclose(close_connection_pool=True)


async def age(sessions: async_sessionmaker[AsyncSession], *event_ids: str) -> None:
    async with sessions() as s:
        await s.execute(
            update(StripeEvent)
            .where(StripeEvent.id.in_(event_ids))  # type: ignore[attr-defined]
            .values(received_at=utcnow() - timedelta(hours=1))
        )
        await s.commit()


def malformed_events(buyer: TestAccount) -> dict[str, dict[str, Any]]:
    def variant(**changes: Any) -> dict[str, Any]:
        event = checkout_completed(buyer)
        event["data"]["object"].update(changes)
        return event

    not_an_object = checkout_completed(buyer)
    not_an_object["data"] = "not an object"
    object_a_list = checkout_completed(buyer)
    object_a_list["data"]["object"] = [1, 2]
    return {
        "data": not_an_object,
        "data.object": object_a_list,
        "metadata": variant(metadata="pack-500"),
        "amount_total": variant(amount_total="abc"),
        "client_reference_id": variant(client_reference_id={"id": str(buyer.id)}),
        "credits": variant(metadata={"pack": "pack-500", "credits": str(10**13)}),
        "refund amount_refunded": {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "charge.refunded",
            "data": {"object": {"payment_intent": "pi_x", "amount_refunded": "lots"}},
        },
    }


async def test_malformed_events_are_dead_lettered_at_once_with_their_error(
    http: httpx.AsyncClient, poison_settings: Settings,
    sessions: async_sessionmaker[AsyncSession], settings: Settings,
) -> None:  # fmt: skip
    buyer = await create_account(sessions, settings, credits=0)
    events = malformed_events(buyer)
    for event in events.values():
        response = await post_event(http, *signed(event))
        assert response.status_code == 200, response.text  # acknowledged: it is Stripe's
    for where, event in events.items():
        row = await wait_until_settled(sessions, event["id"])
        assert row.handled_at is None and row.dead_at is not None, where
        assert row.attempts == 1, where
        assert row.error is not None and row.error.startswith("malformed event"), row.error
        assert where.split()[-1].split(".")[0] in row.error, (where, row.error)
    # Dead letters are never queued again, by the sweeper or a redelivery.
    await age(sessions, *(e["id"] for e in events.values()))
    swept = await sweep(poison_settings)
    assert not {e["id"] for e in events.values()} & set(swept)
    again = await post_event(http, *signed(events["data"]))
    assert again.json() == {"received": True, "duplicate": True}
    assert (await stored(sessions, events["data"]["id"])).attempts == 1
    cached, summed = await audit(sessions, buyer.id)
    assert cached == summed and cached.available == 0


async def test_money_beyond_int32_is_granted(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    buyer = await create_account(sessions, settings, credits=0)
    event = checkout_completed(buyer)
    big = 5_000_000_000  # > 2**31
    event["data"]["object"]["metadata"] = {"pack": "pack-500", "credits": str(big)}
    event["data"]["object"]["amount_total"] = big
    await post_event(http, *signed(event))
    row = await wait_until_settled(sessions, event["id"])
    assert row.handled_at is not None and row.error is None
    async with sessions() as s:
        payment = await s.get(Payment, event["data"]["object"]["id"])
    assert payment is not None and (payment.credits, payment.amount) == (big, big)
    cached, summed = await audit(sessions, buyer.id)
    assert cached == summed and cached.available == big


def fluxgate(own: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLUXGATE_DATABASE_URL": own.database_url,
        "FLUXGATE_REDIS_URL": own.redis_url,
        "FLUXGATE_QUEUE_NAME": own.queue_name,
        "FLUXGATE_SECRET_KEY": own.secret_key.get_secret_value(),
    }
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_a_failing_event_is_retried_a_few_times_then_dead_lettered_and_revived(
    http: httpx.AsyncClient, poison_settings: Settings,
    sessions: async_sessionmaker[AsyncSession], settings: Settings,
) -> None:  # fmt: skip
    buyer = await create_account(sessions, settings, credits=0)
    event = checkout_completed(buyer)
    session_id = event["data"]["object"]["id"]
    trigger = f"poison_{uuid.uuid4().hex[:12]}"
    async with sessions() as s:
        await s.execute(text(
            "CREATE OR REPLACE FUNCTION fluxgate_test_injected_failure() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
        ))  # fmt: skip
        await s.execute(text(
            f"CREATE TRIGGER {trigger} BEFORE INSERT ON payments FOR EACH ROW"
            f" WHEN (NEW.checkout_session_id = '{session_id}')"
            " EXECUTE FUNCTION fluxgate_test_injected_failure()"
        ))  # fmt: skip
        await s.commit()
    try:
        await post_event(http, *signed(event))
        row = await wait_until_settled(sessions, event["id"])
        assert row.handled_at is None and row.dead_at is not None
        assert row.attempts == MAX_ATTEMPTS
        assert row.error is not None and "injected failure" in row.error
        assert (await audit(sessions, buyer.id))[0].available == 0

        listed = fluxgate(poison_settings, "stripe", "dead-letters", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        mine = next(r for r in rows if r["id"] == event["id"])
        assert mine["attempts"] == MAX_ATTEMPTS and "injected failure" in mine["error"]
    finally:
        async with sessions() as s:
            await s.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON payments"))
            await s.commit()
    # The cause is fixed: the operator revives it, and it is applied.
    revived = fluxgate(poison_settings, "stripe", "retry", event["id"])
    assert revived.returncode == 0, revived.stderr
    row = await wait_until_settled(sessions, event["id"])
    assert row.handled_at is not None and row.dead_at is None
    cached, summed = await audit(sessions, buyer.id)
    assert cached == summed and cached.available == 500
    unknown = fluxgate(poison_settings, "stripe", "retry", "evt_nope")
    assert unknown.returncode == 1 and "not found" in unknown.stderr


async def test_signed_bodies_that_are_not_events_are_refused_with_json(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    marker = uuid.uuid4().hex
    bodies = [
        b"not json", b"", b"null", b"42", b'"x"', b"[1, 2]", b"[" * 100_000,
        b'{"type": "x"}', b'{"id": 5}', b'{"id": "evt_' + b"x" * 300 + b'"}',
        b'{"id": "evt_a", "type": "' + b"t" * 200 + b'"}',
        b'{"id": "evt_%s", "data": "a\\u0000b"}' % marker.encode(),
        b'{"id": "evt_%s", "data": "\\ud800"}' % marker.encode(),
        b'{"id": "evt_%s", "n": 1e999}' % marker.encode(),
        b"\xff\xfe{}",  # not UTF-8
    ]  # fmt: skip
    for body in bodies:
        stamp = int(time.time())
        mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        response = await post_event(http, body, f"t={stamp},v1={mac}")
        assert response.status_code == 400, (body[:40], response.text)
        assert response.headers["content-type"] == "application/json"
        [error] = response.json()["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", body[:40]
        # Said as what it is: correctly signed, but not an event.
        assert error["message"].startswith("Not a Stripe event"), (body[:40], error)
    async with sessions() as s:
        table = StripeEvent.__table__.c  # type: ignore[attr-defined]
        found = await s.execute(select(table.id).where(table.id.like(f"%{marker}%")))
        assert found.all() == []


async def test_signatures_from_the_future_are_refused(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    buyer = await create_account(sessions, settings, credits=0)
    future = checkout_completed(buyer)
    response = await post_event(http, *signed(future, at=int(time.time()) + 3600))
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["field"] == "Stripe-Signature"
    async with sessions() as s:
        assert await s.get(StripeEvent, future["id"]) is None
    skewed = checkout_completed(buyer)  # a clock a minute ahead is within the tolerance
    assert (await post_event(http, *signed(skewed, at=int(time.time()) + 60))).status_code == 200


async def test_a_refund_waits_for_its_payment_but_not_forever(
    http: httpx.AsyncClient, poison_settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    def refund() -> dict[str, Any]:
        charge = {"id": "ch_w", "payment_intent": f"pi_{uuid.uuid4().hex}", "amount_refunded": 5}
        return {"id": f"evt_{uuid.uuid4().hex}", "type": "charge.refunded",
                "data": {"object": charge}}  # fmt: skip

    fresh, stale = refund(), refund()
    await post_event(http, *signed(fresh))
    deadline = time.monotonic() + 30
    while not ((row := await stored(sessions, fresh["id"])).error or "").startswith("waiting"):
        assert time.monotonic() < deadline, row.error
        await asyncio.sleep(0.05)
    assert row.dead_at is None and row.attempts == 0  # waiting is not failing

    # One whose payment never came within three days is given up on.
    async with sessions() as s:
        await repo.insert_stripe_event(s, event_id=stale["id"], type=stale["type"], payload=stale)
        await s.execute(
            update(StripeEvent)
            .where(StripeEvent.id == stale["id"])
            .values(received_at=utcnow() - timedelta(days=4))
        )
        await s.commit()
    assert stale["id"] in await sweep(poison_settings)
    row = await wait_until_settled(sessions, stale["id"])
    assert row.dead_at is not None and row.error is not None
    assert row.error.startswith("gave up waiting")
    assert (await stored(sessions, fresh["id"])).dead_at is None
