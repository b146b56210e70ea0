"""Presenting a job with its live fields, and following it as it changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

from redis.exceptions import RedisError

from billing import models
from billing.catalog import pool_of
from billing.errors import RateLimited, Unauthenticated
from billing.service import generations
from billing.service.accounts import Caller
from kinds.text_to_image import made_size
from runtime.events import Mailbox
from runtime.queue import size_key
from schema.context import Context
from schema.types import Generation

log = logging.getLogger(__name__)

# While queued, a job's position moves without any event of its own: recompute it this
# often (from Redis; the database is not read).
QUEUED_RECHECK_S = 1.0
# A subscription refused because the account has max_subscriptions open: retry then.
SUBSCRIPTION_RETRY_AFTER_S = 5
REVOKED_MESSAGE = "The API key of this subscription was revoked"


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
    size = size_key(g.version, g.width, g.height, g.kind, made_size(g.params))
    pool = pool_of(g.params)  # positions, ETAs and timings are the job's pool's
    queued = g.status == models.GenerationStatus.QUEUED.value
    processing = g.status == models.GenerationStatus.PROCESSING.value

    async def estimate() -> tuple[int | None, float | None]:
        try:
            if queued:
                return await inspector.eta_queued(g.id, size, g.steps, pool)
            if processing and "eta_seconds" not in live:
                return None, await inspector.eta_processing(size, g.step, g.total_steps, pool)
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
    duplicated message is never shown after a newer state. An idle subscriber does no
    database work: the job is re-read only after a reconnect of the event stream, or when
    the process's sweep (schema/watch.py) finds a newer revision than the one shown (an
    event was lost); a revoked key ends the box, by event or by that sweep.
    """
    account_id = caller.account.id
    async with listening(ctx, caller, generation_id=generation_id) as events:
        async with ctx.read() as session:
            current = await generations.get(session, account_id, generation_id)
        shown = await present(ctx, current, eager=True)
        yield shown
        clock = asyncio.get_running_loop()
        # Queue-position ticks keep their pace whatever arrives in between (the sweep's
        # rechecks included): a deadline, not a wait restarted after each message.
        tick_at = clock.time() + QUEUED_RECHECK_S
        while not models.is_final(current.status):
            _end_if_cancelled()
            message: dict[str, Any] | None
            if current.status == models.GenerationStatus.QUEUED.value:
                # asyncio.timeout_at, not wait_for (see _end_if_cancelled).
                try:
                    async with asyncio.timeout_at(tick_at):
                        message = await events.get()
                except TimeoutError:
                    message = None
                    tick_at = clock.time() + QUEUED_RECHECK_S
            else:
                message = await events.get()
            live: dict[str, Any] = {}
            if message is None:
                latest = current  # a queue-position tick: Redis only
            elif message.get("revoked"):
                await _end_revoked(ctx)
            elif "snapshot" in message:
                latest = models.from_snapshot(message["snapshot"])
                live = message.get("live") or {}
            elif "recheck" in message and message["recheck"]["revision"] <= current.revision:
                continue  # the sweep: nothing was missed
            else:
                # The sweep found a newer revision (its event was lost), or the stream
                # reconnected: the database has the truth.
                if message.get("resync"):
                    # The key's revocation may be among what the stream missed.
                    await ctx.caller()  # raises UNAUTHENTICATED once the key is revoked
                async with ctx.read() as session:
                    latest = await generations.get(session, account_id, generation_id)
            if latest.revision < current.revision:
                continue
            fresh = await present(ctx, latest, live, eager=True)
            if latest.revision == current.revision and _same(fresh, shown):
                continue
            current, shown = latest, fresh
            yield shown


async def _end_revoked(ctx: Context) -> NoReturn:
    """End a subscription whose key's box was ended: the key was revoked, or its account
    banned (issue 13: the keys of a banned account end their boxes too). The key is
    checked again so a ban ends it with FORBIDDEN; a revoked key ends as before."""
    with contextlib.suppress(Unauthenticated):
        await ctx.caller()  # raises FORBIDDEN for a banned account's key
    raise Unauthenticated(REVOKED_MESSAGE)


def _end_if_cancelled() -> None:
    """Raise the cancellation of this subscription if it was swallowed on the way.

    On Python 3.11, ``asyncio.wait_for`` drops a cancellation that arrives just as what it
    waits for completes, and redis-py sends every command under ``wait_for`` when the
    connection has a socket timeout (ours do). A subscription whose client left while it
    was estimating a queue position would otherwise follow its job on, unseen, holding
    its subscription slot. The task still counts the request (``cancelling``)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _same(a: Generation, b: Generation) -> bool:
    return (a.known_position, a.known_eta, a.preview) == (
        b.known_position,
        b.known_eta,
        b.preview,
    )


async def follow_account(ctx: Context, caller: Caller) -> AsyncIterator[Generation]:
    """Every change of any of the caller's jobs, as it happens, until the client leaves
    (or the key is revoked: by its event, or found by the process's sweep)."""
    account_id = caller.account.id
    revisions: dict[str, int] = {}
    async with listening(ctx, caller) as events:
        while True:
            _end_if_cancelled()
            message = await events.get()
            if message.get("revoked"):
                await _end_revoked(ctx)
            if "snapshot" not in message:
                if message.get("resync"):
                    # A reconnect: the revocation may be among what was missed (for a
                    # whole account there is nothing else to re-read).
                    await ctx.caller()  # raises UNAUTHENTICATED once the key is revoked
                continue
            g = models.from_snapshot(message["snapshot"])
            if g.account_id != account_id or revisions.get(g.id, -1) >= g.revision:
                continue
            revisions[g.id] = g.revision
            if models.is_final(g.status):
                revisions.pop(g.id)  # nothing newer can follow a final state
            yield await present(ctx, g, message.get("live"))
