"""The API side of job events: one Redis pub/sub connection per API process, fanned out
in process to every subscription that follows a job or an account.

Workers and API processes publish committed changes (``Dispatcher``); every API process
receives every change, so a client connected to one process sees jobs submitted through
another. A subscription never trusts the stream alone: it reads the job from the database
when it starts and whenever the stream may have missed something (a reconnect).

A revoked API key is announced on the same channel: every subscription opened with it is
ended at once (``Mailbox.ended``), busy or idle. ``SubscriberSlots`` counts each account's
open subscriptions across API processes, for the plan's ``max_subscriptions``.

What no event announces (a publication that failed after its commit, a key revoked by hand
in SQL) is caught by one sweep per API process (``schema/watch.py``), not by each
subscriber: it reads ``followed()``, and ends the boxes of revoked keys (``revoke``) and
tells each followed job's boxes its stored revision (``recheck``), all from one
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
PING_S = 10.0
DEAD_S = 30.0
RESYNC: dict[str, Any] = {"resync": True}
# A key revoked this recently still ends a subscription that registers after the news
# arrived (it authenticated just before the revocation committed).
REVOKED_MEMORY_S = 60.0


class Broker:
    def __init__(self, redis: Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self._by_job: dict[str, set[Mailbox]] = {}
        self._by_account: dict[str, set[Mailbox]] = {}
        self._by_key: dict[str, set[Mailbox]] = {}
        self._revoked: dict[str, float] = {}  # key id → when the news arrived (monotonic)
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.slots = SubscriberSlots(redis, f"{channel}:subscribers")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fluxgate-broker")
        await asyncio.wait_for(self.ready.wait(), timeout=10)
        await self.slots.start()

    async def stop(self) -> None:
        await self.slots.stop()
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
        if not (self._by_job or self._by_account) and _is_job_update(data):
            return  # nobody here follows a job: not even worth decoding (most messages)
        try:
            self._fan_out(json.loads(data))
        except Exception:
            log.exception("dropped a malformed event message")

    def _fan_out(self, message: dict[str, Any]) -> None:
        if "revoked_key" in message:
            self.revoke(str(message["revoked_key"]))
            return
        snapshot = message.get("snapshot") or {}
        targets = self._by_job.get(str(snapshot.get("id")), set()) | self._by_account.get(
            str(snapshot.get("account_id")), set()
        )
        for queue in targets:
            queue.put(message)

    def followed(self) -> tuple[set[str], set[str]]:
        """The API key ids behind this process's open subscriptions, and the ids of the
        jobs they follow one by one (copies: the sweep reads them across awaits)."""
        return set(self._by_key), set(self._by_job)

    def revoke(self, key_id: str) -> None:
        """End every box opened with the key (``REVOKED``), and any opened with it in the
        next ``REVOKED_MEMORY_S``: its revocation event arrived, or the sweep found it
        revoked."""
        now = time.monotonic()
        self._revoked[key_id] = now
        for old in [k for k, at in self._revoked.items() if now - at > REVOKED_MEMORY_S]:
            del self._revoked[old]
        for mailbox in self._by_key.get(key_id, set()):
            mailbox.end(REVOKED)

    def recheck(self, generation_id: str, revision: int) -> None:
        """Tell the boxes following one job its revision in the database (the sweep's
        safety net): a subscriber that has shown an older one missed an event, and
        re-reads the job."""
        for queue in self._by_job.get(generation_id, set()):
            queue.put({"recheck": {"revision": revision}})

    def _broadcast(self, message: dict[str, Any]) -> None:
        for queues in (*self._by_job.values(), *self._by_account.values()):
            for queue in queues:
                queue.put(message)

    @contextlib.contextmanager
    def listen(
        self,
        *,
        generation_id: str | None = None,
        account_id: str | None = None,
        api_key_id: str | None = None,
    ) -> Iterator[Mailbox]:
        """A queue of the messages about one job or one account, while in the block.
        With ``api_key_id``, the box ends with ``REVOKED`` when that key is revoked."""
        index, key = (
            (self._by_job, generation_id) if generation_id else (self._by_account, account_id)
        )
        assert key, "listen to a job or an account"
        queue = Mailbox()
        entries = [(index, key)]
        if api_key_id is not None:
            entries.append((self._by_key, api_key_id))
            if api_key_id in self._revoked:
                queue.end(REVOKED)
        for where, name in entries:
            where.setdefault(name, set()).add(queue)
        try:
            yield queue
        finally:
            for where, name in entries:
                listeners = where.get(name)
                if listeners is not None:
                    listeners.discard(queue)
                    if not listeners:
                        del where[name]


def _is_job_update(data: bytes | str) -> bool:
    """A job's new state, as the Dispatcher publishes it (``{"snapshot": ...``), not a
    revocation (which every process must hear, followed or not)."""
    prefix = data[:12]
    return prefix == (b'{"snapshot":' if isinstance(prefix, bytes) else '{"snapshot":')


_FINAL = frozenset({"completed", "failed", "cancelled"})


def _is_final(message: dict[str, Any]) -> bool:
    return (message.get("snapshot") or {}).get("status") in _FINAL


REVOKED: dict[str, Any] = {"revoked": True}


class Mailbox:
    """A subscriber's bounded inbox. The fan-out never blocks on a slow subscriber: when
    the box is full, the oldest message that is not a final state is dropped (messages are
    whole snapshots, so a later one supersedes it), and a job's final state is kept.

    ``end`` overrides everything: once ended, ``get`` returns that message ahead of any
    still waiting (a revoked key's subscriber must see nothing more)."""

    def __init__(self, maxsize: int = QUEUE_SIZE) -> None:
        self.maxsize = maxsize
        self._items: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()
        self.ended: dict[str, Any] | None = None

    def end(self, message: dict[str, Any]) -> None:
        self.ended = message
        self._items.clear()
        self._ready.set()

    def put(self, message: dict[str, Any]) -> None:
        if self.ended is not None:
            return
        if len(self._items) >= self.maxsize:
            victim = next((m for m in self._items if not _is_final(m)), self._items[0])
            self._items.remove(victim)
        self._items.append(message)
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        while not self._items and self.ended is None:
            self._ready.clear()
            await self._ready.wait()
        if self.ended is not None:
            return self.ended
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


# KEYS[1]: the account's sorted set (member → expiry, Redis server time). ARGV: limit,
# member, ttl. Expired members (a crashed process's) are dropped first; then the member
# is added if the account has room. Atomic, so concurrent opens never exceed the limit.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""

# KEYS[1]: as above. ARGV: ttl, members... Pushes the expiry of members still present.
_REFRESH = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', t + tonumber(ARGV[1]), ARGV[i])
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 1)
return 1
"""


class SubscriberSlots:
    """Open subscriptions per account, counted across API processes: one Redis sorted set
    per account, one member per open subscription, scored with its expiry. This process
    refreshes its own members every ``heartbeat_s`` (one round trip per account, not per
    subscriber); a crashed process's members expire after ``ttl_s``."""

    def __init__(
        self, redis: Redis, prefix: str, *, ttl_s: float = 60.0, heartbeat_s: float = 20.0
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self._held: dict[str, set[str]] = {}
        self._acquire: AsyncScript = redis.register_script(_ACQUIRE)
        self._refresh: AsyncScript = redis.register_script(_REFRESH)
        self._task: asyncio.Task[None] | None = None

    def key(self, account_id: str) -> str:
        return f"{self.prefix}:{account_id}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name="fluxgate-subscriber-slots")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def acquire(self, account_id: str, limit: int) -> str | None:
        """A slot (its member id) for one more subscription, or None when the account
        already has ``limit`` open."""
        member = uuid.uuid4().hex
        granted = await self._acquire(keys=[self.key(account_id)], args=[limit, member, self.ttl_s])
        if not granted:
            return None
        self._held.setdefault(account_id, set()).add(member)
        return member

    async def release(self, account_id: str, member: str) -> None:
        held = self._held.get(account_id)
        if held is not None:
            held.discard(member)
            if not held:
                del self._held[account_id]
        # Best effort: a slot that cannot be removed now expires after ttl_s.
        with contextlib.suppress(Exception):
            await self.redis.zrem(self.key(account_id), member)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            for account_id, members in list(self._held.items()):
                try:
                    await self._refresh(keys=[self.key(account_id)], args=[self.ttl_s, *members])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("could not refresh subscriber slots", exc_info=True)
