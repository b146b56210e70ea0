"""The accept path's database use (issue 15): an accepted job is one transaction on one
pooled connection (authentication begins it, the job's unit of work continues it), and
no request holds a connection while its client is still sending the body. Real uvicorn,
Postgres and Redis; the app's own engine is watched through SQLAlchemy's events."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.settings import Settings
from tests.conftest import ThreadedServer, own_queue
from tests.factories import TestAccount, create_account

GENERATE = """mutation G($input: GenerateInput!) { generate(input: $input) { id status } }"""
SEED_INPUT = {
    "type": "IMAGE",
    "provider": "flux-dev",
    "input": {"text": "A futuristic city with flying cars and neon lights"},
    "options": {"width": 256, "height": 256},
}


class BodyWatch:
    """Wraps the app: counts, per request path, the times the app asked for more body, so
    a test can wait until the server is blocked on a client that has not finished."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.waiting = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        asked = 0

        async def watched() -> Message:
            nonlocal asked
            asked += 1
            if asked == 2:  # the first chunk is in; the server waits for the rest
                self.waiting.set()
            return await receive()

        await self.app(scope, watched, send)


class Watched:
    """The API on its own port, its engine's checkouts and commits counted."""

    def __init__(self, settings: Settings) -> None:
        self.server = ThreadedServer.of(settings)
        self.app: Any = self.server.server.config.app
        self.body = BodyWatch(cast(ASGIApp, self.app))
        self.server.server.config.app = self.body
        self.checkouts = 0
        self.commits = 0
        self.rollbacks = 0

    @property
    def engine(self) -> AsyncEngine:
        bind = self.app.state.services.sessions.kw["bind"]
        assert isinstance(bind, AsyncEngine)
        return bind

    def count(self) -> None:
        def checkout(*_: Any) -> None:
            self.checkouts += 1

        def commit(*_: Any) -> None:
            self.commits += 1

        def rollback(*_: Any) -> None:
            self.rollbacks += 1

        event.listen(self.engine.sync_engine.pool, "checkout", checkout)
        event.listen(self.engine.sync_engine, "commit", commit)
        event.listen(self.engine.sync_engine, "rollback", rollback)

    def reset(self) -> None:
        self.checkouts = self.commits = self.rollbacks = 0


@pytest.fixture(scope="module")
def watched(settings: Settings, database: str) -> Iterator[Watched]:
    w = Watched(own_queue(settings, "accept-path"))
    with w.server:
        w.count()
        yield w


@pytest.fixture
async def http(watched: Watched) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=watched.server.url, timeout=60) as client:
        yield client


@pytest.fixture
async def caller(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, http: httpx.AsyncClient
) -> TestAccount:
    account = await create_account(sessions, settings, credits=10_000)
    # The key's first use is recorded in a transaction of its own (once a minute).
    response = await http.post("/graphql", json={"query": "{ me { id } }"},
                               headers={"Authorization": f"Bearer {account.api_key}"})  # fmt: skip
    assert response.status_code == 200, response.text
    return account


async def test_an_accepted_generate_is_one_transaction_on_one_connection(
    watched: Watched, http: httpx.AsyncClient, caller: TestAccount
) -> None:
    watched.reset()
    for _ in range(3):
        response = await http.post(
            "/graphql",
            json={"query": GENERATE, "variables": {"input": SEED_INPUT}},
            headers={"Authorization": f"Bearer {caller.api_key}"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["generate"]["status"] == "queued"
    assert (watched.checkouts, watched.commits, watched.rollbacks) == (3, 3, 0)


async def test_an_accepted_rest_job_is_one_transaction_on_one_connection(
    watched: Watched, http: httpx.AsyncClient, caller: TestAccount
) -> None:
    watched.reset()
    for _ in range(3):
        response = await http.post(
            "/v1/text_to_image",
            json={"service": "flux-dev", "prompt": "a lighthouse", "width": 256, "height": 256},
            headers={"Authorization": f"Bearer {caller.api_key}"},
        )
        assert response.status_code == 200, response.text
    assert (watched.checkouts, watched.commits, watched.rollbacks) == (3, 3, 0)


async def test_a_refused_submit_commits_nothing_and_returns_its_connection(
    watched: Watched, http: httpx.AsyncClient, caller: TestAccount
) -> None:
    watched.reset()
    bad = {**SEED_INPUT, "options": {"width": 100000, "height": 256}}
    response = await http.post(
        "/graphql",
        json={"query": GENERATE, "variables": {"input": bad}},
        headers={"Authorization": f"Bearer {caller.api_key}"},
    )
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert (watched.checkouts, watched.commits) == (1, 0)
    assert watched.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def post_trickled(
    watched: Watched,
    http: httpx.AsyncClient,
    caller: TestAccount,
    path: str,
    body: bytes,
    content_type: str,
) -> httpx.Response:
    """POST ``body`` in two parts, the second sent only once the server waits for it;
    meanwhile, no database connection may be checked out."""
    proceed = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield body[:10]
        await proceed.wait()
        yield body[10:]

    watched.body.waiting.clear()
    headers = {
        "Authorization": f"Bearer {caller.api_key}",
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
    }
    request = asyncio.create_task(http.post(path, content=trickle(), headers=headers))
    assert await asyncio.to_thread(watched.body.waiting.wait, 30)
    try:
        assert watched.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        proceed.set()
    return await request


@pytest.mark.parametrize("path", ["/graphql", "/v1/text_to_image"])
async def test_a_slow_body_holds_no_database_connection(
    watched: Watched, http: httpx.AsyncClient, caller: TestAccount, path: str
) -> None:
    """Authentication begins the request's transaction, so it waits for the whole body:
    clients that trickle their bodies cannot take the pool's connections."""
    body = (
        {"query": GENERATE, "variables": {"input": SEED_INPUT}}
        if path == "/graphql"
        else {"service": "flux-dev", "prompt": "a lighthouse", "width": 256, "height": 256}
    )
    encoded = httpx.Request("POST", "/", json=body).content
    response = await post_trickled(watched, http, caller, path, encoded, "application/json")
    assert response.status_code == 200, response.text


async def test_a_multipart_upload_holds_no_database_connection_while_it_arrives(
    watched: Watched, http: httpx.AsyncClient, caller: TestAccount
) -> None:
    """An upload authenticates first (its key must be in a header) and gives the
    connection back before reading its files."""
    boundary = uuid.uuid4().hex
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'
        f"a lighthouse\r\n--{boundary}--\r\n"
    ).encode()
    response = await post_trickled(
        watched, http, caller, "/v1/image_to_image", part,
        f"multipart/form-data; boundary={boundary}",
    )  # fmt: skip
    # No image was sent: refused, after the body, with nothing charged.
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"]["field"] == "image"
