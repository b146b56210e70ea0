"""The arq worker: runs one generation at a time, records progress, stores the image,
settles the credits, and sweeps jobs whose worker vanished.

A run holds a lease on its job, renewed in the database every ``job_heartbeat_s``; the
sweeper (every ``sweep_interval_s``) gives a job whose lease expired to another run, or
fails it once ``job_max_tries`` runs have died, and fails jobs queued longer than
``max_queue_wait_s``. ``fluxgate worker`` runs the worker under a supervisor
(``gpu_worker/supervisor.py``) that rebuilds it, models still loaded, after Redis drops.

A worker serves one or more model pools (``--pool``; default: every pool in the registry):
it loads only their models, takes jobs from their queues only (one arq ``Worker`` per
pool's queue, sharing the models and one job slot), and announces itself in each pool's
heartbeat set only once those models are loaded, so ETAs and availability count it then.

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
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Function, Retry, Worker, func
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

import kinds
from billing.catalog import Catalog, ModelEntry, pool_of
from billing.db import Store, UnitOfWork, make_engine, make_sessionmaker
from billing.models import Generation
from billing.requests import TEXT_TO_IMAGE_PIPELINES
from billing.service import generations
from billing.service.generations import NewAsset
from gpu_worker import batching, metrics, sweeper
from gpu_worker.pipeline import Interrupted, PipelineRunner, Rendered, RenderJob
from gpu_worker.speed import SpeedOptions
from gpu_worker.supervisor import Supervisor, WorkerGroup
from kinds.base import model_ref
from kinds.text_to_image import made_size
from runtime import logs, thumbnails
from runtime.metrics import counting
from runtime.queue import (
    RUN_GENERATION,
    WORKER_TTL_S,
    Dispatcher,
    Keys,
    Timings,
    deserialize,
    new_pool,
    pool_queue,
    serialize,
    size_key,
)
from runtime.settings import Settings, get_settings
from runtime.storage import Storage, storage_from_settings

log = logging.getLogger(__name__)

FAILURE_MESSAGE = "Image generation failed; the credits were released"
TIMEOUT_MESSAGE = "Image generation timed out; the credits were released"
STOPPED = "stopped: cancelled or finished elsewhere"
RETRY_DEFER_S = 5
# The job gives up on its own this long before arq's timeout, so it can still mark the
# job failed and release its credits (arq's cancellation would leave them to the sweeper).
TIMEOUT_MARGIN_S = 5
WARM_UP_SIZE = 256
COMPILED_WARM_UP_SIZE = 1024  # the default size: a compiled worker warms up at both


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
    timings: Timings  # the default pool's

    def timings_of(self, generation: Generation) -> Timings:
        """The measurements of the job's pool (its ETAs divide its own queue)."""
        return Timings(
            self.dispatcher.pool, pool_queue(self.settings.queue_name, pool_of(generation.params))
        )


async def startup(ctx: dict[str, Any]) -> None:
    # A worker serving several pools runs one arq Worker per pool around this ctx, each
    # calling this hook: the first sets everything up, the others wait for it and return.
    async with ctx.setdefault("starting", asyncio.Lock()):
        if "state" not in ctx:
            await _startup(ctx)


async def _startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    catalog = Catalog.load(settings.models)
    pools: list[str] = ctx.get("pools") or catalog.pools
    probe = metrics.probe(ctx)
    runner: PipelineRunner | None = ctx.get("runner")
    if runner is None:
        # Only the served pools' models: each pool's are sized for its GPUs.
        own = Catalog(entries=tuple(catalog.in_pools(pools)))
        runner = PipelineRunner(
            own,
            device=settings.device,
            dtype=settings.dtype,
            speed=SpeedOptions.from_settings(settings),
        )
        runner.pipelines.loras.max_adapters = settings.lora_cache_size
        await asyncio.to_thread(runner.load_all)
        await asyncio.to_thread(warm_up, runner, own.entries)
        metrics.serving(entry.version for entry in own.entries)
        # Kept in ctx: a worker rebuilt after a Redis outage (same ctx) reuses the models.
        ctx["runner"] = runner
    probe.loaded = True
    engine = make_engine(settings.database_url, pool_size=2, max_overflow=2)
    redis: ArqRedis = ctx["redis"]
    dispatcher = Dispatcher(redis, settings.queue_name)
    storage = storage_from_settings(settings)
    ctx["state"] = WorkerState(
        settings=settings,
        engine=engine,
        store=Store(make_sessionmaker(engine), counting(dispatcher.dispatch), storage.url),
        catalog=catalog,
        runner=runner,
        storage=storage,
        dispatcher=dispatcher,
        timings=Timings(redis, settings.queue_name),
    )
    # Only now, with the models loaded: a pool counts this worker live from here on.
    heartbeats = [Keys(pool_queue(settings.queue_name, pool)) for pool in pools]
    ctx["heartbeat"] = asyncio.create_task(_heartbeat(redis, heartbeats, probe))
    if settings.sweep:
        ctx["sweeper"] = asyncio.create_task(
            sweeper.sweep_periodically(settings.sweep_interval_s, lambda: sweep_stale(ctx))
        )


def warm_up(runner: PipelineRunner, entries: Sequence[ModelEntry]) -> None:
    """One tiny text-to-image run (one step, 256x256) on each loaded FLUX directory: a
    model's first run allocates and compiles on the GPU (seconds), and the worker is
    announced to its pools only after this, so no customer's job pays for it. Models
    loaded as another class (Kontext, Fill: they take input images) are loaded, not run."""
    text_to_image = kinds.get("text_to_image")
    done: set[Path] = set()
    for entry in entries:
        if entry.pipeline not in TEXT_TO_IMAGE_PIPELINES or entry.path in done:
            continue
        done.add(entry.path)
        started = time.perf_counter()
        # Compiled blocks are traced for the first size they see; a second size makes
        # dynamo recompile them once with dynamic shapes, which then serve every size. Both
        # compiles happen here, before the worker is announced, not on customers' jobs.
        sizes = [WARM_UP_SIZE]
        if runner.speed.options.compile != "off":
            sizes.append(COMPILED_WARM_UP_SIZE)
        for size in sizes:
            params = {
                "model": model_ref(entry), "prompt": "warm-up", "steps": 1, "seed": 0,
                "guidance": entry.guidance, "width": size, "height": size,
            }  # fmt: skip
            text_to_image.run(runner.pipelines, params, {}, lambda *_: None)
        log.info("warmed up %s in %.1fs", entry.path, time.perf_counter() - started)


def model_bytes(entries: Sequence[ModelEntry]) -> int:
    """The size on disk of the distinct model directories of ``entries``: about what
    they take in memory, loaded in the dtype they are stored in."""
    total = 0
    for path in {e.path for e in entries}:
        for root, _, files in os.walk(path):
            total += sum(os.stat(os.path.join(root, f)).st_size for f in files)
    return total


def check_memory_budget(settings: Settings, pools: Sequence[str]) -> None:
    """Refuse (ValueError) to serve pools whose models exceed ``worker_memory_gb`` (unset:
    no budget): a worker that cannot hold its models would fail mid-load, or later on a
    customer's job; better to say so at once and size the pool again."""
    budget = settings.worker_memory_gb
    if budget is None:
        return
    entries = Catalog.load(settings.models).in_pools(pools)
    needed = model_bytes(entries)
    if needed > budget * 1e9:
        raise ValueError(
            f"the models of pool {', '.join(pools)} take {needed / 1e9:.3g} GB, over the "
            f"worker's memory budget of {budget:g} GB (FLUXGATE_WORKER_MEMORY_GB)"
        )


async def _heartbeat(
    redis: ArqRedis, pools: list[Keys], probe: metrics.Probe | None = None
) -> None:
    """Announce this worker in each of its pools (a pool's ETAs divide its queue among
    its live workers; a pool with none is unavailable; readiness wants a fresh
    heartbeat)."""
    worker_id = uuid.uuid4().hex
    try:
        while True:
            now = time.time()
            try:
                async with redis.pipeline(transaction=True) as pipe:
                    for keys in pools:
                        pipe.zadd(keys.workers, {worker_id: now})
                        pipe.zremrangebyscore(keys.workers, "-inf", now - 10 * WORKER_TTL_S)
                    await pipe.execute()
                if probe is not None:
                    probe.beat()
            except (RedisError, OSError) as exc:  # the supervisor handles the outage
                log.debug("worker heartbeat not sent: %s", exc)
            await asyncio.sleep(WORKER_TTL_S / 3)
    finally:
        if probe is not None:
            probe.stopped()
        with contextlib.suppress(RedisError, OSError):
            async with redis.pipeline(transaction=True) as pipe:
                for keys in pools:
                    pipe.zrem(keys.workers, worker_id)
                await pipe.execute()


async def shutdown(ctx: dict[str, Any]) -> None:
    # Popped: after a Redis outage the same ctx serves the rebuilt worker (the runner stays).
    ctx.pop("starting", None)  # an asyncio lock: the rebuilt worker's loop may be another
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
            generation.version, generation.width, generation.height, generation.kind,
            made_size(generation.params),
        )  # fmt: skip
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
            [self._previous_per_step] = await self.state.timings_of(self.generation).get(
                f"step:{self.size}"
            )
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
    metrics.job_started(generation)
    batch = await _batch(state, generation)
    if len(batch) > 1:
        return await _run_batch(state, batch, started)
    async with _retry_on_store_errors():
        inputs = await _inputs(state, generation)
    live = _Live(state, generation)
    render_timeout = max(1, state.settings.job_timeout_s - TIMEOUT_MARGIN_S)
    result: _Result
    try:
        async with asyncio.timeout(render_timeout):
            result = await _render(state, generation, live, inputs)
    except Interrupted as exc:
        result = exc
    except TimeoutError as exc:
        live.cancelled.set()  # stop the pipeline thread at its next step
        result = exc
    except Exception as exc:
        log.exception("generation %s failed", generation_id)
        result = exc
    return await _conclude(state, generation, live, result, started)


# A run's outcome before settlement: the stored outputs and metadata, or what stopped it.
_Result = tuple[list[NewAsset], dict[str, Any]] | BaseException


async def _conclude(
    state: WorkerState,
    generation: Generation,
    live: _Live,
    result: _Result,
    started: float,
    *,
    share: int = 1,
) -> str:
    """Settle one job after its run: complete it with its outputs, or fail it (releasing
    its credits), or leave it to whoever stopped it. ``share``: the jobs the run served
    (its time is divided among them in the pool's measurements)."""
    generation_id = generation.id
    message = FAILURE_MESSAGE
    if isinstance(result, Interrupted):
        # Cancelled (the API released the credits), or finished by a duplicate run.
        log.info("generation %s stopped: no longer processing", generation_id)
        metrics.job_finished(generation, "stopped")
        return STOPPED
    if isinstance(result, TimeoutError):
        render_timeout = max(1, state.settings.job_timeout_s - TIMEOUT_MARGIN_S)
        log.error("generation %s timed out after %ss", generation_id, render_timeout)
        message = TIMEOUT_MESSAGE
    elif not isinstance(result, BaseException):
        outputs, metadata = result
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
            metrics.job_finished(generation, "stopped")
            return "skipped: no longer processing"
        metrics.job_finished(done, "completed")
        with contextlib.suppress(RedisError, OSError):  # measurements are best effort
            await state.timings_of(generation).record(
                live.size,
                step_seconds=live.seconds_per_step(),
                job_seconds=(time.perf_counter() - started) / share,
            )
        return "completed"
    async with _retry_on_store_errors(), state.store.unit_of_work() as uow:
        failed = await generations.fail(uow, generation_id, message)
    metrics.job_finished(failed or generation, "failed" if failed else "stopped")
    return "failed"


async def _batch(state: WorkerState, generation: Generation) -> list[batching.Member]:
    """The job just claimed, and the queued jobs claimed to run in its pipeline call
    (``gpu_worker/batching.py``); just the job when it runs alone."""
    try:
        params = _params(state, generation)
    except Exception:  # reported by the run alone (it fails there)
        return []
    key = batching.batch_key(state.settings.batch_max, generation, params)
    if key is None:
        return []
    others = await batching.gather(state, generation, key, lambda g: _params(state, g))
    return [batching.Member(generation, params), *others]


async def _run_batch(state: WorkerState, batch: list[batching.Member], started: float) -> str:
    """Run the jobs of ``batch`` in one pipeline call, each settled on its own; the first
    is the job arq started, whose result (or exception: a store error is arq's to retry)
    is this run's. A member whose settlement fails on a store error goes back to its
    queue as its own job (``batching.put_back``), as arq would retry it."""
    for member in batch[1:]:
        metrics.job_started(member.generation)
    lives = [_Live(state, member.generation) for member in batch]
    render_timeout = max(1, state.settings.job_timeout_s - TIMEOUT_MARGIN_S)
    results: list[_Result]
    try:
        async with asyncio.timeout(render_timeout):
            rendered = await _render_batch(state, batch, lives)
    except (Interrupted, TimeoutError) as exc:
        for live in lives:
            live.cancelled.set()  # a timeout: stop the pipeline thread at its next step
        results = [exc] * len(batch)
    except Exception as exc:
        log.exception("batch of %s failed", ", ".join(m.generation.id for m in batch))
        results = [exc] * len(batch)
    else:
        results = []
        for member, live, one in zip(batch, lives, rendered, strict=True):
            if live.cancelled.is_set():
                results.append(Interrupted())  # cancelled meanwhile: its image is dropped
                continue
            try:
                results.append(await _store(state, member.generation, one, len(batch)))
            except Exception as exc:
                log.exception("generation %s failed", member.generation.id)
                results.append(exc)
    for member, live, result in zip(batch[1:], lives[1:], results[1:], strict=True):
        try:
            await _conclude(state, member.generation, live, result, started, share=len(batch))
        except Exception:
            log.warning("generation %s not settled; back to its queue", member.generation.id,
                        exc_info=True)  # fmt: skip
            await batching.put_back(state, member.generation)
        finally:
            await batching.release(state, member)
    return await _conclude(state, batch[0].generation, lives[0], results[0], started,
                           share=len(batch))  # fmt: skip


async def _render_batch(
    state: WorkerState, batch: list[batching.Member], lives: list[_Live]
) -> list[Rendered]:
    """The batch's pipeline call, with each member's progress writer and lease running
    meanwhile. A member cancelled (or whose lease is lost) keeps its place in the call
    (its image is discarded); the call stops early only when every member is stopped."""
    kind = kinds.get(batch[0].generation.kind)
    tasks = []
    for member, live in zip(batch, lives, strict=True):
        tasks.append(asyncio.create_task(live.run()))
        tasks.append(asyncio.create_task(_keep_lease(state, member.generation, live)))

    def on_step(step: int, total: int, preview: bytes | None) -> None:
        running = [live for live in lives if not live.cancelled.is_set()]
        if not running:
            raise Interrupted
        for live in running:
            with contextlib.suppress(Interrupted):  # cancelled just now: the others go on
                live.on_step(step, total, preview)

    rendering = time.perf_counter()
    try:
        jobs = [RenderJob(kind=kind, params=m.params, inputs={}) for m in batch]
        return await state.runner.render_batch(jobs, on_step)
    finally:
        elapsed = time.perf_counter() - rendering
        for member in batch:
            metrics.device_time(member.generation, elapsed / len(batch))
        for live in lives:
            live.stop()  # each ticker finishes a write in flight: its events are dispatched
        for task in tasks[1::2]:  # the leases
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
    rendering = time.perf_counter()
    try:
        job = RenderJob(kind=kind, params=params, inputs=inputs)
        rendered = await state.runner.render(job, live.on_step)
    finally:
        metrics.device_time(generation, time.perf_counter() - rendering)
        live.stop()  # the ticker finishes a write in flight: its events are dispatched
        lease.cancel()
        for task in (ticker, lease):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if live.cancelled.is_set():
        raise Interrupted  # cancelled after the last step: nothing is stored
    return await _store(state, generation, rendered)


async def _store(
    state: WorkerState, generation: Generation, rendered: Rendered, batch: int = 1
) -> tuple[list[NewAsset], dict[str, Any]]:
    """Store a run's outputs (and thumbnails) under this run's names; the job's
    metadata. ``batch``: the jobs the pipeline call served (``duration`` is the call's)."""
    if not rendered.outputs:
        raise RuntimeError(f"the {generation.kind} run made no output")
    # Unguessable names per run, made public (written to the job) only by complete():
    # a run that does not complete the job deletes its files, so a job cancelled or failed
    # while its images were being encoded never leaves a free image behind.
    token = secrets.token_hex(8)
    outputs: list[NewAsset] = []
    try:
        for position, encoded in enumerate(rendered.outputs):
            key = f"{generation.id}-{token}-{position}.{encoded.extension}"
            await state.storage.put(key, encoded.data, encoded.mime)
            thumb = await _thumbnail(state, key, encoded.format, encoded.data)
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
                    thumbnail_key=thumb,
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
    if batch > 1:
        metadata["batch"] = batch
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
        if output.thumbnail_key is not None:
            await state.storage.delete(output.thumbnail_key)


async def _thumbnail(state: WorkerState, key: str, fmt: str, data: bytes) -> str | None:
    """Store the library's WebP thumbnail of a raster output next to it; its key."""
    if fmt not in thumbnails.RASTER_FORMATS:
        return None  # SVG, EPS: no raster to shrink
    small = await asyncio.to_thread(thumbnails.make_thumbnail, data)
    thumb = thumbnails.thumbnail_key(key)
    try:
        await state.storage.put(thumb, small, thumbnails.MIME)
    except BaseException:
        await state.storage.delete(key)  # not yet in ``outputs``: _render cannot see it
        raise
    return thumb


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
    return await sweeper.sweep(state.store, state.settings, state.storage)


def functions(settings: Settings) -> list[Function]:
    return [
        func(
            run_generation,
            name=RUN_GENERATION,
            timeout=settings.job_timeout_s,
            max_tries=settings.job_max_tries,
        )
    ]


def serving(settings: Settings, pools: Sequence[str] | None = None) -> list[str]:
    """The pools a worker serves: ``pools`` (each checked against the model registry,
    ValueError for an unknown one), or every pool the registry names."""
    catalog = Catalog.load(settings.models)
    if not pools:
        return catalog.pools
    catalog.in_pools(pools)  # raises for an unknown pool
    return sorted(set(pools))


def build_worker(
    settings: Settings | None = None,
    *,
    runner: PipelineRunner | None = None,
    handle_signals: bool = True,
    ctx: dict[str, Any] | None = None,
    pools: Sequence[str] | None = None,
    **overrides: Any,
) -> Worker | WorkerGroup:
    """The worker the CLI runs; tests build the same one (optionally with a runner).
    ``ctx``: reuse one (the supervisor's rebuilds share it, and the models in it).
    ``pools``: the model pools served (default: every one in the registry); more than
    one makes a ``WorkerGroup``, one arq ``Worker`` per pool's queue."""
    settings = settings or get_settings()
    ctx = ctx if ctx is not None else {}
    ctx["settings"] = settings
    ctx["pools"] = served = serving(settings, pools)
    if runner is not None:
        ctx["runner"] = runner
    redis = new_pool(
        settings.redis_url, settings.queue_name, timeout_s=settings.worker_redis_timeout_s
    )
    members = [
        _arq_worker(settings, redis, pool_queue(settings.queue_name, pool), handle_signals, ctx,
                    overrides)
        for pool in served
    ]  # fmt: skip
    if len(members) == 1:
        return members[0]
    # One job at a time across the pools: a member takes a job only while the GPU is
    # free (arq's own semaphore would let each member take one). Waiting here, not in
    # the job, leaves a pool's next job to another process meanwhile, and starts arq's
    # job timeout only when the job runs.
    gpu = asyncio.BoundedSemaphore(1)
    for member in members:
        member.sem = gpu
    return WorkerGroup(members)


def _arq_worker(
    settings: Settings,
    redis: ArqRedis,
    queue_name: str,
    handle_signals: bool,
    ctx: dict[str, Any],
    overrides: dict[str, Any],
) -> Worker:
    options: dict[str, Any] = {
        # No cron jobs: the sweeper is a task of its own (sweeper.sweep_periodically), so arq's
        # in-progress lock of a job is the job timeout + 10 s, not arq's 300 s default.
        "functions": functions(settings),
        # Read and connect timeouts, so a stalled Redis is an error (the supervisor then
        # reconnects, with backoff) rather than a poll that hangs; no retries inside arq.
        # Shared by a group's members: one pool of connections, closed once.
        "redis_pool": redis,
        "queue_name": queue_name,
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
        # The job id on every log line while a job runs.
        "on_job_start": logs.bind_job,
        "ctx": ctx,
    }
    options.update(overrides)
    return Worker(**options)


def run(
    settings: Settings | None = None,
    *,
    metrics_port: int | None = None,
    pools: Sequence[str] | None = None,
) -> None:
    """``fluxgate worker``: the worker, rebuilt around the same loaded models whenever
    Redis goes away, until SIGINT or SIGTERM. ``metrics_port`` (default
    ``worker_metrics_port``; 0: none): its /metrics and /readyz. ``pools``: the model
    pools served (default: every pool in the registry)."""
    settings = settings or get_settings()
    served = serving(settings, pools)  # an unknown pool fails before anything starts
    check_memory_budget(settings, served)
    ctx: dict[str, Any] = {}
    server = metrics.serve("worker", metrics.probe(ctx), settings, metrics_port)
    drain_s = settings.job_timeout_s if settings.worker_drain_s is None else settings.worker_drain_s
    supervisor = Supervisor(
        lambda: build_worker(settings, handle_signals=False, ctx=ctx, pools=served),
        "worker",
        drain_s=drain_s,
    )
    try:
        asyncio.run(supervisor.run())
    finally:
        if server is not None:
            server.close()
