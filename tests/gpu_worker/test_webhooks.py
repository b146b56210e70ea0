"""Signed webhooks end to end: a real receiver (an HTTP server in this test), the real API,
GPU worker and webhook worker, real Redis and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col
from standardwebhooks.webhooks import Webhook

from billing.catalog import Catalog
from billing.models import WebhookEvent
from billing.netguard import AddressPolicy
from billing.service.webhooks import signature
from gpu_worker.webhooks import USER_AGENT, build_webhook_worker, send
from runtime.queue import Keys
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, free_port
from tests.factories import TestAccount, create_account, gql, wait_for_final
from tests.runners import SlowRunner

SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
DELIVERIES = """query D($id: ID) { webhookDeliveries(generationId: $id) {
  id event url status payload nextAttemptAt deliveredAt
  attempts { success statusCode error responseBody durationMs attemptedAt } } }"""


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers from a plan: each request takes the
    next (status, headers, body) or ("hang", seconds); afterwards it answers 200."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(
                        {"headers": dict(self.headers.items()), "body": body, "path": self.path}
                    )
                    step = receiver.plan.pop(0) if receiver.plan else (200, {}, b"ok")
                if step[0] == "hang":
                    time.sleep(step[1])
                    step = (200, {}, b"late")
                if step[0] == "drip":  # headers at once, then one byte every 0.2 s
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    deadline = time.monotonic() + step[1]
                    with contextlib.suppress(OSError):
                        while time.monotonic() < deadline:
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.2)
                    return
                status, headers, payload = step
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def hook_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def hook_settings(settings: Settings, hook_port: int) -> Settings:
    return settings.model_copy(
        update={
            "public_url": f"http://127.0.0.1:{hook_port}",
            "queue_name": f"fluxgate:hooks:{uuid.uuid4().hex[:8]}",
            "webhook_allowed_hosts": "127.0.0.1",
            "webhook_retry_schedule": "0.3,0.3,0.3",
            "webhook_timeout_s": 1.0,
        }
    )


@pytest.fixture(scope="module")
def hook_api(hook_settings: Settings, hook_port: int, database: str) -> Iterator[str]:
    with ThreadedServer(hook_settings, hook_port) as server:
        yield server.url


@pytest.fixture(scope="module")
def gpu(hook_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    # Steps slowed a little, so each step's progress is recorded (and its webhook sent).
    runner = SlowRunner(Catalog.load(hook_settings.models), step_seconds=0.15)
    with ThreadedWorker(hook_settings, runner=runner) as w:
        yield w


def webhook_worker(settings: Settings) -> ThreadedWorker:
    return ThreadedWorker(settings, build=build_webhook_worker)


@pytest.fixture
async def http(hook_api: str) -> Any:
    async with httpx.AsyncClient(base_url=hook_api, timeout=60) as client:
        yield client


async def submit(http: httpx.AsyncClient, account: TestAccount, url: str, **extra: Any) -> str:
    body = await gql(
        http,
        SUBMIT,
        {"input": {"service": "flux-dev", "prompt": "hooked", "width": 256, "height": 256,
                   "webhookUrl": url, **extra}},
        key=account.api_key,
    )  # fmt: skip
    assert "errors" not in body, body
    job_id: str = body["data"]["generateImage"]["id"]
    return job_id


async def deliveries(
    http: httpx.AsyncClient, account: TestAccount, job_id: str, *, until: str, timeout: float = 30
) -> list[dict[str, Any]]:
    """The job's webhook deliveries, once every one of them has status ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        body = await gql(http, DELIVERIES, {"id": job_id}, key=account.api_key)
        found: list[dict[str, Any]] = body["data"]["webhookDeliveries"]
        if found and all(d["status"] == until for d in found):
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.1)


async def secret_of(http: httpx.AsyncClient, account: TestAccount) -> str:
    body = await gql(http, "{ me { webhookSecret } }", key=account.api_key)
    secret: str = body["data"]["me"]["webhookSecret"]
    return secret


def test_signature_matches_githubs_published_vector() -> None:
    # docs.github.com, "Validating webhook deliveries": the example secret and payload.
    assert signature("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


async def test_completed_job_is_posted_signed(
    http: httpx.AsyncClient, gpu: ThreadedWorker, hook_settings: Settings,
    account: TestAccount, receiver: Receiver,
) -> None:  # fmt: skip
    with webhook_worker(hook_settings):
        job = await submit(http, account, receiver.url)
        final = await wait_for_final(http, account.api_key, job)
        [delivery] = await deliveries(http, account, job, until="delivered")
    assert final["status"] == "completed"
    [request] = receiver.requests
    body: bytes = request["body"]
    headers = {k.lower(): v for k, v in request["headers"].items()}
    secret = await secret_of(http, account)

    # 1. The seed's plain HMAC over the exact raw body.
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-doitong-signature"], expected)
    # 2. Standard Webhooks, verified by the reference library (rejects replays too).
    Webhook(secret).verify(body, headers)
    assert headers["webhook-id"] == delivery["id"]
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT

    payload = json.loads(body)
    assert payload == delivery["payload"]
    assert {"id", "status", "url", "service", "createdAt", "completedAt", "metadata"} <= set(
        payload
    )
    assert (payload["id"], payload["status"], payload["service"]) == (
        job,
        "completed",
        "flux-dev",
    )
    assert payload["url"] == final["url"]
    assert payload["createdAt"].endswith("Z") and payload["completedAt"].endswith("Z")
    assert payload["metadata"]["width"] == 256 and payload["metadata"]["height"] == 256
    assert payload["metadata"]["duration"] > 0
    assert delivery["event"] == "completed"
    assert [a["statusCode"] for a in delivery["attempts"]] == [200]


async def test_retries_until_delivered_with_one_webhook_id(
    http: httpx.AsyncClient, gpu: ThreadedWorker, hook_settings: Settings,
    account: TestAccount, receiver: Receiver,
) -> None:  # fmt: skip
    receiver.plan = [(500, {}, b"boom"), (500, {}, b"boom again")]
    with webhook_worker(hook_settings):
        job = await submit(http, account, receiver.url)
        [delivery] = await deliveries(http, account, job, until="delivered")
    assert len(receiver.requests) == 3
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert ids == {delivery["id"]}
    bodies = {r["body"] for r in receiver.requests}
    assert len(bodies) == 1  # the same bytes every time
    attempts = delivery["attempts"]
    assert [(a["statusCode"], a["success"]) for a in attempts] == [
        (500, False), (500, False), (200, True),
    ]  # fmt: skip
    assert attempts[0]["responseBody"] == "boom"
    assert delivery["deliveredAt"] is not None


async def test_a_hanging_receiver_times_out_and_is_retried(
    http: httpx.AsyncClient, gpu: ThreadedWorker, hook_settings: Settings,
    account: TestAccount, receiver: Receiver,
) -> None:  # fmt: skip
    receiver.plan = [("hang", 3)]
    with webhook_worker(hook_settings):
        job = await submit(http, account, receiver.url)
        [delivery] = await deliveries(http, account, job, until="delivered")
    first, second = delivery["attempts"]
    assert not first["success"] and first["statusCode"] is None
    assert first["error"] == "timed out after 1s"
    assert 900 <= first["durationMs"] < 2500
    assert second["success"]


async def test_one_deadline_for_the_whole_exchange(receiver: Receiver) -> None:
    """A receiver that answers at once but drips its body never trips a per-read timeout;
    the attempt still ends at the deadline, and a huge answer is not read past 1 KiB."""
    receiver.plan = [("drip", 4), (200, {}, b"y" * 5_000_000)]
    policy = AddressPolicy.parse("127.0.0.1")
    started = time.monotonic()
    dripping = await send(receiver.url, "{}", {}, policy, 1.0)
    assert dripping.error == "timed out after 1s" and dripping.retryable
    assert time.monotonic() - started < 2
    huge = await send(receiver.url, "{}", {}, policy, 5.0)
    assert huge.success and huge.response_body == "y" * 1024


async def test_gone_stops_and_429_honours_retry_after(
    http: httpx.AsyncClient, gpu: ThreadedWorker, hook_settings: Settings,
    account: TestAccount, receiver: Receiver,
) -> None:  # fmt: skip
    receiver.plan = [(410, {}, b"gone")]
    with webhook_worker(hook_settings):
        gone = await submit(http, account, receiver.url)
        [delivery] = await deliveries(http, account, gone, until="failed")
        await asyncio.sleep(1)  # longer than the whole retry schedule
        assert len(receiver.requests) == 1
        assert delivery["attempts"][0]["error"] == "the receiver answered 410: not retried"

        receiver.plan = [(429, {"Retry-After": "2"}, b"slow down")]
        limited = await submit(http, account, receiver.url)
        [delivery] = await deliveries(http, account, limited, until="delivered")
    first, second = delivery["attempts"]
    assert first["statusCode"] == 429
    waited = _ts(second["attemptedAt"]) - _ts(first["attemptedAt"])
    assert waited >= 1.5  # the receiver's 2 s, not the schedule's 0.3 s


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


async def test_delivery_survives_a_worker_restart(
    http: httpx.AsyncClient, gpu: ThreadedWorker, hook_settings: Settings,
    account: TestAccount, receiver: Receiver, sessions: async_sessionmaker[AsyncSession],
) -> None:  # fmt: skip
    # The first retry is due an hour after the failed attempt, so the first worker can
    # never send it, however long it takes to stop. Once it is gone, the retry's job is
    # found waiting in Redis and made due, in Redis and in the database (what an hour
    # passing would do), and the next worker delivers it.
    slow_schedule = hook_settings.model_copy(update={"webhook_retry_schedule": "3600,2"})
    receiver.plan = [(503, {}, b"down")]
    first = webhook_worker(slow_schedule)
    with first:
        job = await submit(http, account, receiver.url)
        deadline = time.monotonic() + 30
        while True:  # until the first attempt is recorded and the retry scheduled
            body = await gql(http, DELIVERIES, {"id": job}, key=account.api_key)
            found = body["data"]["webhookDeliveries"]
            if found and found[0]["attempts"] and found[0]["nextAttemptAt"]:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert not first.thread.is_alive()
    assert len(receiver.requests) == 1
    queue = Keys(hook_settings.queue_name).webhooks
    redis = Redis.from_url(hook_settings.redis_url)
    try:
        waiting = [
            j.decode() for j in await redis.zrange(queue, 0, -1)
            if j.decode().startswith(f"webhook:{found[0]['id']}:")
        ]  # fmt: skip
        assert len(waiting) == 1, waiting  # the retry, deferred, waiting for a worker
        async with sessions() as session, session.begin():
            await session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == found[0]["id"])
                .values(next_attempt_at=func.now())
            )
        await redis.zadd(queue, {waiting[0]: int(time.time() * 1000)})
    finally:
        await redis.aclose()
    with webhook_worker(slow_schedule):
        [delivery] = await deliveries(http, account, job, until="delivered")
    assert [a["statusCode"] for a in delivery["attempts"]] == [503, 200]


async def test_a_delivery_whose_job_redis_lost_is_queued_again(
    http: httpx.AsyncClient, gpu: ThreadedWorker, hook_settings: Settings,
    account: TestAccount, receiver: Receiver, sessions: async_sessionmaker[AsyncSession],
) -> None:  # fmt: skip
    """A Redis restart without persistence loses the queued delivery jobs; the events are
    still pending in Postgres (the outbox), and the webhook worker's requeue of overdue
    events (at start, then every minute) queues them again: every one is delivered."""
    job = await submit(http, account, receiver.url)  # no webhook worker yet
    await wait_for_final(http, account.api_key, job)
    async with sessions() as session:
        events = (
            await session.execute(
                select(col(WebhookEvent.id)).where(col(WebhookEvent.generation_id) == job)
            )
        ).scalars().all()  # fmt: skip
    assert events  # the default filter: completed and failed
    queue = Keys(hook_settings.queue_name).webhooks
    redis = Redis.from_url(hook_settings.redis_url)
    try:
        lost = [
            j for j in await redis.zrange(queue, 0, -1)
            if j.decode().split(":")[1] in events
        ]  # fmt: skip
        assert len(lost) == len(events)
        # Lost as a restart loses them: off the queue, and the jobs themselves gone.
        await redis.zrem(queue, *lost)
        await redis.delete(*[b"arq:job:" + j for j in lost])
    finally:
        await redis.aclose()
    async with sessions() as session, session.begin():  # overdue, as minutes later
        await session.execute(
            update(WebhookEvent)
            .where(col(WebhookEvent.generation_id) == job)
            .values(next_attempt_at=func.now() - timedelta(minutes=5))
        )
    with webhook_worker(hook_settings):
        delivered = await deliveries(http, account, job, until="delivered")
    assert sorted(d["id"] for d in delivered) == sorted(events)
    assert len(receiver.requests) == len(events)  # each once


async def test_event_filter_redelivery_and_secret_rotation(
    http: httpx.AsyncClient, gpu: ThreadedWorker, hook_settings: Settings,
    sessions: async_sessionmaker[AsyncSession], settings: Settings, receiver: Receiver,
) -> None:  # fmt: skip
    owner = await create_account(sessions, settings, credits=100)
    old_secret = await secret_of(http, owner)
    rotated = await gql(
        http, "mutation { rotateWebhookSecret { webhookSecret } }", key=owner.api_key
    )
    new_secret = rotated["data"]["rotateWebhookSecret"]["webhookSecret"]
    assert new_secret != old_secret and new_secret.startswith("whsec_")

    with webhook_worker(hook_settings):
        job = await submit(
            http, owner, receiver.url, webhookEvents=["started", "progress", "completed"]
        )
        assert (await wait_for_final(http, owner.api_key, job))["status"] == "completed"
        found = await deliveries(http, owner, job, until="delivered")
        events = sorted(d["event"] for d in found)
        assert events == ["completed", "progress.25", "progress.50", "progress.75", "started"]
        completed = next(d for d in found if d["event"] == "completed")
        sent_before = len(receiver.requests)
        again = await gql(
            http, "mutation R($id: ID!) { redeliverWebhook(id: $id) { id status } }",
            {"id": completed["id"]}, key=owner.api_key,
        )  # fmt: skip
        assert again["data"]["redeliverWebhook"] == {"id": completed["id"], "status": "pending"}
        deadline = time.monotonic() + 30
        while len(receiver.requests) == sent_before:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    redelivered = receiver.requests[-1]
    headers = {k.lower(): v for k, v in redelivered["headers"].items()}
    assert headers["webhook-id"] == completed["id"]
    # During the grace period both secrets sign: receivers holding either one verify.
    Webhook(new_secret).verify(redelivered["body"], headers)
    Webhook(old_secret).verify(redelivered["body"], headers)
    assert headers["x-doitong-signature"] == signature(new_secret, redelivered["body"])
    assert headers["x-doitong-signature-previous"] == signature(old_secret, redelivered["body"])

    stranger = await create_account(sessions, settings, credits=10)
    refused = await gql(
        http, "mutation R($id: ID!) { redeliverWebhook(id: $id) { id } }",
        {"id": completed["id"]}, key=stranger.api_key,
    )  # fmt: skip
    assert refused["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    mine = await gql(http, DELIVERIES, {"id": None}, key=stranger.api_key)
    assert mine["data"]["webhookDeliveries"] == []


class Sentinel:
    """A listener on 127.0.0.1 that counts the connections that reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()


def private_name() -> str:
    """A host name that resolves to a non-public address on this machine."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    from billing.netguard import is_public, literal_address

    assert addresses and not any(is_public(literal_address(a)) for a in addresses), (  # type: ignore[arg-type]
        f"{name} should resolve to a private address here, not {addresses}"
    )
    return name


SSRF_HOSTS = [
    "127.0.0.1", "localhost", "10.0.0.1", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]",
    "2130706433", "0x7f000001", "0177.0.0.1",
]  # fmt: skip


async def test_ssrf_guard_refuses_private_targets(
    client: httpx.AsyncClient, account: TestAccount, worker: ThreadedWorker, settings: Settings,
) -> None:  # fmt: skip
    """With no allowance (the session's settings), nothing reaches a listener on
    127.0.0.1: literal addresses are refused at submit time, names at delivery time."""
    assert settings.webhook_allowed_hosts == ""
    sentinel = Sentinel()
    try:
        for host in SSRF_HOSTS:
            url = f"http://{host}:{sentinel.port}/hook"
            body = await gql(
                client, SUBMIT,
                {"input": {"service": "flux-schnell", "prompt": "x", "webhookUrl": url}},
                key=account.api_key,
            )  # fmt: skip
            [error] = body["errors"]
            assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "webhookUrl"}, host
            # And the sender refuses it too, should such a URL ever be stored.
            outcome = await send(url, "{}", {}, AddressPolicy(), 1.0)
            assert not outcome.success and not outcome.retryable
            assert outcome.error and outcome.error.startswith("refused"), (host, outcome)

        name = private_name()
        url = f"http://{name}:{sentinel.port}/hook"
        job = await submit(client, account, url)  # a name is only known at delivery
        with webhook_worker(settings):
            final = await wait_for_final(client, account.api_key, job)
            [delivery] = await deliveries(client, account, job, until="failed")
        assert final["status"] == "completed"
        [attempt] = delivery["attempts"]
        assert (
            "refused" in attempt["error"]
            and "does not resolve to a public address" in attempt["error"]
        )
        assert "127.0.0.1" not in attempt["error"]  # no map of internal names
        outcome = await send(url, "{}", {}, AddressPolicy(), 1.0)
        assert outcome.error and outcome.error.startswith("refused")
        await asyncio.sleep(0.3)
        assert sentinel.connections == 0
        # The allowance is what lets tests reach 127.0.0.1: the same send then connects.
        allowed = await send(
            f"http://127.0.0.1:{sentinel.port}/hook",
            "{}",
            {},
            AddressPolicy.parse("127.0.0.1"),
            1.0,
        )
        assert allowed.error is not None and "refused" not in allowed.error
        await asyncio.sleep(0.3)
        assert sentinel.connections == 1
    finally:
        sentinel.close()
