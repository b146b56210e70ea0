"""Shared fixtures: a real Postgres database built by ``alembic upgrade head``, a real
Redis database, a real uvicorn server and a real arq worker running the tiny FLUX
pipeline. Servers run in threads of this process (each with its own event loop) so tests
can also reach the same code directly; the CLI test starts real subprocesses.

Isolation: the database is dropped and rebuilt once per test session and every test
works in accounts of its own (``tests/factories.py``), so tests never see each other's
rows; Redis uses its own database and queue name, flushed at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_sessionmaker,
)

from billing.db import make_engine, make_sessionmaker
from billing.migrate import drop_database, upgrade
from runtime.settings import ROOT, Settings
from server.app import create_app
from tests.factories import TestAccount, create_account

TEST_DATABASE_URL = os.environ.get(
    "FLUXGATE_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/fluxgate_test"
)
TEST_REDIS_URL = os.environ.get("FLUXGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TINY_MODEL = ROOT / "var" / "models" / "tiny-flux"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tiny_model() -> Path:
    """The tiny models deploy/models.dev.toml names (tiny-flux, tiny-flux-fill,
    tiny-flux2, tiny-flux2-klein)."""
    names = ("tiny-flux", "tiny-flux-fill", "tiny-flux2", "tiny-flux2-klein")
    if not all((TINY_MODEL.with_name(n) / "model_index.json").exists() for n in names):
        from gpu_worker.tiny import build_tiny_models

        build_tiny_models(TINY_MODEL.parent)
    return TINY_MODEL


async def recreate_database(url: str) -> None:
    await drop_database(url)
    await upgrade(url)


@pytest.fixture(scope="session")
def api_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, api_port: int) -> Settings:
    ensure_tiny_model()
    return Settings(
        environment="test",
        database_url=TEST_DATABASE_URL,
        redis_url=TEST_REDIS_URL,
        queue_name=f"fluxgate:test:{uuid.uuid4().hex[:8]}",
        storage_dir=tmp_path_factory.mktemp("storage"),
        public_url=f"http://127.0.0.1:{api_port}",
        models=ROOT / "deploy" / "models.dev.toml",
        secret_key="test-secret-key",
        progress_interval_s=0.05,
        db_pool_size=20,
        db_max_overflow=40,
    )


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[str]:
    await recreate_database(settings.database_url)
    redis.Redis.from_url(settings.redis_url).flushdb()
    yield settings.database_url


@pytest.fixture(scope="session")
async def sessions(database: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database, pool_size=5, max_overflow=5)
    yield make_sessionmaker(engine)
    await engine.dispose()


class ThreadedServer:
    """uvicorn serving the real app on a real port, from a thread with its own loop."""

    def __init__(self, settings: Settings, port: int) -> None:
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @classmethod
    def of(cls, settings: Settings) -> ThreadedServer:
        """The server at ``settings.public_url``'s port."""
        return cls(settings, int(settings.public_url.rsplit(":", 1)[1]))

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def own_queue(settings: Settings, name: str, **update: Any) -> Settings:
    """The suite's settings on a queue of their own, with the public URL of a free port:
    only the workers a module starts with these settings take its jobs (serve it with
    ``ThreadedServer.of``)."""
    port = free_port()
    return settings.model_copy(
        update={
            "queue_name": f"fluxgate:{name}:{uuid.uuid4().hex[:8]}",
            "public_url": f"http://127.0.0.1:{port}",
            **update,
        }
    )


@pytest.fixture(scope="session")
def api(settings: Settings, database: str, api_port: int) -> Iterator[str]:
    with ThreadedServer(settings, api_port) as server:
        yield server.url


def _close_leftover_connections(loop: asyncio.AbstractEventLoop) -> None:
    """Postgres and Redis connections still open on a stopped worker's loop, closed as the
    process's exit would. A worker stopped inside a test is cancelled with its loop's
    tasks; a cancel that lands mid-query can leave that query's connection neither
    returned nor closed, and a closed loop can no longer close it (seen now and then as
    an unclosed-socket ResourceWarning in a later test). Closing a transport only
    schedules the socket's close on the loop, so the loop runs once more afterwards."""
    import gc

    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type stubs
    from redis.asyncio.connection import AbstractConnection

    redis_left: list[AbstractConnection] = []
    for found in gc.get_objects():
        kind = type(found)  # not isinstance: it reads __class__, which some objects warn on
        if issubclass(kind, asyncpg.Connection):
            if not found.is_closed() and getattr(found, "_loop", None) is loop:
                found.terminate()
        elif issubclass(kind, AbstractConnection):
            writer = getattr(found, "_writer", None)
            if writer is not None and getattr(writer.transport, "_loop", None) is loop:
                redis_left.append(found)

    async def settle() -> None:
        for connection in redis_left:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)
        await asyncio.sleep(0)  # the transports' scheduled closes run

    loop.run_until_complete(settle())


class ThreadedWorker:
    """A real arq worker (the one `fluxgate worker` runs) in a thread with its own loop."""

    def __init__(
        self, settings: Settings, build: Callable[..., Any] | None = None, **kwargs: Any
    ) -> None:
        self.settings = settings
        self.build = build
        self.kwargs = kwargs
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.worker: object | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        from gpu_worker.worker import build_worker

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            build = self.build or build_worker
            worker = build(self.settings, handle_signals=False, **self.kwargs)
            self.worker = worker
            self.loop.call_soon(self.ready.set)
            worker.run()
        except BaseException as exc:  # surfaced by __enter__
            self.error = exc
            self.ready.set()
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        loop = self.loop
        assert loop is not None
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        _close_leftover_connections(loop)
        loop.close()

    def __enter__(self) -> ThreadedWorker:
        self.thread.start()
        self.ready.wait(timeout=60)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        """Cancel the worker's main task until its thread ends (a cancel that lands inside
        a library call may be absorbed: ask again), and fail if it does not: a worker
        left running would go on sweeping the suite's database with this test's
        settings."""
        worker = self.worker
        task = getattr(worker, "main_task", None) if worker is not None else None
        deadline = time.monotonic() + 60
        while self.thread.is_alive() and time.monotonic() < deadline:
            if task is not None and self.loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self.loop.call_soon_threadsafe(task.cancel)
            self.thread.join(timeout=1)
        assert not self.thread.is_alive(), f"the worker on {self.settings.queue_name} did not stop"


@pytest.fixture(scope="session")
def worker(settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(settings) as w:
        yield w


@pytest.fixture
async def client(api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=60) as c:
        yield c


@pytest.fixture
async def account(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> TestAccount:
    return await create_account(sessions, settings, credits=1000)


def wait_healthy(url: str, procs: list[subprocess.Popen[Any]], timeout: float = 60) -> None:
    """Wait until the API at ``url`` answers /healthz, failing early if a process died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        for proc in procs:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"{proc.args!r} exited: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.2)


@contextlib.contextmanager
def spawn_api(settings: Settings) -> Iterator[str]:
    """A second API *process*: `fluxgate serve` in a subprocess, configured like
    ``settings`` (same database, Redis, queue and key pepper)."""
    port = free_port()
    env = {
        **os.environ,
        "FLUXGATE_DATABASE_URL": settings.database_url,
        "FLUXGATE_REDIS_URL": settings.redis_url,
        "FLUXGATE_QUEUE_NAME": settings.queue_name,
        "FLUXGATE_SECRET_KEY": settings.secret_key.get_secret_value(),
        "FLUXGATE_STORAGE_DIR": str(settings.storage_dir),
        "FLUXGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "FLUXGATE_WEBHOOK_ALLOWED_HOSTS": settings.webhook_allowed_hosts,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, [proc])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
