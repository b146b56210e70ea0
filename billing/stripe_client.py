"""The one place outbound Stripe calls are made (the stripe SDK). Its API base is a
setting, so development and tests can point it at a local Stripe-compatible server."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import stripe
from stripe._base_address import BaseAddresses
from stripe.params.checkout._session_create_params import SessionCreateParams

from billing.errors import Conflict, ServiceUnavailable
from billing.packs import Pack

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


class StripeGateway:
    def __init__(self, api_key: str, api_base: str | None = None) -> None:
        addresses: BaseAddresses = {"api": api_base} if api_base else {}
        self._client = stripe.StripeClient(api_key, base_addresses=addresses, max_network_retries=2)

    async def create_checkout(
        self,
        *,
        account_id: uuid.UUID,
        pack: Pack,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> CheckoutSession:
        """A Checkout Session for one pack. Fulfilment reads ``client_reference_id`` (the
        account) and ``metadata.pack`` back from Stripe's event, never from the client.
        ``idempotency_key`` makes a retried call create one session, not two.

        Stripe unreachable or failing is :class:`ServiceUnavailable` (nothing was bought;
        try again), and the same key reused with other details :class:`Conflict`."""
        params: SessionCreateParams = {
            "mode": "payment",
            "client_reference_id": str(account_id),
            "metadata": {
                "pack": pack.id,
                "credits": str(pack.credits),
                "account_id": str(account_id),
            },
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": pack.currency,
                        "unit_amount": pack.price,
                        "product_data": {"name": f"Fluxgate: {pack.name}"},
                    },
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        try:
            session = await asyncio.to_thread(
                self._client.v1.checkout.sessions.create,
                params,
                {"idempotency_key": idempotency_key},
            )
        except stripe.IdempotencyError as exc:
            raise Conflict(
                "This checkout was already started with other details: start it again"
            ) from exc
        except stripe.StripeError as exc:
            # Includes a bad API key or a refused request: the operator's to fix, so it
            # is logged in full; the buyer is told to try again.
            log.error("Stripe did not create a Checkout Session: %r", exc)
            raise ServiceUnavailable(
                "Payments are unavailable right now; try again shortly", retry_after=30
            ) from exc
        return CheckoutSession(id=session.id, url=str(session.url))
