"""Which queued jobs join a running job's pipeline call (``FLUXGATE_BATCH_MAX`` > 1).

A GPU denoises several images of the same size in one call for less than the time of
the calls one by one, so when the job a worker has just claimed can batch (its kind's
``batch_key`` is not None: a plain one-image text-to-image job), the worker looks at the
due jobs at the front of the job's pool's arq queue (the first ``SCAN_PER_SLOT`` per free
slot) for queued jobs of the same key, up to ``batch_max - 1``. Each one is:

1. read from Postgres: still queued, same kind and ``batch_key``;
2. taken off the arq queue atomically (``runtime.queue.QueueHead.take``): only while it
   is still there, due and not started; marked in progress the way arq marks a job it
   starts, so no arq worker runs it, and its job key deleted;
3. claimed with the same conditional ``begin_processing`` an arq run does (attempts, lease,
   the ``started`` event and webhook). A job cancelled meanwhile is not claimed: it is
   dropped (its in-progress mark released). A claim that fails on a store error puts the
   job back on its queue through ``GenerationRequeued``, which clears its arq keys and
   enqueues it again under the same id; were Redis down too, the sweeper would requeue it
   (queued) or recover it after its lease (processing).

From then on each member lives as a job run alone does (``gpu_worker.worker``): its own
progress writes, cancel flag and lease, its own stored outputs and settlement. Batching
is an optimisation: a store error while looking ends the look, and the jobs found so far
(or none) run.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

import kinds
from billing.catalog import pool_of
from billing.db import GenerationRequeued
from billing.models import Generation
from billing.service import generations
from runtime.queue import QueueHead, pool_queue

if TYPE_CHECKING:
    from gpu_worker.worker import WorkerState

log = logging.getLogger(__name__)

# Due entries looked at per free slot of the batch: a few incompatible jobs at the front
# do not stop batching, and a job far back in the queue never overtakes many others.
SCAN_PER_SLOT = 4
# The in-progress mark of a taken job outlives the run, as arq's own does (timeout + 10 s).
IN_PROGRESS_EXTRA_S = 10

Params = Callable[[Generation], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Member:
    """A job claimed for a batch, with its frozen params and the token of its in-progress
    mark (None: the job arq started, whose mark is arq's)."""

    generation: Generation
    params: dict[str, Any]
    token: str | None = None


def batch_key(batch_max: int, generation: Generation, params: dict[str, Any]) -> Hashable | None:
    """The job's batch key, or None when it runs alone (batching off, or a kind or
    params that do not batch)."""
    if batch_max <= 1:
        return None
    kind = kinds.registry.find(generation.kind)
    if kind is None:
        return None
    return kind.batch_key(params)


async def gather(
    state: WorkerState, generation: Generation, key: Hashable, params_of: Params
) -> list[Member]:
    """Up to ``batch_max - 1`` queued jobs of ``generation``'s kind and ``key``, each
    taken off the queue and claimed for this run (see the module docstring)."""
    wanted = state.settings.batch_max - 1
    queue = pool_queue(state.settings.queue_name, pool_of(generation.params))
    head = QueueHead(state.dispatcher.pool)
    ttl_ms = (state.settings.job_timeout_s + IN_PROGRESS_EXTRA_S) * 1000
    members: list[Member] = []
    try:
        candidates = await head.due(queue, wanted * SCAN_PER_SLOT + 1)
        for candidate in candidates:
            if len(members) == wanted:
                break
            if candidate == generation.id:
                continue
            member = await _join(state, head, queue, candidate, generation.kind, key,
                                 params_of, ttl_ms)  # fmt: skip
            if member is not None:
                members.append(member)
    except (SQLAlchemyError, RedisError, OSError) as exc:
        log.warning("batching of %s stopped looking: %s", generation.id, exc)
    return members


async def _join(
    state: WorkerState,
    head: QueueHead,
    queue: str,
    generation_id: str,
    kind: str,
    key: Hashable,
    params_of: Params,
    ttl_ms: int,
) -> Member | None:
    async with state.store.sessions() as session:
        queued = await generations.find_queued(session, generation_id)
    if queued is None or queued.kind != kind:
        return None
    try:
        params = params_of(queued)
    except Exception:  # its own run reports the problem (it fails there)
        return None
    if batch_key(state.settings.batch_max, queued, params) != key:
        return None
    token = secrets.token_hex(8)
    if not await head.take(queue, generation_id, token, ttl_ms):
        return None  # started, cancelled or requeued meanwhile
    try:
        async with state.store.unit_of_work() as uow:
            claimed = await generations.begin_processing(uow, generation_id)
    except BaseException:
        # Off the queue, and queued or (if the claim committed) processing: either way
        # its own arq job again, which claims it anew.
        await put_back(state, queued)
        raise
    if claimed is None:  # cancelled (or finished) since it was read
        await head.release(generation_id, token)
        return None
    return Member(claimed, params, token)


async def put_back(state: WorkerState, generation: Generation) -> None:
    """Give a taken job back to its queue as its own arq job, whatever its state: the run
    there claims it again (queued, or processing as after a dead run) or skips it
    (final). Redis errors are logged by the dispatcher; the sweeper heals them."""
    await state.dispatcher.dispatch(
        [GenerationRequeued(generation.id, pool_of(generation.params), generation.priority)]
    )


async def release(state: WorkerState, member: Member) -> None:
    """Drop a finished member's in-progress mark (best effort: it expires anyway)."""
    if member.token is None:
        return
    try:
        await QueueHead(state.dispatcher.pool).release(member.generation.id, member.token)
    except (RedisError, OSError) as exc:
        log.debug("in-progress mark of %s left to expire: %s", member.generation.id, exc)
