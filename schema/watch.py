"""The safety net of live subscriptions: one sweep per API process, not one timer per
subscriber.

Subscriptions follow events (``runtime/events.py``): every change of a job and every
revoked key is published after its commit, and a lost event stream makes every subscriber
re-read. What no event announces — a publication that failed after its commit, a key
revoked by hand in SQL — is caught here: every ``interval_s`` the sweep takes the API keys
of all of this process's open subscriptions and the jobs they follow, and in one
transaction reads which keys are still active and each job's stored revision. A revoked
key's subscriptions end exactly as its revocation event would end them; each followed
job's subscribers are told its revision and re-read the job only if it is newer than what
they have shown. An idle subscription costs no database work of its own: a thousand of
them cost one transaction per interval, and with none open there is no query at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import repository
from runtime.events import Broker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one sweep did."""

    keys: int  # API keys of open subscriptions, checked
    jobs: int  # jobs followed one by one, whose revision was read
    revoked: frozenset[str]  # keys found revoked (or gone): their subscriptions ended
    queried: bool  # False when nothing was open: no transaction at all


class SubscriptionWatch:
    """Runs the sweep every ``interval_s`` while started (the app's lifespan)."""

    def __init__(
        self, broker: Broker, sessions: async_sessionmaker[AsyncSession], interval_s: float
    ) -> None:
        self.broker = broker
        self.sessions = sessions
        self.interval_s = interval_s
        # Called with each completed sweep, in the event loop (tests and metrics).
        self.observers: list[Callable[[Sweep], object]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fluxgate-subscription-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database is down or slow: events still flow; try again next time.
                log.warning("subscription sweep failed", exc_info=True)

    async def sweep(self) -> Sweep:
        key_ids, job_ids = self.broker.followed()
        revoked: frozenset[str] = frozenset()
        if key_ids or job_ids:
            async with self.sessions() as session:  # one transaction, read only
                active = (
                    await repository.active_key_ids(session, [uuid.UUID(k) for k in key_ids])
                    if key_ids
                    else set()
                )
                revisions = (
                    await repository.generation_revisions(session, sorted(job_ids))
                    if job_ids
                    else {}
                )
            revoked = frozenset(key_ids - {str(k) for k in active})
            # Revocations first: an ended box shows REVOKED ahead of anything put in it.
            for key_id in revoked:
                self.broker.revoke(key_id)
            for job_id, revision in revisions.items():
                self.broker.recheck(job_id, revision)
        done = Sweep(
            keys=len(key_ids),
            jobs=len(job_ids),
            revoked=revoked,
            queried=bool(key_ids or job_ids),
        )
        for observer in self.observers:
            observer(done)
        return done
