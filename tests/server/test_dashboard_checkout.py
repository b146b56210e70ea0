"""Dashboard checkout goes through the checkout service (issue 9, item 14): one form
submitted twice is one Checkout Session, the CSRF token never reaches Stripe, and an
unknown pack or a missing nonce is an error on the page (4xx), not a 500.

Real uvicorn and Postgres, the real stripe SDK; Stripe itself is the local
Stripe-compatible server of test_stripe.py (the live Stripe API cannot be reached
here), which keeps Stripe's idempotency semantics."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runtime.settings import Settings
from tests.conftest import ThreadedServer, free_port
from tests.factories import create_account
from tests.server.test_stripe import LocalStripe


@pytest.fixture(scope="module")
def stripe_stub() -> Iterator[LocalStripe]:
    stub = LocalStripe()
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def shop(settings: Settings, stripe_stub: LocalStripe, database: str) -> Iterator[str]:
    port = free_port()
    own = settings.model_copy(
        update={
            "queue_name": f"fluxgate:checkout:{uuid.uuid4().hex[:8]}",
            "public_url": f"http://127.0.0.1:{port}",
            "stripe_api_key": SecretStr("sk_test_checkout"),
            "stripe_api_base": stripe_stub.url,
            "stripe_webhook_secret": SecretStr("whsec_test_checkout"),
        }
    )
    with ThreadedServer(own, port) as server:
        yield server.url


def field(html: str, name: str, pack: str | None = None) -> str:
    if pack is not None:  # the form of that pack's row
        html = html[html.index(f'name="pack_id" value="{pack}"') :]
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found is not None, (name, html[:2000])
    return found[1]


async def signed_in(client: httpx.AsyncClient, api_key: str) -> None:
    login = await client.get("/dashboard/login")
    response = await client.post(
        "/dashboard/login", data={"csrf_token": field(login.text, "csrf_token"), "api_key": api_key}
    )
    assert response.status_code == 303


async def test_a_double_submit_is_one_checkout_session(
    shop: str, stripe_stub: LocalStripe, sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:  # fmt: skip
    buyer = await create_account(sessions, settings, credits=0)
    async with httpx.AsyncClient(base_url=shop, timeout=30) as client:
        await signed_in(client, buyer.api_key)
        page = await client.get("/dashboard/billing")
        csrf, nonce = field(page.text, "csrf_token"), field(page.text, "nonce", "pack-500")
        form = {"csrf_token": csrf, "pack_id": "pack-500", "nonce": nonce}
        before = len(stripe_stub.requests)
        # A double click: the same form, twice at once.
        first, second = await asyncio.gather(
            client.post("/dashboard/billing/checkout", data=form),
            client.post("/dashboard/billing/checkout", data=form),
        )
        assert first.status_code == second.status_code == 303
        url = first.headers["location"]
        assert url.startswith("https://checkout.stripe.test/c/pay/cs_test_")
        assert second.headers["location"] == url  # one Checkout Session
        sent = stripe_stub.requests[before:]
        keys = {r["headers"]["Idempotency-Key"] for r in sent}
        assert len(keys) == 1
        [key] = keys
        assert key.startswith(f"checkout:{buyer.id}:pack-500:") and csrf not in key
        assert sent[0]["form"]["client_reference_id"] == str(buyer.id)

        # The page rendered again is a new attempt: a new session.
        again = await client.get("/dashboard/billing")
        other = {**form, "nonce": field(again.text, "nonce", "pack-500")}
        third = await client.post("/dashboard/billing/checkout", data=other)
        assert third.status_code == 303 and third.headers["location"] != url


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"pack_id": "gold", "nonce": "n1"}, 400, "unknown pack"),
        ({"pack_id": "a\x00b", "nonce": "n1"}, 400, "unknown pack"),
        ({"pack_id": "pack-500"}, 400, "nonce"),
        ({"pack_id": "pack-500", "nonce": ""}, 400, "nonce"),
    ],
)
async def test_checkout_errors_are_shown_on_the_page(
    shop: str, stripe_stub: LocalStripe, sessions: async_sessionmaker[AsyncSession],
    settings: Settings, form: dict[str, str], status: int, message: str,
) -> None:  # fmt: skip
    buyer = await create_account(sessions, settings, credits=0)
    async with httpx.AsyncClient(base_url=shop, timeout=30) as client:
        await signed_in(client, buyer.api_key)
        page = await client.get("/dashboard/billing")
        before = len(stripe_stub.requests)
        response = await client.post(
            "/dashboard/billing/checkout",
            data={"csrf_token": field(page.text, "csrf_token"), **form},
        )
        assert response.status_code == status
        assert response.headers["content-type"].startswith("text/html")
        assert 'id="checkout-error"' in response.text and message in response.text
        assert response.headers["x-frame-options"] == "DENY"
        assert len(stripe_stub.requests) == before  # Stripe was never called


async def test_stripe_unreachable_is_a_clear_503_on_both_surfaces(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], database: str
) -> None:
    port = free_port()
    own = settings.model_copy(
        update={
            "queue_name": f"fluxgate:checkout:{uuid.uuid4().hex[:8]}",
            "public_url": f"http://127.0.0.1:{port}",
            "stripe_api_key": SecretStr("sk_test_checkout"),
            "stripe_api_base": f"http://127.0.0.1:{free_port()}",  # nothing listens there
            "stripe_webhook_secret": SecretStr("whsec_test_checkout"),
        }
    )
    buyer = await create_account(sessions, settings, credits=0)
    with ThreadedServer(own, port) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            answer = await client.post(
                "/graphql", headers=buyer.bearer,
                json={"query": 'mutation { createCheckoutSession(packId: "pack-500") { id } }'},
            )  # fmt: skip
            assert answer.status_code == 503
            [error] = answer.json()["errors"]
            assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
            await signed_in(client, buyer.api_key)
            page = await client.get("/dashboard/billing")
            response = await client.post(
                "/dashboard/billing/checkout",
                data={"csrf_token": field(page.text, "csrf_token"), "pack_id": "pack-500",
                      "nonce": field(page.text, "nonce", "pack-500")},
            )  # fmt: skip
            assert response.status_code == 503
            assert 'id="checkout-error"' in response.text and "try again" in response.text
