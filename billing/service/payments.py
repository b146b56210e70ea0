"""Buying credits: Checkout Sessions out, verified Stripe events in.

Stripe events go through an inbox: the signature is verified over the raw body, the event
id is stored once (``ON CONFLICT DO NOTHING``), the webhook is acknowledged, and a job
applies the event and stamps ``handled_at``. A payment grants its pack's credits exactly
once, keyed by its Checkout Session in the ledger, however often Stripe delivers it.

Refunds: the credits of the refunded share of a payment are reversed, but never more than
the account still has available (the balance cannot go negative); the part already spent
is recorded on the payment as ``reversal_shortfall`` for the operator to settle.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.db import StripeEventReceived, UnitOfWork
from billing.errors import BadUserInput, Forbidden, NotFound
from billing.models import Payment, utcnow
from billing.packs import PackList
from billing.service import ledger
from billing.stripe_client import CheckoutSession, StripeGateway

SIGNATURE_TOLERANCE_S = 300


class InvalidSignature(BadUserInput):
    def __init__(self) -> None:
        super().__init__("Stripe-Signature", "Invalid or missing Stripe signature")


def verify(payload: bytes, signature: str | None, secrets: Sequence[str]) -> dict[str, Any]:
    """The event, if ``signature`` is Stripe's over this exact body with one of
    ``secrets`` (several during a secret rotation) and not older than the tolerance."""
    if not signature or not secrets:
        raise InvalidSignature()
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode(), signature, secret, SIGNATURE_TOLERANCE_S
            )
        except (stripe.SignatureVerificationError, UnicodeDecodeError):
            continue
        event = json.loads(payload)
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            raise InvalidSignature()
        return event
    raise InvalidSignature()


async def receive(uow: UnitOfWork, event: dict[str, Any]) -> bool:
    """Store a verified event once and queue it to be applied. True if it is new. A
    redelivery of an event not yet applied queues it again (its first job may be lost)."""
    inserted = await repo.insert_stripe_event(
        uow.session, event_id=event["id"], type=str(event.get("type", "")), payload=event
    )
    if inserted or not await repo.stripe_event_handled(uow.session, event["id"]):
        uow.emit(StripeEventReceived(event["id"]))
    return inserted


class NotYet(Exception):  # a signal to retry later, not an error
    """The event cannot be applied yet (a refund whose payment is not recorded yet)."""


async def apply(uow: UnitOfWork, event_id: str, packs: PackList) -> str:
    """Apply a stored event once (its row is locked; ``handled_at`` marks it done).

    Raises :class:`NotYet` when it must be tried again later; the event stays unhandled
    and the inbox sweeper queues it again.
    """
    event = await repo.lock_stripe_event(uow.session, event_id)
    if event is None or event.handled_at is not None:
        return "skipped"
    obj = (event.payload.get("data") or {}).get("object") or {}
    outcome = "ignored"
    if (
        event.type == "checkout.session.completed" and obj.get("payment_status") == "paid"
    ) or event.type == "checkout.session.async_payment_succeeded":
        outcome = await _fulfil(uow.session, obj, packs)
    elif event.type == "charge.refunded":
        outcome = await _reverse(uow.session, obj)
    event.handled_at = utcnow()
    event.error = None if not outcome.startswith("error") else outcome
    await repo.add(uow.session, event)
    return outcome


async def unapplied(session: AsyncSession, *, older_than: timedelta) -> list[str]:
    """Stored events still not applied after ``older_than``: their job was lost or is
    waiting on something (the inbox sweeper queues them again)."""
    return await repo.unhandled_stripe_events(session, utcnow() - older_than)


def requeue(uow: UnitOfWork, event_ids: Sequence[str]) -> None:
    for event_id in event_ids:
        uow.emit(StripeEventReceived(event_id))


async def _fulfil(session: AsyncSession, checkout: dict[str, Any], packs: PackList) -> str:
    session_id = str(checkout.get("id") or "")
    metadata = checkout.get("metadata") or {}
    try:
        account_id = uuid.UUID(str(checkout.get("client_reference_id")))
        pack = packs.get(str(metadata.get("pack")), "metadata.pack")
    except (ValueError, BadUserInput):
        return f"error: checkout session {session_id} names no account or pack"
    # The credits the session was created for (set by us, signed by Stripe) win over the
    # current table: a pack edited while a payment was pending does not change the sale.
    with contextlib.suppress(TypeError, ValueError):
        if int(metadata.get("credits", 0)) > 0:
            pack = replace(pack, credits=int(metadata["credits"]))
    if await repo.get_account(session, account_id) is None:
        return f"error: checkout session {session_id} names an unknown account"
    await repo.insert_payment(
        session,
        Payment(
            checkout_session_id=session_id,
            payment_intent=checkout.get("payment_intent"),
            account_id=account_id,
            pack=pack.id,
            credits=pack.credits,
            amount=int(checkout.get("amount_total") or pack.price),
            currency=str(checkout.get("currency") or pack.currency),
        ),
    )
    granted = await ledger.grant(
        session, account_id, pack.credits, reference=f"stripe:{session_id}",
        note=f"Stripe payment, {pack.name}",
    )  # fmt: skip
    return "granted" if granted else "already granted"


async def _reverse(session: AsyncSession, charge: dict[str, Any]) -> str:
    intent = charge.get("payment_intent")
    if not intent:
        return "error: refund without a payment intent"
    payment = await repo.lock_payment_by_intent(session, str(intent))
    if payment is None:
        # Its payment event may not be applied yet (events are applied in parallel).
        raise NotYet(f"payment {intent} not recorded yet")
    refunded = min(int(charge.get("amount_refunded") or 0), payment.amount)
    if refunded <= payment.refunded_amount:
        return "nothing new refunded"
    owed = payment.credits * refunded // payment.amount
    to_reverse = owed - payment.credits_reversed - payment.reversal_shortfall
    taken = await ledger.reverse(
        session, payment.account_id, to_reverse,
        reference=f"{payment.checkout_session_id}:{refunded}",
        note=f"refund of {refunded} {payment.currency}",
    )  # fmt: skip
    payment.refunded_amount = refunded
    payment.credits_reversed += taken
    payment.reversal_shortfall += to_reverse - taken
    await repo.add(session, payment)
    return f"reversed {taken}" + (
        f", {to_reverse - taken} already spent" if taken < to_reverse else ""
    )


async def create_checkout(
    gateway: StripeGateway | None,
    packs: PackList,
    *,
    account_id: uuid.UUID,
    pack_id: str,
    success_url: str,
    cancel_url: str,
    nonce: str,
) -> CheckoutSession:
    """A Checkout Session for a pack, for the GraphQL mutation and the dashboard alike.
    ``nonce`` identifies the buyer's attempt: retrying it creates one session."""
    if gateway is None:
        raise Forbidden("Purchases are off: this deployment has no Stripe account")
    pack = packs.get(pack_id)
    return await gateway.create_checkout(
        account_id=account_id,
        pack=pack,
        success_url=success_url,
        cancel_url=cancel_url,
        idempotency_key=f"checkout:{account_id}:{pack.id}:{nonce}",
    )


async def get_payment(session: AsyncSession, account_id: uuid.UUID, session_id: str) -> Payment:
    payment = await session.get(Payment, session_id)
    if payment is None or payment.account_id != account_id:
        raise NotFound("Payment")
    return payment
