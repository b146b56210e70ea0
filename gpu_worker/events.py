"""The API side of job events: one Redis pub/sub connection per API process, fanned out
in process to every subscription that follows a job or an account.

Workers and API processes publish committed changes (``Dispatcher``); every API process
receives every change, so a client connected to one process sees jobs submitted through
another. A subscription never trusts the stream alone: it reads the job from the database
when it starts and whenever the stream may have missed something (a reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
PING_S = 10.0
DEAD_S = 30.0
RESYNC: dict[str, Any] = {"resync": True}


class Broker:
    def __init__(self, redis: Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self._by_job: dict[str, set[Mailbox]] = {}
        self._by_account: dict[str, set[Mailbox]] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fluxgate-broker")
        await asyncio.wait_for(self.ready.wait(), timeout=10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        """Listen until stopped, whatever happens: a lost or half-open connection is
        replaced (pinged every PING_S; silence for DEAD_S means dead), a bad message is
        dropped, and subscribers re-read the database after a reconnect."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if self.ready.is_set():
                    # Reconnected: whatever was published meanwhile is lost to us.
                    self._broadcast(RESYNC)
                self.ready.set()
                heard = pinged = time.monotonic()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    now = time.monotonic()
                    if message is not None:
                        heard = now
                        if message.get("type") == "message":
                            self._deliver(message["data"])
                    if now - heard > DEAD_S:
                        raise ConnectionError("no answer to pings: reconnecting")
                    if now - pinged > PING_S:
                        await pubsub.ping()
                        pinged = now
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event stream lost; reconnecting", exc_info=True)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    def _deliver(self, data: bytes | str) -> None:
        try:
            self._fan_out(json.loads(data))
        except Exception:
            log.exception("dropped a malformed event message")

    def _fan_out(self, message: dict[str, Any]) -> None:
        snapshot = message.get("snapshot") or {}
        targets = self._by_job.get(str(snapshot.get("id")), set()) | self._by_account.get(
            str(snapshot.get("account_id")), set()
        )
        for queue in targets:
            queue.put(message)

    def _broadcast(self, message: dict[str, Any]) -> None:
        for queues in (*self._by_job.values(), *self._by_account.values()):
            for queue in queues:
                queue.put(message)

    @contextlib.contextmanager
    def listen(
        self, *, generation_id: str | None = None, account_id: str | None = None
    ) -> Iterator[Mailbox]:
        """A queue of the messages about one job or one account, while in the block."""
        index, key = (
            (self._by_job, generation_id) if generation_id else (self._by_account, account_id)
        )
        assert key, "listen to a job or an account"
        queue = Mailbox()
        index.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            listeners = index.get(key)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    del index[key]


_FINAL = frozenset({"completed", "failed", "cancelled"})


def _is_final(message: dict[str, Any]) -> bool:
    return (message.get("snapshot") or {}).get("status") in _FINAL


class Mailbox:
    """A subscriber's bounded inbox. The fan-out never blocks on a slow subscriber: when
    the box is full, the oldest message that is not a final state is dropped (messages are
    whole snapshots, so a later one supersedes it), and a job's final state is kept."""

    def __init__(self, maxsize: int = QUEUE_SIZE) -> None:
        self.maxsize = maxsize
        self._items: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()

    def put(self, message: dict[str, Any]) -> None:
        if len(self._items) >= self.maxsize:
            victim = next((m for m in self._items if not _is_final(m)), self._items[0])
            self._items.remove(victim)
        self._items.append(message)
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)
