"""Administration (issue 13) end to end, against a real uvicorn server, Postgres and Redis:
bans refused on every surface (GraphQL over HTTP, REST, an open websocket subscription,
a new one) with queued jobs cancelled and released, unban restoring access; grants and
deducts as ledger entries that the balance matches; statistics that move by what the test
made; the audit log; FORBIDDEN for non-admins on every admin field; the CLI.

No worker takes this module's queue: jobs stay queued (a finished job is made by the
service functions a worker calls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from strawberry.schema.name_converter import NameConverter

from billing import repository
from billing.db import unit_of_work_without_dispatch
from billing.models import (
    AdminAuditEntry,
    Generation,
    Payment,
    utcnow,
)
from billing.service import accounts, generations
from runtime.settings import ROOT, Settings
from schema.admin import AdminMutation, AdminQuery
from tests.conftest import ThreadedServer, own_queue
from tests.factories import TestAccount, audit, balance, create_account, gql, subscribed
from tests.wsclient import LEGACY_WS, TRANSPORT_WS, GraphQLWebSocket, SubscriptionError

SUBMIT = """mutation S($input: ImageGenerationInput!) {
  generateImage(input: $input) { id status } }"""
JOB = {"service": "flux-dev", "prompt": "a quiet harbour", "width": 256, "height": 256}
BAN = """mutation B($id: ID!, $reason: String!) {
  adminBanAccount(accountId: $id, reason: $reason) { account { id banned banReason }
  cancelledJobIds } }"""
UNBAN = """mutation U($id: ID!, $reason: String!) {
  adminUnbanAccount(accountId: $id, reason: $reason) { id banned } }"""
GRANT = """mutation G($id: ID!, $amount: Int!, $reason: String!, $ref: String) {
  adminGrantCredits(accountId: $id, amount: $amount, reason: $reason, reference: $ref) {
    applied account { creditsAvailable } auditEntry { action actor details } } }"""
DEDUCT = """mutation D($id: ID!, $amount: Int!, $reason: String!) {
  adminDeductCredits(accountId: $id, amount: $amount, reason: $reason) {
    applied account { creditsAvailable } } }"""
AUDIT = """query A($id: ID) { adminAuditLog(accountId: $id, first: 100) {
  total items { actor actorAccountId action targetAccountId details createdAt } } }"""
STATS = """{ adminStatistics { accounts bannedAccounts activeAccounts24h activeAccounts30d
  gpuSeconds jobs { model pool status count gpuSeconds } queues { pool depth liveWorkers }
  revenue { currency payments amount } revenue30d { currency payments amount } } }"""


@pytest.fixture(scope="module")
def site(settings: Settings, database: str) -> Iterator[tuple[str, Settings]]:
    own = own_queue(settings, "admin")
    with ThreadedServer.of(own) as server:
        yield server.url, own


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


def code_of(body: dict[str, Any]) -> str:
    errors = body.get("errors")
    assert errors, body
    return str(errors[0]["extensions"]["code"])


async def audit_entries(
    sessions: async_sessionmaker[AsyncSession], target: uuid.UUID
) -> list[AdminAuditEntry]:
    async with sessions() as session:
        rows = await session.execute(
            select(AdminAuditEntry)
            .where(AdminAuditEntry.target_account_id == target)  # type: ignore[arg-type]  # a SQLModel column
            .order_by(AdminAuditEntry.id)  # type: ignore[arg-type]
        )
        return list(rows.scalars())


async def test_a_ban_is_refused_everywhere_cancels_jobs_and_unban_restores(
    site: tuple[str, Settings], sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    url, own = site
    admin = await create_admin(sessions, settings)
    user = await create_account(sessions, settings, credits=1000)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        job = (await gql(client, SUBMIT, {"input": JOB}, key=user.api_key))["data"]
        job_id = job["generateImage"]["id"]
        held = await balance(sessions, user.id)
        assert held.reserved > 0 and held.available + held.reserved == 1000

        async with GraphQLWebSocket(url, TRANSPORT_WS, {"apiKey": user.api_key}) as ws:
            await ws.subscribe("subscription { generationsUpdated { id status } }")
            await subscribed(own, user)
            banned = await gql(client, BAN, {"id": str(user.id), "reason": "abuse"},
                               key=admin.api_key)  # fmt: skip
            result = banned["data"]["adminBanAccount"]
            assert result["account"] == {"id": str(user.id), "banned": True, "banReason": "abuse"}
            assert result["cancelledJobIds"] == [job_id]
            # The open subscription sees its job cancelled at most, then ends: FORBIDDEN.
            seen = []
            with pytest.raises(SubscriptionError) as ended:
                while (data := await ws.next(timeout=15)) is not None:
                    seen.append(data["generationsUpdated"])
            assert ended.value.payload[0]["extensions"]["code"] == "FORBIDDEN"
            assert all(s == {"id": job_id, "status": "cancelled"} for s in seen)

        # GraphQL over HTTP, REST, a new subscription: FORBIDDEN, the documented shape.
        me = await client.post("/graphql", json={"query": "{ me { id } }"}, headers=user.bearer)
        assert code_of(me.json()) == "FORBIDDEN"
        assert me.json()["errors"][0]["message"] == "This account is banned"
        rest = await client.post("/v1/text_to_image", json={"prompt": "x"}, headers=user.bearer)
        assert rest.status_code == 403, rest.text
        assert code_of(rest.json()) == "FORBIDDEN"
        poll = await client.get(f"/v1/text_to_image/{job_id}", headers=user.bearer)
        assert poll.status_code == 403
        # A new websocket is refused at connection_init (graphql-ws says why).
        with pytest.raises(SubscriptionError) as refused:
            async with GraphQLWebSocket(url, LEGACY_WS, {"apiKey": user.api_key}):
                pass
        assert refused.value.payload["type"] == "connection_error"
        assert refused.value.payload["payload"]["code"] == "FORBIDDEN"

        # The job is cancelled and its hold released, by ledger entries the balance matches.
        async with sessions() as session:
            stored = await session.get(Generation, job_id)
            assert stored is not None and stored.status == "cancelled"
            kinds = [
                e.kind
                for e in await repository.list_entries(session, user.id)
                if e.generation_id == job_id
            ]
        assert sorted(kinds) == ["release", "reserve"]
        cached, summed = await audit(sessions, user.id)
        assert cached == summed and cached.available == 1000 and cached.reserved == 0

        # A ban is not applied twice; bad input costs nothing.
        again = await gql(client, BAN, {"id": str(user.id), "reason": "x"}, key=admin.api_key)
        assert code_of(again) == "CONFLICT"
        blank = await gql(client, UNBAN, {"id": str(user.id), "reason": " "}, key=admin.api_key)
        assert code_of(blank) == "BAD_USER_INPUT"
        self_ban = await gql(client, BAN, {"id": str(admin.id), "reason": "x"}, key=admin.api_key)
        assert code_of(self_ban) == "BAD_USER_INPUT"

        unbanned = await gql(client, UNBAN, {"id": str(user.id), "reason": "appeal granted"},
                             key=admin.api_key)  # fmt: skip
        assert unbanned["data"]["adminUnbanAccount"] == {"id": str(user.id), "banned": False}
        me = await client.post("/graphql", json={"query": "{ me { id } }"}, headers=user.bearer)
        assert me.json() == {"data": {"me": {"id": str(user.id)}}}
        poll = await client.get(f"/v1/text_to_image/{job_id}", headers=user.bearer)
        assert poll.status_code == 200
        resumed = await gql(client, SUBMIT, {"input": JOB}, key=user.api_key)
        assert resumed["data"]["generateImage"]["status"] == "queued"

        log = (await gql(client, AUDIT, {"id": str(user.id)}, key=admin.api_key))["data"]
        entries = log["adminAuditLog"]["items"]
        assert [e["action"] for e in entries] == ["unban", "ban"]  # newest first
        assert {e["actor"] for e in entries} == {admin.email}
        assert {e["actorAccountId"] for e in entries} == {str(admin.id)}
        assert entries[1]["details"] == {"reason": "abuse", "cancelled": [job_id]}
        assert entries[0]["details"] == {"reason": "appeal granted"}


async def test_a_subscription_ends_when_a_ban_is_found_by_the_sweep(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], database: str
) -> None:
    """A ban written by hand in SQL (no event) ends open subscriptions at the next sweep."""
    own = own_queue(settings, "admin-sweep", subscription_recheck_s=0.1)
    user = await create_account(sessions, settings, credits=100)
    with ThreadedServer.of(own) as server:
        async with GraphQLWebSocket(server.url, TRANSPORT_WS, {"apiKey": user.api_key}) as ws:
            await ws.subscribe("subscription { generationsUpdated { id } }")
            await subscribed(own, user)
            async with sessions() as session:
                await session.execute(
                    text("UPDATE accounts SET banned_at = now() WHERE id = :id"), {"id": user.id}
                )
                await session.commit()
            with pytest.raises(SubscriptionError) as ended:
                await ws.next(timeout=15)
            assert ended.value.payload[0]["extensions"]["code"] == "FORBIDDEN"


async def test_grant_and_deduct_are_ledger_entries_and_never_go_below_zero(
    site: tuple[str, Settings], sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    url, _ = site
    admin = await create_admin(sessions, settings)
    user = await create_account(sessions, settings, credits=100)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        ticket = {"id": str(user.id), "amount": 500, "reason": "support ticket 42", "ref": "t42"}
        granted = await gql(client, GRANT, ticket, key=admin.api_key)
        change = granted["data"]["adminGrantCredits"]
        assert change["applied"] and change["account"]["creditsAvailable"] == 600
        assert change["auditEntry"]["action"] == "grant"
        assert change["auditEntry"]["actor"] == admin.email
        assert change["auditEntry"]["details"]["available_after"] == 600
        # The same reference again moves nothing and records nothing.
        twice = await gql(client, GRANT, ticket, key=admin.api_key)
        assert twice["data"]["adminGrantCredits"]["applied"] is False
        assert twice["data"]["adminGrantCredits"]["auditEntry"] is None

        deducted = await gql(client, DEDUCT, {"id": str(user.id), "amount": 250,
                             "reason": "chargeback"}, key=admin.api_key)  # fmt: skip
        assert deducted["data"]["adminDeductCredits"]["account"]["creditsAvailable"] == 350
        # Below zero: refused, with the numbers; nothing moves.
        refused = await gql(client, DEDUCT, {"id": str(user.id), "amount": 351,
                            "reason": "too much"}, key=admin.api_key)  # fmt: skip
        assert code_of(refused) == "BAD_USER_INPUT"
        error = refused["errors"][0]
        assert error["extensions"]["field"] == "amount"
        assert "351" in error["message"] and "350 available" in error["message"]
        # Bad input costs nothing either.
        for bad in ({"amount": 0, "reason": "x"}, {"amount": -5, "reason": "x"},
                    {"amount": 5, "reason": ""}, {"amount": 5, "reason": "x" * 501}):  # fmt: skip
            body = await gql(client, GRANT, {"id": str(user.id), **bad}, key=admin.api_key)
            assert code_of(body) == "BAD_USER_INPUT", bad
        missing = await gql(client, GRANT, {"id": str(uuid.uuid4()), "amount": 5, "reason": "x"},
                            key=admin.api_key)  # fmt: skip
        assert code_of(missing) == "NOT_FOUND"
        junk = await gql(client, GRANT, {"id": "junk", "amount": 5, "reason": "x"},
                         key=admin.api_key)  # fmt: skip
        assert code_of(junk) == "NOT_FOUND"

    cached, summed = await audit(sessions, user.id)
    assert cached == summed and cached.available == 350
    async with sessions() as session:
        entries = [
            (e.kind, e.available_delta, e.note, e.movement_key.split(":")[0])
            for e in await repository.list_entries(session, user.id)
        ]
    assert sorted(entries[1:]) == sorted(
        [("grant", 500, "support ticket 42", "grant"), ("deduct", -250, "chargeback", "deduct")]
    )
    assert [e.action for e in await audit_entries(sessions, user.id)] == ["grant", "deduct"]
    # The audit log is append-only, like the ledger.
    async with sessions() as session:
        with pytest.raises(Exception, match="append-only"):
            await session.execute(update(AdminAuditEntry).values(action="x"))
    async with sessions() as session:
        with pytest.raises(Exception, match="append-only"):
            await session.execute(text("TRUNCATE admin_audit_log CASCADE"))


async def test_account_search_plan_change_and_audit(
    site: tuple[str, Settings], sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    url, _ = site
    admin = await create_admin(sessions, settings)
    tag = uuid.uuid4().hex[:8]
    made = []
    for i, plan in enumerate(["free", "starter", "free"]):
        async with sessions() as session:
            account, _ = await accounts.create_account(
                session, email=f"search-{tag}-{i}@example.com", plan=plan, credits=0,
                pepper=b"x",
            )  # fmt: skip
            await session.commit()
        made.append(account)
    search = """query S($q: String, $plan: String, $banned: Boolean, $first: Int!, $offset: Int!) {
      adminAccounts(query: $q, plan: $plan, banned: $banned, first: $first, offset: $offset) {
        total offset items { id email plan banned isAdmin } } }"""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def find(**variables: Any) -> dict[str, Any]:
            body = await gql(client, search, {"first": 50, "offset": 0, **variables},
                             key=admin.api_key)  # fmt: skip
            page: dict[str, Any] = body["data"]["adminAccounts"]
            return page

        everyone = await find(q=f"search-{tag}")
        assert everyone["total"] == 3
        assert [a["email"] for a in everyone["items"]] == [a.email for a in made]
        assert (await find(q=f"SEARCH-{tag}", plan="free"))["total"] == 2
        by_id = await find(q=str(made[1].id)[:13])
        assert [a["id"] for a in by_id["items"]] == [str(made[1].id)]
        second = await find(q=f"search-{tag}", first=2, offset=2)
        assert second["total"] == 3 and [a["email"] for a in second["items"]] == [made[2].email]
        assert (await find(q="%"))["total"] == 0  # wildcards are literal
        too_many = await gql(client, search, {"first": 1000, "offset": 0}, key=admin.api_key)
        assert code_of(too_many) == "BAD_USER_INPUT"

        changed = await gql(
            client,
            """mutation P($id: ID!) { setAccountPlan(accountId: $id, plan: "pro",
              overrides: {jobsPerDay: 7}) { plan limits { jobsPerDay } } }""",
            {"id": str(made[0].id)},
            key=admin.api_key,
        )
        assert changed["data"]["setAccountPlan"] == {"plan": "pro", "limits": {"jobsPerDay": 7}}
        banned = await gql(client, BAN, {"id": str(made[2].id), "reason": "spam"},
                           key=admin.api_key)  # fmt: skip
        assert banned["data"]["adminBanAccount"]["cancelledJobIds"] == []
        assert [a["email"] for a in (await find(q=f"search-{tag}", banned=True))["items"]] == [
            made[2].email
        ]
        assert (await find(q=f"search-{tag}", banned=False))["total"] == 2
        detail = await gql(client, "query D($id: ID!) { adminAccount(id: $id) { plan "
                           "limitOverrides banned } }", {"id": str(made[0].id)},
                           key=admin.api_key)  # fmt: skip
        assert detail["data"]["adminAccount"] == {
            "plan": "pro", "limitOverrides": {"jobs_per_day": 7}, "banned": False
        }  # fmt: skip

        log = (await gql(client, AUDIT, {"id": str(made[0].id)}, key=admin.api_key))["data"]
        [entry] = log["adminAuditLog"]["items"]
        assert entry["action"] == "set_plan" and entry["actor"] == admin.email
        assert entry["details"] == {
            "plan": {"from": "free", "to": "pro"},
            "overrides": {"from": None, "to": {"jobs_per_day": 7}},
        }
        everything = (await gql(client, AUDIT, {}, key=admin.api_key))["data"]["adminAuditLog"]
        mine = [e for e in everything["items"] if e["actorAccountId"] == str(admin.id)]
        assert [e["action"] for e in mine] == ["ban", "set_plan"]
        bad_action = await gql(client, 'query { adminAuditLog(action: "nuke") { total } }',
                               key=admin.api_key)  # fmt: skip
        assert code_of(bad_action) == "BAD_USER_INPUT"


async def stats(client: httpx.AsyncClient, admin: TestAccount) -> dict[str, Any]:
    body = await gql(client, STATS, key=admin.api_key)
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]["adminStatistics"]
    return data


def _jobs(data: dict[str, Any]) -> dict[tuple[str, str, str], tuple[int, float]]:
    return {(j["model"], j["pool"], j["status"]): (j["count"], j["gpuSeconds"])
            for j in data["jobs"]}  # fmt: skip


async def test_statistics_move_by_what_the_test_made(
    site: tuple[str, Settings], sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    url, own = site
    admin = await create_admin(sessions, settings)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        before = await stats(client, admin)
        user = await create_account(sessions, settings, credits=1000)
        ids = [
            (await gql(client, SUBMIT, {"input": JOB}, key=user.api_key))["data"]["generateImage"][
                "id"
            ]
            for _ in range(3)
        ]
        # One runs and completes, as a worker runs it (the service functions it calls).
        async with unit_of_work_without_dispatch(sessions) as uow:
            started = await generations.begin_processing(uow, ids[0])
            assert started is not None
        async with sessions() as session:
            await session.execute(
                update(Generation)
                .where(Generation.id == ids[0])
                .values(started_at=utcnow() - timedelta(seconds=12.5))
            )
            await session.commit()
        async with unit_of_work_without_dispatch(sessions) as uow:
            assert await generations.complete(uow, ids[0], outputs=[], metadata={}) is not None
        async with sessions() as session:
            done = await session.get(Generation, ids[0])
            assert done is not None and done.started_at and done.completed_at
            ran = (done.completed_at - done.started_at).total_seconds()
            model = done.version
            await repository.insert_payment(
                session,
                Payment(checkout_session_id=f"cs_admin_{uuid.uuid4().hex}", account_id=user.id,
                        pack="starter", credits=100, amount=1999, currency="eur",
                        refunded_amount=500),
            )  # fmt: skip
            await session.commit()
        after = await stats(client, admin)

    assert after["accounts"] == before["accounts"] + 1
    assert after["activeAccounts24h"] == before["activeAccounts24h"] + 1
    assert after["activeAccounts30d"] == before["activeAccounts30d"] + 1
    jobs_before, jobs_after = _jobs(before), _jobs(after)
    queued = (model, "default", "queued")
    completed = (model, "default", "completed")
    assert jobs_after[queued][0] == jobs_before.get(queued, (0, 0.0))[0] + 2
    assert jobs_after[completed][0] == jobs_before.get(completed, (0, 0.0))[0] + 1
    assert jobs_after[completed][1] == pytest.approx(
        jobs_before.get(completed, (0, 0.0))[1] + ran, abs=0.01
    )
    assert ran >= 12.5
    assert after["gpuSeconds"] == pytest.approx(before["gpuSeconds"] + ran, abs=0.01)
    # The queue holds the two still queued (nothing takes this module's queue; the
    # completed one was never enqueued by a worker's run... it was: the API enqueued all
    # three, and no worker took any).
    depth = {q["pool"]: q["depth"] for q in after["queues"]}
    depth_before = {q["pool"]: q["depth"] for q in before["queues"]}
    assert depth["default"] == depth_before["default"] + 3
    assert {q["pool"]: q["liveWorkers"] for q in after["queues"]}["default"] == 0

    def eur(data: dict[str, Any], field: str) -> tuple[int, int]:
        rows = {r["currency"]: (r["payments"], r["amount"]) for r in data[field]}
        return rows.get("eur", (0, 0))

    for field in ("revenue", "revenue30d"):
        payments, amount = eur(before, field)
        assert eur(after, field) == (payments + 1, amount + 1499)
    assert own.queue_name  # the module's own queue, which no worker polls


async def test_non_admins_get_forbidden_on_every_admin_field(
    site: tuple[str, Settings], sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """Every field of the admin module (and setAccountPlan), called as a non-admin."""
    url, _ = site
    user = await create_account(sessions, settings, credits=100)
    victim = await create_account(sessions, settings, credits=100)
    convert = NameConverter()
    names = {
        "query": [convert.get_graphql_name(f) for f in AdminQuery.__strawberry_definition__.fields],  # type: ignore[attr-defined]  # strawberry's
        "mutation": [
            convert.get_graphql_name(f)
            for f in AdminMutation.__strawberry_definition__.fields  # type: ignore[attr-defined]
        ]
        + ["setAccountPlan"],
    }
    assert len(names["query"]) >= 4 and len(names["mutation"]) >= 5
    introspection = """{ __schema {
      queryType { fields { name args { name type { kind name ofType { kind name } } } } }
      mutationType { fields { name args { name type { kind name ofType { kind name } } } } }
    } }"""
    literal = {"ID": json.dumps(str(victim.id)), "Int": "1", "String": '"x"', "Boolean": "true"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        schema = (await gql(client, introspection, key=user.api_key))["data"]["__schema"]
        called = 0
        for operation, root in (("query", "queryType"), ("mutation", "mutationType")):
            fields = {f["name"]: f for f in schema[root]["fields"]}
            for name in names[operation]:
                required = [a for a in fields[name]["args"] if a["type"]["kind"] == "NON_NULL"]
                args = ", ".join(
                    f"{a['name']}: {literal[a['type']['ofType']['name']]}" for a in required
                )
                document = f"{operation} {{ {name}{f'({args})' if args else ''} {{ __typename }} }}"
                for key, code in ((user.api_key, "FORBIDDEN"), (None, "UNAUTHENTICATED")):
                    body = await gql(client, document, key=key)
                    assert code_of(body) == code, (document, body)
                    assert body.get("data") is None, (document, body)
                called += 1
    assert called == len(names["query"]) + len(names["mutation"])
    # Nothing happened to anyone.
    cached, summed = await audit(sessions, victim.id)
    assert cached == summed and cached.available == 100
    assert await audit_entries(sessions, victim.id) == []


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLUXGATE_ENVIRONMENT": "test",
        "FLUXGATE_DATABASE_URL": settings.database_url,
        "FLUXGATE_REDIS_URL": settings.redis_url,
        "FLUXGATE_QUEUE_NAME": settings.queue_name,
        "FLUXGATE_SECRET_KEY": settings.secret_key.get_secret_value(),
    }
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_the_cli_administers_and_is_audited(
    site: tuple[str, Settings], sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    url, own = site
    user = await create_account(sessions, settings, credits=10)
    granted = run_cli(own, "admin", "grant", "--account", user.email, "--amount", "90",
                      "--reason", "goodwill")  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    assert json.loads(granted.stdout) == {"applied": True, "available": 100, "reserved": 0}
    short = run_cli(own, "admin", "deduct", "--account", user.email, "--amount", "101",
                    "--reason", "oops")  # fmt: skip
    assert short.returncode == 1 and "101" in short.stderr and "Traceback" not in short.stderr
    found = run_cli(own, "admin", "accounts", "--query", user.email)
    assert [a["id"] for a in json.loads(found.stdout)["items"]] == [str(user.id)]
    plan = run_cli(own, "account", "set-plan", "--account", user.email, "--plan", "starter")
    assert plan.returncode == 0, plan.stderr
    banned = run_cli(own, "admin", "ban", "--account", str(user.id), "--reason", "fraud")
    assert banned.returncode == 0, banned.stderr
    assert json.loads(banned.stdout) == {"banned": str(user.id), "cancelled": []}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        me = await client.post("/graphql", json={"query": "{ me { id } }"}, headers=user.bearer)
        assert code_of(me.json()) == "FORBIDDEN"
        assert (
            run_cli(own, "admin", "unban", "--account", user.email, "--reason", "ok").returncode
            == 0
        )
        me = await client.post("/graphql", json={"query": "{ me { id } }"}, headers=user.bearer)
        assert me.json()["data"]["me"]["id"] == str(user.id)
    log = run_cli(own, "admin", "audit", "--account", user.email)
    lines = [json.loads(line) for line in log.stdout.splitlines()]
    assert [e["action"] for e in lines] == ["unban", "ban", "set_plan", "grant"]
    assert all(e["actor"].startswith("cli:") for e in lines)
    statistics = run_cli(own, "admin", "stats")
    assert json.loads(statistics.stdout)["accounts"] >= 1
    async with sessions() as session:
        entries = await repository.list_entries(session, user.id)
    grants = [e.note for e in entries if e.kind == "grant"]
    assert grants == ["initial credits", "goodwill"]  # the signup grant and the CLI's
