"""Availability (issue 9, items 1, 3 and 4): the workers ride out Redis outages, a crashed
worker's job is retried (or failed and released) within seconds of its lease expiring, a
live run keeps its job, and a job no worker takes fails after the maximum queue wait.

The end-to-end tests are real processes: a private ``redis-server`` (so killing it
touches no other test), ``fluxgate serve``, ``fluxgate worker`` and ``fluxgate
webhook-worker`` on a database of their own, running the tiny FLUX pipeline with more
denoising steps than the development registry, so a job lasts long enough to be caught
mid-run. Short lease and sweep settings make a crash visible in seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import repository as repo
from billing.catalog import Catalog
from billing.db import make_engine, make_sessionmaker, unit_of_work_without_dispatch
from billing.models import Generation, utcnow
from billing.pricing import default_price_table
from billing.requests import Limits, RawImageRequest, validate
from billing.service import generations
from gpu_worker.webhooks import build_webhook_worker
from gpu_worker.worker import run_generation, shutdown, sweep_stale
from runtime import queue
from runtime.settings import Settings
from tests.conftest import (
    TEST_DATABASE_URL,
    TINY_MODEL,
    ThreadedWorker,
    free_port,
    recreate_database,
    wait_healthy,
)
from tests.factories import TestAccount, audit, create_account, t2i_job
from tests.gpu_worker.test_worker import make_ctx
from tests.redis_server import RedisServer
from tests.runners import SlowRunner

FINAL = {"completed", "failed", "cancelled"}
# Denoising steps of the tiny pipeline per job: "quick" jobs make load, "long" ones are
# still running when their worker is killed.
QUICK_STEPS = 24
LONG_STEPS = 600
# Seconds: a lease lost in 3, renewed every 1, swept every 1 (the defaults: 30, 5, 15).
WORKER_ENV = {
    "FLUXGATE_JOB_LEASE_S": "3",
    "FLUXGATE_JOB_HEARTBEAT_S": "1",
    "FLUXGATE_SWEEP_INTERVAL_S": "1",
    "FLUXGATE_PROGRESS_INTERVAL_S": "0.1",
    "FLUXGATE_DEVICE": "cpu",
}


# --- in-process: the sweeper and the lease against real Postgres and Redis ------------


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Catalog:
    return Catalog.load(settings.models)


@pytest.fixture
def own_queue(settings: Settings) -> Settings:
    """The suite's settings on a queue of their own: the suite's worker, if running,
    must not take the jobs these tests put back in the queue."""
    return settings.model_copy(update={"queue_name": f"fluxgate:avail:{uuid.uuid4().hex[:8]}"})


@pytest.fixture
async def pool(own_queue: Settings) -> AsyncIterator[ArqRedis]:
    redis_pool = await queue.connect(own_queue.redis_url, own_queue.queue_name)
    yield redis_pool
    await redis_pool.aclose(close_connection_pool=True)


async def submit_unqueued(
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
    webhook_url: str | None = None,
) -> Generation:
    request = validate(
        RawImageRequest(
            provider="flux-dev",
            prompt="a lighthouse at dusk",
            width=256,
            height=256,
            webhook_url=webhook_url,
        ),
        catalog=catalog,
        prices=default_price_table(),
        limits=Limits(),
    )
    async with unit_of_work_without_dispatch(sessions) as uow:
        return await generations.submit(
            uow, account_id=account.id, api_key_id=account.api_key_id, request=t2i_job(request)
        )


async def fetch(sessions: async_sessionmaker[AsyncSession], generation_id: str) -> Generation:
    async with sessions() as session:
        generation = await repo.get_generation(session, generation_id)
    assert generation is not None
    return generation


async def movements(sessions: async_sessionmaker[AsyncSession], generation_id: str) -> list[str]:
    """The ledger movements of one job, oldest first."""
    async with sessions() as session:
        generation = await repo.get_generation(session, generation_id)
        assert generation is not None
        entries = await repo.list_entries(session, generation.account_id)
    return [
        e.kind for e in sorted(entries, key=lambda e: e.id or 0) if e.generation_id == generation_id
    ]


async def expire_lease(sessions: async_sessionmaker[AsyncSession], generation_id: str) -> None:
    """As if the run's worker had stopped renewing its lease a minute ago."""
    async with unit_of_work_without_dispatch(sessions) as uow:
        await uow.session.execute(
            update(Generation)
            .where(Generation.id == generation_id)  # type: ignore[arg-type]
            .values(heartbeat_at=utcnow() - timedelta(minutes=1))
        )


async def test_an_expired_lease_is_retried_then_failed_once_the_tries_are_spent(
    own_queue: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    g = await submit_unqueued(sessions, catalog, account)
    jid = queue.job_id(g.id)
    async with unit_of_work_without_dispatch(sessions) as uow:
        await generations.begin_processing(uow, g.id)
    # What a worker killed mid-run leaves in Redis: its job in the queue, and arq's lock,
    # which would hold any retry back for the job timeout + 10 s.
    await pool.enqueue_job(queue.RUN_GENERATION, g.id, _job_id=jid)
    await pool.psetex(in_progress_key_prefix + jid, 600_000, b"1")
    await expire_lease(sessions, g.id)
    ctx = await make_ctx(own_queue, pool, SlowRunner(catalog), job_max_tries=2)
    try:
        first = await sweep_stale(ctx)
        assert first["retried"] == [g.id] and first["failed"] == []
        retried = await fetch(sessions, g.id)
        assert (retried.status, retried.attempts, retried.heartbeat_at) == ("queued", 1, None)
        # Back in the queue under the same id (cancellation and positions find it), the
        # dead run's lock gone: the next worker poll takes it.
        assert not await pool.exists(in_progress_key_prefix + jid)
        assert await pool.exists(job_key_prefix + jid)
        assert await pool.zscore(own_queue.queue_name, jid) is not None
        assert await movements(sessions, g.id) == ["reserve"]

        # The second run dies too: its tries are spent, so it fails and releases.
        async with unit_of_work_without_dispatch(sessions) as uow:
            await generations.begin_processing(uow, g.id)
        await expire_lease(sessions, g.id)
        second = await sweep_stale(ctx)
        assert second["failed"] == [g.id] and second["retried"] == []
        # Failed, and off the queue: nothing left for a worker to take (and skip), and
        # the pool's queue size counts it no more.
        assert await pool.zscore(own_queue.queue_name, jid) is None
        assert not await pool.exists(job_key_prefix + jid)
        assert (await sweep_stale(ctx))["failed"] == []  # settled once
    finally:
        await shutdown(ctx)
    failed = await fetch(sessions, g.id)
    assert (failed.status, failed.error, failed.attempts) == (
        "failed",
        generations.STALE_MESSAGE,
        2,
    )
    assert await movements(sessions, g.id) == ["reserve", "release"]


async def test_a_live_run_renews_its_lease_and_keeps_its_job(
    own_queue: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    """A run longer than the lease is never taken away while its worker lives: the
    sweeper, running all along, finds nothing to do."""
    ctx = await make_ctx(
        own_queue,
        pool,
        SlowRunner(catalog, step_seconds=0.8),  # 4 steps: well past the 2 s lease
        job_lease_s=2,
        job_heartbeat_s=0.5,
    )
    g = await submit_unqueued(sessions, catalog, account)
    sweeps: list[dict[str, list[str]]] = []
    try:
        job = asyncio.create_task(run_generation(ctx, g.id))
        while not job.done():
            sweeps.append(await sweep_stale(ctx))
            await asyncio.sleep(0.2)
        assert job.result() == "completed"
    finally:
        await shutdown(ctx)
    assert len(sweeps) > 10
    assert all(not s["retried"] and not s["failed"] for s in sweeps)
    done = await fetch(sessions, g.id)
    assert (done.status, done.attempts) == ("completed", 1)
    assert await movements(sessions, g.id) == ["reserve", "capture"]


async def test_a_job_no_worker_takes_fails_after_the_maximum_queue_wait(
    own_queue: Settings,
    pool: ArqRedis,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    waited = await submit_unqueued(sessions, catalog, account, "https://example.com/hook")
    fresh = await submit_unqueued(sessions, catalog, account)
    await pool.enqueue_job(queue.RUN_GENERATION, waited.id, _job_id=queue.job_id(waited.id))
    async with unit_of_work_without_dispatch(sessions) as uow:
        await uow.session.execute(
            update(Generation)
            .where(Generation.id == waited.id)  # type: ignore[arg-type]
            .values(created_at=utcnow() - timedelta(minutes=61))
        )
    ctx = await make_ctx(own_queue, pool, SlowRunner(catalog), max_queue_wait_s=3600)
    try:
        result = await sweep_stale(ctx)
        again = await sweep_stale(ctx)
    finally:
        await shutdown(ctx)
    assert result["expired"] == [waited.id]
    assert again["expired"] == []
    failed = await fetch(sessions, waited.id)
    assert failed.status == "failed"
    assert failed.error == generations.queue_timeout_message(timedelta(seconds=3600))
    assert "3600 seconds" in failed.error and "released" in failed.error
    assert await movements(sessions, waited.id) == ["reserve", "release"]
    assert (await fetch(sessions, fresh.id)).status == "queued"
    # Off the arq queue (no run wasted on it), and its webhook says `failed`.
    assert await pool.zscore(own_queue.queue_name, queue.job_id(waited.id)) is None
    async with sessions() as session:
        events = await repo.list_webhook_events(
            session, account.id, generation_id=waited.id, limit=10
        )
    assert "failed" in {e.event for e in events}


async def test_with_no_gpu_worker_the_webhook_worker_enforces_the_queue_wait(
    own_queue: Settings,
    sessions: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    account: TestAccount,
) -> None:
    """No GPU worker at all (or none serving the job's model): the webhook worker sweeps
    too, so a queued job still fails after the maximum queue wait and releases its
    credits (found by the outside review of issue 9)."""
    quick = own_queue.model_copy(update={"max_queue_wait_s": 1, "sweep_interval_s": 0.2})
    waiting = await submit_unqueued(sessions, catalog, account)
    with ThreadedWorker(quick, build=build_webhook_worker):
        deadline = time.monotonic() + 60
        while (await fetch(sessions, waiting.id)).status == "queued":
            assert time.monotonic() < deadline, "the queue wait was not enforced"
            await asyncio.sleep(0.1)
    failed = await fetch(sessions, waiting.id)
    assert failed.status == "failed"
    assert failed.error == generations.queue_timeout_message(timedelta(seconds=1))
    assert await movements(sessions, waiting.id) == ["reserve", "release"]


async def test_lease_settings_are_checked_against_each_other() -> None:
    with pytest.raises(ValueError, match="3 times"):
        Settings(job_lease_s=10, job_heartbeat_s=5)
    with pytest.raises(ValueError, match="must not exceed FLUXGATE_JOB_LEASE_S"):
        Settings(sweep_interval_s=60, job_lease_s=30)
    # Short job timeouts are fine now: the lease, not arq's lock, decides.
    Settings(job_timeout_s=60, job_lease_s=30, job_heartbeat_s=5)


# --- end to end: real processes, a Redis that dies -----------------------------------


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path
    name: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            assert self.proc.poll() is None, f"exited:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output()[-3000:]}"
            time.sleep(0.1)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    redis: RedisServer
    sessions: async_sessionmaker[AsyncSession]
    directory: Path
    api_url: str = ""
    processes: list[Process] = field(default_factory=list)

    def spawn(self, name: str, *args: str, **env: str) -> Process:
        log = self.directory / f"{name}-{len(self.processes)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", *args],
                env={**self.env, **env}, cwd=Path(__file__).resolve().parents[2],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        process = Process(proc, log, name)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> int:
        """SIGTERM, as an operator stops it; the exit status."""
        self.processes.remove(process)
        return process.terminate()

    def stopped(self, process: Process) -> bool:
        """SIGTERM ends the process, cleanly (status 0), or — a known, rare teardown stall
        seen twice under the full suite's load, not yet explained — by the supervisor's
        bounded stop (status 1, saying so in its log: gpu_worker/supervisor.py,
        GRACEFUL_STOP_S). Never a hang, never a kill."""
        status = self.stop(process)
        return status == 0 or (status == 1 and "exiting without finishing" in process.output())

    def stop_workers(self) -> None:
        """Stop the workers a failed test left running (the API stays)."""
        for process in [p for p in self.processes if p.name != "api"]:
            self.stop(process)

    def worker(self) -> Process:
        process = self.spawn("worker", "worker")
        process.wait_for_log("Starting worker")
        return process

    def webhook_worker(self) -> Process:
        process = self.spawn("webhook-worker", "webhook-worker")
        process.wait_for_log("Starting worker")
        return process


def _models_file(directory: Path) -> Path:
    path = directory / "models.toml"
    path.write_text(
        "".join(
            f'[[model]]\nprovider = "{provider}"\nversion = "{provider}"\n'
            f'path = "{TINY_MODEL}"\nsteps = {steps}\nguidance = 3.5\n'
            "max_sequence_length = 64\ndefault = true\n\n"
            for provider, steps in (("flux-dev", QUICK_STEPS), ("flux-pro", LONG_STEPS))
        )
    )
    return path


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> AsyncIterator[Stack]:
    directory = tmp_path_factory.mktemp("availability")
    database_url = f"{TEST_DATABASE_URL}_availability"
    await recreate_database(database_url)
    redis_process = RedisServer(directory)
    port = free_port()
    own = Settings(
        environment="test",
        database_url=database_url,
        redis_url=redis_process.url,
        queue_name="fluxgate:availability",
        storage_dir=directory / "storage",
        public_url=f"http://127.0.0.1:{port}",
        models=_models_file(directory),
        secret_key=settings.secret_key,
    )
    env = {
        **os.environ,
        "FLUXGATE_ENVIRONMENT": "test",
        "FLUXGATE_DATABASE_URL": own.database_url,
        "FLUXGATE_REDIS_URL": own.redis_url,
        "FLUXGATE_QUEUE_NAME": own.queue_name,
        "FLUXGATE_SECRET_KEY": own.secret_key.get_secret_value(),
        "FLUXGATE_STORAGE_DIR": str(own.storage_dir),
        "FLUXGATE_PUBLIC_URL": own.public_url,
        "FLUXGATE_MODELS": str(own.models),
        **WORKER_ENV,
    }
    engine = make_engine(database_url, pool_size=2, max_overflow=2)
    built = Stack(own, env, redis_process, make_sessionmaker(engine), directory)
    try:
        redis_process.start()
        api = built.spawn("api", "serve", "--port", str(port))
        wait_healthy(own.public_url, [api.proc])
        built.api_url = own.public_url
        yield built
    finally:
        for process in built.processes:
            process.terminate()
        redis_process.stop()
        await engine.dispose()


async def submit(client: httpx.AsyncClient, account: TestAccount, service: str, key: str) -> str:
    """POST a job, retrying while Redis is down (the same Idempotency-Key: charged once)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            response = await client.post(
                "/v1/text_to_image",
                json={"service": service, "prompt": f"job {key}", "width": 256, "height": 256},
                headers={"X-API-Key": account.api_key, "Idempotency-Key": key},
            )
            if response.status_code == 200:
                job_id: str = response.json()["data"]["generateImage"]["id"]
                return job_id
            assert response.status_code >= 500, response.text  # only an outage may refuse
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API did not accept the job"
        await asyncio.sleep(0.2)


async def statuses(stack: Stack, ids: list[str]) -> dict[str, Generation]:
    async with stack.sessions() as session:
        rows = await session.execute(
            select(Generation).where(Generation.id.in_(ids))  # type: ignore[attr-defined]
        )
    return {g.id: g for g in rows.scalars()}


async def wait_until(stack: Stack, ids: list[str], done: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = await statuses(stack, ids)
        if done(rows):
            return
        for process in stack.processes:
            assert process.proc.poll() is None, f"a process exited:\n{process.output()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: {[g.status for g in rows.values()]}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_workers_ride_out_redis_restarts_under_load(stack: Stack) -> None:
    worker = stack.worker()
    webhook_worker = stack.webhook_worker()
    account = await create_account(stack.sessions, stack.settings, credits=10_000)
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        for round_ in range(2):
            batch = [await submit(client, account, "flux-dev", f"r{round_}-{i}") for i in range(8)]
            ids += batch
            # Redis dies (kill -9, every key lost) while a job of this batch is running.
            await wait_until(
                stack, batch, lambda rows: any(g.status == "processing" for g in rows.values()),
                "no job started", timeout=120,
            )  # fmt: skip
            seen = [p.output().count("lost Redis") for p in (worker, webhook_worker)]
            stack.redis.kill()
            # Down until both workers have seen it (the GPU worker once its job is done:
            # a job in flight finishes and settles without Redis).
            worker.wait_for_log("lost Redis", count=seen[0] + 1)
            webhook_worker.wait_for_log("lost Redis", count=seen[1] + 1)
            stack.redis.start()
        await wait_until(
            stack, ids, lambda rows: all(g.status in FINAL for g in rows.values()),
            "not every job reached a final state", timeout=180,
        )  # fmt: skip
    # Both workers came back by themselves, each time.
    for process in (worker, webhook_worker):
        assert process.proc.poll() is None
        process.wait_for_log("Starting worker", count=3)  # first start + 2 reconnects
    assert "loaded FluxPipeline" not in worker.output().split("lost Redis", 1)[1]  # kept
    rows = await statuses(stack, ids)
    assert all(g.status == "completed" for g in rows.values()), [g.error for g in rows.values()]
    cached, summed = await audit(stack.sessions, account.id)
    assert cached == summed
    assert cached.reserved == 0
    assert cached.available == 10_000 - sum(g.credit_cost for g in rows.values())
    # SIGTERM still stops them cleanly.
    assert stack.stopped(worker)
    assert stack.stopped(webhook_worker)


@pytest.mark.slow
async def test_workers_ride_out_a_stalled_redis(stack: Stack) -> None:
    """SIGSTOP: no connection error, just silence. The workers' Redis commands time out
    (FLUXGATE_WORKER_REDIS_TIMEOUT_S), so they reconnect instead of hanging for as long as Redis
    is stopped, and take jobs again once it answers."""
    if not stack.redis.running:
        stack.redis.start()
    stack.stop_workers()
    worker = stack.spawn("worker", "worker", FLUXGATE_WORKER_REDIS_TIMEOUT_S="1")
    worker.wait_for_log("Starting worker")
    webhook_worker = stack.spawn(
        "webhook-worker", "webhook-worker", FLUXGATE_WORKER_REDIS_TIMEOUT_S="1"
    )
    webhook_worker.wait_for_log("Starting worker")
    stack.redis.pause()
    try:
        worker.wait_for_log("lost Redis (TimeoutError", timeout=60)
        webhook_worker.wait_for_log("lost Redis (TimeoutError", timeout=60)
    finally:
        stack.redis.resume()
    worker.wait_for_log("Starting worker", count=2)
    account = await create_account(stack.sessions, stack.settings, credits=1000)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        job = await submit(client, account, "flux-dev", f"after-stall-{uuid.uuid4().hex}")
    await wait_until(
        stack, [job], lambda rows: rows[job].status == "completed",
        "no job ran after Redis resumed", timeout=120,
    )  # fmt: skip
    assert stack.stopped(worker)
    assert stack.stopped(webhook_worker)


@pytest.mark.slow
async def test_a_draining_worker_hands_its_job_back_and_it_is_charged_once(
    stack: Stack,
) -> None:
    """Issue 11, graceful lifecycle: SIGTERM on a worker whose job outlasts its drain time
    (FLUXGATE_WORKER_DRAIN_S) cancels the job and hands it back; the worker exits 0, and
    another worker runs the job to the end, charged once."""
    if not stack.redis.running:
        stack.redis.start()
    stack.stop_workers()
    draining = stack.spawn("worker", "worker", FLUXGATE_WORKER_DRAIN_S="1")
    draining.wait_for_log("Starting worker")
    account = await create_account(stack.sessions, stack.settings, credits=1000)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        job = await submit(client, account, "flux-pro", f"drained-{uuid.uuid4().hex}")
    await wait_until(
        stack, [job], lambda rows: rows[job].status == "processing" and rows[job].step >= 1,
        "the job did not start", timeout=120,
    )  # fmt: skip
    assert stack.stop(draining) == 0
    assert "handed back" in draining.output()
    first = (await statuses(stack, [job]))[job]
    assert first.status not in FINAL  # not finished by the drain, nor failed by it
    successor = stack.worker()
    await wait_until(
        stack, [job], lambda rows: rows[job].status in FINAL,
        "the handed-back job did not finish", timeout=180,
    )  # fmt: skip
    done = (await statuses(stack, [job]))[job]
    assert done.status == "completed", done.error
    assert done.attempts >= 2  # run again, not resumed by the stopped worker
    assert sorted(await movements(stack.sessions, job)) == ["capture", "reserve"]  # once
    cached, summed = await audit(stack.sessions, account.id)
    assert cached == summed and cached.reserved == 0
    assert stack.stopped(successor)


@pytest.mark.slow
async def test_a_job_of_a_killed_worker_is_retried_within_seconds(stack: Stack) -> None:
    # Independent of the test before, even a failed one: Redis up, no other worker.
    if not stack.redis.running:
        stack.redis.start()
    stack.stop_workers()
    doomed = stack.worker()
    account = await create_account(stack.sessions, stack.settings, credits=1000)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        job = await submit(client, account, "flux-pro", f"long-{uuid.uuid4().hex}")
    await wait_until(
        stack, [job], lambda rows: rows[job].status == "processing" and rows[job].step >= 1,
        "the job did not start", timeout=120,
    )  # fmt: skip
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    stack.processes.remove(doomed)
    killed_at = time.monotonic()
    # Another worker's sweeper finds the expired lease and puts the job back in the
    # queue; arq's lock of the dead run (job timeout + 10 s = 610 s) does not hold it up.
    successor = stack.worker()
    await wait_until(
        stack, [job], lambda rows: rows[job].status == "processing" and rows[job].attempts == 2,
        "the job was not retried", timeout=60,
    )  # fmt: skip
    assert time.monotonic() - killed_at < 60  # "within about a minute" (lease: 3 s here)
    await wait_until(
        stack, [job], lambda rows: rows[job].status in FINAL,
        "the retried job did not finish", timeout=180,
    )  # fmt: skip
    done = (await statuses(stack, [job]))[job]
    assert (done.status, done.attempts) == ("completed", 2)
    assert sorted(await movements(stack.sessions, job)) == ["capture", "reserve"]  # once
    cached, summed = await audit(stack.sessions, account.id)
    assert cached == summed and cached.reserved == 0
    assert stack.stopped(successor)
