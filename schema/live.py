"""Presenting a job with its live fields, and following it as it changes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from billing import models
from billing.service import generations
from gpu_worker.queue import size_key
from schema.context import Context
from schema.types import Generation

# While queued, a job's position moves without any event of its own: recheck this often.
QUEUED_RECHECK_S = 1.0
# Otherwise, re-read the job (and re-check the caller's key) this often, in case an event
# was lost or the key was revoked.
IDLE_RECHECK_S = 5.0


async def present(
    ctx: Context, g: models.Generation, live: dict[str, Any] | None = None
) -> Generation:
    """The job as a GraphQL object, with queue position and ETA while it is unfinished."""
    live = dict(live or {})
    inspector = ctx.services.queue
    size = size_key(g.version, g.width, g.height)
    if g.status == models.GenerationStatus.QUEUED.value:
        position, eta = await inspector.eta_queued(g.id, size, g.steps)
        live.setdefault("queue_position", position)
        live.setdefault("eta_seconds", eta)
    elif g.status == models.GenerationStatus.PROCESSING.value and "eta_seconds" not in live:
        live["eta_seconds"] = await inspector.eta_processing(size, g.step, g.total_steps)
    return Generation.from_model(g, ctx.services.storage, live)


async def follow(
    ctx: Context, account_id: uuid.UUID, generation_id: str
) -> AsyncIterator[Generation]:
    """Every state of one of the caller's jobs, from the current one to the final one.

    The listener is registered before the job is read, so no change can fall between
    the read and the stream; changes are ordered by the row's revision, so a late or
    duplicated message is never shown after a newer state.
    """
    with ctx.services.broker.listen(generation_id=generation_id) as events:
        async with ctx.read() as session:
            current = await generations.get(session, account_id, generation_id)
        shown = await present(ctx, current)
        yield shown
        while not models.is_final(current.status):
            queued = current.status == models.GenerationStatus.QUEUED.value
            try:
                message = await asyncio.wait_for(
                    events.get(), QUEUED_RECHECK_S if queued else IDLE_RECHECK_S
                )
            except TimeoutError:
                message = None
            if message is None or "snapshot" not in message:
                # A recheck, or the stream reconnected: the database has the truth.
                await ctx.caller()  # raises UNAUTHENTICATED once the key is revoked
                async with ctx.read() as session:
                    latest = await generations.get(session, account_id, generation_id)
                live: dict[str, Any] = {}
            else:
                latest = models.from_snapshot(message["snapshot"])
                live = message.get("live") or {}
            if latest.revision < current.revision:
                continue
            fresh = await present(ctx, latest, live)
            if latest.revision == current.revision and _same(fresh, shown):
                continue
            current, shown = latest, fresh
            yield shown


def _same(a: Generation, b: Generation) -> bool:
    return (a.queue_position, a.eta_seconds, a.preview) == (
        b.queue_position,
        b.eta_seconds,
        b.preview,
    )


async def follow_account(ctx: Context, account_id: uuid.UUID) -> AsyncIterator[Generation]:
    """Every change of any of the caller's jobs, as it happens, until the client leaves."""
    revisions: dict[str, int] = {}
    with ctx.services.broker.listen(account_id=str(account_id)) as events:
        while True:
            try:
                message = await asyncio.wait_for(events.get(), IDLE_RECHECK_S)
            except TimeoutError:
                await ctx.caller()  # raises UNAUTHENTICATED once the key is revoked
                continue
            if "snapshot" not in message:
                continue  # a reconnect: nothing to re-read for a whole account
            g = models.from_snapshot(message["snapshot"])
            if g.account_id != account_id or revisions.get(g.id, -1) >= g.revision:
                continue
            revisions[g.id] = g.revision
            if models.is_final(g.status):
                revisions.pop(g.id)  # nothing newer can follow a final state
            yield await present(ctx, g, message.get("live"))
