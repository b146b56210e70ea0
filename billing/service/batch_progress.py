"""What a batch's items do to it when they settle: the last one to reach a final state
completes the batch, once, and queues its ``batch.completed`` webhook in the same
transaction. Called from ``generations._settle`` (so it knows no job lifecycle itself);
``batches`` builds on it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from billing import repository as repo
from billing.db import UnitOfWork, WebhookQueued
from billing.models import (
    FINAL_STATUSES,
    Batch,
    Generation,
    GenerationStatus,
    WebhookEventStatus,
    utcnow,
)

BATCH_COMPLETED = "batch.completed"
_FINAL = frozenset(s.value for s in FINAL_STATUSES)


@dataclass(frozen=True, slots=True)
class BatchView:
    """A batch with its items (jobs) in the order they were sent, and what follows."""

    batch: Batch
    items: Sequence[Generation]

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
                "kind": g.kind,
                "status": g.status,
                "error": g.error,
                "outputs": len(g.outputs or []),
            }
            for g in view.items
        ],
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
    # The webhook outbox is keyed by job: a batch's event hangs on its first item.
    inserted = await repo.insert_webhook_event(
        session,
        {
            "id": event_id,
            "account_id": batch.account_id,
            "generation_id": batch.item_ids[0],
            "event": BATCH_COMPLETED,
            "url": batch.webhook_url,
            "body": json.dumps(payload(view), separators=(",", ":")),
            "status": WebhookEventStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )
    if inserted:
        uow.emit(WebhookQueued(event_id, due=now))
