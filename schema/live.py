"""Presenting a job with its live fields, and following it as it changes."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.exceptions import RedisError

from billing import models
from billing.errors import RateLimited, Unauthenticated
from billing.service import generations
from billing.service.accounts import Caller
from runtime.events import Mailbox
from runtime.queue import size_key
from schema.context import Context
from schema.types import Generation

log = logging.getLogger(__name__)

# Jitter only (not a secret); its own generator, so it never disturbs the global one.
_JITTER = random.Random()

# While queued, a job's position moves without any event of its own: recompute it this
# often (from Redis; the database is not read).
QUEUED_RECHECK_S = 1.0
# A safety net only: a revoked key and every change of a job arrive as events, and a lost
# event stream makes every subscriber re-read (RESYNC). Past this long without either, a
# subscriber re-checks its key and re-reads its job anyway (an event whose publication
# failed after commit, a key revoked by hand in SQL). Jittered, so subscribers opened
# together do not recheck together.
RECHECK_S = 60.0
# A subscription refused because the account has max_subscriptions open: retry then.
SUBSCRIPTION_RETRY_AFTER_S = 5
REVOKED_MESSAGE = "The API key of this subscription was revoked"


def _next_recheck() -> float:
    return time.monotonic() + RECHECK_S * _JITTER.uniform(0.75, 1.0)  # not a secret


@asynccontextmanager
async def listening(
    ctx: Context, caller: Caller, *, generation_id: str | None = None
) -> AsyncIterator[Mailbox]:
    """The caller's events (one job's, or all their jobs' when ``generation_id`` is None),
    while the account has a subscription slot to spare; ended when the key is revoked."""
    limit = ctx.services.plans.limits(
        caller.account.plan, caller.account.limit_overrides
    ).max_subscriptions
    broker = ctx.services.broker
    account = str(caller.account.id)
    slot = None
    if limit is not None:
        slot = await broker.slots.acquire(account, limit)
        if slot is None:
            raise RateLimited(
                "subscriptions",
                SUBSCRIPTION_RETRY_AFTER_S,
                f"Subscription limit reached ({limit} open at once for this account); "
                "close one to open another",
            )
    try:
        target = {"generation_id": generation_id} if generation_id else {"account_id": account}
        with broker.listen(api_key_id=str(caller.api_key_id), **target) as events:
            yield events
    finally:
        if slot is not None:
            await broker.slots.release(account, slot)


async def present(
    ctx: Context, g: models.Generation, live: dict[str, Any] | None = None, *, eager: bool = False
) -> Generation:
    """The job as a GraphQL object, with queue position and ETA while it is unfinished:
    estimated when a client selects them (``eager``: now, as subscriptions compare them).

    Those two come from Redis and are estimates: with Redis unreachable they are null
    and the job is shown all the same. A job just accepted is committed (and its credits
    held) by then, so a failure here must never turn its acceptance into an error."""
    live = dict(live or {})
    inspector = ctx.services.queue
    size = size_key(g.version, g.width, g.height, g.kind)
    queued = g.status == models.GenerationStatus.QUEUED.value
    processing = g.status == models.GenerationStatus.PROCESSING.value

    async def estimate() -> tuple[int | None, float | None]:
        try:
            if queued:
                return await inspector.eta_queued(g.id, size, g.steps)
            if processing and "eta_seconds" not in live:
                return None, await inspector.eta_processing(size, g.step, g.total_steps)
        except (RedisError, OSError) as exc:
            log.debug("queue position/ETA of %s unknown: %s", g.id, exc)
        return None, None

    shown = Generation.from_model(
        g, ctx.services.storage, live, estimate if queued or processing else None
    )
    if eager:
        await shown.estimated()
    return shown


async def follow(ctx: Context, caller: Caller, generation_id: str) -> AsyncIterator[Generation]:
    """Every state of one of the caller's jobs, from the current one to the final one.

    The listener is registered before the job is read, so no change can fall between
    the read and the stream; changes are ordered by the row's revision, so a late or
    duplicated message is never shown after a newer state.
    """
    account_id = caller.account.id
    async with listening(ctx, caller, generation_id=generation_id) as events:
        async with ctx.read() as session:
            current = await generations.get(session, account_id, generation_id)
        shown = await present(ctx, current, eager=True)
        yield shown
        recheck_at = _next_recheck()
        while not models.is_final(current.status):
            queued = current.status == models.GenerationStatus.QUEUED.value
            wait = recheck_at - time.monotonic()
            try:
                message = await asyncio.wait_for(
                    events.get(), min(wait, QUEUED_RECHECK_S) if queued else wait
                )
            except TimeoutError:
                message = None
            live: dict[str, Any] = {}
            if message is not None and message.get("revoked"):
                raise Unauthenticated(REVOKED_MESSAGE)
            if message is None and time.monotonic() < recheck_at:
                latest = current  # a queue-position tick: Redis only
            elif message is None or "snapshot" not in message:
                # The safety-net recheck, or the stream reconnected: the database has the
                # truth, and the key may have been revoked meanwhile.
                await ctx.caller()  # raises UNAUTHENTICATED once the key is revoked
                async with ctx.read() as session:
                    latest = await generations.get(session, account_id, generation_id)
                recheck_at = _next_recheck()
            else:
                latest = models.from_snapshot(message["snapshot"])
                live = message.get("live") or {}
            if latest.revision < current.revision:
                continue
            fresh = await present(ctx, latest, live, eager=True)
            if latest.revision == current.revision and _same(fresh, shown):
                continue
            current, shown = latest, fresh
            yield shown


def _same(a: Generation, b: Generation) -> bool:
    return (a.known_position, a.known_eta, a.preview) == (
        b.known_position,
        b.known_eta,
        b.preview,
    )


async def follow_account(ctx: Context, caller: Caller) -> AsyncIterator[Generation]:
    """Every change of any of the caller's jobs, as it happens, until the client leaves
    (or the key is revoked)."""
    account_id = caller.account.id
    revisions: dict[str, int] = {}
    async with listening(ctx, caller) as events:
        recheck_at = _next_recheck()
        while True:
            try:
                message = await asyncio.wait_for(events.get(), recheck_at - time.monotonic())
            except TimeoutError:
                message = None
            if message is not None and message.get("revoked"):
                raise Unauthenticated(REVOKED_MESSAGE)
            if message is None or "snapshot" not in message:
                # The safety-net recheck, or a reconnect (the revocation may be among
                # what was missed; for a whole account there is nothing else to re-read).
                await ctx.caller()  # raises UNAUTHENTICATED once the key is revoked
                recheck_at = _next_recheck()
                continue
            g = models.from_snapshot(message["snapshot"])
            if g.account_id != account_id or revisions.get(g.id, -1) >= g.revision:
                continue
            revisions[g.id] = g.revision
            if models.is_final(g.status):
                revisions.pop(g.id)  # nothing newer can follow a final state
            yield await present(ctx, g, message.get("live"))
