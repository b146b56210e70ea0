"""The arq queue and Redis as the API and the worker share them: JSON serialization, job
names, the dispatcher that turns committed domain events into queue operations and
pub/sub messages, and the measurements behind queue positions and ETAs.

Every key is prefixed with the queue name, so deployments sharing a Redis database do not
see each other's events or measurements.

Each model pool (``billing.catalog``) has its own arq queue, ``pool_queue``: the default
pool's is the deployment's ``queue_name`` itself (jobs queued before pools existed are
still served), another's is ``{queue_name}:pool:{name}``. A pool's workers' heartbeats
and its timings are keyed by its queue (``Keys(pool_queue(...))``); the events channel,
the webhooks queue and cancel flags are the deployment's (``Keys(queue_name)``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.constants import (
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.catalog import DEFAULT_POOL
from billing.db import (
    ApiKeyRevoked,
    Event,
    GenerationAccepted,
    GenerationCancelled,
    GenerationRequeued,
    GenerationUpdated,
    StripeEventReceived,
    WebhookQueued,
)

log = logging.getLogger(__name__)

RUN_GENERATION = "run_generation"
DELIVER_WEBHOOK = "deliver_webhook"
APPLY_STRIPE_EVENT = "apply_stripe_event"
CANCEL_TTL_S = 24 * 3600
WORKER_TTL_S = 30
# How many entries at the front of the queue may be running jobs (see QueueInspector).
RUNNING_SCAN = 256
_EWMA = 0.3  # weight of the newest measurement

# Priorities (issue 13). arq's queue is a sorted set scored by enqueue time (ms), served
# lowest score first. A job is scored ``enqueue time - rank * PRIORITY_STEP_MS`` (rank 0
# low, 1 normal, 2 high): a high job overtakes the normal jobs queued less than one step
# before it, and the low ones queued less than two steps before it, and no others. So
# nothing starves: a job is never overtaken by a job enqueued more than two steps after
# it, whoever's it is, and a low job older than two steps runs before any high job
# queued now. Scores stay in the past (never deferred: arq takes only scores <= now), and
# positions and ETAs need no change: they are ranks in the same sorted set.
PRIORITY_STEP_MS = 30_000


def priority_score(now_ms: int, priority: int, step_ms: int = PRIORITY_STEP_MS) -> int:
    """The queue score of a job of priority rank ``priority`` enqueued at ``now_ms``."""
    return now_ms - max(0, min(2, priority)) * step_ms


def serialize(data: dict[str, Any]) -> bytes:
    # JSON, not pickle: a job carries ids only, and nobody who can write to Redis gets to
    # run code in the worker. A job's result may be an exception (arq stores the error of
    # a job that ran out of tries): it is kept as its type and message.
    return json.dumps(data, separators=(",", ":"), default=_describe).encode()


def _describe(value: object) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def deserialize(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(data)
    return result


# Connect and read timeout of the API's Redis connections (seconds): how long a request
# waits on a stalled Redis before it is answered 503.
REDIS_TIMEOUT_S = 2.0


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


def new_pool(url: str, queue_name: str, *, timeout_s: float = REDIS_TIMEOUT_S) -> ArqRedis:
    """A Redis pool for arq whose every connection has connect and read timeouts, so a
    stalled Redis (SIGSTOP, a half-open connection) fails a command after ``timeout_s``
    instead of hanging it, and a connection broken by a Redis restart is replaced once,
    transparently, on its next command. arq's ``create_pool`` cannot set a read timeout,
    hence this. Nothing connects until the first command."""
    return ArqRedis(
        ConnectionPool.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        ),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
    )


async def connect(
    url: str, queue_name: str, *, timeout_s: float = REDIS_TIMEOUT_S, retries: int = 5
) -> ArqRedis:
    """The API's Redis pool (arq client, rate limiter, broker pub/sub all share it): a
    ``new_pool`` whose first ping is retried ``retries`` times, a second apart, like arq's.
    The workers build theirs with ``new_pool`` too (their supervisor retries)."""
    pool = new_pool(url, queue_name, timeout_s=timeout_s)
    for attempt in range(retries + 1):
        try:
            await pool.ping()
            return pool
        except (RedisConnectionError, RedisTimeoutError):
            if attempt == retries:
                await pool.aclose(close_connection_pool=True)
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


def job_id(generation_id: str) -> str:
    return f"generation:{generation_id}"


def pool_queue(queue_name: str, pool: str) -> str:
    """The arq queue of ``pool`` in the deployment whose queue is ``queue_name``: the one
    place that names it (the API enqueues there, the pool's workers poll it, metrics
    read its depth)."""
    return queue_name if pool == DEFAULT_POOL else f"{queue_name}:pool:{pool}"


def pool_queues(queue_name: str, pools: Iterable[str]) -> dict[str, str]:
    """Pool name → its queue, for each of ``pools`` (e.g. ``Catalog.pools``)."""
    return {pool: pool_queue(queue_name, pool) for pool in pools}


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis names of one deployment (``queue_name``: its queue), or of one pool
    (``queue_name``: ``pool_queue(...)``; only ``timings`` and ``workers`` are a pool's)."""

    queue_name: str

    @property
    def webhooks(self) -> str:
        """The arq queue of webhook deliveries (its own workers: a slow receiver must
        never hold up a GPU)."""
        return f"{self.queue_name}:webhooks"

    @property
    def events(self) -> str:
        """Pub/sub channel of job updates (JSON: {"snapshot": …, "live": …})."""
        return f"{self.queue_name}:events"

    def cancel(self, generation_id: str) -> str:
        return f"{self.queue_name}:cancel:{generation_id}"

    @property
    def timings(self) -> str:
        """Hash of a pool's measured step and job times (``Timings``)."""
        return f"{self.queue_name}:timings"

    @property
    def workers(self) -> str:
        """Sorted set of a pool's workers: worker id → last heartbeat (Unix seconds)."""
        return f"{self.queue_name}:workers"


def size_key(
    version: str,
    width: int,
    height: int,
    kind: str = "text_to_image",
    made: tuple[int, int] | None = None,
) -> str:
    """What step and job times are measured by: the model version, the output size and
    (for other kinds than text-to-image, whose keys predate kinds) the kind. ``made``: the
    size a job upscaled to its output was made at (``kinds.text_to_image.made_size``), a
    job of another shape than one made at the output size."""
    size = f"{width}x{height}" if made is None else f"{made[0]}x{made[1]}>{width}x{height}"
    if kind == "text_to_image":
        return f"{version}:{size}"
    return f"{kind}:{version}:{size}"


# arq's enqueue (``ArqRedis.enqueue_job``) as one atomic script: the same keys, job
# format and expiry, and the same refusal of an id whose job or result exists, in one
# round trip instead of three (WATCH, EXISTS, MULTI/EXEC) — on the accept path of every job.
_ENQUEUE = """
local added = 0
if redis.call('exists', KEYS[1], KEYS[2]) == 0 then
  redis.call('psetex', KEYS[1], ARGV[2], ARGV[1])
  redis.call('zadd', KEYS[3], ARGV[4], ARGV[3])
  added = 1
end
if ARGV[5] then redis.call('publish', ARGV[5], ARGV[6]) end
return added
"""


@dataclass(frozen=True, slots=True)
class _Enqueue:
    """A job accepted, to enqueue; with its first state (``update``), if the same commit
    has it, published in the same round trip."""

    accepted: GenerationAccepted
    update: GenerationUpdated | None


def _paired(events: list[Event]) -> list[Event | _Enqueue]:
    """The events, each acceptance made an ``_Enqueue`` joined with the first update of
    the same job when there is one (submit emits both), in the acceptance's place."""
    accepted = {e.generation_id for e in events if isinstance(e, GenerationAccepted)}
    first: dict[Any, GenerationUpdated] = {}
    for e in events:
        if isinstance(e, GenerationUpdated) and e.snapshot.get("id") in accepted:
            first.setdefault(e.snapshot.get("id"), e)
    joined = {id(update) for update in first.values()}
    paired: list[Event | _Enqueue] = []
    for event in events:
        if isinstance(event, GenerationAccepted):
            paired.append(_Enqueue(event, first.pop(event.generation_id, None)))
        elif id(event) not in joined:
            paired.append(event)
    return paired


class Dispatcher:
    """Performs the side effects of committed events. Call only after commit."""

    def __init__(
        self,
        pool: ArqRedis,
        queue_name: str,
        *,
        clock: Callable[[], int] = timestamp_ms,
        priority_step_ms: int = PRIORITY_STEP_MS,
    ) -> None:
        self.pool = pool
        self.queue_name = queue_name
        self.keys = Keys(queue_name)
        self._enqueue_script = pool.register_script(_ENQUEUE)
        # Milliseconds since the epoch: what enqueue times and priority scores use.
        self.clock = clock
        self.priority_step_ms = priority_step_ms
        self._last_ms = 0

    def pool_queue(self, pool: str) -> str:
        return pool_queue(self.queue_name, pool)

    async def enqueue(
        self,
        function: str,
        argument: str,
        jid: str,
        *,
        announce: str | None = None,
        queue: str | None = None,
        priority: int = 1,
    ) -> bool:
        """Enqueue ``function(argument)`` as arq job ``jid`` now, as arq would; False
        when a job or a result with that id exists (a duplicate enqueue is a no-op).
        ``announce``: an event message published in the same round trip (either way).
        ``queue``: the arq queue (default: the deployment's, the default pool's).
        ``priority``: the job's rank, which moves its score (``priority_score``)."""
        # Strictly increasing per process: jobs enqueued in the same millisecond (a batch's
        # items, requests arriving together) keep their order in the queue instead of
        # being ranked by their random ids.
        now_ms = self._last_ms = max(self.clock(), self._last_ms + 1)
        job = serialize_job(function, (argument,), {}, None, now_ms, serializer=serialize)
        score = priority_score(now_ms, priority, self.priority_step_ms)
        args: list[Any] = [job, expires_extra_ms, jid, score]
        if announce is not None:
            args += [self.keys.events, announce]
        added = await self._enqueue_script(
            keys=[job_key_prefix + jid, result_key_prefix + jid, queue or self.queue_name],
            args=args,
        )
        return bool(added)

    async def dispatch(self, events: Iterable[Event]) -> None:
        # The state is committed. An undelivered update is healed by the next one (and
        # subscribers re-read on join); an unenqueued job is re-enqueued by the sweeper;
        # an unsent cancel still leaves the job cancelled and uncharged. So a Redis
        # hiccup delays, never loses.
        pending = _paired(list(events))
        for index, event in enumerate(pending):
            try:
                await self._dispatch(event)
            except (RedisError, OSError) as exc:
                # Redis is unreachable: the rest would only wait out the same timeout.
                skipped = [type(e).__name__ for e in pending[index:]]
                log.warning(
                    "Redis unavailable (%s: %s); not dispatched, healed later: %s",
                    type(exc).__name__, exc, skipped,
                )  # fmt: skip
                return
            except Exception:
                log.exception("could not dispatch %r", event)

    @staticmethod
    def _message(event: GenerationUpdated) -> str:
        message = {"snapshot": event.snapshot, "live": event.live}
        return json.dumps(message, separators=(",", ":"))

    async def _dispatch(self, event: Event | _Enqueue) -> None:
        if isinstance(event, _Enqueue):
            accepted = event.accepted
            # The job id makes a duplicate enqueue (retry, sweeper) a no-op.
            await self.enqueue(
                RUN_GENERATION,
                accepted.generation_id,
                job_id(accepted.generation_id),
                announce=None if event.update is None else self._message(event.update),
                queue=self.pool_queue(accepted.pool),
                priority=accepted.priority,
            )
        elif isinstance(event, GenerationRequeued):
            # The dead run's arq job (its queue entry, job, in-progress, retry and result
            # keys) would refuse or delay the enqueue under the same id: clear it first.
            # Same id afterwards, so cancellation and queue positions keep finding it.
            jid = job_id(event.generation_id)
            queue = self.pool_queue(event.pool)
            async with self.pool.pipeline(transaction=True) as pipe:
                pipe.zrem(queue, jid)
                for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix,
                               result_key_prefix):  # fmt: skip
                    pipe.delete(prefix + jid)
                await pipe.execute()
            await self.enqueue(
                RUN_GENERATION, event.generation_id, jid, queue=queue, priority=event.priority
            )
        elif isinstance(event, GenerationUpdated):
            await self.pool.publish(self.keys.events, self._message(event))
        elif isinstance(event, ApiKeyRevoked):
            # Every API process ends the subscriptions opened with this key (the broker).
            revoked = {"revoked_key": event.api_key_id, "account_id": event.account_id}
            await self.pool.publish(self.keys.events, json.dumps(revoked, separators=(",", ":")))
        elif isinstance(event, WebhookQueued):
            # One job per event and due time: a duplicate enqueue of the same attempt
            # collapses; the attempt itself leases the event, so even two jobs send once.
            await self.pool.enqueue_job(
                DELIVER_WEBHOOK,
                event.event_id,
                _job_id=f"webhook:{event.event_id}:{int(event.due.timestamp() * 1000)}",
                _queue_name=self.keys.webhooks,
                _defer_until=event.due,
            )
        elif isinstance(event, StripeEventReceived):
            # A fresh job id each time: arq keeps a finished job's id for an hour, and a
            # requeue must not be refused. Applying locks the event, so duplicates are no-ops.
            await self.pool.enqueue_job(
                APPLY_STRIPE_EVENT,
                event.event_id,
                _job_id=f"stripe:{event.event_id}:{secrets.token_hex(4)}",
                _queue_name=self.keys.webhooks,
            )
        elif isinstance(event, GenerationCancelled):
            jid = job_id(event.generation_id)
            async with self.pool.pipeline(transaction=True) as pipe:
                # Queued: off its pool's queue, so it never runs. Processing: the flag the
                # worker polls between steps.
                pipe.zrem(self.pool_queue(event.pool), jid)
                pipe.delete(job_key_prefix + jid)
                pipe.set(self.keys.cancel(event.generation_id), b"1", ex=CANCEL_TTL_S)
                await pipe.execute()


# A due job taken off the front of a pool's queue to join a batch (gpu_worker/batching.py),
# the way an arq worker starts one: only while it is queued, due (score <= ARGV[2]) and
# not in progress. Its in-progress key is set (value: the taker's token) as arq's own
# start sets it, so a worker that already read its id skips it (arq checks that key under
# WATCH before it starts a job: set before, arq sees it; set between, arq's transaction
# fails), and its job key is deleted, as a cancel does, so even a late reader finds no job
# to run and a requeue (the sweeper's, or GenerationRequeued) may enqueue it afresh.
_TAKE = """
local score = redis.call('zscore', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) or redis.call('exists', KEYS[2]) == 1 then
  return 0
end
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('del', KEYS[3])
redis.call('psetex', KEYS[2], ARGV[4], ARGV[3])
return 1
"""
# The in-progress mark of a taken job, deleted only if it is still the taker's (a requeue
# may have replaced it with another run's since).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class QueueHead:
    """The due jobs at the front of a pool's arq queue, as the worker's batching reads
    and takes them (``gpu_worker/batching.py``)."""

    def __init__(self, redis: ArqRedis, *, clock: Callable[[], int] = timestamp_ms) -> None:
        self.redis = redis
        self.clock = clock
        self._take = redis.register_script(_TAKE)
        self._release = redis.register_script(_RELEASE)

    async def due(self, queue: str, limit: int) -> list[str]:
        """The generation ids of the first ``limit`` due entries of ``queue``, in the order
        arq serves them (running jobs included: arq keeps them in the queue)."""
        jids = await self.redis.zrangebyscore(queue, "-inf", self.clock(), start=0, num=limit)
        prefix = job_id("")
        ids = [j.decode() if isinstance(j, bytes) else str(j) for j in jids]
        return [j.removeprefix(prefix) for j in ids if j.startswith(prefix)]

    async def take(self, queue: str, generation_id: str, token: str, ttl_ms: int) -> bool:
        """Take the job off ``queue`` so that no arq worker runs it (``_TAKE``), marked in
        progress by ``token`` for ``ttl_ms``. False: no longer queued, not due, or
        started by a worker meanwhile."""
        jid = job_id(generation_id)
        taken = await self._take(
            keys=[queue, in_progress_key_prefix + jid, job_key_prefix + jid],
            args=[jid, self.clock(), token, ttl_ms],
        )
        return bool(taken)

    async def release(self, generation_id: str, token: str) -> None:
        """Drop the in-progress mark ``take`` set, if it is still ``token``'s."""
        await self._release(keys=[in_progress_key_prefix + job_id(generation_id)], args=[token])


class Timings:
    """Recent measured seconds per denoising step and per job, by model version and size,
    kept as moving averages in one Redis hash. They make ETAs; they are estimates."""

    def __init__(self, redis: ArqRedis, queue_name: str) -> None:
        self.redis = redis
        self.keys = Keys(queue_name)

    async def record(self, size: str, *, step_seconds: float | None, job_seconds: float) -> None:
        fields = [f"step:{size}", f"job:{size}", "job:*"]
        old = await self.redis.hmget(self.keys.timings, fields)  # type: ignore[misc]  # redis-py types async results as Awaitable | value
        new = [step_seconds, job_seconds, job_seconds]
        update: dict[str, str] = {}
        for name, previous, value in zip(fields, old, new, strict=True):
            if value is None:
                continue
            if previous is not None:
                value = _EWMA * value + (1 - _EWMA) * float(previous)
            update[name] = f"{value:.6f}"
        await self.redis.hset(self.keys.timings, mapping=update)  # type: ignore[misc]  # as above

    async def get(self, *names: str) -> list[float | None]:
        values = await self.redis.hmget(self.keys.timings, list(names))  # type: ignore[misc]  # as above
        return [None if v is None else float(v) for v in values]

    async def workers(self) -> int:
        """Workers that sent a heartbeat within the last WORKER_TTL_S."""
        return int(await self.redis.zcount(self.keys.workers, time.time() - WORKER_TTL_S, "+inf"))


# A queued job's rank, the running jobs among those ahead of it (arq keeps a running job
# in the queue; only the first ARGV[2] entries are checked), its size's timings and the
# live workers. A job not in the queue has rank -1.
_ETA_QUEUED = """
local rank = redis.call('zrank', KEYS[1], ARGV[1])
local running = 0
if not rank then
  rank = -1
elseif rank > 0 then
  local ahead = redis.call('zrange', KEYS[1], 0, math.min(rank, tonumber(ARGV[2])) - 1)
  for _, jid in ipairs(ahead) do
    running = running + redis.call('exists', ARGV[3] .. jid)
  end
end
local timed = redis.call('hmget', KEYS[2], ARGV[4], ARGV[5], 'job:*')
local workers = redis.call('zcount', KEYS[3], ARGV[6], '+inf')
return {rank, running, timed[1], timed[2], timed[3], workers}
"""


class QueueInspector:
    """Queue position and ETA of a job, for the API: each within the job's pool (its
    queue, its workers, its timings)."""

    def __init__(self, redis: ArqRedis, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.timings = Timings(redis, queue_name)  # the default pool's
        self._eta_script = redis.register_script(_ETA_QUEUED)

    def _timings(self, pool: str) -> Timings:
        if pool == DEFAULT_POOL:
            return self.timings
        return Timings(self.redis, pool_queue(self.queue_name, pool))

    async def live_workers(self, pools: Iterable[str]) -> dict[str, int]:
        """Per pool, the workers that sent a heartbeat within WORKER_TTL_S (a pool with
        none cannot run its jobs now). One round trip."""
        names = list(pools)
        since = time.time() - WORKER_TTL_S
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in names:
                pipe.zcount(Keys(pool_queue(self.queue_name, pool)).workers, since, "+inf")
            counts = await pipe.execute()
        return {pool: int(n) for pool, n in zip(names, counts, strict=True)}

    async def job_seconds(self, pools: Iterable[str]) -> dict[str, float | None]:
        """Per pool, the moving average of its jobs' run time, any size (None: none
        measured yet). One round trip."""
        names = list(pools)
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in names:
                pipe.hget(self._timings(pool).keys.timings, "job:*")
            values = await pipe.execute()
        return {p: None if v is None else float(v) for p, v in zip(names, values, strict=True)}

    async def depths(self, pools: Iterable[str]) -> dict[str, int]:
        """Per pool, the jobs in its queue: waiting, or started by a worker (arq keeps a
        job in the queue until it ends). One round trip (administration statistics)."""
        names = list(pools)
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in names:
                pipe.zcard(pool_queue(self.queue_name, pool))
            counts = await pipe.execute()
        return {pool: int(n) for pool, n in zip(names, counts, strict=True)}

    async def position(self, generation_id: str, pool: str = DEFAULT_POOL) -> int | None:
        """Jobs waiting ahead of this one (0: it is next); None if not queued.

        arq keeps a job in the queue's sorted set while it runs, so the jobs a worker has
        already started are not counted. They sit at the front of the queue (a running job
        is one whose turn came), so only the first ``RUNNING_SCAN`` entries are checked.
        """
        position, _ = await self.eta_queued(generation_id, "", 0, pool)
        return position

    async def eta_queued(
        self, generation_id: str, size: str, steps: int, pool: str = DEFAULT_POOL
    ) -> tuple[int | None, float | None]:
        """(position, seconds until done) of a job queued on ``pool`` (see ``position``);
        the ETA is None until measured (and the pool's queue is shared by its live workers
        only). One round trip: a script counts the running jobs ahead in Redis itself."""
        keys = Keys(pool_queue(self.queue_name, pool))
        rank, running, step, job, any_job, workers = await self._eta_script(
            keys=[keys.queue_name, keys.timings, keys.workers],
            args=[
                job_id(generation_id), RUNNING_SCAN, in_progress_key_prefix,
                f"step:{size}", f"job:{size}", time.time() - WORKER_TTL_S,
            ],
        )  # fmt: skip
        position = None if int(rank) < 0 else int(rank) - int(running)
        step, job, any_job = (None if v is None else float(v) for v in (step, job, any_job))
        own = job if job is not None else (step * steps if step is not None else any_job)
        if position is None or own is None or any_job is None:
            return position, None
        return position, round(position * any_job / max(1, int(workers)) + own, 2)

    async def eta_processing(
        self, size: str, step: int, total_steps: int, pool: str = DEFAULT_POOL
    ) -> float | None:
        [per_step] = await self._timings(pool).get(f"step:{size}")
        if per_step is None:
            return None
        return round(max(0, total_steps - step) * per_step, 2)
