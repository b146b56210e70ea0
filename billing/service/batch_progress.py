"""What a batch's items do to it when they settle: the last one to reach a final state
completes the batch, once, and queues its completion webhook in the same transaction.
Called from ``generations._settle`` (so it knows no job lifecycle itself); ``batches``
builds on it.

The webhook's body is ours (``batch.completed``, ``payload``) unless the batch was
registered with seed 000's event name (``batch.complete``, as the REST v2 surface does):
then it is seed 000's ``{"event", "timestamp", "data", "signature"}``, ``data`` shaped like
the seed's ``GET /api/batch/{id}`` (``seed000_payload``), signed as a single job's seed-000
body is (``webhooks.seed000_body``)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing import repository as repo
from billing.db import UnitOfWork, WebhookQueued
from billing.errors import BadUserInput
from billing.models import (
    FINAL_STATUSES,
    Batch,
    Generation,
    GenerationStatus,
    WebhookEventStatus,
    utcnow,
)
from billing.service import webhooks

BATCH_COMPLETED = "batch.completed"
# Seed 000's name of the same event: a batch registered with it gets seed 000's body.
SEED000_BATCH_COMPLETE = "batch.complete"
# A batch has one event; its name (ours or seed 000's) picks the body.
BATCH_EVENTS = (BATCH_COMPLETED, SEED000_BATCH_COMPLETE)
# What the REST v2 surface shows as a batch's id (and its Socket.IO channel).
SEED000_BATCH_PREFIX = "batch_"
_FINAL = frozenset(s.value for s in FINAL_STATUSES)


def validate_events(events: Sequence[str] | None, field: str) -> list[str] | None:
    """A batch's webhook filter: null (ours), or one of ``BATCH_EVENTS``."""
    if events is None:
        return None
    names = list(dict.fromkeys(events))
    if len(names) != 1 or names[0] not in BATCH_EVENTS:
        raise BadUserInput(
            field,
            f'{field} must be ["{BATCH_COMPLETED}"] (Fluxgate\'s body) or '
            f'["{SEED000_BATCH_COMPLETE}"] (seed 000\'s), not {list(events)}',
        )
    return names


def is_seed000(batch: Batch) -> bool:
    return list(batch.webhook_events or ()) == [SEED000_BATCH_COMPLETE]


@dataclass(frozen=True, slots=True)
class BatchView:
    """A batch with its items (jobs) in the order they were sent, and what follows."""

    batch: Batch
    items: Sequence[Generation]

    @property
    def client_ids(self) -> list[str | None]:
        """The items' client ids (createBatch's ``clientId``), aligned with ``items``."""
        given = dict(zip(self.batch.item_ids, self.batch.item_client_ids or (), strict=False))
        return [given.get(g.id) for g in self.items]

    def count(self, status: GenerationStatus) -> int:
        return sum(1 for g in self.items if g.status == status.value)

    @property
    def total(self) -> int:
        return len(self.batch.item_ids)

    @property
    def finished(self) -> int:
        return sum(1 for g in self.items if g.status in _FINAL)

    @property
    def progress(self) -> float:
        """0 to 1: each item counts its own progress, a final one in full."""
        if not self.total:
            return 1.0
        done = sum(100 if g.status in _FINAL else g.progress for g in self.items)
        return round(done / (100 * self.total), 4)

    @property
    def status(self) -> str:
        """queued (nothing started) → processing → completed (every item completed),
        partially_failed (some completed, the others failed or cancelled), failed (none
        completed, some failed) or cancelled (every item cancelled)."""
        completed = self.count(GenerationStatus.COMPLETED)
        cancelled = self.count(GenerationStatus.CANCELLED)
        if self.finished < self.total:
            queued = self.count(GenerationStatus.QUEUED)
            return "queued" if queued == self.total else "processing"
        if completed == self.total:
            return "completed"
        if completed:
            return "partially_failed"
        return "cancelled" if cancelled == self.total else "failed"


def ordered(batch: Batch, items: Sequence[Generation]) -> BatchView:
    by_id = {g.id: g for g in items if g.batch_id == batch.id}
    return BatchView(batch, [by_id[i] for i in batch.item_ids if i in by_id])


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")


def payload(view: BatchView) -> dict[str, object]:
    batch = view.batch
    return {
        "id": batch.id,
        "event": BATCH_COMPLETED,
        "clientBatchId": batch.client_batch_id,
        "status": view.status,
        "priority": batch.priority,
        "total": view.total,
        "completed": view.count(GenerationStatus.COMPLETED),
        "failed": view.count(GenerationStatus.FAILED),
        "cancelled": view.count(GenerationStatus.CANCELLED),
        "creditCost": batch.credit_cost,
        "createdAt": _iso(batch.created_at),
        "completedAt": _iso(batch.completed_at),
        "items": [
            {
                "id": g.id,
                "clientId": client_id,
                "kind": g.kind,
                "status": g.status,
                "error": g.error,
                "outputs": len(g.outputs or []),
            }
            for g, client_id in zip(view.items, view.client_ids, strict=True)
        ],
    }


def seed000_batch_status(status: str) -> str:
    """A batch's status as seed 000's clients wait for it: processing until every item is
    final, then completed (some items may have failed: see ``failed``), failed (all
    failed) or cancelled."""
    return {"queued": "processing", "partially_failed": "completed"}.get(status, status)


def _seconds(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(microsecond=0)


def seed000_payload(
    view: BatchView, now: datetime, url_of: Callable[[str], str] | None
) -> dict[str, Any]:
    """Seed 000's body of a finished batch, less its signature: ``event``
    (``batch.complete``), ``timestamp`` and ``data`` as the seed's ``GET /api/batch/{id}``
    answers it (the REST v2 adapter's ``status_body``): batch_id ``batch_<id>``, the
    counts, started_at / completed_at / total_time (to the second, as GET shows them) and
    the jobs: id (the item's client id, else its image_id), image_id, status, url (the
    first image, with ``url_of``), seed, generation_time, error_message."""
    batch = view.batch
    starts = [s for s in (_seconds(g.started_at) for g in view.items) if s is not None]
    started = min(starts) if starts else None
    ended = _seconds(batch.completed_at)
    status = seed000_batch_status(view.status)
    jobs = []
    for position, (g, client_id) in enumerate(zip(view.items, view.client_ids, strict=True), 1):
        done = g.status == GenerationStatus.COMPLETED.value
        duration = (g.meta or {}).get("duration")
        jobs.append(
            {
                "id": client_id or g.id,
                "image_id": g.id,
                "status": webhooks.seed000_status(g.status),
                "position": position,
                "url": url_of(g.image_key) if done and g.image_key and url_of else None,
                "seed": g.seed,
                "generation_time": float(duration) if duration is not None else None,
                "error_message": webhooks.seed000_error_message(g.status, g.error),
            }
        )
    return {
        "event": SEED000_BATCH_COMPLETE,
        "timestamp": _iso(now),
        "data": {
            "batch_id": SEED000_BATCH_PREFIX + batch.id,
            "status": status,
            "total": view.total,
            "queued": view.count(GenerationStatus.QUEUED),
            "processing": view.count(GenerationStatus.PROCESSING),
            "completed": view.count(GenerationStatus.COMPLETED),
            "failed": view.count(GenerationStatus.FAILED),
            "cancelled": view.count(GenerationStatus.CANCELLED),
            "started_at": _iso(started),
            "completed_at": _iso(ended),
            "total_time": round((ended - started).total_seconds(), 1)
            if started and ended
            else None,
            "jobs": jobs,
        },
    }


async def item_settled(uow: UnitOfWork, batch_id: str) -> None:
    """One of the batch's items reached a final state (in this transaction). When none is
    left unfinished, stamp the batch complete and queue its webhook: exactly once, since
    the batch row lock orders the items' settlements and the stamp is conditional (and
    the webhook event is unique per job and event besides)."""
    session = uow.session
    if await repo.lock_batch_unfinished(session, batch_id) > 0:
        return
    batch = await repo.mark_batch_completed(session, batch_id)
    if batch is None or not batch.webhook_url:
        return
    view = ordered(batch, await repo.batch_items(session, [batch_id]))
    event_id = "msg_" + secrets.token_hex(12)
    now = utcnow()
    if is_seed000(batch):
        account = await repo.get_account(session, batch.account_id)
        assert account is not None
        body = webhooks.seed000_body(seed000_payload(view, now, uow.urls), account.webhook_secret)
    else:
        body = json.dumps(payload(view), separators=(",", ":"))
    # The webhook outbox is keyed by job: a batch's event hangs on its first item.
    inserted = await repo.insert_webhook_event(
        session,
        {
            "id": event_id,
            "account_id": batch.account_id,
            "generation_id": batch.item_ids[0],
            "event": BATCH_COMPLETED,
            "url": batch.webhook_url,
            "body": body,
            "status": WebhookEventStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )
    if inserted:
        uow.emit(WebhookQueued(event_id, due=now))
