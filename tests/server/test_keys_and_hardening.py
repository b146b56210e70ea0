"""API key management, admin plan changes, and GraphQL hardening."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.service import accounts
from runtime.settings import ROOT, Settings
from tests.conftest import ThreadedServer, free_port, spawn_api
from tests.factories import TestAccount, create_account, gql, subscribed

KEYS = "{ apiKeys { id name prefix createdAt lastUsedAt revokedAt } }"
CREATE = """mutation C($name: String!) { createApiKey(name: $name) {
  secret key { id name prefix } } }"""
REVOKE = """mutation R($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"""


async def test_keys_are_created_listed_and_revoked_everywhere_at_once(
    client: httpx.AsyncClient, account: TestAccount, settings: Settings
) -> None:
    created = (await gql(client, CREATE, {"name": "ci"}, key=account.api_key))["data"]
    new = created["createApiKey"]
    secret = new["secret"]
    assert secret.startswith("fgk_") and secret.startswith(new["key"]["prefix"])
    assert new["key"]["name"] == "ci"

    listed = (await gql(client, KEYS, key=secret))["data"]["apiKeys"]
    assert {k["name"] for k in listed} == {"default", "ci"}
    assert secret not in json.dumps(listed)  # only the prefix is ever shown again
    ci = next(k for k in listed if k["name"] == "ci")
    assert ci["lastUsedAt"] is not None  # this very request used it

    with spawn_api(settings) as other:
        async with httpx.AsyncClient(base_url=other, timeout=30) as elsewhere:
            assert "errors" not in await gql(elsewhere, "{ me { id } }", key=secret)
            revoked = await gql(client, REVOKE, {"id": new["key"]["id"]}, key=account.api_key)
            assert revoked["data"]["revokeApiKey"]["revokedAt"] is not None
            for target in (client, elsewhere):
                body = await gql(target, "{ me { id } }", key=secret)
                assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
                still = await gql(target, "{ me { id } }", key=account.api_key)
                assert "errors" not in still  # the account's other key keeps working


async def test_keys_of_another_account_cannot_be_revoked(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    alice = await create_account(sessions, settings)
    mallory = await create_account(sessions, settings)
    attempt = await gql(client, REVOKE, {"id": str(alice.api_key_id)}, key=mallory.api_key)
    assert attempt["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert "errors" not in await gql(client, "{ me { id } }", key=alice.api_key)
    nonsense = await gql(client, REVOKE, {"id": "not-a-uuid"}, key=mallory.api_key)
    assert nonsense["errors"][0]["extensions"]["code"] == "NOT_FOUND"


SET_PLAN = """mutation P($id: ID!, $plan: String, $o: LimitOverridesInput) {
  setAccountPlan(accountId: $id, plan: $plan, overrides: $o) {
    plan limits { requestsPerMinute concurrentJobs jobsPerDay } } }"""


async def test_admins_change_plans_and_overrides(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    customer = await create_account(sessions, settings, plan="free")
    async with sessions() as s:
        _, admin_key = await accounts.create_account(
            s, email=f"admin-{time.time_ns()}@example.com", plan="enterprise", credits=0,
            pepper=settings.secret_key.get_secret_value().encode(), is_admin=True,
        )  # fmt: skip
        await s.commit()
    changed = await gql(
        client, SET_PLAN,
        {"id": str(customer.id), "plan": "enterprise",
         "o": {"requestsPerMinute": 1200, "jobsPerDay": None}},
        key=admin_key.secret,
    )  # fmt: skip
    assert changed["data"]["setAccountPlan"] == {
        "plan": "enterprise",
        "limits": {"requestsPerMinute": 1200, "concurrentJobs": 50, "jobsPerDay": None},
    }
    refused = await gql(
        client, SET_PLAN, {"id": str(customer.id), "plan": "pro"}, key=customer.api_key
    )
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    bad = await gql(
        client, SET_PLAN, {"id": str(customer.id), "plan": "gold"}, key=admin_key.secret
    )
    assert bad["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "plan"}
    negative = await gql(
        client, SET_PLAN, {"id": str(customer.id), "o": {"concurrentJobs": -1}},
        key=admin_key.secret,
    )  # fmt: skip
    assert negative["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    # mergeOverrides: only the limits named change (daily per kind), the others stay.
    merge = """mutation M($id: ID!, $o: LimitOverridesInput!) {
      setAccountPlan(accountId: $id, overrides: $o, mergeOverrides: true) {
        limits { requestsPerMinute concurrentJobs jobsPerDay daily { kind perDay } } } }"""
    first = await gql(
        client, merge, {"id": str(customer.id), "o": {"daily": [{"kind": "edit", "perDay": 3}]}},
        key=admin_key.secret,
    )  # fmt: skip
    merged = await gql(
        client, merge,
        {"id": str(customer.id),
         "o": {"concurrentJobs": 7, "daily": [{"kind": "vectorize", "perDay": 9}]}},
        key=admin_key.secret,
    )  # fmt: skip
    assert "errors" not in first, first
    limits = merged["data"]["setAccountPlan"]["limits"]
    assert (limits["requestsPerMinute"], limits["concurrentJobs"], limits["jobsPerDay"]) == (
        1200, 7, None,
    )  # fmt: skip
    daily = {q["kind"]: q["perDay"] for q in limits["daily"]}
    assert daily["edit"] == 3 and daily["vectorize"] == 9
    # Without it the overrides are replaced: back to the plan's but for the one named.
    replaced = await gql(
        client, SET_PLAN, {"id": str(customer.id), "o": {"concurrentJobs": 5}},
        key=admin_key.secret,
    )  # fmt: skip
    assert replaced["data"]["setAccountPlan"]["limits"] == {
        "requestsPerMinute": 600, "concurrentJobs": 5, "jobsPerDay": None,
    }  # fmt: skip
    restore = {"requestsPerMinute": 1200, "jobsPerDay": None}
    await gql(client, SET_PLAN, {"id": str(customer.id), "o": restore}, key=admin_key.secret)

    # The operator CLI does the same.
    env = {
        "FLUXGATE_DATABASE_URL": settings.database_url,
        "FLUXGATE_SECRET_KEY": settings.secret_key.get_secret_value(),
    }
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "account", "set-plan", "--account",
         customer.email, "--plan", "starter", "--concurrent-jobs", "unlimited",
         "--requests-per-minute", "45"],
        env={**dict(__import__("os").environ), **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    limits = json.loads(result.stdout)["limits"]
    shown = ("requests_per_minute", "concurrent_jobs", "jobs_per_day", "max_subscriptions")
    assert {k: limits[k] for k in shown} == {
        "requests_per_minute": 45,
        "concurrent_jobs": None,
        "jobs_per_day": None,  # the override set through GraphQL above stays
        "max_subscriptions": 20,  # the starter plan's
    }
    me = await gql(client, "{ me { plan limits { requestsPerMinute concurrentJobs } } }",
                   key=customer.api_key)  # fmt: skip
    assert me["data"]["me"] == {
        "plan": "starter",
        "limits": {"requestsPerMinute": 45, "concurrentJobs": None},
    }


def timed(client: httpx.Client, body: object, key: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post("/graphql", json=body, headers={"Authorization": f"Bearer {key}"})
    return response, time.monotonic() - started


async def test_hostile_documents_are_refused_quickly(api: str, account: TestAccount) -> None:
    deep = "{ __schema { types { fields { type { fields { type { fields { type { fields {"
    deep += " type { fields { type { name } } } } } } } } } } } } }"
    circular = """query { ...A }
      fragment A on Query { me { id } ...B }
      fragment B on Query { ...A }"""
    many_aliases = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(40)) + " }"
    huge = "{ " + " ".join("me { id email plan }" for _ in range(600)) + " }"
    with httpx.Client(base_url=api, timeout=30) as c:
        for document, code in [
            (deep, "GRAPHQL_VALIDATION_FAILED"),
            (circular, "GRAPHQL_VALIDATION_FAILED"),
            (many_aliases, "GRAPHQL_VALIDATION_FAILED"),
            (huge, "GRAPHQL_PARSE_FAILED"),
        ]:
            response, seconds = timed(c, {"query": document}, account.api_key)
            assert response.status_code == 200
            errors = response.json()["errors"]
            assert errors, document[:60]
            assert {e["extensions"]["code"] for e in errors} == {code}, (document[:60], errors)
            assert seconds < 1.0
        # Batching is off: a list of operations is refused, not run.
        batch, _ = timed(c, [{"query": "{ me { id } }"}] * 5, account.api_key)
        assert batch.status_code == 400
        # A body over the limit is refused before it is read whole.
        padding = "x" * (300 * 1024)
        big, seconds = timed(c, {"query": "{ me { id } }", "variables": {"p": padding}},
                             account.api_key)  # fmt: skip
        assert big.status_code == 413
        assert big.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert seconds < 1.0
        # Streamed (no Content-Length): refused as it arrives, on both surfaces, though
        # the body is read before the key is checked.
        encoded = json.dumps({"query": "{ me { id } }", "variables": {"p": padding}}).encode()
        for path in ("/graphql", "/v1/text_to_image"):
            streamed = c.post(
                path,
                content=iter([encoded[i : i + 65536] for i in range(0, len(encoded), 65536)]),
                headers={"Content-Type": "application/json",
                         "Authorization": f"Bearer {account.api_key}"},
            )  # fmt: skip
            assert streamed.status_code == 413, (path, streamed.text)
            assert streamed.json()["errors"][0]["extensions"]["field"] == "body"
        # Introspection is on by default.
        schema, _ = timed(c, {"query": "{ __schema { queryType { name } } }"}, account.api_key)
        assert schema.json()["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_introspection_can_be_switched_off(settings: Settings, account: TestAccount) -> None:
    closed = settings.model_copy(update={"graphql_introspection": False})
    with ThreadedServer(closed, free_port()) as server, httpx.Client(base_url=server.url) as c:
        response, _ = timed(c, {"query": "{ __schema { queryType { name } } }"}, account.api_key)
        errors = response.json()["errors"]
        assert errors and response.json().get("data") is None
        assert {e["extensions"]["code"] for e in errors} == {"GRAPHQL_VALIDATION_FAILED"}
        assert any("introspection" in e["message"].lower() for e in errors)
        ok, _ = timed(c, {"query": "{ me { id } }"}, account.api_key)
        assert "errors" not in ok.json()


async def test_a_revoked_key_ends_open_subscriptions(
    api: str, account: TestAccount, settings: Settings
) -> None:
    from tests.wsclient import TRANSPORT_WS, GraphQLWebSocket, SubscriptionError

    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        new = (await gql(client, CREATE, {"name": "ws"}, key=account.api_key))["data"]
        secret, key_id = new["createApiKey"]["secret"], new["createApiKey"]["key"]["id"]
        async with GraphQLWebSocket(api, TRANSPORT_WS, {"apiKey": secret}) as ws:
            await ws.subscribe("subscription { generationsUpdated { id } }")
            await subscribed(settings, account)
            await gql(client, REVOKE, {"id": key_id}, key=account.api_key)
            started = time.monotonic()
            try:
                await ws.next(timeout=15)
                raise AssertionError("the subscription went on after the revocation")
            except SubscriptionError as ended:
                assert ended.payload[0]["extensions"]["code"] == "UNAUTHENTICATED"
            assert time.monotonic() - started < 8
            # And nothing new runs on that socket either.
            second = await ws.subscribe("subscription { generationsUpdated { id } }")
            while (message := await ws.receive(timeout=5))["id"] != second:
                assert message["type"] == "complete"  # the first operation's end
            [error] = message["payload"]["errors"]
            assert error["extensions"]["code"] == "UNAUTHENTICATED"
