"""Buying credits: Checkout Sessions out, verified Stripe events in.

Stripe events go through an inbox: the signature is verified over the raw body, the event
id is stored once (``ON CONFLICT DO NOTHING``), the webhook is acknowledged, and a job
applies the event and stamps ``handled_at``. A payment grants its pack's credits exactly
once, keyed by its Checkout Session in the ledger, however often Stripe delivers it.

Refunds: the credits of the refunded share of a payment are reversed, but never more than
the account still has available (the balance cannot go negative); the part already spent
is recorded on the payment as ``reversal_shortfall`` for the operator to settle.

Poison events: what cannot be applied is never retried forever. The parts of an event
that are used are validated (pydantic) before anything is written: a malformed event is
dead-lettered at once, its error stored on its row. Any other failure is counted on the
row with its error and retried until ``max_attempts``, then dead-lettered too. Dead
letters are listed by ``fluxgate stripe dead-letters`` and revived, once the cause is
fixed, by ``fluxgate stripe retry``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import stripe
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.db import StripeEventReceived, UnitOfWork
from billing.errors import BadUserInput, Forbidden, NotFound
from billing.models import Payment, StripeEvent, utcnow
from billing.packs import PackList
from billing.service import ledger
from billing.stripe_client import CheckoutSession, StripeGateway
from billing.text import unstorable

SIGNATURE_TOLERANCE_S = 300
# Money beyond this is not a real payment: such an event is malformed (the columns are
# bigint, so nothing in range can overflow them).
MAX_AMOUNT = 10**12
MAX_CREDITS = 10**12
# A refund waits for its payment's event at most this long (Stripe stops redelivering a
# failed event after three days): then it is a dead letter for an operator.
MAX_WAIT = timedelta(days=3)


class InvalidSignature(BadUserInput):
    def __init__(self) -> None:
        super().__init__("Stripe-Signature", "Invalid or missing Stripe signature")


class InvalidPayload(BadUserInput):
    def __init__(self, reason: str) -> None:
        super().__init__("body", f"Not a Stripe event: {reason}")


class _Envelope(BaseModel):
    """What the inbox needs of an event to store it."""

    id: StrictStr = Field(min_length=1, max_length=255)
    type: StrictStr = Field(default="", max_length=100)


def _signed_at(signature: str) -> list[int]:
    stamps = []
    for item in signature.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                stamps.append(int(value))
            except ValueError:
                raise InvalidSignature() from None
    return stamps


def _storable(value: Any, depth: int = 0) -> None:
    """Refuse what Postgres' jsonb cannot hold: NUL characters, lone surrogates, and
    non-finite numbers (json.loads turns 1e999 into inf)."""
    if depth > 64:
        raise InvalidPayload("nested too deeply")
    if isinstance(value, str):
        if unstorable(value):
            raise InvalidPayload("a string holds a NUL character or a lone surrogate")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPayload("a number is out of range")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key, depth + 1)
            _storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable(item, depth + 1)


def verify(payload: bytes, signature: str | None, secrets: Sequence[str]) -> dict[str, Any]:
    """The event, if ``signature`` is Stripe's over this exact body with one of
    ``secrets`` (several during a secret rotation), signed neither longer ago nor further
    ahead than the tolerance (the SDK only checks the past), and a JSON object the inbox
    can store (:class:`InvalidPayload` otherwise; 400 either way)."""
    if not signature or not secrets:
        raise InvalidSignature()
    if any(t > time.time() + SIGNATURE_TOLERANCE_S for t in _signed_at(signature)):
        raise InvalidSignature()
    try:
        # Stripe sends UTF-8 JSON; the SDK verifies text. Nothing else can be an event,
        # signed or not, so saying so first tells a caller nothing about the secret.
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayload("the body is not UTF-8") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, signature, secret, SIGNATURE_TOLERANCE_S)
        except stripe.SignatureVerificationError:
            continue
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):
            raise InvalidPayload("the body is not JSON") from None
        if not isinstance(event, dict):
            raise InvalidPayload("the body is not a JSON object")
        try:
            _Envelope.model_validate(event)
        except ValidationError:
            raise InvalidPayload("its id or type is missing or malformed") from None
        _storable(event)
        return event
    raise InvalidSignature()


async def receive(uow: UnitOfWork, event: dict[str, Any]) -> bool:
    """Store a verified event once and queue it to be applied. True if it is new. A
    redelivery of an event neither applied nor dead-lettered queues it again (its first
    job may be lost)."""
    inserted = await repo.insert_stripe_event(
        uow.session, event_id=event["id"], type=str(event.get("type", "")), payload=event
    )
    if inserted or await repo.stripe_event_pending(uow.session, event["id"]):
        uow.emit(StripeEventReceived(event["id"]))
    return inserted


class NotYet(Exception):  # a signal to retry later, not an error
    """The event cannot be applied yet (a refund whose payment is not recorded yet)."""


class _Data(BaseModel):
    object: dict[str, Any]


class _Event(BaseModel):
    """The parts of a stored event that are used; validated before anything is written."""

    type: StrictStr
    data: _Data


class _CheckoutSession(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictStr = Field(min_length=1, max_length=255)
    client_reference_id: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    payment_status: StrictStr | None = None
    payment_intent: StrictStr | None = Field(default=None, max_length=255)
    amount_total: StrictInt | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    currency: StrictStr | None = Field(default=None, max_length=8)


class _Charge(BaseModel):
    model_config = ConfigDict(extra="ignore")

    payment_intent: StrictStr | None = Field(default=None, max_length=255)
    amount_refunded: StrictInt = Field(default=0, ge=0, le=MAX_AMOUNT)


class _Metadata(BaseModel):
    """What Checkout Sessions are created with (``stripe_client.py``)."""

    model_config = ConfigDict(extra="ignore")

    pack: StrictStr | None = None
    credits: int | None = Field(default=None, gt=0, le=MAX_CREDITS)


def _malformed(exc: ValidationError) -> str:
    where = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors()[:5]
    )
    return f"malformed event: {where}"


async def apply(uow: UnitOfWork, event_id: str, packs: PackList) -> str:
    """Apply a stored event once (its row is locked; ``handled_at`` marks it done).

    A malformed event (its used parts fail validation) is dead-lettered at once, with its
    error on the row. Raises :class:`NotYet` when it must be tried again later; the event
    stays unhandled and the inbox sweeper queues it again, for up to ``MAX_WAIT``.
    """
    event = await repo.lock_stripe_event(uow.session, event_id)
    if event is None or event.handled_at is not None or event.dead_at is not None:
        return "skipped"
    applies = (
        event.type == "checkout.session.completed"
        or event.type == "checkout.session.async_payment_succeeded"
        or event.type == "charge.refunded"
    )
    if not applies:
        outcome = "ignored"
    else:
        try:
            obj = _Event.model_validate(event.payload).data.object
            if event.type == "charge.refunded":
                try:
                    outcome = await _reverse(uow.session, _Charge.model_validate(obj))
                except NotYet as exc:
                    if utcnow() - event.received_at < MAX_WAIT:
                        raise
                    error = f"gave up waiting: {exc}"
                    await repo.record_stripe_failure(
                        uow.session, event_id, error, max_attempts=1, give_up=True
                    )
                    return f"dead-lettered: {error}"
            else:
                checkout = _CheckoutSession.model_validate(obj)
                metadata = _Metadata.model_validate(checkout.metadata or {})
                paid = (
                    event.type == "checkout.session.async_payment_succeeded"
                    or checkout.payment_status == "paid"
                )
                outcome = (
                    await _fulfil(uow.session, checkout, metadata, packs) if paid else "ignored"
                )
        except ValidationError as exc:
            error = _malformed(exc)
            await repo.record_stripe_failure(
                uow.session, event_id, error, max_attempts=1, give_up=True
            )
            return f"dead-lettered: {error}"
    event.handled_at = utcnow()
    event.error = None if not outcome.startswith("error") else outcome
    await repo.add(uow.session, event)
    return outcome


async def record_failure(uow: UnitOfWork, event_id: str, error: str, *, max_attempts: int) -> bool:
    """Count a failed attempt to apply an event, with its error. True when that was its
    last (it is now a dead letter, no longer queued again)."""
    found = await repo.record_stripe_failure(
        uow.session, event_id, error, max_attempts=max_attempts, give_up=False
    )
    return found is not None and found[1]


async def note_waiting(uow: UnitOfWork, event_id: str, reason: str) -> None:
    """Why an event waits (a refund before its payment): shown, not counted."""
    await repo.note_stripe_event(uow.session, event_id, f"waiting: {reason}")


async def dead_letters(session: AsyncSession, *, limit: int = 100) -> Sequence[StripeEvent]:
    """Events given up on, newest first, with their errors (for operators)."""
    return await repo.dead_stripe_events(session, limit=limit)


async def revive(uow: UnitOfWork, event_id: str) -> None:
    """Give a dead letter a fresh set of attempts (once its cause is fixed) and queue it."""
    if not await repo.revive_stripe_event(uow.session, event_id):
        raise NotFound("Dead-lettered Stripe event")
    uow.emit(StripeEventReceived(event_id))


async def unapplied(session: AsyncSession, *, older_than: timedelta) -> list[str]:
    """Stored events still not applied after ``older_than`` (dead letters excepted):
    their job was lost or is waiting on something (the inbox sweeper queues them
    again)."""
    return await repo.unhandled_stripe_events(session, utcnow() - older_than)


def requeue(uow: UnitOfWork, event_ids: Sequence[str]) -> None:
    for event_id in event_ids:
        uow.emit(StripeEventReceived(event_id))


async def _fulfil(
    session: AsyncSession, checkout: _CheckoutSession, metadata: _Metadata, packs: PackList
) -> str:
    session_id = checkout.id
    try:
        account_id = uuid.UUID(str(checkout.client_reference_id))
        pack = packs.get(str(metadata.pack), "metadata.pack")
    except (ValueError, BadUserInput):
        return f"error: checkout session {session_id} names no account or pack"
    # The credits the session was created for (set by us, signed by Stripe) win over the
    # current table: a pack edited while a payment was pending does not change the sale.
    if metadata.credits is not None:
        pack = replace(pack, credits=metadata.credits)
    if await repo.get_account(session, account_id) is None:
        return f"error: checkout session {session_id} names an unknown account"
    await repo.insert_payment(
        session,
        Payment(
            checkout_session_id=session_id,
            payment_intent=checkout.payment_intent,
            account_id=account_id,
            pack=pack.id,
            credits=pack.credits,
            amount=checkout.amount_total if checkout.amount_total is not None else pack.price,
            currency=checkout.currency or pack.currency,
        ),
    )
    granted = await ledger.grant(
        session, account_id, pack.credits, reference=f"stripe:{session_id}",
        note=f"Stripe payment, {pack.name}",
    )  # fmt: skip
    return "granted" if granted else "already granted"


async def _reverse(session: AsyncSession, charge: _Charge) -> str:
    intent = charge.payment_intent
    if not intent:
        return "error: refund without a payment intent"
    payment = await repo.lock_payment_by_intent(session, intent)
    if payment is None:
        # Its payment event may not be applied yet (events are applied in parallel).
        raise NotYet(f"payment {intent} not recorded yet")
    refunded = min(charge.amount_refunded, payment.amount)
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

    ``nonce`` identifies the buyer's attempt (the GraphQL ``Idempotency-Key``, the
    dashboard form's nonce): retrying it, or submitting the form twice, creates one
    session. Stripe's idempotency key is derived from the account, the pack and the
    nonce only (hashed: any string is a safe nonce), never from a secret such as a CSRF
    token."""
    if gateway is None:
        raise Forbidden("Purchases are off: this deployment has no Stripe account")
    pack = packs.get(pack_id)
    if not nonce:
        raise BadUserInput("nonce", "a checkout needs a nonce: reload the page and try again")
    attempt = hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return await gateway.create_checkout(
        account_id=account_id,
        pack=pack,
        success_url=success_url,
        cancel_url=cancel_url,
        idempotency_key=f"checkout:{account_id}:{pack.id}:{attempt}",
    )


async def get_payment(session: AsyncSession, account_id: uuid.UUID, session_id: str) -> Payment:
    payment = await session.get(Payment, session_id)
    if payment is None or payment.account_id != account_id:
        raise NotFound("Payment")
    return payment
