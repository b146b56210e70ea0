"""Seed 000's REST v2, account part (server/compat/v2/account.py): the user's profile, API
keys and statistics, the public status, the admin endpoints and seed 000's webhook body —
against a real API, Postgres, Redis, arq worker (tiny FLUX pipeline), webhook worker and
an HTTP receiver.

Every request example of those sections runs with only the base URL and key changed: the
Python ones as written (the seed's text lost its indentation: restored, nothing else) and
the JavaScript ones with Node; the curl ones as HTTP requests. Per endpoint: 401, 429, a
foreign id, bad and hostile input in the seed's error shape (none of these endpoints
charges credits, so there is no 402 here: generation's is in test_v2_jobs.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.errors import BadUserInput
from billing.models import Generation
from billing.plans import default_plan_book
from billing.service import accounts
from billing.service.webhooks import SEED000_EVENTS, is_seed000, seed000_event, validate_filter
from billing.service.webhooks import _wants as wants
from gpu_worker.webhooks import build_webhook_worker
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, balance, create_account, gql, wait_for_final
from tests.gpu_worker.test_webhooks import Receiver

SEED_URL = "https://image.nalitek.com"
ERROR_KEYS = {"error", "details", "code", "request_id"}
SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
DELIVERIES = """query D($id: ID) { webhookDeliveries(generationId: $id) {
  id event status payload attempts { statusCode } } }"""


@pytest.fixture(scope="module")
def site_settings(settings: Settings) -> Settings:
    return own_queue(
        settings, "v2-account", webhook_allowed_hosts="127.0.0.1",
        webhook_retry_schedule="0.3,0.3", webhook_timeout_s=2.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(site_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(site_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def gpu(site_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(site_settings) as w:
        yield w


@pytest.fixture
async def http(site: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=site, timeout=60) as client:
        yield client


@pytest.fixture
async def user(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> TestAccount:
    """A free-plan account, its requests unmetered so that tests may poll."""
    account = await create_account(sessions, settings, credits=1000, plan="free")
    async with sessions() as s:
        await accounts.set_plan(
            s, account.id, plan=None, overrides={"requests_per_minute": None},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    return account


async def create_admin(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> TestAccount:
    async with sessions() as session:
        account, key = await accounts.create_account(
            session,
            email=f"admin-{uuid.uuid4().hex[:10]}@example.com",
            plan="enterprise",
            credits=0,
            pepper=settings.secret_key.get_secret_value().encode(),
            is_admin=True,
        )
        await session.commit()
    return TestAccount(
        id=account.id, email=account.email, api_key=key.secret, api_key_id=key.key.id
    )


def key(account: TestAccount | str) -> dict[str, str]:
    return {"X-API-Key": account if isinstance(account, str) else account.api_key}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The seed's error body, with the request's id."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= ERROR_KEYS, body
    assert body["code"] == code, body
    assert body["request_id"] and body["request_id"] == response.headers["X-Request-Id"]
    assert body["error"] and body["details"], body
    return body


def run_example(language: str, source: str, base_url: str, **keys: str) -> str:
    """Run a seed example as written, with only its base URL and keys changed; its output."""
    source = source.replace(SEED_URL, base_url)
    for placeholder, value in keys.items():
        source = source.replace(placeholder.replace("_", "-"), value)
    if language == "python":
        command = [sys.executable, "-c", source]
    else:
        node = shutil.which("node")
        assert node, "Node is needed for the seed's JavaScript examples"
        command = [node, "-e", source]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_PROXY": "*"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


# --------------------------------------------------------------------------- profile


async def test_profile_examples_as_written(
    http: httpx.AsyncClient, site: str, user: TestAccount
) -> None:
    for language, source in (("python", USER_PY), ("js", USER_JS)):
        out = await asyncio.to_thread(
            run_example, language, source, site, your_api_key=user.api_key
        )
        assert f"👤 User: {user.email}" in out, out
        assert f"📧 Email: {user.email}" in out
        assert "🎯 Plan: free" in out
        # The settings are stored; there is no password to change (501, not faked).
        assert "✅ Profile updated successfully" in out, out
        assert "Password changed successfully" not in out
        assert out.count("❌ Error: 501") == 1, out

    profile = (await http.get("/api/user/profile", headers=key(user))).json()
    assert profile["id"] == str(user.id)
    assert profile["username"] == profile["email"] == user.email
    assert profile["role"] == "user"
    assert profile["plan"] == "free"
    assert profile["created_at"].endswith("Z")
    # What the examples' update_settings sent; webhook_enabled kept its default.
    assert profile["settings"] == {
        "default_model": "flux-schnell", "default_quality": "ultra",
        "email_notifications": False, "webhook_enabled": True,
    }  # fmt: skip
    assert profile["credits_available"] == 1000


async def test_profile_update_is_stored_and_default_model_is_used(
    http: httpx.AsyncClient, user: TestAccount, sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:  # fmt: skip
    other = await create_account(sessions, settings, plan="free")
    fresh = (await http.get("/api/user/profile", headers=key(user))).json()
    assert fresh["settings"] == {
        "default_model": "flux-dev", "default_quality": None,
        "email_notifications": False, "webhook_enabled": True,
    }  # fmt: skip

    async def model_of_a_job_without_one() -> str:
        job = await http.post("/api/generate", json={"prompt": "a red fox"}, headers=key(user))
        assert job.status_code == 201, job.text
        return await model_then_cancel(job.json()["image_id"])

    async def model_then_cancel(image_id: str) -> str:
        # Read, then cancel: the plan runs one job at a time (and no worker runs here).
        got = await http.get(f"/api/images/{image_id}", headers=key(user))
        cancel = "mutation C($id: ID!) { cancelGeneration(id: $id) { status } }"
        done = await gql(http, cancel, {"id": image_id}, key=user.api_key)
        assert done["data"]["cancelGeneration"]["status"] == "cancelled", done
        return str(got.json()["model"])

    assert await model_of_a_job_without_one() == "flux-dev"
    changed = await http.put(
        "/api/user/profile",
        json={"username": "  Alex  ", "email": user.email.upper(),
              "settings": {"default_model": "flux-schnell", "webhook_enabled": False}},
        headers=key(user),
    )  # fmt: skip
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["username"] == "Alex" and body["email"] == user.email
    assert body["settings"] == {
        "default_model": "flux-schnell", "default_quality": None,
        "email_notifications": False, "webhook_enabled": False,
    }  # fmt: skip
    assert (await http.get("/api/user/profile", headers=key(user))).json() == body
    assert await model_of_a_job_without_one() == "flux-schnell"
    # A request that names its model runs that one.
    named = await http.post(
        "/api/generate", json={"prompt": "a fox", "model": "flux-dev"}, headers=key(user)
    )
    assert await model_then_cancel(named.json()["image_id"]) == "flux-dev"

    # A partial update keeps the rest; the other account is untouched.
    partial = await http.put(
        "/api/user/profile", json={"settings": {"default_quality": "high"}}, headers=key(user)
    )
    assert partial.json()["settings"]["default_model"] == "flux-schnell"
    assert partial.json()["settings"]["default_quality"] == "high"
    assert partial.json()["username"] == "Alex"
    theirs = (await http.get("/api/user/profile", headers=key(other))).json()
    assert theirs["username"] == other.email
    assert theirs["settings"]["default_model"] == "flux-dev"
    assert theirs["settings"]["default_quality"] is None


async def test_profile_update_bad_input_changes_nothing(
    http: httpx.AsyncClient, user: TestAccount
) -> None:
    before = (await http.get("/api/user/profile", headers=key(user))).json()
    for update, field in (
        ({"email": "someone.else@example.com"}, "email"),
        ({"settings": {"default_model": "flux-pro"}}, "settings.default_model"),
        ({"settings": {"theme": "dark"}}, "settings.theme"),
        ({"settings": {"default_quality": ""}}, "settings.default_quality"),
        ({"settings": "ultra"}, "settings"),
        ({"username": ""}, "username"),
        ({"username": "   "}, "username"),
        ({"settings": {"default_quality": "  "}}, "settings.default_quality"),
        ({"username": "x" * 65}, "username"),
        ({"username": "a\u0000b"}, "username"),
        ({"avatar_url": "https://example.com/a.png"}, "avatar_url"),
    ):
        refused = await http.put("/api/user/profile", json=update, headers=key(user))
        body = assert_error(refused, 400, "BAD_USER_INPUT")
        assert field in body["details"], (update, body)
    for raw in (b"[]", b"null", b'{"username": "\\ud800"}', b"{"):
        refused = await http.put(
            "/api/user/profile", content=raw,
            headers={**key(user), "Content-Type": "application/json"},
        )  # fmt: skip
        assert_error(refused, 400, "BAD_USER_INPUT")
    assert (await http.get("/api/user/profile", headers=key(user))).json() == before

    # GraphQL's updateProfile names its own fields.
    mutation = """mutation P($input: ProfileInput!) { updateProfile(input: $input) {
      profile { displayName defaultModel } } }"""
    for variables, field in (
        ({"defaultModel": "no-such-model"}, "defaultModel"),
        ({"displayName": " "}, "displayName"),
        ({"defaultQuality": "q" * 33}, "defaultQuality"),
    ):
        answer = await gql(http, mutation, {"input": variables}, key=user.api_key)
        error = answer["errors"][0]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", answer
        assert error["extensions"]["field"] == field, answer
    cleared = await gql(
        http, mutation, {"input": {"displayName": "Ann", "defaultModel": "flux-schnell"}},
        key=user.api_key,
    )  # fmt: skip
    assert cleared["data"]["updateProfile"]["profile"] == {
        "displayName": "Ann", "defaultModel": "flux-schnell",
    }  # fmt: skip
    cleared = await gql(http, mutation, {"input": {"displayName": None}}, key=user.api_key)
    assert cleared["data"]["updateProfile"]["profile"] == {
        "displayName": None, "defaultModel": "flux-schnell",
    }  # fmt: skip


async def test_password_change_is_refused_clearly(
    http: httpx.AsyncClient, user: TestAccount
) -> None:
    for method in ("POST", "PUT"):
        refused = await http.request(
            method, "/api/user/password",
            json={"current_password": "old", "new_password": "new"}, headers=key(user),
        )  # fmt: skip
        body = assert_error(refused, 501, "NOT_IMPLEMENTED")
        assert "no password" in body["details"] and "API key" in body["details"]


# -------------------------------------------------------------------------- API keys


async def test_api_key_examples_as_written(
    http: httpx.AsyncClient, site: str, sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:  # fmt: skip
    for language, source in (("python", KEYS_PY), ("js", KEYS_JS)):
        account = await create_account(sessions, settings, plan="free")
        out = await asyncio.to_thread(
            run_example, language, source, site, your_api_key=account.api_key
        )
        assert "✅ API key created successfully" in out, out
        assert "Save this key!" in out
        # The seed's ids 123 and 456 are nobody's key here: not found, nothing deleted.
        assert "❌ Error: 404" in out
        listed = (await http.get("/api/user/api-keys", headers=key(account))).json()
        names = sorted(k["name"] for k in listed["api_keys"])
        assert names == ["Production API Key", "default"], listed
        if language == "python":
            assert "🔑 Total API keys: 1" in out
            assert out.count("❌ Error: 404") == 2  # delete_key(123), rotate_key(456)
            created = next(line for line in out.splitlines() if line.startswith("🔑 Key: "))
            secret = created.removeprefix("🔑 Key: ")
            # The new key works.
            me = await http.get("/api/user/profile", headers=key(secret))
            assert me.status_code == 200 and me.json()["id"] == str(account.id)


async def test_api_keys_create_list_delete(
    http: httpx.AsyncClient, user: TestAccount, sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:  # fmt: skip
    created = await http.post(
        "/api/user/api-keys",
        json={"name": "CI", "ip_whitelist": ["10.0.0.1"], "rate_limit": 5},
        headers=key(user),
    )
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["name"] == "CI" and new["is_active"] is True
    assert new["key"].startswith(new["prefix"])
    assert new["ip_whitelist"] is None and new["rate_limit"] is None
    assert new["warnings"] == [
        "ip_whitelist has no effect on this deployment",
        "rate_limit has no effect on this deployment",
    ]
    listed = (await http.get("/api/user/api-keys", headers=key(user))).json()["api_keys"]
    assert {k["id"] for k in listed} == {str(user.api_key_id), new["id"]}
    mine = next(k for k in listed if k["id"] == new["id"])
    assert mine == {k: new[k] for k in mine}  # the same key, secret not listed
    assert "key" not in mine and mine["usage"] == {"total_requests": None}

    # A foreign account cannot see or delete it (404), and its own key keeps working.
    other = await create_account(sessions, settings, plan="free")
    foreign = await http.delete(f"/api/user/api-keys/{new['id']}", headers=key(other))
    assert_error(foreign, 404, "NOT_FOUND")
    assert (await http.get("/api/user/profile", headers=key(new["key"]))).status_code == 200
    theirs = (await http.get("/api/user/api-keys", headers=key(other))).json()["api_keys"]
    assert [k["id"] for k in theirs] == [str(other.api_key_id)]
    # Not one of our ids at all: not found.
    assert_error(await http.delete("/api/user/api-keys/123", headers=key(user)), 404, "NOT_FOUND")

    deleted = await http.delete(f"/api/user/api-keys/{new['id']}", headers=key(user))
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(
        await http.get("/api/user/profile", headers=key(new["key"])), 401, "UNAUTHENTICATED"
    )
    listed = (await http.get("/api/user/api-keys", headers=key(user))).json()["api_keys"]
    assert [k["id"] for k in listed] == [str(user.api_key_id)]


async def test_api_key_bad_and_hostile_input(http: httpx.AsyncClient, user: TestAccount) -> None:
    cases: list[tuple[Any, str]] = [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ok", "rate_limit": 10**30}, "rate_limit"),
        ({"name": "ok", "rate_limit": "many"}, "rate_limit"),
        ({"name": "ok", "ip_whitelist": "10.0.0.1"}, "ip_whitelist"),
        ({"name": "ok", "scopes": ["admin"]}, "scopes"),
    ]
    for body, field in cases:
        refused = await http.post("/api/user/api-keys", json=body, headers=key(user))
        assert assert_error(refused, 400, "BAD_USER_INPUT")["field"] == field, body
    for raw in (b"[1, 2]", b'"name"', b"{" * 5000 + b"}" * 5000, b'{"name": "a\\u0000b"}'):
        refused = await http.post(
            "/api/user/api-keys", content=raw,
            headers={**key(user), "Content-Type": "application/json"},
        )  # fmt: skip
        assert_error(refused, 400, "BAD_USER_INPUT")
    listed = (await http.get("/api/user/api-keys", headers=key(user))).json()["api_keys"]
    assert len(listed) == 1  # nothing was created


# ----------------------------------------------------------------------------- stats


async def test_stats_curl_examples_and_quota(
    http: httpx.AsyncClient, gpu: ThreadedWorker, user: TestAccount
) -> None:
    # The seed's three curl requests are the same GET (jq only formats the answer).
    answers = [(await http.get("/api/user/stats", headers=key(user))) for _ in range(3)]
    for answer in answers:
        assert answer.status_code == 200, answer.text
    stats = answers[0].json()
    assert stats["user"] == {
        "id": str(user.id), "username": user.email, "email": user.email,
        "role": "user", "plan": "free",
    }  # fmt: skip
    quota = stats["quota"]
    # The free plan: 100 jobs a day, 5 upscales (plans.toml).
    assert quota["daily_generations"] == 100 and quota["daily_upscales"] == 5
    assert quota["used_generations"] == 0 and quota["remaining_generations"] == 100
    assert quota["used_upscales"] == 0 and quota["remaining_upscales"] == 5
    assert quota["reset_at"].endswith("T00:00:00Z")
    assert stats["storage"] == {"used_mb": 0.0, "limit_mb": 100, "percent_used": 0.0}
    assert stats["statistics"]["total_generations"] == 0

    job = await gql(
        http, SUBMIT,
        {"input": {"service": "flux-dev", "prompt": "stats", "width": 256, "height": 256}},
        key=user.api_key,
    )  # fmt: skip
    job_id = job["data"]["generateImage"]["id"]
    assert (await wait_for_final(http, user.api_key, job_id))["status"] == "completed"
    stats = (await http.get("/api/user/stats", headers=key(user))).json()
    assert stats["quota"]["used_generations"] == 1
    assert stats["quota"]["remaining_generations"] == 99
    assert stats["statistics"]["total_generations"] == 1
    assert stats["statistics"]["total_img2img"] == 0
    assert stats["storage"]["used_mb"] > 0
    assert stats["statistics"]["credits_available"] < 1000


# ---------------------------------------------------------------------------- status


async def test_status_examples_as_written(
    http: httpx.AsyncClient, site: str, gpu: ThreadedWorker, site_settings: Settings
) -> None:
    # The worker's heartbeat makes its pool (and so every model) available.
    deadline = time.monotonic() + 30
    while (await http.get("/api/status")).json()["status"] != "operational":
        assert time.monotonic() < deadline, "the worker never showed up"
        await asyncio.sleep(0.1)
    for language, source in (("python", STATUS_PY), ("js", STATUS_JS)):
        out = await asyncio.to_thread(run_example, language, source, site)
        assert "✅ API Status: operational" in out, out
        assert "📦 Version: 2.0" in out
        assert "✅ generation: operational" in out
        assert "❌ upscale: not served on this deployment" in out
        assert " flux-dev:" in out and " flux-schnell:" in out
        assert "✅ API is ready for requests!" in out
    status = (await http.get("/api/status")).json()  # no key: public
    assert status["version"] == "2.0" and status["timestamp"].endswith("Z")
    model = status["models"]["flux-dev"]
    assert model["status"] == "available"
    assert isinstance(model["queue_size"], int) and model["queue_size"] >= 0
    # Public whatever key is sent; the same figures as GraphQL's serviceStatus, which
    # needs no key either.
    with_bad_key = await http.get("/api/status", headers={"X-API-Key": "fgk_nope"})
    assert with_bad_key.status_code == 200, with_bad_key.text
    query = """{ serviceStatus { operational at
      models { service pool availability queueSize liveWorkers averageJobSeconds } } }"""
    answer = (await http.post("/graphql", json={"query": query})).json()
    assert "errors" not in answer, answer
    graph = answer["data"]["serviceStatus"]
    assert graph["operational"] is True and graph["at"].endswith("Z")
    services = {m["service"]: m for m in graph["models"]}
    assert set(services) == set(status["models"])
    assert services["flux-dev"]["availability"] == "AVAILABLE"
    assert services["flux-dev"]["liveWorkers"] >= 1
    assert services["flux-dev"]["pool"] == "default"
    # Public and unmetered, so aliases cannot multiply its reads: thirty in one document
    # read the queues once (a zcard per pool; without the shared read, thirty times).
    client = redis.asyncio.Redis.from_url(site_settings.redis_url)
    try:

        async def zcards() -> int:
            stats = await client.info("commandstats")
            return int(stats.get("cmdstat_zcard", {}).get("calls", 0))

        before = await zcards()
        many = " ".join(f"s{n}: serviceStatus {{ at }}" for n in range(30))
        answer = (await http.post("/graphql", json={"query": f"{{ {many} }}"})).json()
        assert "errors" not in answer, answer
        assert len({v["at"] for v in answer["data"].values()}) == 1
        assert await zcards() - before < 10
    finally:
        await client.aclose()


# ----------------------------------------------------------------------------- admin


async def test_admin_examples_as_written(
    http: httpx.AsyncClient, site: str, user: TestAccount,
    sessions: async_sessionmaker[AsyncSession], settings: Settings,
) -> None:  # fmt: skip
    admin = await create_admin(sessions, settings)
    for language, source in (("python", ADMIN_PY), ("js", ADMIN_JS)):
        out = await asyncio.to_thread(
            run_example, language, source, site, admin_api_key=admin.api_key
        )
        assert "👥 Total users: " in out, out
        assert "📊 System Statistics:" in out
        assert " Total generations: " in out
        # The seed's user ids 123 and 456 are nobody here: not found, nothing changed.
        assert out.count("❌ Error: 404") == (2 if language == "python" else 1), out
        assert "✅ Quota updated" not in out and "✅ User 456 banned" not in out
        # A user's key is refused on every admin endpoint.
        out = await asyncio.to_thread(
            run_example, language, source, site, admin_api_key=user.api_key
        )
        assert "👥" not in out and "📊" not in out, out
        assert out.count("❌ Error: 403") >= 3


async def test_admin_users_quota_ban(
    http: httpx.AsyncClient, user: TestAccount, sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:  # fmt: skip
    admin = await create_admin(sessions, settings)
    page = (await http.get("/api/admin/users?page=1&per_page=2", headers=key(admin))).json()
    assert page["page"] == 1 and page["per_page"] == 2 and len(page["users"]) == 2
    assert page["pages"] == -(-page["total"] // 2)
    last = await http.get(f"/api/admin/users?page={page['pages']}&per_page=2", headers=key(admin))
    found = {u["id"]: u for u in last.json()["users"]}
    assert str(admin.id) in found or str(user.id) in found  # newest accounts on the last page

    # Quotas: an override kept by the account (requests per minute) survives.
    async with sessions() as s:
        await accounts.set_plan(
            s, user.id, plan=None, overrides={"requests_per_minute": 500},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    quota = await http.post(
        f"/api/admin/user/{user.id}/quota",
        json={"daily_generations": 500, "daily_upscales": 100}, headers=key(admin),
    )  # fmt: skip
    assert quota.status_code == 200, quota.text
    assert quota.json() == {
        "success": True, "user_id": str(user.id),
        "quota": {"daily_generations": 500, "daily_upscales": 100},
    }  # fmt: skip
    only = await http.post(
        f"/api/admin/user/{user.id}/quota", json={"daily_upscales": 7}, headers=key(admin)
    )
    assert only.json()["quota"] == {"daily_generations": 500, "daily_upscales": 7}
    stats = (await http.get("/api/user/stats", headers=key(user))).json()["quota"]
    assert (stats["daily_generations"], stats["daily_upscales"]) == (500, 7)
    me = await gql(http, "{ me { limits { requestsPerMinute } } }", key=user.api_key)
    assert me["data"]["me"]["limits"]["requestsPerMinute"] == 500

    # Bad input (400, nothing changed), a user that is not one of ours (404).
    for body in ({"daily_generations": -1}, {"daily_upscales": 2**40}, {"daily": 5}):
        refused = await http.post(f"/api/admin/user/{user.id}/quota", json=body, headers=key(admin))
        assert_error(refused, 400, "BAD_USER_INPUT")
    nobody = await http.post(
        f"/api/admin/user/{uuid.uuid4()}/quota", json={"daily_generations": 1},
        headers=key(admin),
    )  # fmt: skip
    assert_error(nobody, 404, "NOT_FOUND")
    assert_error(
        await http.post("/api/admin/user/456/ban", json={"reason": "x"}, headers=key(admin)),
        404, "NOT_FOUND",
    )  # fmt: skip
    assert_error(
        await http.post(f"/api/admin/user/{user.id}/ban", json={}, headers=key(admin)),
        400, "BAD_USER_INPUT",
    )  # fmt: skip

    # A user is refused every admin endpoint (403), and cannot ban anybody.
    attempts: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/admin/users", None),
        ("GET", "/api/admin/statistics", None),
        ("POST", f"/api/admin/user/{admin.id}/quota", {"daily_generations": 1}),
        ("POST", f"/api/admin/user/{admin.id}/ban", {"reason": "coup"}),
    ]
    for method, path, payload in attempts:
        refused = await http.request(method, path, json=payload, headers=key(user))
        assert_error(refused, 403, "FORBIDDEN")

    banned = await http.post(
        f"/api/admin/user/{user.id}/ban", json={"reason": "Violation of terms of service"},
        headers=key(admin),
    )  # fmt: skip
    assert banned.status_code == 200, banned.text
    result = banned.json()
    assert result["success"] is True and result["user_id"] == str(user.id)
    assert result["user"]["banned"] is True
    assert result["user"]["ban_reason"] == "Violation of terms of service"
    assert_error(await http.get("/api/user/profile", headers=key(user)), 403, "FORBIDDEN")

    statistics = (await http.get("/api/admin/statistics", headers=key(admin))).json()
    assert statistics["total_users"] >= 2 and statistics["banned_users"] >= 1
    assert statistics["revenue_month"] == 0 or statistics["revenue_month"] > 0
    assert isinstance(statistics["total_generations"], int)


async def test_admin_bad_and_hostile_query(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    admin = await create_admin(sessions, settings)
    for query in ("page=0", "per_page=0", "per_page=101", "page=1e99", "page=%00", "per_page=x"):
        refused = await http.get(f"/api/admin/users?{query}", headers=key(admin))
        assert_error(refused, 400, "BAD_USER_INPUT")


# ---------------------------------------------------------------- every endpoint: 401/429

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/user/profile", None),
    ("PUT", "/api/user/profile", {"settings": {}}),
    ("POST", "/api/user/password", {"current_password": "a", "new_password": "b"}),
    ("GET", "/api/user/api-keys", None),
    ("POST", "/api/user/api-keys", {"name": "x"}),
    ("DELETE", f"/api/user/api-keys/{uuid.uuid4()}", None),
    ("GET", "/api/user/stats", None),
    ("GET", "/api/admin/users", None),
    ("GET", "/api/admin/statistics", None),
    ("POST", f"/api/admin/user/{uuid.uuid4()}/quota", {"daily_generations": 1}),
    ("POST", f"/api/admin/user/{uuid.uuid4()}/ban", {"reason": "x"}),
]


async def test_no_key_or_a_bad_key_is_401(http: httpx.AsyncClient) -> None:
    for method, path, body in ENDPOINTS:
        for headers in ({}, {"X-API-Key": "fg_not-a-key"}, {"Authorization": "Bearer nope"}):
            refused = await http.request(method, path, json=body, headers=headers)
            assert_error(refused, 401, "UNAUTHENTICATED")
    assert (await http.get("/api/status")).status_code == 200  # public


async def test_rate_limit_is_429_with_retry_after(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    account = await create_account(sessions, settings, plan="free")  # 10 requests a minute
    for _ in range(10):
        assert (await http.get("/api/user/profile", headers=key(account))).status_code == 200
    for method, path, body in ENDPOINTS[:7]:
        refused = await http.request(method, path, json=body, headers=key(account))
        found = assert_error(refused, 429, "RATE_LIMITED")
        assert 0 < found["retry_after"] == int(refused.headers["Retry-After"]) <= 60
    assert (await balance(sessions, account.id)).available == 1000


# ------------------------------------------------------------------- seed 000 webhooks


def seed_signature_ok(body: bytes, secret: str) -> bool:
    """What the README tells a receiver: the HMAC-SHA256 (keyed with the account's webhook
    secret) of the body without its last member ``,"signature":"sha256=…"``."""
    text = body.decode()
    cut = text.rindex(',"signature":"sha256=')
    claimed = json.loads(text)["signature"]
    unsigned = (text[:cut] + "}").encode()
    expected = "sha256=" + hmac.new(secret.encode(), unsigned, hashlib.sha256).hexdigest()
    return hmac.compare_digest(claimed, expected)


def test_event_filter_takes_one_vocabulary() -> None:
    assert validate_filter(["generation.failed", "generation.complete"], "f") == [
        "generation.complete", "generation.failed",
    ]  # fmt: skip
    assert validate_filter(["failed", "completed"], "f") == ["completed", "failed"]
    for mixed in (["completed", "generation.failed"], ["generation.completed"], []):
        with pytest.raises(BadUserInput):
            validate_filter(mixed, "f")


def a_job(kind: str, events: list[str] | None) -> Generation:
    return Generation(
        id="job", account_id=uuid.uuid4(), kind=kind, webhook_events=events,
        provider="flux-dev", version="flux-dev", quality="standard", prompt="p",
        width=256, height=256, steps=4, guidance=3.5, seed=1, credit_cost=1,
    )  # fmt: skip


def test_seed_event_names_of_each_fluxgate_event() -> None:
    job = a_job("text_to_image", ["generation.failed"])
    names = {e: seed000_event(job, e) for e in
             ("started", "progress.50", "completed", "failed", "cancelled")}  # fmt: skip
    assert names == {
        "started": "generation.started", "progress.50": "generation.progress",
        "completed": "generation.complete", "failed": "generation.failed",
        "cancelled": "generation.failed",
    }  # fmt: skip
    # A cancelled job is a failed one to seed 000's filter; its other events are not sent.
    assert is_seed000(job)
    assert [e for e in names if wants(job, e)] == ["failed", "cancelled"]
    upscale = a_job("upscale", ["upscale.complete"])
    assert seed000_event(upscale, "completed") == "upscale.complete"
    assert seed000_event(upscale, "started") is None  # seed 000 has no upscale.started
    assert not is_seed000(a_job("text_to_image", ["completed"]))
    assert not is_seed000(a_job("text_to_image", None))


async def test_seed_webhook_body_arrives_signed(
    http: httpx.AsyncClient, gpu: ThreadedWorker, site_settings: Settings, user: TestAccount
) -> None:
    receiver = Receiver()
    try:
        with ThreadedWorker(site_settings, build=build_webhook_worker):
            events = ["generation.started", "generation.progress", "generation.complete",
                      "generation.failed"]  # fmt: skip
            submitted = await gql(
                http, SUBMIT,
                {"input": {"service": "flux-dev", "prompt": "futuristic city at night",
                           "width": 256, "height": 256, "seed": 8472659,
                           "webhookUrl": receiver.url, "webhookEvents": events}},
                key=user.api_key,
            )  # fmt: skip
            assert "errors" not in submitted, submitted
            job_id = submitted["data"]["generateImage"]["id"]
            final = await wait_for_final(http, user.api_key, job_id)
            deadline = time.monotonic() + 30
            while True:
                found = await gql(http, DELIVERIES, {"id": job_id}, key=user.api_key)
                rows = found["data"]["webhookDeliveries"]
                if (
                    rows
                    and {r["event"] for r in rows} >= {"started", "completed"}
                    and all(r["status"] == "delivered" for r in rows)
                ):
                    break
                assert time.monotonic() < deadline, rows
                await asyncio.sleep(0.1)
    finally:
        receiver.close()
    assert final["status"] == "completed"
    secret = (await gql(http, "{ me { webhookSecret } }", key=user.api_key))["data"]["me"][
        "webhookSecret"
    ]
    bodies = [json.loads(r["body"]) for r in receiver.requests]
    names = [b["event"] for b in bodies]
    assert set(names) == {"generation.started", "generation.progress", "generation.complete"}
    assert set(names) <= set(SEED000_EVENTS)
    for request, body in zip(receiver.requests, bodies, strict=True):
        assert list(body) == ["event", "timestamp", "data", "signature"]
        assert body["timestamp"].endswith("Z")
        assert body["signature"].startswith("sha256=")
        assert seed_signature_ok(request["body"], secret)
        # Signed the same way as every Fluxgate webhook too (header over the whole body).
        headers = {k.lower(): v for k, v in request["headers"].items()}
        whole = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-doitong-signature"], whole)
        assert headers["webhook-id"].startswith("msg_")
    [done] = [b["data"] for b in bodies if b["event"] == "generation.complete"]
    assert done["image_id"] == job_id == done["generation_id"]
    assert done["url"] == final["url"] and done["status"] == "completed"
    assert done["prompt"] == "futuristic city at night" and done["seed"] == 8472659
    assert isinstance(done["generation_time"], float) and done["generation_time"] > 0
    # A tampered body does not verify.
    tampered = receiver.requests[0]["body"].replace(b"futuristic", b"medieval")
    assert not seed_signature_ok(tampered, secret)

    # The status page now has a measured average for the model.
    status = (await http.get("/api/status")).json()
    assert status["models"]["flux-dev"]["avg_generation_time"] > 0


async def test_webhook_events_of_two_vocabularies_are_refused(
    http: httpx.AsyncClient, user: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    for events in (["completed", "generation.failed"], ["generation.finished"]):
        refused = await http.post(
            "/api/generate",
            json={"prompt": "p", "webhook_url": "http://127.0.0.1:9/hook",
                  "webhook_events": events},
            headers=key(user),
        )  # fmt: skip
        body = assert_error(refused, 400, "BAD_USER_INPUT")
        assert body["field"] == "webhook_events", body
    assert (await balance(sessions, user.id)).available == 1000  # nothing charged


async def test_seed_webhook_example_through_api_generate(
    http: httpx.AsyncClient, gpu: ThreadedWorker, site_settings: Settings,
    sessions: async_sessionmaker[AsyncSession], settings: Settings,
) -> None:  # fmt: skip
    """The seed's "Настройка webhook" body, POSTed to /api/generate as written (with the
    receiver's URL), and one with a webhook_url alone (default: complete and failed): the
    jobs' events arrive in seed 000's format, signed."""
    account = await create_account(sessions, settings, credits=100_000)
    receiver = Receiver()
    small = {"width": 512, "height": 512, "steps": 2, "smart_upscale": False}
    jobs: list[str] = []
    try:
        with ThreadedWorker(site_settings, build=build_webhook_worker):
            for extra in (
                {"webhook_events": ["generation.complete", "generation.failed"]}, {}
            ):  # fmt: skip
                accepted = await http.post(
                    "/api/generate",
                    json={"prompt": "beautiful landscape", "webhook_url": receiver.url,
                          **extra, **small},
                    headers=key(account),
                )  # fmt: skip
                assert accepted.status_code in (200, 201, 202), accepted.text
                jobs.append(accepted.json()["image_id"])
            finals = [await wait_for_final(http, account.api_key, job) for job in jobs]
            deadline = time.monotonic() + 30
            while len(receiver.requests) < 2:
                assert time.monotonic() < deadline, receiver.requests
                await asyncio.sleep(0.1)
    finally:
        receiver.close()
    secret = (await gql(http, "{ me { webhookSecret } }", key=account.api_key))["data"]["me"][
        "webhookSecret"
    ]
    bodies = {}
    for request in receiver.requests:
        body = json.loads(request["body"])
        assert body["event"] == "generation.complete", body
        assert seed_signature_ok(request["body"], secret)
        bodies[body["data"]["image_id"]] = body["data"]
    assert sorted(bodies) == sorted(jobs)  # one event each: started/progress not asked for
    for job, final in zip(jobs, finals, strict=True):
        assert final["status"] == "completed"
        assert bodies[job]["url"] == final["url"]
        assert bodies[job]["prompt"] == "beautiful landscape"


# ------------------------------------------------------------ the seed's examples, verbatim

STATUS_PY = r'''import requests
def check_api_status():
    """Проверка статуса API"""
    url = "https://image.nalitek.com/api/status"
    try:
        response = requests.get(url, timeout=5)
        if response.status_code == 200:
            status = response.json()
            print(f"✅ API Status: {status['status']}")
            print(f"📦 Version: {status['version']}")
            # Проверка сервисов
            for service, state in status['services'].items():
                icon = "✅" if state == "operational" else "❌"
                print(f"{icon} {service}: {state}")
            # Проверка моделей
            print("\n📊 Models:")
            for model, info in status['models'].items():
                print(f" {model}:")
                print(f" Status: {info['status']}")
                print(f" Queue: {info['queue_size']} tasks")
                print(f" Avg time: {info['avg_generation_time']}s")
            return status
        else:
            print(f"❌ API returned status code: {response.status_code}")
            return None
    except requests.exceptions.RequestException as e:
        print(f"❌ Failed to reach API: {e}")
        return None
# Использование
status = check_api_status()
# Проверка перед началом работы
if status and status['status'] == 'operational':
    print("\n✅ API is ready for requests!")
else:
    print("\n⚠️ API may be experiencing issues")
'''

STATUS_JS = r"""async function checkApiStatus() {
const url = 'https://image.nalitek.com/api/status';
try {
const response = await fetch(url);
if (response.status === 200) {
const status = await response.json();
console.log(`✅ API Status: ${status.status}`);
console.log(`📦 Version: ${status.version}`);
// Проверка сервисов
for (const [service, state] of Object.entries(status.services)) {
const icon = state === 'operational' ? '✅' : '❌';
console.log(`${icon} ${service}: ${state}`);
}
// Проверка моделей
console.log('\n📊 Models:');
for (const [model, info] of Object.entries(status.models)) {
console.log(` ${model}:`);
console.log(` Status: ${info.status}`);
console.log(` Queue: ${info.queue_size} tasks`);
console.log(` Avg time: ${info.avg_generation_time}s`);
}
return status;
} else {
console.error(`❌ API returned status code: ${response.status}`);
return null;
}
} catch (error) {
console.error(`❌ Failed to reach API: ${error}`);
return null;
}
}
// Использование
checkApiStatus().then(status => {
if (status && status.status === 'operational') {
console.log('\n✅ API is ready for requests!');
} else {
console.log('\n⚠️ API may be experiencing issues');
}
});
"""

USER_PY = r'''import requests
class UserAPI:
    def __init__(self, api_key):
        self.api_key = api_key
        self.base_url = "https://image.nalitek.com"
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    def get_profile(self):
        """Получить профиль пользователя"""
        url = f"{self.base_url}/api/user/profile"
        response = requests.get(url, headers=self.headers)
        if response.status_code == 200:
            profile = response.json()
            print(f"👤 User: {profile['username']}")
            print(f"📧 Email: {profile['email']}")
            print(f"🎯 Plan: {profile['plan']}")
            print(f"🎨 Default model: {profile['settings']['default_model']}")
            return profile
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def update_profile(self, updates):
        """Обновить профиль пользователя"""
        url = f"{self.base_url}/api/user/profile"
        response = requests.put(url, json=updates, headers=self.headers)
        if response.status_code == 200:
            profile = response.json()
            print("✅ Profile updated successfully")
            return profile
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def update_settings(self, settings):
        """Обновить настройки пользователя"""
        return self.update_profile({"settings": settings})
    def change_password(self, current_password, new_password):
        """Изменить пароль"""
        url = f"{self.base_url}/api/user/password"
        data = {
            "current_password": current_password,
            "new_password": new_password
        }
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 200:
            print("✅ Password changed successfully")
            return True
        else:
            print(f"❌ Error: {response.status_code}")
            return False
# Использование
user_api = UserAPI("your-api-key")
# Получить профиль
profile = user_api.get_profile()
# Обновить настройки
user_api.update_settings({
    "default_model": "flux-schnell",
    "default_quality": "ultra",
    "email_notifications": False
})
# Изменить пароль
user_api.change_password("old_password", "new_secure_password")
'''

USER_JS = r"""class UserAPI {
constructor(apiKey) {
this.apiKey = apiKey;
this.baseUrl = 'https://image.nalitek.com';
}
async getProfile() {
const url = `${this.baseUrl}/api/user/profile`;
try {
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
const profile = await response.json();
console.log(`👤 User: ${profile.username}`);
console.log(`📧 Email: ${profile.email}`);
console.log(`🎯 Plan: ${profile.plan}`);
console.log(`🎨 Default model: ${profile.settings.default_model}`);
return profile;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async updateProfile(updates) {
const url = `${this.baseUrl}/api/user/profile`;
try {
const response = await fetch(url, {
method: 'PUT',
headers: {
'X-API-Key': this.apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify(updates)
});
if (response.status === 200) {
const profile = await response.json();
console.log('✅ Profile updated successfully');
return profile;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async updateSettings(settings) {
return this.updateProfile({ settings });
}
async changePassword(currentPassword, newPassword) {
const url = `${this.baseUrl}/api/user/password`;
try {
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': this.apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify({
current_password: currentPassword,
new_password: newPassword
})
});
if (response.status === 200) {
console.log('✅ Password changed successfully');
return true;
} else {
console.error(`❌ Error: ${response.status}`);
return false;
}
} catch (error) {
console.error('Request failed:', error);
return false;
}
}
}
// Использование
const userApi = new UserAPI('your-api-key');
// Получить профиль
userApi.getProfile();
// Обновить настройки
userApi.updateSettings({
default_model: 'flux-schnell',
default_quality: 'ultra',
email_notifications: false
});
// Изменить пароль
userApi.changePassword('old_password', 'new_secure_password');
"""

KEYS_PY = r'''import requests
class APIKeyManager:
    def __init__(self, api_key):
        self.api_key = api_key
        self.base_url = "https://image.nalitek.com"
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    def list_keys(self):
        """Получить список API ключей"""
        url = f"{self.base_url}/api/user/api-keys"
        response = requests.get(url, headers=self.headers)
        if response.status_code == 200:
            keys = response.json()
            print(f"🔑 Total API keys: {len(keys['api_keys'])}")
            for key in keys['api_keys']:
                print(f"\n🆔 ID: {key['id']}")
                print(f"📝 Name: {key['name']}")
                print(f"🔑 Prefix: {key['prefix']}")
                print(f"📅 Created: {key['created_at']}")
                print(f"⏰ Last used: {key['last_used_at']}")
                print(f"📊 Usage: {key['usage']['total_requests']} requests")
            return keys
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def create_key(self, name, ip_whitelist=None, rate_limit=None):
        """Создать новый API ключ"""
        url = f"{self.base_url}/api/user/api-keys"
        data = {"name": name}
        if ip_whitelist:
            data["ip_whitelist"] = ip_whitelist
        if rate_limit:
            data["rate_limit"] = rate_limit
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 201:
            key_data = response.json()
            print(f"✅ API key created successfully")
            print(f"🔑 Key: {key_data['key']}")
            print(f"⚠️ Save this key! It won't be shown again.")
            return key_data
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def delete_key(self, key_id):
        """Удалить API ключ"""
        url = f"{self.base_url}/api/user/api-keys/{key_id}"
        response = requests.delete(url, headers=self.headers)
        if response.status_code == 204:
            print(f"✅ API key {key_id} deleted successfully")
            return True
        else:
            print(f"❌ Error: {response.status_code}")
            return False
    def rotate_key(self, key_id, name=None):
        """Ротация API ключа (удаление старого и создание нового)"""
        # Удаляем старый ключ
        if self.delete_key(key_id):
            # Создаем новый ключ
            new_name = name or f"Rotated key (from {key_id})"
            return self.create_key(new_name)
        return None
# Использование
manager = APIKeyManager("your-api-key")
# Список ключей
manager.list_keys()
# Создать новый ключ
new_key = manager.create_key(
    name="Production API Key",
    ip_whitelist=["192.168.1.1", "10.0.0.1"],
    rate_limit=1000
)
# Удалить ключ
manager.delete_key(123)
# Ротация ключа
manager.rotate_key(456, "New Production Key")
'''

KEYS_JS = r"""class APIKeyManager {
constructor(apiKey) {
this.apiKey = apiKey;
this.baseUrl = 'https://image.nalitek.com';
}
async listKeys() {
const url = `${this.baseUrl}/api/user/api-keys`;
try {
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
const keys = await response.json();
console.log(`🔑 Total API keys: ${keys.api_keys.length}`);
keys.api_keys.forEach(key => {
console.log(`\n🆔 ID: ${key.id}`);
console.log(`📝 Name: ${key.name}`);
console.log(`🔑 Prefix: ${key.prefix}`);
console.log(`📅 Created: ${key.created_at}`);
console.log(`⏰ Last used: ${key.last_used_at}`);
console.log(`📊 Usage: ${key.usage.total_requests} requests`);
});
return keys;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async createKey(name, ipWhitelist = null, rateLimit = null) {
const url = `${this.baseUrl}/api/user/api-keys`;
const data = { name };
if (ipWhitelist) data.ip_whitelist = ipWhitelist;
if (rateLimit) data.rate_limit = rateLimit;
try {
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': this.apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify(data)
});
if (response.status === 201) {
const keyData = await response.json();
console.log('✅ API key created successfully');
console.log(`🔑 Key: ${keyData.key}`);
console.log('⚠️ Save this key! It won\'t be shown again.');
return keyData;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async deleteKey(keyId) {
const url = `${this.baseUrl}/api/user/api-keys/${keyId}`;
try {
const response = await fetch(url, {
method: 'DELETE',
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 204) {
console.log(`✅ API key ${keyId} deleted successfully`);
return true;
} else {
console.error(`❌ Error: ${response.status}`);
return false;
}
} catch (error) {
console.error('Request failed:', error);
return false;
}
}
}
// Использование
const manager = new APIKeyManager('your-api-key');
// Список ключей
manager.listKeys();
// Создать новый ключ
manager.createKey(
'Production API Key',
['192.168.1.1', '10.0.0.1'],
1000
);
// Удалить ключ
manager.deleteKey(123);
"""

ADMIN_PY = r'''import requests
class AdminAPI:
    def __init__(self, admin_api_key):
        self.api_key = admin_api_key
        self.base_url = "https://image.nalitek.com"
        self.headers = {"X-API-Key": admin_api_key, "Content-Type": "application/json"}
    def get_users(self, page=1, per_page=50):
        """Получить список пользователей"""
        url = f"{self.base_url}/api/admin/users"
        params = {"page": page, "per_page": per_page}
        response = requests.get(url, params=params, headers=self.headers)
        if response.status_code == 200:
            data = response.json()
            print(f"👥 Total users: {data['total']}")
            for user in data['users']:
                print(f"\n👤 {user['username']} ({user['email']})")
                print(f" Plan: {user['plan']}")
                print(f" Quota: {user['quota']['daily_generations']}/day")
                print(f" Created: {user['created_at']}")
            return data
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def get_statistics(self):
        """Получить общую статистику"""
        url = f"{self.base_url}/api/admin/statistics"
        response = requests.get(url, headers=self.headers)
        if response.status_code == 200:
            stats = response.json()
            print("📊 System Statistics:")
            print(f" Total users: {stats['total_users']}")
            print(f" Active users (24h): {stats['active_users_24h']}")
            print(f" Total generations: {stats['total_generations']}")
            print(f" Generations today: {stats['generations_today']}")
            print(f" Storage used: {stats['storage_used_gb']} GB")
            print(f" Revenue this month: ${stats['revenue_month']}")
            return stats
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def update_user_quota(self, user_id, daily_generations, daily_upscales):
        """Обновить квоты пользователя"""
        url = f"{self.base_url}/api/admin/user/{user_id}/quota"
        data = {
            "daily_generations": daily_generations,
            "daily_upscales": daily_upscales
        }
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 200:
            print(f"✅ Quota updated for user {user_id}")
            return True
        else:
            print(f"❌ Error: {response.status_code}")
            return False
    def ban_user(self, user_id, reason):
        """Заблокировать пользователя"""
        url = f"{self.base_url}/api/admin/user/{user_id}/ban"
        data = {"reason": reason}
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 200:
            print(f"✅ User {user_id} banned")
            return True
        else:
            print(f"❌ Error: {response.status_code}")
            return False
# Использование
admin = AdminAPI("admin-api-key")
# Получить пользователей
admin.get_users(page=1)
# Получить статистику
admin.get_statistics()
# Обновить квоты
admin.update_user_quota(
    user_id=123,
    daily_generations=500,
    daily_upscales=100
)
# Заблокировать пользователя
admin.ban_user(456, "Violation of terms of service")
'''

ADMIN_JS = r"""class AdminAPI {
constructor(adminApiKey) {
this.apiKey = adminApiKey;
this.baseUrl = 'https://image.nalitek.com';
}
async getUsers(page = 1, perPage = 50) {
const url = new URL(`${this.baseUrl}/api/admin/users`);
url.searchParams.append('page', page);
url.searchParams.append('per_page', perPage);
try {
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
const data = await response.json();
console.log(`👥 Total users: ${data.total}`);
data.users.forEach(user => {
console.log(`\n👤 ${user.username} (${user.email})`);
console.log(` Plan: ${user.plan}`);
console.log(` Quota: ${user.quota.daily_generations}/day`);
console.log(` Created: ${user.created_at}`);
});
return data;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async getStatistics() {
const url = `${this.baseUrl}/api/admin/statistics`;
try {
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
const stats = await response.json();
console.log('📊 System Statistics:');
console.log(` Total users: ${stats.total_users}`);
console.log(` Active users (24h): ${stats.active_users_24h}`);
console.log(` Total generations: ${stats.total_generations}`);
console.log(` Generations today: ${stats.generations_today}`);
console.log(` Storage used: ${stats.storage_used_gb} GB`);
console.log(` Revenue this month: ${stats.revenue_month}`);
return stats;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async updateUserQuota(userId, dailyGenerations, dailyUpscales) {
const url = `${this.baseUrl}/api/admin/user/${userId}/quota`;
try {
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': this.apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify({
daily_generations: dailyGenerations,
daily_upscales: dailyUpscales
})
});
if (response.status === 200) {
console.log(`✅ Quota updated for user ${userId}`);
return true;
} else {
console.error(`❌ Error: ${response.status}`);
return false;
}
} catch (error) {
console.error('Request failed:', error);
return false;
}
}
}
// Использование
const admin = new AdminAPI('admin-api-key');
// Получить пользователей
admin.getUsers(1);
// Получить статистику
admin.getStatistics();
// Обновить квоты
admin.updateUserQuota(123, 500, 100);
"""
