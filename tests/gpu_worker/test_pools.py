"""Model pools (issue 11): each registry entry names a pool, each pool has its own arq
queue, and a worker serves only the pools it is given. Real API, real Redis, real
workers on the tiny model; a registry of two pools: flux-dev in "a", flux-schnell in "b".
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.catalog import DEFAULT_POOL, Catalog, pool_of
from billing.db import (
    GenerationAccepted,
    GenerationCancelled,
    GenerationRequeued,
    Store,
)
from billing.models import Generation, utcnow
from gpu_worker import sweeper
from gpu_worker.supervisor import WorkerGroup
from gpu_worker.worker import build_worker, serving
from runtime.queue import Dispatcher, Keys, QueueInspector, Timings, job_id, pool_queue
from runtime.settings import ROOT, Settings
from tests.conftest import TINY_MODEL, ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, create_account, gql, wait_for_final

SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
STATE = "query Q($id: ID!) { generation(id: $id) { status queuePosition } }"
CANCEL = "mutation C($id: ID!) { cancelGeneration(id: $id) { status } }"
AVAILABLE = "query A($id: ID!) { generation(id: $id) { modelAvailable } }"
PRICE = """query P($input: ImageGenerationInput!) {
  price(input: $input) { credits modelAvailable unavailableReason }
}"""

REGISTRY = """
[[model]]
provider = "flux-dev"
version = "flux-dev"
path = "{path}"
steps = 2
guidance = 3.5
max_sequence_length = 64
pool = "a"

[[model]]
provider = "flux-schnell"
version = "flux-schnell"
path = "{path}"
steps = 2
guidance = 0.0
max_sequence_length = 64
pool = "b"
"""


def request(service: str, prompt: str = "a lighthouse") -> dict[str, Any]:
    return {"input": {"service": service, "prompt": prompt, "width": 256, "height": 256}}


@pytest.fixture(scope="module")
def pool_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    registry = tmp_path_factory.mktemp("pools") / "models.toml"
    registry.write_text(REGISTRY.format(path=TINY_MODEL))
    return own_queue(settings, "pools", models=registry)


@pytest.fixture(scope="module")
def pool_api(pool_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(pool_settings) as server:
        yield server.url


@pytest.fixture
async def http(pool_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pool_api, timeout=60) as client:
        yield client


@pytest.fixture
async def plain_redis(pool_settings: Settings) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(pool_settings.redis_url)
    yield client
    await client.aclose()


async def submit(http: httpx.AsyncClient, key: str, service: str) -> str:
    body = await gql(http, SUBMIT, request(service), key=key)
    job: str = body["data"]["generateImage"]["id"]
    return job


async def state(http: httpx.AsyncClient, key: str, job: str) -> dict[str, Any]:
    g: dict[str, Any] = (await gql(http, STATE, {"id": job}, key=key))["data"]["generation"]
    return g


async def price(http: httpx.AsyncClient, key: str, service: str) -> dict[str, Any]:
    quote: dict[str, Any] = (await gql(http, PRICE, request(service), key=key))["data"]["price"]
    return quote


async def until_available(http: httpx.AsyncClient, key: str, service: str) -> None:
    """Until the model's pool has a live worker: its heartbeat starts once its models
    are loaded, after the worker thread starts."""
    deadline = time.monotonic() + 60
    while not (await price(http, key, service))["modelAvailable"]:
        assert time.monotonic() < deadline, f"{service} never became available"
        await asyncio.sleep(0.05)


async def queued_on(client: redis.asyncio.Redis, settings: Settings, job: str) -> list[str]:
    """The pools whose queue holds ``job``."""
    found = []
    for pool in (DEFAULT_POOL, "a", "b"):
        if await client.zscore(pool_queue(settings.queue_name, pool), job_id(job)) is not None:
            found.append(pool)
    return found


# -- the registry and the names ------------------------------------------------------


def test_an_entry_without_a_pool_is_in_the_default_pool() -> None:
    base = {"provider": "p", "version": "v", "path": "/m"}
    catalog = Catalog.from_dict({"model": [base, {**base, "version": "w", "pool": "gpu-80"}]},
                                base=Path("/"))  # fmt: skip
    assert [e.pool for e in catalog.entries] == [DEFAULT_POOL, "gpu-80"]
    assert catalog.pools == [DEFAULT_POOL, "gpu-80"]
    assert [e.version for e in catalog.in_pools(["gpu-80"])] == ["w"]
    with pytest.raises(ValueError, match="unknown pool nope"):
        catalog.in_pools(["nope"])


@pytest.mark.parametrize("name", ["", "A", "a_b", "-a", "a-", "a" * 33, "a b", "a:b"])
def test_pool_names_are_short_and_plain(name: str) -> None:
    raw = {"provider": "p", "version": "v", "path": "/m", "pool": name}
    with pytest.raises(ValueError, match="invalid pool name"):
        Catalog.from_dict({"model": [raw]}, base=Path("/"))


def test_the_default_pool_keeps_the_deployments_queue() -> None:
    # Jobs queued before pools existed are on the default pool's queue: no migration.
    assert pool_queue("fluxgate:queue", DEFAULT_POOL) == "fluxgate:queue"
    assert pool_queue("fluxgate:queue", "b") == "fluxgate:queue:pool:b"
    # A job's pool is its frozen model's; a job from before pools is on the default one.
    assert pool_of({"model": {"path": "/m", "pool": "b"}}) == "b"
    assert pool_of({"model": {"path": "/m"}}) == DEFAULT_POOL
    assert pool_of({}) == DEFAULT_POOL


def test_a_worker_serves_the_pools_it_is_given(pool_settings: Settings) -> None:
    assert serving(pool_settings, None) == ["a", "b"]
    assert serving(pool_settings, ["b"]) == ["b"]
    with pytest.raises(ValueError, match="unknown pool c"):
        serving(pool_settings, ["c"])


# -- the dispatcher and the inspector, per pool ---------------------------------------


async def test_events_go_to_their_pools_queue(
    pool_settings: Settings, plain_redis: redis.asyncio.Redis
) -> None:
    settings = own_queue(pool_settings, "pool-events")
    # Job ids of this run only (arq keeps a job's keys after it leaves a queue), in order:
    # jobs enqueued in the same millisecond are ranked by id.
    run = uuid.uuid4().hex
    j1, j2, b1 = (f"{run}-{name}" for name in ("j1", "j2", "b1"))
    a = [f"{run}-a{n}" for n in range(3)]
    pool = ArqPool(settings)
    try:
        dispatcher = Dispatcher(pool.redis, settings.queue_name)
        await dispatcher.dispatch([GenerationAccepted(j1, "b"), GenerationAccepted(j2)])
        assert await queued_on(plain_redis, settings, j1) == ["b"]
        assert await queued_on(plain_redis, settings, j2) == [DEFAULT_POOL]
        await dispatcher.dispatch([GenerationRequeued(j1, "b")])
        assert await queued_on(plain_redis, settings, j1) == ["b"]
        await dispatcher.dispatch([GenerationCancelled(j1, "b")])
        assert await queued_on(plain_redis, settings, j1) == []
        # Cancel flags stay the deployment's: a worker of any pool finds them.
        assert await plain_redis.exists(Keys(settings.queue_name).cancel(j1))

        # Positions, timings and workers are each pool's.
        await dispatcher.dispatch([GenerationAccepted(job, "a") for job in a])
        await dispatcher.dispatch([GenerationAccepted(b1, "b")])
        inspector = QueueInspector(pool.redis, settings.queue_name)
        await Timings(pool.redis, pool_queue(settings.queue_name, "b")).record(
            "flux-schnell:256x256", step_seconds=0.5, job_seconds=2.0
        )
        assert await inspector.eta_queued(a[2], "flux-dev:256x256", 2, "a") == (2, None)
        assert await inspector.eta_queued(b1, "flux-schnell:256x256", 2, "b") == (0, 2.0)
        assert await inspector.position(b1, "b") == 0
        assert await inspector.eta_processing("flux-schnell:256x256", 1, 2, "b") == 0.5
        assert await inspector.eta_processing("flux-schnell:256x256", 1, 2) is None
        assert await inspector.live_workers(["a", "b"]) == {"a": 0, "b": 0}
    finally:
        await pool.close()


class ArqPool:
    def __init__(self, settings: Settings) -> None:
        from runtime.queue import new_pool

        self.redis = new_pool(settings.redis_url, settings.queue_name)

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)


# -- workers per pool, end to end -----------------------------------------------------


async def test_a_pools_worker_takes_only_its_pools_jobs(
    http: httpx.AsyncClient,
    pool_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    plain_redis: redis.asyncio.Redis,
) -> None:
    account = await create_account(sessions, pool_settings, credits=1000)
    key = account.api_key
    # No worker at all: both models are unavailable, and say why.
    for service, pool in (("flux-dev", "a"), ("flux-schnell", "b")):
        quote = await price(http, key, service)
        assert quote["modelAvailable"] is False
        assert f"pool '{pool}'" in quote["unavailableReason"]

    # Pool b's job first: a worker that read b's queue would take it before a's.
    b_job = await submit(http, key, "flux-schnell")
    a_jobs = [await submit(http, key, "flux-dev") for _ in range(2)]
    assert await queued_on(plain_redis, pool_settings, b_job) == ["b"]
    assert await queued_on(plain_redis, pool_settings, a_jobs[0]) == ["a"]
    # Positions are per pool: b's job is next on its queue whatever waits on a's.
    assert (await state(http, key, b_job))["queuePosition"] == 0
    assert [(await state(http, key, j))["queuePosition"] for j in a_jobs] == [0, 1]

    with ThreadedWorker(pool_settings, pools=["a"]) as a_worker:
        assert not isinstance(a_worker.worker, WorkerGroup)  # one pool: a plain arq Worker
        for job in a_jobs:
            assert (await wait_for_final(http, key, job))["status"] == "completed"
        await until_available(http, key, "flux-dev")
        # Never taken by a's worker: still queued, on b's queue, and b still unavailable.
        assert (await state(http, key, b_job)) == {"status": "queued", "queuePosition": 0}
        # The job's own status says its model cannot run now; a finished job says nothing.
        shown = await gql(http, AVAILABLE, {"id": b_job}, key=key)
        assert shown["data"]["generation"]["modelAvailable"] is False, shown
        shown = await gql(http, AVAILABLE, {"id": a_jobs[0]}, key=key)
        assert shown["data"]["generation"]["modelAvailable"] is None, shown
        assert await queued_on(plain_redis, pool_settings, b_job) == ["b"]
        assert (await price(http, key, "flux-schnell"))["modelAvailable"] is False

        # Cancelling takes a job off its own pool's queue.
        cancelled = await submit(http, key, "flux-schnell")
        assert await queued_on(plain_redis, pool_settings, cancelled) == ["b"]
        await gql(http, CANCEL, {"id": cancelled}, key=key)
        assert await queued_on(plain_redis, pool_settings, cancelled) == []

        with ThreadedWorker(pool_settings, pools=["b"]):
            assert (await wait_for_final(http, key, b_job))["status"] == "completed"
            await until_available(http, key, "flux-schnell")
    assert (await state(http, key, cancelled))["status"] == "cancelled"


async def test_a_worker_without_pools_serves_every_pool(
    http: httpx.AsyncClient, pool_settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    account = await create_account(sessions, pool_settings, credits=1000)
    key = account.api_key
    jobs = [await submit(http, key, s) for s in ("flux-schnell", "flux-dev", "flux-schnell")]
    with ThreadedWorker(pool_settings) as worker:
        assert isinstance(worker.worker, WorkerGroup)
        queues = sorted(member.queue_name for member in worker.worker.members)
        assert queues == sorted(pool_queue(pool_settings.queue_name, p) for p in ("a", "b"))
        for job in jobs:
            assert (await wait_for_final(http, key, job))["status"] == "completed"
        await until_available(http, key, "flux-dev")
        await until_available(http, key, "flux-schnell")


async def test_the_sweeper_requeues_a_lost_job_on_its_pools_queue(
    http: httpx.AsyncClient,
    pool_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    plain_redis: redis.asyncio.Redis,
) -> None:
    account: TestAccount = await create_account(sessions, pool_settings, credits=1000)
    job = await submit(http, account.api_key, "flux-schnell")
    queue = pool_queue(pool_settings.queue_name, "b")
    # Lost with a Redis restart, and queued a while (so the sweeper looks at it).
    await plain_redis.zrem(queue, job_id(job))
    await plain_redis.delete(f"arq:job:{job_id(job)}")
    async with sessions() as session:
        await session.execute(
            update(Generation)
            .where(Generation.id == job)  # type: ignore[arg-type]  # SQLModel column
            .values(updated_at=utcnow() - timedelta(minutes=10))
        )
        await session.commit()
    pool = ArqPool(pool_settings)
    try:
        store = Store(sessions, Dispatcher(pool.redis, pool_settings.queue_name).dispatch)
        swept = await sweeper.sweep(store, pool_settings)
    finally:
        await pool.close()
    assert job in swept["requeued"]
    assert await queued_on(plain_redis, pool_settings, job) == ["b"]
    # Done with it: off the queue, credits released.
    await gql(http, CANCEL, {"id": job}, key=account.api_key)


def test_build_worker_refuses_an_unknown_pool(pool_settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown pool"):
        build_worker(pool_settings, handle_signals=False, pools=["gpu-x"])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--pool", "a", "--pool", "gpu-x"], "unknown pool gpu-x; the model registry has: a, b"),
        (["--pool", "a", "--memory-gb", "0.0001"], "over the worker's memory budget of 0.0001 GB"),
    ],
    ids=["unknown-pool", "over-budget"],
)
def test_the_worker_command_refuses_what_it_cannot_serve(
    pool_settings: Settings, args: list[str], said: str
) -> None:
    # Refused before connecting anywhere: nothing listens at these addresses.
    env = {**os.environ, "FLUXGATE_MODELS": str(pool_settings.models),
           "FLUXGATE_REDIS_URL": "redis://127.0.0.1:1/0"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "worker", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


async def test_fluxgate_worker_serves_every_pool_under_its_supervisor(
    http: httpx.AsyncClient,
    pool_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    """The real command, no --pool: one process, one arq Worker per pool's queue, under
    the supervisor; SIGTERM stops them all."""
    s = pool_settings
    env = {
        **os.environ,
        "FLUXGATE_ENVIRONMENT": "test",
        "FLUXGATE_DATABASE_URL": s.database_url,
        "FLUXGATE_REDIS_URL": s.redis_url,
        "FLUXGATE_QUEUE_NAME": s.queue_name,
        "FLUXGATE_SECRET_KEY": s.secret_key.get_secret_value(),
        "FLUXGATE_STORAGE_DIR": str(s.storage_dir),
        "FLUXGATE_PUBLIC_URL": s.public_url,
        "FLUXGATE_MODELS": str(s.models),
        "FLUXGATE_DEVICE": "cpu",
    }
    account = await create_account(sessions, s, credits=1000)
    jobs = [await submit(http, account.api_key, m) for m in ("flux-dev", "flux-schnell")]
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "worker"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        for job in jobs:
            done = await wait_for_final(http, account.api_key, job, timeout=120)
            assert done["status"] == "completed", log.read_text()
        await until_available(http, account.api_key, "flux-dev")
        await until_available(http, account.api_key, "flux-schnell")
    finally:
        proc.terminate()
        status = proc.wait(timeout=60)
    assert status == 0, log.read_text()[-3000:]
    # Gone from both pools' heartbeat sets once stopped.
    assert await live_workers(s) == {"a": 0, "b": 0}


async def live_workers(settings: Settings) -> dict[str, int]:
    pool = ArqPool(settings)
    try:
        return await QueueInspector(pool.redis, settings.queue_name).live_workers(["a", "b"])
    finally:
        await pool.close()


async def test_a_worker_loads_only_its_pools_models(
    pool_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pool a's model directory does not exist here: a worker of pool b starts (loading
    every model would fail loudly on it), and loads and warms b's model alone."""
    import gpu_worker.worker as worker_module

    registry = tmp_path / "models.toml"
    registry.write_text(
        REGISTRY.format(path=TINY_MODEL).replace(
            f'path = "{TINY_MODEL}"', f'path = "{tmp_path / "absent"}"', 1
        )
    )
    warmed: list[tuple[str, ...]] = []
    real = worker_module.warm_up

    def recorded_warm_up(runner: Any, entries: Any) -> None:
        warmed.append(tuple(entry.provider for entry in runner.catalog.entries))
        warmed.append(tuple(entry.provider for entry in entries))
        real(runner, entries)

    monkeypatch.setattr(worker_module, "warm_up", recorded_warm_up)
    settings = own_queue(pool_settings, "pool-load", models=registry)
    with ThreadedWorker(settings, pools=["b"]):
        deadline = time.monotonic() + 60
        while await live_workers(settings) != {"a": 0, "b": 1}:
            assert time.monotonic() < deadline, "pool b's worker never came up"
            await asyncio.sleep(0.05)
    assert warmed == [("flux-schnell",), ("flux-schnell",)]


async def test_a_worker_counts_in_its_pool_only_once_its_models_are_warm(
    pool_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpu_worker.worker as worker_module

    loading = threading.Event()
    release = threading.Event()
    real = worker_module.warm_up

    def held_warm_up(*args: Any) -> None:
        loading.set()
        assert release.wait(60)
        real(*args)

    monkeypatch.setattr(worker_module, "warm_up", held_warm_up)
    settings = own_queue(pool_settings, "pool-ready")
    with ThreadedWorker(settings, pools=["b"]):
        assert await asyncio.to_thread(loading.wait, 60)
        # Loaded, not yet warmed: not announced, so b stays unavailable.
        assert await live_workers(settings) == {"a": 0, "b": 0}
        release.set()
        deadline = time.monotonic() + 60
        while await live_workers(settings) != {"a": 0, "b": 1}:
            assert time.monotonic() < deadline, "never announced"
            await asyncio.sleep(0.05)
