"""Buying credits: Checkout through the real stripe SDK against a local Stripe-compatible
server (recorded responses: the live Stripe API cannot be reached here), and signed
Stripe webhooks through the inbox, applied by the real webhook worker."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import repository as repo
from billing.models import Payment, StripeEvent
from gpu_worker.webhooks import build_webhook_worker
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, free_port
from tests.factories import TestAccount, audit, create_account, gql

SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"


class LocalStripe:
    """Answers POST /v1/checkout/sessions like Stripe does (a recorded response), keeps
    Stripe's idempotency semantics, and records what the SDK sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                key = self.headers.get("Idempotency-Key", "")
                stub.requests.append(
                    {"path": self.path, "form": form, "headers": dict(self.headers)}
                )
                if self.path != "/v1/checkout/sessions":
                    self.send_response(404)
                    self.end_headers()
                    return
                if key not in stub.sessions:
                    sid = f"cs_test_{uuid.uuid4().hex}"
                    stub.sessions[key] = {
                        "id": sid, "object": "checkout.session", "mode": form.get("mode"),
                        "client_reference_id": form.get("client_reference_id"),
                        "metadata": {"pack": form.get("metadata[pack]")},
                        "url": f"https://checkout.stripe.test/c/pay/{sid}",
                        "payment_status": "unpaid", "status": "open",
                    }  # fmt: skip
                payload = json.dumps(stub.sessions[key]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def local_stripe() -> Iterator[LocalStripe]:
    stub = LocalStripe()
    yield stub
    stub.close()


@dataclass(frozen=True)
class Shop:
    url: str
    settings: Settings


@pytest.fixture(scope="module")
def shop(settings: Settings, local_stripe: LocalStripe, database: str) -> Iterator[Shop]:
    port = free_port()
    own = settings.model_copy(
        update={
            "queue_name": f"fluxgate:shop:{uuid.uuid4().hex[:8]}",
            "public_url": f"http://127.0.0.1:{port}",
            "stripe_api_key": SecretStr("sk_test_fluxgate"),
            "stripe_api_base": local_stripe.url,
            # Two secrets: Stripe is rolling the endpoint's secret.
            "stripe_webhook_secret": SecretStr(f"{SECRET},{OLD_SECRET}"),
        }
    )
    with ThreadedServer(own, port) as server, ThreadedWorker(own, build=build_webhook_worker):
        yield Shop(url=server.url, settings=own)


def signed(event: dict[str, Any], secret: str = SECRET, at: int | None = None) -> tuple[bytes, str]:
    payload = json.dumps(event).encode()
    t = at if at is not None else int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, f"t={t},v1={mac}"


def checkout_completed(account: TestAccount, pack: str = "pack-500", paid: bool = True,
                       session_id: str | None = None, kind: str = "checkout.session.completed",
                       ) -> dict[str, Any]:  # fmt: skip
    sid = session_id or f"cs_test_{uuid.uuid4().hex}"
    return {
        "id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": kind,
        "data": {"object": {
            "id": sid, "object": "checkout.session", "client_reference_id": str(account.id),
            "metadata": {"pack": pack}, "payment_status": "paid" if paid else "unpaid",
            "payment_intent": f"pi_{sid}", "amount_total": 500, "currency": "usd",
        }},
    }  # fmt: skip


async def post_event(http: httpx.AsyncClient, payload: bytes, signature: str) -> httpx.Response:
    return await http.post(
        "/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )


async def wait_for_available(
    sessions: async_sessionmaker[AsyncSession], account: TestAccount, expected: int
) -> None:
    deadline = time.monotonic() + 20
    while (await audit(sessions, account.id))[0].available != expected:
        assert time.monotonic() < deadline, await audit(sessions, account.id)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # and nothing more arrives
    cached, summed = await audit(sessions, account.id)
    assert cached == summed and cached.available == expected


@pytest.fixture
async def http(shop: Shop) -> Any:
    async with httpx.AsyncClient(base_url=shop.url, timeout=30) as client:
        yield client


async def test_checkout_goes_through_the_sdk(
    http: httpx.AsyncClient, account: TestAccount, local_stripe: LocalStripe
) -> None:
    packs = await gql(http, "{ creditPacks { id credits price currency } }", key=account.api_key)
    assert {"id": "pack-500", "credits": 500, "price": 500, "currency": "usd"} in packs["data"][
        "creditPacks"
    ]
    mutation = 'mutation { createCheckoutSession(packId: "pack-500") { id url } }'
    first = await gql(http, mutation, key=account.api_key, headers={"Idempotency-Key": "buy-1"})
    again = await gql(http, mutation, key=account.api_key, headers={"Idempotency-Key": "buy-1"})
    session = first["data"]["createCheckoutSession"]
    assert session["url"].startswith("https://checkout.stripe.test/") and session["id"]
    assert again["data"]["createCheckoutSession"] == session  # one session per retried call
    keys = [r["headers"]["Idempotency-Key"] for r in local_stripe.requests[-2:]]
    assert keys[0] == keys[1] and str(account.id) in keys[0]
    request = local_stripe.requests[-1]
    form = request["form"]
    assert form["client_reference_id"] == str(account.id)
    assert form["metadata[pack]"] == "pack-500"
    assert form["line_items[0][price_data][unit_amount]"] == "500"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert request["headers"]["Authorization"] == "Bearer sk_test_fluxgate"
    bad = await gql(http, 'mutation { createCheckoutSession(packId: "gold") { id } }',
                    key=account.api_key)  # fmt: skip
    assert bad["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "packId"}


async def test_a_payment_grants_its_pack_exactly_once(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    buyer = await create_account(sessions, settings, credits=0)
    event = checkout_completed(buyer)
    payload, signature = signed(event)
    first = await post_event(http, payload, signature)
    assert first.status_code == 200 and first.json() == {"received": True, "duplicate": False}
    again = await post_event(http, payload, signature)
    assert again.json()["duplicate"] is True
    # The same payment in a second event (Stripe may resend under a new id), twice at once.
    other = {**event, "id": f"evt_{uuid.uuid4().hex}"}
    payload2, signature2 = signed(other, secret=OLD_SECRET)  # the rolled secret still verifies
    responses = await asyncio.gather(*(post_event(http, payload2, signature2) for _ in range(2)))
    assert all(r.status_code == 200 for r in responses)
    await wait_for_available(sessions, buyer, 500)
    async with sessions() as s:
        entries = [e for e in await repo.list_entries(s, buyer.id) if e.kind == "grant"]
        stored = (await s.execute(select(StripeEvent).where(
            StripeEvent.id.in_([event["id"], other["id"]])))).scalars().all()  # type: ignore[attr-defined]  # fmt: skip
    assert (
        len(entries) == 1
        and entries[0].movement_key == f"grant:stripe:{event['data']['object']['id']}"
    )
    assert {e.id for e in stored} == {event["id"], other["id"]}
    assert all(e.handled_at is not None for e in stored)


async def test_bad_or_stale_signatures_are_refused(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    buyer = await create_account(sessions, settings, credits=0)
    payload, _ = signed(checkout_completed(buyer))
    wrong_secret = signed(checkout_completed(buyer), "whsec_other")[1]
    stale = signed(checkout_completed(buyer), at=int(time.time()) - 3600)[1]
    for signature in (None, "t=1,v1=deadbeef", wrong_secret, stale):
        headers = {"Stripe-Signature": signature} if signature else {}
        response = await http.post("/webhooks/stripe", content=payload, headers=headers)
        assert response.status_code == 400
        assert response.json()["errors"][0]["extensions"]["field"] == "Stripe-Signature"
    stale_payload, stale_sig = signed(checkout_completed(buyer), at=int(time.time()) - 3600)
    assert (await post_event(http, stale_payload, stale_sig)).status_code == 400
    await asyncio.sleep(0.5)
    assert (await audit(sessions, buyer.id))[0].available == 0
    async with sessions() as s:  # nothing was even stored
        stored = await s.execute(
            select(StripeEvent).where(
                StripeEvent.payload["data"]["object"]["client_reference_id"].astext == str(buyer.id)
            )
        )
        assert stored.scalars().all() == []


async def test_async_payments_unknown_events_and_refunds(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    buyer = await create_account(sessions, settings, credits=0)
    pending = checkout_completed(buyer, paid=False)
    await post_event(http, *signed(pending))
    unknown = {"id": f"evt_{uuid.uuid4().hex}", "type": "customer.created",
               "data": {"object": {"id": "cus_1"}}}  # fmt: skip
    assert (await post_event(http, *signed(unknown))).status_code == 200
    await asyncio.sleep(0.5)
    assert (await audit(sessions, buyer.id))[0].available == 0  # not paid yet
    session_id = pending["data"]["object"]["id"]
    succeeded = checkout_completed(buyer, session_id=session_id,
                                   kind="checkout.session.async_payment_succeeded")  # fmt: skip
    await post_event(http, *signed(succeeded))
    await wait_for_available(sessions, buyer, 500)

    # Spend 37 of them (held by a queued job: no worker serves this queue), then refund all.
    job = await http.post(
        "/v1/text_to_image",
        json={"service": "flux-pro", "prompt": "p", "width": 2048, "height": 2048},
        headers={"X-API-Key": buyer.api_key},
    )
    assert job.status_code == 200
    await wait_for_available(sessions, buyer, 463)

    def refunded(amount: int) -> dict[str, Any]:
        charge = {"id": "ch_1", "payment_intent": f"pi_{session_id}", "amount_refunded": amount}
        return {"id": f"evt_{uuid.uuid4().hex}", "type": "charge.refunded",
                "data": {"object": charge}}  # fmt: skip

    await post_event(http, *signed(refunded(250)))
    await wait_for_available(sessions, buyer, 213)  # half the pack reversed
    await post_event(http, *signed(refunded(500)))
    await wait_for_available(sessions, buyer, 0)  # the other half, but only what is left
    async with sessions() as s:
        payment = await s.get(Payment, session_id)
        entries = [e.kind for e in await repo.list_entries(s, buyer.id)]
    assert payment is not None
    assert (payment.refunded_amount, payment.credits_reversed, payment.reversal_shortfall) == (
        500, 463, 37,
    )  # fmt: skip
    assert entries.count("reversal") == 2
    cached, _ = await audit(sessions, buyer.id)
    assert (cached.available, cached.reserved) == (0, 37)  # never negative


async def test_purchases_are_off_without_stripe(
    client: httpx.AsyncClient, account: TestAccount
) -> None:
    packs = await gql(client, "{ creditPacks { id } }", key=account.api_key)
    assert packs["data"]["creditPacks"] == []
    refused = await gql(client, 'mutation { createCheckoutSession(packId: "pack-500") { id } }',
                        key=account.api_key)  # fmt: skip
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    payload, signature = signed(checkout_completed(account))
    response = await client.post(
        "/webhooks/stripe", content=payload, headers={"Stripe-Signature": signature}
    )
    assert response.status_code == 400


async def test_a_refund_that_arrives_before_its_payment_waits_for_it(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    buyer = await create_account(sessions, settings, credits=0)
    paid = checkout_completed(buyer)
    session_id = paid["data"]["object"]["id"]
    refund = {"id": f"evt_{uuid.uuid4().hex}", "type": "charge.refunded",
              "data": {"object": {"id": "ch_2", "payment_intent": f"pi_{session_id}",
                                  "amount_refunded": 100}}}  # fmt: skip
    await post_event(http, *signed(refund))
    await asyncio.sleep(1)
    await post_event(http, *signed(paid))
    # The payment is applied, then the refund on its retry: 500 - 100 credits.
    deadline = time.monotonic() + 30
    while (await audit(sessions, buyer.id))[0].available != 400:
        assert time.monotonic() < deadline, await audit(sessions, buyer.id)
        await asyncio.sleep(0.2)


async def test_the_inbox_sweeper_applies_events_whose_job_was_lost(
    shop: Shop, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from billing.models import utcnow
    from gpu_worker.webhooks import requeue_stripe_inbox, shutdown, startup
    from runtime import queue

    buyer = await create_account(sessions, settings, credits=0)
    event = checkout_completed(buyer)
    async with sessions() as s:  # stored by the endpoint, but its job never ran
        await repo.insert_stripe_event(s, event_id=event["id"], type=event["type"], payload=event)
        await s.execute(
            update(StripeEvent)
            .where(StripeEvent.id == event["id"])
            .values(received_at=utcnow() - timedelta(minutes=5))
        )
        await s.commit()
    own = shop.settings
    pool = await queue.connect(own.redis_url, own.queue_name)
    ctx: dict[str, Any] = {"settings": own, "redis": pool}
    await startup(ctx)
    try:
        assert event["id"] in await requeue_stripe_inbox(ctx)
    finally:
        await shutdown(ctx)
        await pool.aclose(close_connection_pool=True)
    await wait_for_available(sessions, buyer, 500)
