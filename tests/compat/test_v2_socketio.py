"""Seed 000's real-time events over Socket.IO (server/compat/v2/events.py), with the real
``python-socketio`` client (and the seed's JavaScript with ``socket.io-client`` under
Node) against a real API, Postgres, Redis and arq worker on the tiny FLUX pipeline: a
generation followed from ``POST /api/generate`` to ``generation_complete``, a batch to
``batch_completed``, another account's channels refused, a bad key refused, the plan's
subscription limit held and freed on disconnect, a revoked key ending its channels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import socketio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.plans import default_plan_book
from billing.service import accounts
from runtime.settings import ROOT, Settings
from tests.conftest import ThreadedWorker
from tests.factories import TestAccount, create_account, gql

Sessions = async_sessionmaker[AsyncSession]
CLIENT_DIR = ROOT / "tests" / "compat" / "socketio_client"
SMALL = {"width": 512, "height": 512}
WAIT_S = 120.0


class Events:
    """Every event a Socket.IO client receives, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    async def record(self, event: str, *args: Any) -> None:
        self.seen.append((event, args[0] if args else None))
        self._changed.set()

    def named(self, name: str) -> list[Any]:
        return [data for event, data in self.seen if event == name]

    async def until(self, name: str, timeout: float = WAIT_S) -> Any:
        """The first ``name`` event's data, waiting for it."""
        deadline = time.monotonic() + timeout
        while not self.named(name):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {name} event; got {[e for e, _ in self.seen]}"
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.named(name)[0]


@asynccontextmanager
async def connected(
    api: str, auth: Any = None, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[socketio.AsyncClient, Events]]:
    client = socketio.AsyncClient(reconnection=False)
    events = Events()
    client.on("*", events.record)
    await client.connect(api, auth=auth, headers=headers or {}, wait_timeout=10)
    try:
        yield client, events
    finally:
        await client.disconnect()


async def generate(http: httpx.AsyncClient, account: TestAccount, **params: Any) -> dict[str, Any]:
    response = await http.post(
        "/api/generate", json={"prompt": "a red kite", **SMALL, **params},
        headers={"X-API-Key": account.api_key},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def batch(http: httpx.AsyncClient, account: TestAccount, count: int = 2) -> dict[str, Any]:
    body = {"batch": [{"id": f"req_{n}", "prompt": f"kite {n}", "params": {**SMALL, "steps": 3}}
                      for n in range(count)]}  # fmt: skip
    response = await http.post(
        "/api/batch/generate", json=body, headers={"X-API-Key": account.api_key}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.fixture
async def http(api: str, worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=120) as client:
        yield client


@pytest.fixture
async def other(sessions: Sessions, settings: Settings) -> TestAccount:
    return await create_account(sessions, settings, credits=1000)


async def test_a_generation_is_followed_to_completion(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    job = await generate(http, account, steps=30, width=1024, height=1024)
    channel = job["websocket_channel"]
    assert channel == f"generation_{job['image_id']}"
    async with connected(api, auth={"token": account.api_key}) as (client, events):
        ack = await client.call("subscribe", {"channel": channel}, timeout=10)
        assert ack == {"ok": True, "channel": channel}
        done = await events.until("generation_complete")
    assert done["image_id"] == job["image_id"]
    assert done["status"] == "completed" and done["url"] and done["seed"] == job["seed"]
    assert done["time"] is not None
    image = await http.get(f"/api/images/{job['image_id']}", headers={"X-API-Key": account.api_key})
    assert done["thumbnail_url"] and done["thumbnail_url"] == image.json()["thumbnail_url"]
    started = events.named("generation_started")
    assert started == [{"image_id": job["image_id"], "message": "Генерация началась"}]
    generating = [p for p in events.named("generation_progress") if p["phase"] == "generating"]
    assert generating, events.seen
    steps = [p["current_step"] for p in generating]
    assert steps == sorted(steps) and all(p["total_steps"] == 30 for p in generating)
    for p in generating:
        assert set(p) == {"image_id", "progress", "current_step", "total_steps", "phase",
                          "message"}  # fmt: skip
        assert 0 <= p["progress"] <= 100
        assert p["message"] == f"Генерация изображения (Шаг {p['current_step']}/30)..."
    names = [e for e, _ in events.seen]
    assert names.index("generation_started") < names.index("generation_complete")
    assert names[-1] == "generation_complete"  # the channel ends with its final event
    picture = await http.get(done["url"])
    assert picture.status_code == 200


async def test_a_late_subscriber_gets_the_final_state(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    job = await generate(http, account, steps=2)
    deadline = time.monotonic() + WAIT_S
    while True:
        image = await http.get(
            f"/api/images/{job['image_id']}", headers={"X-API-Key": account.api_key}
        )
        if image.json()["status"] == "completed":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # The key as an X-API-Key header of the handshake this time.
    async with connected(api, headers={"X-API-Key": account.api_key}) as (client, events):
        ack = await client.call("subscribe", {"channel": job["websocket_channel"]}, timeout=10)
        assert ack["ok"] is True
        done = await events.until("generation_complete")
    assert done["url"] == image.json()["url"]


async def test_a_batch_is_followed_to_the_end(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    created = await batch(http, account, count=3)
    channel = created["websocket_channel"]
    assert channel == created["batch_id"]
    async with connected(api, auth={"token": account.api_key}) as (client, events):
        # Subscribing twice at once follows the channel once (no event twice).
        acks = await asyncio.gather(
            client.call("subscribe", {"channel": channel}, timeout=10),
            client.call("subscribe", {"channel": channel}, timeout=10),
        )
        assert list(acks) == [{"ok": True, "channel": channel}] * 2
        final = await events.until("batch_completed")
    started = events.named("batch_started")
    assert len(started) == 1 and started[0]["batch_id"] == channel
    completed = events.named("job_completed")
    assert sorted(c["job_id"] for c in completed) == ["req_0", "req_1", "req_2"]
    assert len(events.named("batch_completed")) == 1
    for c in completed:
        assert c["batch_id"] == channel and c["status"] == "completed" and c["url"]
        assert c["image_id"] in {j["image_id"] for j in created["jobs"]}
    progress = events.named("batch_progress")
    assert progress and progress[-1]["completed"] == 3 and progress[-1]["progress"] == 100
    assert final["batch_id"] == channel and final["status"] == "completed"
    assert (final["total"], final["completed"], final["failed"]) == (3, 3, 0)
    assert [j["id"] for j in final["jobs"]] == ["req_0", "req_1", "req_2"]
    names = [e for e, _ in events.seen]
    assert names.index("batch_started") < names.index("batch_completed")
    assert names[-1] == "batch_completed"
    status = await http.get(f"/api/batch/{channel}", headers={"X-API-Key": account.api_key})
    assert status.json()["jobs"] == final["jobs"]


async def test_another_accounts_channels_are_refused(
    http: httpx.AsyncClient, api: str, account: TestAccount, other: TestAccount
) -> None:
    job = await generate(http, other, steps=2)
    theirs = await batch(http, other, count=1)
    async with connected(api, auth={"token": account.api_key}) as (client, events):
        for channel in (job["websocket_channel"], theirs["websocket_channel"],
                        "generation_000000000000000000000000", "batch_nope"):  # fmt: skip
            ack = await client.call("subscribe", {"channel": channel}, timeout=10)
            assert ack["ok"] is False and ack["code"] == "NOT_FOUND", ack
            assert ack["channel"] == channel
            assert "kite" not in json.dumps(ack)
        for bad in ({"channel": "weather_1"}, {"channel": "generation_"}, {"nope": 1}, 42,
                    {"channel": "x" * 1000}):  # fmt: skip
            ack = await client.call("subscribe", bad, timeout=10)
            assert ack["ok"] is False and ack["code"] == "BAD_USER_INPUT", (bad, ack)
        errors = events.named("error")
        assert len(errors) == 9 and all(e["ok"] is False for e in errors)
        # Still connected, and nothing of the other account's jobs arrived.
        mine = await generate(http, account, steps=2)
        ack = await client.call("subscribe", {"channel": mine["websocket_channel"]}, timeout=10)
        assert ack["ok"] is True
        done = await events.until("generation_complete")
        assert done["image_id"] == mine["image_id"]
    leaked = {job["image_id"], *(j["image_id"] for j in theirs["jobs"])}
    assert not any(
        isinstance(data, dict) and leaked & {data.get("image_id"), data.get("batch_id")}
        for _, data in events.seen
    )


async def test_a_bad_key_is_refused(api: str, account: TestAccount) -> None:
    for url, auth, headers in (
        (api, {"token": "fgk_not_a_key"}, None),
        (api, None, None),
        (api, {"token": ""}, None),
        (api, None, {"X-API-Key": "fgk_not_a_key"}),
        # A real key in the URL is no key: keys never travel in URLs (logs keep them).
        (f"{api}?token={account.api_key}", None, None),
        (f"{api}?api_key={account.api_key}", None, None),
    ):
        client = socketio.AsyncClient(reconnection=False)
        refusals: list[Any] = []
        client.on("connect_error", lambda data, seen=refusals: seen.append(data))
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(url, auth=auth, headers=headers or {}, wait_timeout=10)
        assert refusals, refusals
        assert refusals[0]["data"] == {"code": "UNAUTHENTICATED"}, refusals
        assert isinstance(refusals[0]["message"], str) and refusals[0]["message"]
        assert client.connected is False


async def test_the_subscription_limit_holds_and_a_disconnect_frees_it(
    http: httpx.AsyncClient, api: str, sessions: Sessions, settings: Settings
) -> None:
    limited = await create_account(sessions, settings, credits=1000)
    async with sessions() as session:
        await accounts.set_plan(
            session, limited.id, plan=None, overrides={"max_subscriptions": 1},
            plans=default_plan_book(),
        )  # fmt: skip
        await session.commit()
    slow = await generate(http, limited, steps=60, width=1024, height=1024)
    quick = await generate(http, limited, steps=2)
    async with connected(api, auth={"token": limited.api_key}) as (client, _events):
        ack = await client.call("subscribe", {"channel": slow["websocket_channel"]}, timeout=10)
        assert ack["ok"] is True
        ack = await client.call("subscribe", {"channel": quick["websocket_channel"]}, timeout=10)
        assert ack["ok"] is False and ack["code"] == "RATE_LIMITED", ack
        # Unsubscribing frees the slot at once.
        ack = await client.call("unsubscribe", {"channel": slow["websocket_channel"]}, timeout=10)
        assert ack["ok"] is True
        deadline = time.monotonic() + 10
        while True:
            ack = await client.call(
                "subscribe", {"channel": quick["websocket_channel"]}, timeout=10
            )
            if ack["ok"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert ack["ok"] is True, ack
        ack = await client.call("subscribe", {"channel": slow["websocket_channel"]}, timeout=10)
        assert ack["ok"] is False and ack["code"] == "RATE_LIMITED"
    # The client left: its slot is free for a new connection.
    async with connected(api, auth={"token": limited.api_key}) as (client, events):
        deadline = time.monotonic() + 10
        while True:
            ack = await client.call("subscribe", {"channel": slow["websocket_channel"]}, timeout=10)
            if ack["ok"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert ack["ok"] is True, ack
        body = await gql(
            http, "mutation C($id: ID!) { cancelGeneration(id: $id) { status } }",
            {"id": slow["image_id"]}, key=limited.api_key,
        )  # fmt: skip
        assert "data" in body
        failed = await events.until("generation_failed")
        assert failed["image_id"] == slow["image_id"] and failed["status"] == "failed"


async def test_a_revoked_key_ends_its_channels(
    http: httpx.AsyncClient, api: str, sessions: Sessions, settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=1000)
    slow = await generate(http, owner, steps=60, width=1024, height=1024)
    spare = await gql(http, 'mutation { createApiKey(name: "spare") { secret } }',
                      key=owner.api_key)  # fmt: skip
    assert "errors" not in spare, spare  # the last key cannot be revoked
    async with connected(api, auth={"token": owner.api_key}) as (client, events):
        ack = await client.call("subscribe", {"channel": slow["websocket_channel"]}, timeout=10)
        assert ack["ok"] is True
        body = await gql(
            http, "mutation R($id: ID!) { revokeApiKey(id: $id) { revokedAt } }",
            {"id": str(owner.api_key_id)}, key=owner.api_key,
        )  # fmt: skip
        assert body["data"]["revokeApiKey"]["revokedAt"], body
        ended = await events.until("error")
        assert ended["channel"] == slow["websocket_channel"]
        assert ended["code"] == "UNAUTHENTICATED", ended
        deadline = time.monotonic() + 10
        while client.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert client.connected is False
    assert not events.named("generation_complete")
    await gql(
        http, "mutation C($id: ID!) { cancelGeneration(id: $id) { status } }",
        {"id": slow["image_id"]}, key=spare["data"]["createApiKey"]["secret"],
    )  # fmt: skip


# --- the seed's JavaScript, with socket.io-client under Node ----------------------------


def node_client() -> None:
    # deploy/setup.sh installs Node.js and the client (make test): not a skip.
    assert shutil.which("node") and shutil.which("npm"), "Node.js and npm are needed"
    if not (CLIENT_DIR / "node_modules" / "socket.io-client").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, check=True,
            capture_output=True, timeout=300,
        )  # fmt: skip


def run_node(script: str, api: str, key: str, channel: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLUX_BASE_URL": api, "FLUX_API_KEY": key, "FLUX_CHANNEL": channel}
    return subprocess.run(
        ["node", script], cwd=CLIENT_DIR, env=env, capture_output=True, text=True,
        timeout=WAIT_S, check=False,
    )  # fmt: skip


async def test_seed_javascript_follows_a_generation(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    node_client()
    job = await generate(http, account, steps=30, width=1024, height=1024)
    done = await asyncio.to_thread(
        run_node, "seed_generation.mjs", api, account.api_key, job["websocket_channel"]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("Progress: ") and line.endswith("%") for line in lines), lines
    complete = [line for line in lines if line.startswith("complete ")]
    assert len(complete) == 1, lines
    data = json.loads(complete[0].removeprefix("complete "))
    assert data["image_id"] == job["image_id"] and data["status"] == "completed"
    refused = await asyncio.to_thread(
        run_node, "seed_generation.mjs", api, "fgk_not_a_key", job["websocket_channel"]
    )
    assert refused.returncode == 2 and "connect_error" in refused.stdout


async def test_seed_javascript_follows_a_batch(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    node_client()
    created = await batch(http, account, count=2)
    done = await asyncio.to_thread(
        run_node, "seed_batch.mjs", api, account.api_key, created["websocket_channel"]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Batch processing started", lines
    assert sorted(line for line in lines if line.startswith("Job ")) == [
        "Job req_0 completed", "Job req_1 completed"
    ]  # fmt: skip
    assert lines[-2:] == ["All jobs completed", "status completed 2/2"], lines
