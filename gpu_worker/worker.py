"""The arq worker: runs one generation at a time, records progress, stores the image,
settles the credits, and sweeps jobs whose worker vanished.

A run holds a lease on its job, renewed in the database every ``job_heartbeat_s``; the
sweeper (every ``sweep_interval_s``) gives a job whose lease expired to another run, or
fails it once ``job_max_tries`` runs have died, and fails jobs queued longer than
``max_queue_wait_s``. ``fluxgate worker`` runs the worker under a supervisor
(``gpu_worker/supervisor.py``) that rebuilds it, models still loaded, after Redis drops.

arq runs a job *at least* once. Every step here is safe to repeat: claiming the job is a
conditional state change, a run that does not complete the job deletes its image, and
settlement is keyed per job in the ledger, so a job run twice is charged once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Function, Retry, Worker, func
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

import kinds
from billing.catalog import Catalog
from billing.db import Store, UnitOfWork, make_engine, make_sessionmaker
from billing.models import Generation
from billing.service import generations
from billing.service.generations import NewAsset
from gpu_worker import sweeper
from gpu_worker.pipeline import Interrupted, PipelineRunner, RenderJob
from gpu_worker.supervisor import Supervisor
from kinds.base import model_ref
from runtime.queue import (
    RUN_GENERATION,
    WORKER_TTL_S,
    Dispatcher,
    Keys,
    Timings,
    deserialize,
    new_pool,
    serialize,
    size_key,
)
from runtime.settings import Settings, get_settings
from runtime.storage import LocalStorage, Storage

log = logging.getLogger(__name__)

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

FAILURE_MESSAGE = "Image generation failed; the credits were released"
TIMEOUT_MESSAGE = "Image generation timed out; the credits were released"
STOPPED = "stopped: cancelled or finished elsewhere"
RETRY_DEFER_S = 5
# The job gives up on its own this long before arq's timeout, so it can still mark the
# job failed and release its credits (arq's cancellation would leave them to the sweeper).
TIMEOUT_MARGIN_S = 5


@dataclass
class WorkerState:
    settings: Settings
    engine: AsyncEngine
    # Its units of work dispatch their events after commit (through ``dispatcher``).
    store: Store
    catalog: Catalog
    runner: PipelineRunner
    storage: Storage
    dispatcher: Dispatcher
    timings: Timings


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    catalog = Catalog.load(settings.models)
    runner: PipelineRunner | None = ctx.get("runner")
    if runner is None:
        runner = PipelineRunner(catalog, device=settings.device, dtype=settings.dtype)
        await asyncio.to_thread(runner.load_all)
        # Kept in ctx: a worker rebuilt after a Redis outage (same ctx) reuses the models.
        ctx["runner"] = runner
    engine = make_engine(settings.database_url, pool_size=2, max_overflow=2)
    redis: ArqRedis = ctx["redis"]
    dispatcher = Dispatcher(redis, settings.queue_name)
    ctx["state"] = WorkerState(
        settings=settings,
        engine=engine,
        store=Store(make_sessionmaker(engine), dispatcher.dispatch),
        catalog=catalog,
        runner=runner,
        storage=LocalStorage(settings.storage_dir, settings.public_base),
        dispatcher=dispatcher,
        timings=Timings(redis, settings.queue_name),
    )
    ctx["heartbeat"] = asyncio.create_task(_heartbeat(redis, Keys(settings.queue_name)))
    ctx["sweeper"] = asyncio.create_task(
        sweeper.sweep_periodically(settings.sweep_interval_s, lambda: sweep_stale(ctx))
    )


async def _heartbeat(redis: ArqRedis, keys: Keys) -> None:
    """Announce this worker (ETAs divide the queue among the live workers)."""
    worker_id = uuid.uuid4().hex
    try:
        while True:
            now = time.time()
            try:
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.zadd(keys.workers, {worker_id: now})
                    pipe.zremrangebyscore(keys.workers, "-inf", now - 10 * WORKER_TTL_S)
                    await pipe.execute()
            except (RedisError, OSError) as exc:  # the supervisor handles the outage
                log.debug("worker heartbeat not sent: %s", exc)
            await asyncio.sleep(WORKER_TTL_S / 3)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await redis.zrem(keys.workers, worker_id)


async def shutdown(ctx: dict[str, Any]) -> None:
    # Popped: after a Redis outage the same ctx serves the rebuilt worker (the runner stays).
    for name in ("sweeper", "heartbeat"):
        task: asyncio.Task[None] | None = ctx.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    state: WorkerState | None = ctx.pop("state", None)
    if state is not None:
        await state.engine.dispose()


class _Live:
    """Between the pipeline thread and the event loop, for one running job.

    The pipeline thread only stores the latest step (and preview) and checks a flag; the
    loop writes progress at most every ``progress_interval_s`` (each write is published
    to subscribers after commit) and polls the job's cancel flag as often. So progress
    and cancellation never slow the denoising loop, and a cancel stops the run at the next
    step boundary.
    """

    def __init__(self, state: WorkerState, generation: Generation) -> None:
        self.state = state
        self.generation = generation
        self.size = size_key(
            generation.version, generation.width, generation.height, generation.kind
        )
        self.latest: tuple[int, int] | None = None  # set from the pipeline thread
        self.preview: bytes | None = None
        self.step_times: list[float] = []
        self.cancelled = threading.Event()
        self._written: tuple[int, int] | None = None
        self._previous_per_step: float | None = None
        self._store_down = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """End ``run`` at its next interval, never in the middle of a write: a progress
        write commits, then dispatches its events (the live update, the webhook of a mark
        crossed); cancelled between the two, they would be lost."""
        self._stop.set()

    def on_step(self, step: int, total: int, preview: bytes | None) -> None:
        if self.cancelled.is_set():
            raise Interrupted
        self.step_times.append(time.perf_counter())
        if preview is not None:
            self.preview = preview
        self.latest = (step, total)  # a single reference assignment: atomic under the GIL

    def seconds_per_step(self) -> float | None:
        times = self.step_times
        if len(times) >= 2:
            return (times[-1] - times[0]) / (len(times) - 1)
        return self._previous_per_step

    async def run(self) -> None:
        redis = self.state.dispatcher.pool
        cancel_key = self.state.dispatcher.keys.cancel(self.generation.id)
        with contextlib.suppress(RedisError, OSError):
            [self._previous_per_step] = await self.state.timings.get(f"step:{self.size}")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.state.settings.progress_interval_s)
            if self._stop.is_set():
                return
            try:
                if await redis.exists(cancel_key):
                    self.cancelled.set()
                    return
                await self.flush()
            except (SQLAlchemyError, RedisError, OSError) as exc:
                # Progress is best effort: a failed write must not fail the job. Said once
                # per outage, not at every interval.
                if not self._store_down:
                    log.warning(
                        "progress of %s not recorded (%s: %s); retrying quietly",
                        self.generation.id, type(exc).__name__, exc,
                    )  # fmt: skip
                self._store_down = True
            else:
                if self._store_down:
                    log.info("progress of %s recorded again", self.generation.id)
                self._store_down = False

    async def flush(self) -> None:
        latest = self.latest
        if latest is None or latest == self._written:
            return
        step, total = latest
        live: dict[str, Any] = {}
        per_step = self.seconds_per_step()
        if per_step is not None:
            live["eta_seconds"] = round((total - step) * per_step, 2)
        if self.preview is not None:
            live["preview"] = "data:image/png;base64," + base64.b64encode(self.preview).decode()
        previous = self._written[0] if self._written else 0
        async with self.state.store.unit_of_work() as uow:
            still = await generations.record_progress(
                uow, self.generation.id, step, total, live, previous_step=previous
            )
        if still is None:
            # No longer processing: cancelled (or settled elsewhere). Stop at the next step.
            self.cancelled.set()
        self._written = latest


@contextlib.asynccontextmanager
async def _retry_on_store_errors() -> AsyncIterator[None]:
    """A database or Redis error while changing a job's state is arq's to retry (the job
    is idempotent), not a reason to fail the customer's job."""
    try:
        yield
    except (SQLAlchemyError, RedisError, OSError) as exc:
        log.warning("store error, retrying the job: %s", exc)
        raise Retry(defer=RETRY_DEFER_S) from exc


async def run_generation(ctx: dict[str, Any], generation_id: str) -> str:
    state: WorkerState = ctx["state"]
    started = time.perf_counter()
    async with _retry_on_store_errors(), state.store.unit_of_work() as uow:
        generation = await generations.begin_processing(uow, generation_id)
    if generation is None:
        return "skipped: already finished"
    async with _retry_on_store_errors():
        inputs = await _inputs(state, generation)
    live = _Live(state, generation)
    render_timeout = max(1, state.settings.job_timeout_s - TIMEOUT_MARGIN_S)
    message = FAILURE_MESSAGE
    try:
        async with asyncio.timeout(render_timeout):
            outputs, metadata = await _render(state, generation, live, inputs)
    except Interrupted:
        # Cancelled (the API released the credits), or finished by a duplicate run.
        log.info("generation %s stopped: no longer processing", generation_id)
        return STOPPED
    except TimeoutError:
        live.cancelled.set()  # stop the pipeline thread at its next step
        log.error("generation %s timed out after %ss", generation_id, render_timeout)
        message = TIMEOUT_MESSAGE
    except Exception:
        log.exception("generation %s failed", generation_id)
    else:
        completing: UnitOfWork | None = None
        try:
            async with _retry_on_store_errors(), state.store.unit_of_work() as completing:
                done = await generations.complete(
                    completing,
                    generation_id,
                    outputs=outputs,
                    metadata=metadata,
                    output_urls=[state.storage.url(o.key) for o in outputs],
                )
        except BaseException:
            # No job points to the images unless the completion committed (and only the
            # dispatch after it was cut short, by a cancellation): then they stay.
            if completing is None or not completing.committed:
                await _delete(state, outputs)
            raise
        if done is None:
            await _delete(state, outputs)
            return "skipped: no longer processing"
        with contextlib.suppress(RedisError, OSError):  # measurements are best effort
            await state.timings.record(
                live.size,
                step_seconds=live.seconds_per_step(),
                job_seconds=time.perf_counter() - started,
            )
        return "completed"
    async with _retry_on_store_errors(), state.store.unit_of_work() as uow:
        await generations.fail(uow, generation_id, message)
    return "failed"


async def _inputs(state: WorkerState, generation: Generation) -> dict[str, bytes]:
    """The job's stored input images by role (image, mask); no query for a kind that
    takes none (text-to-image: the common case stays one round trip shorter)."""
    kind = kinds.registry.find(generation.kind)
    if kind is None or not kind.inputs:  # an unknown kind fails in _render
        return {}
    async with state.store.sessions() as session:
        stored = await generations.assets(session, generation)
    return {a.role: await state.storage.get(a.key) for a in stored if a.role != "output"}


async def _render(
    state: WorkerState, generation: Generation, live: _Live, inputs: dict[str, bytes]
) -> tuple[list[NewAsset], dict[str, Any]]:
    kind = kinds.get(generation.kind)
    params = _params(state, generation)
    ticker = asyncio.create_task(live.run())
    lease = asyncio.create_task(_keep_lease(state, generation, live))
    try:
        job = RenderJob(kind=kind, params=params, inputs=inputs)
        rendered = await state.runner.render(job, live.on_step)
    finally:
        live.stop()  # the ticker finishes a write in flight: its events are dispatched
        lease.cancel()
        for task in (ticker, lease):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if live.cancelled.is_set():
        raise Interrupted  # cancelled after the last step: nothing is stored
    if not rendered.outputs:
        raise RuntimeError(f"the {kind.name} run made no image")
    # Unguessable names per run, made public (written to the job) only by complete():
    # a run that does not complete the job deletes its files, so a job cancelled or failed
    # while its images were being encoded never leaves a free image behind.
    token = secrets.token_hex(8)
    outputs: list[NewAsset] = []
    try:
        for position, encoded in enumerate(rendered.outputs):
            key = f"{generation.id}-{token}-{position}.{EXTENSIONS[encoded.format]}"
            await state.storage.put(key, encoded.data, encoded.mime)
            outputs.append(
                NewAsset(
                    role="output",
                    key=key,
                    mime=encoded.mime,
                    width=encoded.width,
                    height=encoded.height,
                    bytes=len(encoded.data),
                    sha256=hashlib.sha256(encoded.data).hexdigest(),
                    position=position,
                    format=encoded.format,
                )
            )
    except BaseException:
        await _delete(state, outputs)
        raise
    first = outputs[0]
    metadata = {
        **generation.meta,
        "duration": round(rendered.seconds, 3),
        "steps": generation.steps,
        "seed": generation.seed,
        "width": first.width,
        "height": first.height,
        "version": generation.version,
        "device": rendered.device,
        "dtype": rendered.dtype,
        "format": first.format,
        "bytes": first.bytes,
        "count": len(outputs),
    }
    return outputs, metadata


def _params(state: WorkerState, generation: Generation) -> dict[str, Any]:
    """The job's frozen params. A text_to_image job accepted before params froze the model
    (migration 0008) has no model path: its model is resolved from this worker's registry,
    the one case the worker resolves one. (A kind may need no model at all.)"""
    params = dict(generation.params)
    model = params.get("model") or {}
    if generation.kind == "text_to_image" and "path" not in model:
        entry = state.catalog.resolve(generation.provider, generation.version)
        params["model"] = model_ref(entry)
    return params


async def _delete(state: WorkerState, outputs: list[NewAsset]) -> None:
    for output in outputs:
        await state.storage.delete(output.key)


async def _keep_lease(state: WorkerState, generation: Generation, live: _Live) -> None:
    """Renew this run's lease on the job while it renders. A run that lost the job (the
    sweeper gave it to another run after missed renewals, or it was cancelled) stops at
    the next step; settlement stays once per job whichever run finishes."""
    while True:
        await asyncio.sleep(state.settings.job_heartbeat_s)
        try:
            async with state.store.unit_of_work() as uow:
                owned = await generations.renew_lease(uow, generation.id, generation.attempts)
        except (SQLAlchemyError, OSError):
            # The lease outlives several renewals (settings validation): keep trying.
            log.warning("lease of %s not renewed", generation.id, exc_info=True)
            continue
        if not owned:
            log.warning("generation %s: this run no longer owns the job; stopping", generation.id)
            live.cancelled.set()
            return


async def sweep_stale(ctx: dict[str, Any]) -> dict[str, list[str]]:
    """One sweep (gpu_worker/sweeper.py) with this worker's database and Redis."""
    state: WorkerState = ctx["state"]
    return await sweeper.sweep(state.store, state.settings)


def functions(settings: Settings) -> list[Function]:
    return [
        func(
            run_generation,
            name=RUN_GENERATION,
            timeout=settings.job_timeout_s,
            max_tries=settings.job_max_tries,
        )
    ]


def build_worker(
    settings: Settings | None = None,
    *,
    runner: PipelineRunner | None = None,
    handle_signals: bool = True,
    ctx: dict[str, Any] | None = None,
    **overrides: Any,
) -> Worker:
    """The worker the CLI runs; tests build the same one (optionally with a runner).
    ``ctx``: reuse one (the supervisor's rebuilds share it, and the models in it)."""
    settings = settings or get_settings()
    ctx = ctx if ctx is not None else {}
    ctx["settings"] = settings
    if runner is not None:
        ctx["runner"] = runner
    options: dict[str, Any] = {
        # No cron jobs: the sweeper is a task of its own (sweeper.sweep_periodically), so arq's
        # in-progress lock of a job is the job timeout + 10 s, not arq's 300 s default.
        "functions": functions(settings),
        # Read and connect timeouts, so a stalled Redis is an error (the supervisor then
        # reconnects, with backoff) rather than a poll that hangs; no retries inside arq.
        "redis_pool": new_pool(
            settings.redis_url, settings.queue_name, timeout_s=settings.worker_redis_timeout_s
        ),
        "queue_name": settings.queue_name,
        "on_startup": startup,
        "on_shutdown": shutdown,
        # One job at a time: the process owns one GPU.
        "max_jobs": 1,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "handle_signals": handle_signals,
        # arq looks for the next job only on its next poll, so the poll interval is dead
        # time between two jobs (bench/throughput.py shows it: 100 ms cost 2/3 of the
        # throughput of a 50 ms job). Idle, a poll is two cheap Redis commands.
        "poll_delay": settings.worker_poll_interval_s,
        "ctx": ctx,
    }
    options.update(overrides)
    return Worker(**options)


def run(settings: Settings | None = None) -> None:
    """``fluxgate worker``: the worker, rebuilt around the same loaded models whenever
    Redis goes away, until SIGINT or SIGTERM."""
    settings = settings or get_settings()
    ctx: dict[str, Any] = {}
    supervisor = Supervisor(lambda: build_worker(settings, handle_signals=False, ctx=ctx), "worker")
    asyncio.run(supervisor.run())
