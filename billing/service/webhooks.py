"""Webhook events: an outbox written in the same transaction as the job's state change,
delivered at least once by the webhook worker, every attempt recorded.

An event's id is its ``webhook-id``: the same across retries and redeliveries, so a
receiver can de-duplicate. Its body is built once and stored, so every attempt sends the
same bytes and the ``X-Doitong-Signature`` over them is stable.

A job whose ``webhook_events`` are seed 000's names (``generation.complete``…, as the REST
v2 surface registers them) gets seed 000's body instead of ours:
``{"event", "timestamp", "data": {"image_id", "url", "prompt", "seed", "generation_time",
…}, "signature": "sha256=<hex>"}`` (README "Compatible APIs": what is signed). A batch's
completion event picks its body the same way, by its own event name (``batch_progress``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billing import keys
from billing import repository as repo
from billing.db import UnitOfWork, WebhookQueued
from billing.errors import BadUserInput, Conflict, NotFound
from billing.models import (
    Account,
    Generation,
    WebhookAttempt,
    WebhookEvent,
    WebhookEventStatus,
    utcnow,
)

# Jitter only (not a secret); its own generator, so it never disturbs the global one.
_JITTER = random.Random()


EVENT_TYPES = ("started", "progress", "completed", "failed", "cancelled")
FINAL_EVENTS = ("completed", "failed", "cancelled")
PROGRESS_MARKS = (25, 50, 75)
MAX_RESPONSE_BODY = 1024


# Seed 000's (REST v2) event names. A job's filter names events of one vocabulary: ours,
# or all of these, and then its webhook body is seed 000's (``seed000_body``).
SEED000_EVENTS = (
    "generation.started", "generation.progress", "generation.complete", "generation.failed",
    "upscale.complete", "upscale.failed",
)  # fmt: skip
# What a seed-000 surface registers for a webhook_url sent without webhook_events.
SEED000_DEFAULT_EVENTS = ("generation.complete", "generation.failed")
# Kinds whose seed-000 events are upscale.* (none is served yet: issue 12).
UPSCALE_KINDS = frozenset({"upscale", "face_enhance"})
# Our event -> seed 000's suffix (it has no cancelled event: a cancelled job failed).
_SEED000_SUFFIX = {
    "started": "started", "progress": "progress", "completed": "complete",
    "failed": "failed", "cancelled": "failed",
}  # fmt: skip


# Seed 003's (POST /flux/images) callback: a job registered with this one event name gets,
# on its final event (completed, failed or cancelled), the seed's callback envelope
# (``flux_images_payload``) instead of our body.
FLUX_IMAGES_EVENTS = ("flux_images.callback",)


def validate_filter(events: Sequence[str] | None, field: str) -> list[str] | None:
    if events is None:
        return None
    if not events:
        raise BadUserInput(field, f"{field} must name at least one event")
    names = set(events)
    for vocabulary in (EVENT_TYPES, SEED000_EVENTS, FLUX_IMAGES_EVENTS):
        if names <= set(vocabulary):
            return sorted(names, key=vocabulary.index)
    unknown = sorted(names - set(EVENT_TYPES))
    raise BadUserInput(
        field,
        f"unknown webhook events {unknown}; use {list(EVENT_TYPES)} (or only seed 000's "
        f"{list(SEED000_EVENTS)})",
    )


def seed000_status(status: str) -> str:
    """Fluxgate's job status as seed 000 names it: queued, generating, completed, failed
    (a cancelled job is failed; its error_message says so)."""
    return {"processing": "generating", "cancelled": "failed"}.get(status, status)


def seed000_error_message(status: str, error: str | None) -> str | None:
    """Seed 000's ``error_message`` of a failed or cancelled job; None for any other."""
    if status == "failed":
        return error or "The generation failed"
    if status == "cancelled":
        return "The generation was cancelled"
    return None


def is_seed000(generation: Generation) -> bool:
    """Whether the job's webhook was registered with seed 000's event names."""
    events = generation.webhook_events
    return bool(events) and events is not None and events[0] in SEED000_EVENTS


def seed000_event(generation: Generation, event: str) -> str | None:
    """Seed 000's name of our ``event`` for this job (None: it has none)."""
    prefix = "upscale" if generation.kind in UPSCALE_KINDS else "generation"
    name = f"{prefix}.{_SEED000_SUFFIX.get(event.split('.', 1)[0], '')}"
    return name if name in SEED000_EVENTS else None


def is_flux_images(generation: Generation) -> bool:
    """Whether the job's webhook is seed 003's callback (``FLUX_IMAGES_EVENTS``)."""
    return list(generation.webhook_events or ()) == list(FLUX_IMAGES_EVENTS)


def _wants(generation: Generation, event: str) -> bool:
    if is_flux_images(generation):
        return event in FINAL_EVENTS
    if is_seed000(generation):
        return seed000_event(generation, event) in (generation.webhook_events or ())
    wanted = generation.webhook_events or FINAL_EVENTS
    return event.split(".", 1)[0] in wanted


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")


def payload(generation: Generation, event: str, output_urls: Sequence[str] = ()) -> dict[str, Any]:
    """Seed 001's payload (id, status, url, service, createdAt, completedAt, metadata with
    duration, width, height), plus the event name, the job's kind and every output (url,
    width, height, format; ``url`` is the first)."""
    meta = generation.meta or {}
    status, progress = generation.status, generation.progress
    completed_at: datetime | None = generation.completed_at
    kind, _, mark = event.partition(".")
    if kind == "progress" and mark.isdigit():
        # A progress event reports its mark, whenever it was recorded: a job faster than
        # the progress interval has its marks queued at completion (generations.complete).
        status, progress, completed_at = "processing", int(mark), None
    return {
        "id": generation.id,
        "event": event,
        "status": status,
        "url": output_urls[0] if output_urls else None,
        "kind": generation.kind,
        "outputs": [
            {"url": url, "width": o["width"], "height": o["height"], "format": o["format"]}
            for url, o in zip(output_urls, generation.outputs or [], strict=False)
        ],
        "service": generation.provider,
        "version": generation.version,
        "createdAt": _iso(generation.created_at),
        "completedAt": _iso(completed_at),
        "progress": progress,
        "error": generation.error,
        "metadata": {
            "duration": meta.get("duration"),
            "width": generation.width,
            "height": generation.height,
            "seed": generation.seed,
            "steps": generation.steps,
        },
    }


def seed000_payload(
    generation: Generation, event: str, output_urls: Sequence[str], now: datetime
) -> dict[str, Any]:
    """Seed 000's body, less its signature: ``event`` (seed 000's name), ``timestamp``
    and ``data`` with the seed's fields (image_id: the job's id, as the REST v2 surface
    returns it) and a few more (status, progress, error, every output's URL)."""
    status, progress = generation.status, generation.progress
    kind, _, mark = event.partition(".")
    if kind == "progress" and mark.isdigit():
        status, progress = "processing", int(mark)
    duration = (generation.meta or {}).get("duration")
    return {
        "event": seed000_event(generation, event),
        "timestamp": _iso(now),
        "data": {
            "image_id": generation.id,
            "generation_id": generation.id,
            "status": status,
            "url": output_urls[0] if output_urls else None,
            "urls": list(output_urls),
            "prompt": generation.prompt,
            "seed": generation.seed,
            "generation_time": round(float(duration), 2) if duration is not None else None,
            "progress": progress,
            "error": generation.error,
        },
    }


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the exact body, keyed with the secret string (the
    ``X-Doitong-Signature`` header, and seed 000's ``signature`` member)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def seed000_body(unsigned: dict[str, Any], secret: str) -> str:
    """The compact JSON of ``unsigned`` with a last member ``"signature": "sha256=<hex>"``:
    HMAC-SHA256, keyed with the account's webhook secret, of the exact bytes of the body
    without that member (the compact JSON of ``unsigned``: ``,"signature":…`` cut out of
    the body, the closing ``}`` kept)."""
    text = json.dumps(unsigned, separators=(",", ":"))
    return text[:-1] + f',"signature":"{signature(secret, text.encode())}"}}'


def flux_images_payload(
    generation: Generation, event: str, output_urls: Sequence[str]
) -> dict[str, Any]:
    """Seed 003's callback envelope: ``{"success": true, "task_id", "data": [{"seed",
    "prompt", "image_url"}]}`` for a completed job, one item per image (the job's seed, as
    a string); ``{"success": false, "task_id", "error": {"code", "message"}}`` for one
    failed or cancelled (``code``: the event)."""
    if event == "completed":
        images = [
            {"seed": str(generation.seed), "prompt": generation.prompt, "image_url": url}
            for url in output_urls
        ]
        return {"success": True, "task_id": generation.id, "data": images}
    message = f"The job {event}: {generation.error or 'no reason given'}"
    return {
        "success": False,
        "task_id": generation.id,
        "error": {"code": event, "message": message},
    }


async def record(
    uow: UnitOfWork, generation: Generation, event: str, *, output_urls: Sequence[str] = ()
) -> None:
    """Queue ``event`` of ``generation`` for its webhook, if it has one and wants it.
    At most once per job and event, however often the job runs."""
    if not generation.webhook_url or not _wants(generation, event):
        return
    event_id = "msg_" + secrets.token_hex(12)
    now = utcnow()
    if is_seed000(generation):
        account = await repo.get_account(uow.session, generation.account_id)
        assert account is not None
        unsigned = seed000_payload(generation, event, output_urls, now)
        body = seed000_body(unsigned, account.webhook_secret)
    elif is_flux_images(generation):
        envelope = flux_images_payload(generation, event, output_urls)
        body = json.dumps(envelope, separators=(",", ":"))
    else:
        body = json.dumps(payload(generation, event, output_urls), separators=(",", ":"))
    inserted = await repo.insert_webhook_event(
        uow.session,
        {
            "id": event_id,
            "account_id": generation.account_id,
            "generation_id": generation.id,
            "event": event,
            "url": generation.webhook_url,
            "body": body,
            "status": WebhookEventStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )
    if inserted:
        uow.emit(WebhookQueued(event_id, due=now))


def progress_marks(before: int, after: int) -> list[int]:
    """The progress marks (25/50/75 %) crossed going from ``before`` to ``after``."""
    return [m for m in PROGRESS_MARKS if before < m <= after]


@dataclass(frozen=True, slots=True)
class Claim:
    event: WebhookEvent
    secrets: list[str]  # the current signing secret first, then one in its grace period


async def claim(uow: UnitOfWork, event_id: str, lease: timedelta) -> Claim | None:
    """Take a pending event for one attempt. None if it is delivered, failed, or another
    worker holds it (arq may run a delivery job twice; only one sends)."""
    event = await repo.lease_webhook_event(uow.session, event_id, utcnow() + lease)
    if event is None:
        return None
    account = await repo.get_account(uow.session, event.account_id)
    assert account is not None
    return Claim(event=event, secrets=signing_secrets(account))


def signing_secrets(account: Account) -> list[str]:
    now = utcnow()
    found = [account.webhook_secret]
    if (
        account.webhook_secret_previous
        and account.webhook_secret_previous_until
        and account.webhook_secret_previous_until > now
    ):
        found.append(account.webhook_secret_previous)
    return found


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one HTTP attempt did."""

    success: bool
    retryable: bool
    duration_ms: int
    status_code: int | None = None
    response_body: str | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, from a 429/503's Retry-After


async def record_attempt(
    uow: UnitOfWork, event: WebhookEvent, outcome: Outcome, schedule: Sequence[float]
) -> WebhookEvent:
    """Log the attempt and decide what comes next: delivered, another attempt later (with
    exponential backoff and ±20 % jitter, or the receiver's Retry-After if longer), or
    failed for good when the schedule is spent or the receiver refused for good."""
    now = utcnow()
    await repo.add(
        uow.session,
        WebhookAttempt(
            event_id=event.id,
            attempted_at=now,
            status_code=outcome.status_code,
            duration_ms=outcome.duration_ms,
            response_body=(outcome.response_body or "")[:MAX_RESPONSE_BODY] or None,
            error=outcome.error,
            success=outcome.success,
        ),
    )
    attempts = event.attempts + 1
    values: dict[str, Any] = {"attempts": attempts, "locked_until": None}
    if outcome.success:
        values |= {"status": WebhookEventStatus.DELIVERED.value, "delivered_at": now,
                   "next_attempt_at": None}  # fmt: skip
    elif outcome.retryable and attempts <= len(schedule):
        delay = schedule[attempts - 1] * _JITTER.uniform(0.8, 1.2)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, 86400.0))
        values |= {"next_attempt_at": now + timedelta(seconds=delay)}
    else:
        values |= {"status": WebhookEventStatus.FAILED.value, "next_attempt_at": None}
    updated = await repo.update_webhook_event(uow.session, event.id, values)
    if updated.status == WebhookEventStatus.PENDING.value and updated.next_attempt_at:
        uow.emit(WebhookQueued(event.id, due=updated.next_attempt_at))
    return updated


async def redeliver(uow: UnitOfWork, account_id: uuid.UUID, event_id: str) -> WebhookEvent:
    """Send an event again (same webhook-id, same body), with a fresh retry schedule."""
    event = await repo.get_webhook_event(uow.session, event_id)
    if event is None or event.account_id != account_id:
        raise NotFound("Webhook event")
    now = utcnow()
    if event.locked_until is not None and event.locked_until > now:
        # An attempt is in flight; it would overwrite the redelivery's state.
        raise Conflict("This event is being delivered right now; retry in a minute")
    updated = await repo.update_webhook_event(
        uow.session,
        event_id,
        {"status": WebhookEventStatus.PENDING.value, "attempts": 0, "locked_until": None,
         "next_attempt_at": now},
    )  # fmt: skip
    uow.emit(WebhookQueued(event_id, due=now))
    return updated


@dataclass(frozen=True, slots=True)
class Delivery:
    event: WebhookEvent
    attempts: list[WebhookAttempt]


async def list_deliveries(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    generation_id: str | None,
    first: int,
) -> list[Delivery]:
    if not 1 <= first <= 100:
        raise BadUserInput("first", "first must be between 1 and 100")
    events = await repo.list_webhook_events(
        session, account_id, generation_id=generation_id, limit=first
    )
    attempts = await repo.list_webhook_attempts(session, [e.id for e in events])
    by_event: dict[str, list[WebhookAttempt]] = {}
    for a in attempts:
        by_event.setdefault(a.event_id, []).append(a)
    return [Delivery(event=e, attempts=by_event.get(e.id, [])) for e in events]


async def rotate_secret(uow: UnitOfWork, account_id: uuid.UUID, grace: timedelta) -> Account:
    """A new signing secret; the old one keeps signing (as a second signature) for
    ``grace``, so receivers can switch without missing a delivery."""
    account = await repo.get_account(uow.session, account_id)
    if account is None:
        raise NotFound("Account")
    account.webhook_secret_previous = account.webhook_secret
    account.webhook_secret_previous_until = utcnow() + grace
    account.webhook_secret = keys.generate_webhook_secret()
    await repo.add(uow.session, account)
    return account


async def requeue_overdue(uow: UnitOfWork, *, older_than: timedelta) -> list[str]:
    """Queue again the pending events whose attempt is overdue and unclaimed: their job
    was lost. The job id is derived from the due time, so where the job still exists the
    new one collapses into it."""
    overdue = await repo.overdue_webhook_events(uow.session, utcnow() - older_than)
    for event_id, due in overdue:
        uow.emit(WebhookQueued(event_id, due=due))
    return [event_id for event_id, _ in overdue]
