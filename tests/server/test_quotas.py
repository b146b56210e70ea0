"""Presets, retention and storage quota, daily quotas per kind, max resolution, usage and
the low-credit alert (issue 13), end to end: the real API (uvicorn), GPU worker (tiny
FLUX), webhook worker, Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Asset, Generation, WebhookEvent
from billing.plans import PlanBook, default_plan_book
from billing.presets import default_presets
from billing.service import accounts, ledger
from billing.service.quotas import MB
from billing.service.webhooks import signature
from gpu_worker.webhooks import build_webhook_worker
from runtime.settings import ROOT, Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, balance, create_account, gql, wait_for_final
from tests.gpu_worker.test_webhooks import Receiver
from tests.server.kinds_support import PNG, refusal, rest_submit

CREATE = """mutation C($input: JSON!, $kind: String!) {
  createJob(kind: $kind, input: $input) { id prompt style medium filter creditCost } }"""
SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
SMALL = {"service": "flux-dev", "prompt": "a lighthouse", "width": 256, "height": 256}
USAGE = """query U($days: Int!) { usage(days: $days) {
  days { day jobs credits } kinds { kind jobs today dailyQuota remaining }
  creditsSpent creditsAvailable jobsToday jobsPerDay jobsRemaining resetAt maxMegapixels
  storage { usedBytes usedMb quotaMb percentUsed retentionDays }
  lowCreditThreshold lowCredit } }"""
JOB = """query G($id: ID!) { generation(id: $id) {
  status prompt style medium filter outputs { id url expiresAt } } }"""


@pytest.fixture(scope="module")
def quota_settings(settings: Settings) -> Settings:
    # A fast sweeper (it deletes expired images too) and webhooks to 127.0.0.1.
    return own_queue(
        settings, "quota", webhook_allowed_hosts="127.0.0.1", webhook_retry_schedule="0.3,0.3",
        sweep_interval_s=0.3,
    )  # fmt: skip


@pytest.fixture(scope="module")
def quota_api(quota_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(quota_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def quota_worker(quota_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(quota_settings) as w:
        yield w


@pytest.fixture
async def http(quota_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=quota_api, timeout=60) as client:
        yield client


async def customer(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    credits: int = 1000,
    **overrides: Any,
) -> TestAccount:
    """An enterprise account (no request limit to poll against) with quota overrides."""
    account = await create_account(sessions, settings, credits=credits)
    if overrides:
        async with sessions() as s:
            await accounts.set_plan(
                s, account.id, plan=None, overrides=overrides, plans=default_plan_book()
            )
            await s.commit()
    return account


async def job_rows(sessions: async_sessionmaker[AsyncSession], account: TestAccount) -> int:
    async with sessions() as s:
        count = await s.scalar(
            select(func.count())
            .select_from(Generation)
            .where(
                Generation.account_id == account.id  # type: ignore[arg-type]  # SQLModel column
            )
        )
    return int(count or 0)


def one_error(body: dict[str, Any], code: str) -> dict[str, Any]:
    assert body.get("data") in (None, {}) or all(v is None for v in body["data"].values()), body
    [error] = body["errors"]
    assert error["extensions"]["code"] == code, error
    found: dict[str, Any] = error
    return found


# --- presets -------------------------------------------------------------------------


async def test_presets_are_listed_applied_to_the_prompt_and_frozen(
    http: httpx.AsyncClient,
    quota_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    account = await customer(sessions, quota_settings)
    listed = (await gql(http, "{ presets { id category name template } }", key=account.api_key))[
        "data"
    ]["presets"]
    by_category: dict[str, list[str]] = {}
    for p in listed:
        by_category.setdefault(p["category"], []).append(p["id"])
    # Seed 002's ids, exactly.
    assert by_category["style"] == [
        "3d_render", "abstract", "anime", "art_deco", "cartoon", "digital_art",
        "illustration", "origami", "pixel_art", "photography", "pop_art", "retro", "sketch",
        "vaporwave",
    ]  # fmt: skip
    assert by_category["medium"] == [
        "acrylic", "canvas", "chalk", "charcoal", "crayon", "glass", "ink", "pastel",
        "pencil", "spray_paint", "watercolor",
    ]  # fmt: skip
    assert by_category["filter"] == ["grayscale", "sepia", "invert"]
    only = await gql(http, '{ presets(category: "filter") { id } }', key=account.api_key)
    assert [p["id"] for p in only["data"]["presets"]] == ["grayscale", "sepia", "invert"]

    chosen = {"style": "anime", "medium": "watercolor", "filter": "sepia"}
    body = await gql(
        http, CREATE, {"kind": "text_to_image", "input": {**SMALL, **chosen}}, key=account.api_key
    )
    job = body["data"]["createJob"]
    expected, _ = default_presets().apply("a lighthouse", **chosen)
    assert expected.startswith("anime illustration of a lighthouse")
    assert expected.endswith("watercolor painting, soft washes, sepia toned")
    assert (job["prompt"], job["style"], job["medium"], job["filter"]) == (
        expected, "anime", "watercolor", "sepia",
    )  # fmt: skip
    async with sessions() as s:
        row = await s.get(Generation, job["id"])
    assert row is not None
    # What the worker runs, and what the library filters on.
    assert row.params["prompt"] == expected
    assert (row.params["style"], row.params["medium"], row.params["filter"]) == (
        "anime", "watercolor", "sepia",
    )  # fmt: skip

    # image_to_image on REST (multipart): a style alone.
    response = await rest_submit(
        http, account, "image_to_image", {"prompt": "a boat", "style": "pixel_art"}, {"image": PNG}
    )
    assert response.status_code == 202, response.text
    async with sessions() as s:
        i2i = await s.get(Generation, response.json()["id"])
    assert i2i is not None
    assert i2i.params["prompt"] == "pixel art of a boat, 16-bit, limited palette, crisp pixels"
    assert (i2i.params["style"], i2i.params["medium"], i2i.params["filter"]) == (
        "pixel_art", None, None,
    )  # fmt: skip
    # Seed 001's mutations and the REST shim take them too.
    legacy = await gql(
        http,
        """mutation L($i: ImageGenerationInput!, $g: GenerateInput!) {
          a: generateImage(input: $i) { id prompt style }
          b: generate(input: $g) { id prompt medium } }""",
        {
            "i": {**SMALL, "style": "sketch"},
            "g": {"provider": "flux-dev", "input": {"text": "a fox"},
                  "options": {"width": 256, "height": 256, "medium": "chalk"}},
        },
        key=account.api_key,
    )  # fmt: skip
    assert legacy["data"]["a"] == {
        "id": legacy["data"]["a"]["id"], "style": "sketch",
        "prompt": "rough sketch of a lighthouse, graphite lines, hand-drawn",
    }  # fmt: skip
    assert legacy["data"]["b"]["prompt"] == "a fox, chalk drawing on a blackboard"
    rest = await http.post(
        "/v1/text_to_image", json={**SMALL, "filter": "grayscale"},
        headers={"X-API-Key": account.api_key, "Idempotency-Key": "same-key"},
    )  # fmt: skip
    assert rest.status_code in (200, 202), rest.text
    assert rest.json()["data"]["generateImage"]["prompt"] == (
        "a lighthouse, black and white, monochrome"
    )
    # The presets are part of the request: the same key with another filter is refused.
    again = await http.post(
        "/v1/text_to_image", json={**SMALL, "filter": "sepia"},
        headers={"X-API-Key": account.api_key, "Idempotency-Key": "same-key"},
    )  # fmt: skip
    assert refusal(again, 422, "IDEMPOTENCY_KEY_REUSED")
    bad = await http.post(
        "/v1/text_to_image", json={**SMALL, "style": "nope"}, headers={"X-API-Key": account.api_key}
    )
    assert refusal(bad, 400, "BAD_USER_INPUT")["extensions"]["field"] == "style"
    # No preset: the prompt as sent, the ids null.
    plain = await gql(http, CREATE, {"kind": "text_to_image", "input": SMALL}, key=account.api_key)
    assert plain["data"]["createJob"]["prompt"] == "a lighthouse"
    assert plain["data"]["createJob"]["style"] is None


async def test_an_unknown_preset_is_refused_naming_its_field_and_costs_nothing(
    http: httpx.AsyncClient,
    quota_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    account = await customer(sessions, quota_settings)
    for field, value in (("style", "baroque"), ("medium", "oil"), ("filter", "blur")):
        body = await gql(
            http,
            CREATE,
            {"kind": "text_to_image", "input": {**SMALL, field: value}},
            key=account.api_key,
        )
        error = one_error(body, "BAD_USER_INPUT")
        assert error["extensions"]["field"] == field
        assert value in error["message"]
    response = await rest_submit(
        http, account, "image_to_image", {"prompt": "x", "medium": "clay"}, {"image": PNG}
    )
    assert refusal(response, 400, "BAD_USER_INPUT")["extensions"]["field"] == "medium"
    assert (await balance(sessions, account.id)).available == 1000
    assert await job_rows(sessions, account) == 0


# --- retention -----------------------------------------------------------------------


async def storage_bytes(sessions: async_sessionmaker[AsyncSession], account: TestAccount) -> int:
    async with sessions() as s:
        got = await s.scalar(
            text("SELECT storage_bytes FROM accounts WHERE id = :id"), {"id": account.id}
        )
    return int(got)


async def test_an_expired_image_is_swept_from_storage_and_its_url_404s(
    http: httpx.AsyncClient,
    quota_settings: Settings,
    quota_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    account = await customer(sessions, quota_settings, retention_days=3)
    keep = await customer(sessions, quota_settings)  # no retention: kept forever
    ids = []
    for who in (account, keep):
        body = await gql(http, SUBMIT, {"input": SMALL}, key=who.api_key)
        ids.append(body["data"]["generateImage"]["id"])
    for who, job_id in zip((account, keep), ids, strict=True):
        assert (await wait_for_final(http, who.api_key, job_id))["status"] == "completed"
    job = (await gql(http, JOB, {"id": ids[0]}, key=account.api_key))["data"]["generation"]
    [output] = job["outputs"]
    expires = datetime.fromisoformat(output["expiresAt"].replace("Z", "+00:00"))
    async with sessions() as s:
        asset = await s.get(Asset, uuid.UUID(output["id"]))
        kept_asset = (
            await s.execute(select(Asset).where(Asset.generation_id == ids[1]))
        ).scalar_one()
    assert asset is not None and asset.expires_at is not None
    # created + the plan's retention (3 days here), to the second.
    assert abs(asset.expires_at - (asset.created_at + timedelta(days=3))) < timedelta(seconds=1)
    assert abs(expires - asset.expires_at) < timedelta(seconds=1)
    assert kept_asset.expires_at is None
    kept_job = (await gql(http, JOB, {"id": ids[1]}, key=keep.api_key))["data"]["generation"]
    assert kept_job["outputs"][0]["expiresAt"] is None

    path = Path(quota_settings.storage_dir) / asset.key
    assert path.exists()
    assert (await http.get(output["url"])).status_code == 200
    # The running total: the output's bytes (the trigger on assets keeps it).
    assert await storage_bytes(sessions, account) == asset.bytes > 0

    # Its retention ends (set in the past rather than waited for): the worker's sweeper
    # deletes the file and the row, and the account's storage goes back to 0.
    async with sessions() as s:
        await s.execute(
            update(Asset)
            .where(Asset.id == asset.id)  # type: ignore[arg-type]  # SQLModel column
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await s.commit()
    deadline = time.monotonic() + 30
    while True:
        async with sessions() as s:
            gone = await s.get(Asset, asset.id) is None
        if gone:
            break
        assert time.monotonic() < deadline, "the sweeper did not delete the expired asset"
        await asyncio.sleep(0.1)
    assert not path.exists()
    if asset.thumbnail_key is not None:  # the library's thumbnail goes with it
        assert not (Path(quota_settings.storage_dir) / asset.thumbnail_key).exists()
    assert (await http.get(output["url"])).status_code == 404
    assert await storage_bytes(sessions, account) == 0
    # The other account's image, with no retention, is untouched.
    assert (Path(quota_settings.storage_dir) / kept_asset.key).exists()
    async with sessions() as s:
        assert await s.get(Asset, kept_asset.id) is not None
    usage = (await gql(http, USAGE, {"days": 1}, key=account.api_key))["data"]["usage"]
    assert usage["storage"]["usedBytes"] == 0
    assert usage["storage"]["retentionDays"] == 3


# --- storage quota -------------------------------------------------------------------


async def store_bytes(
    sessions: async_sessionmaker[AsyncSession], account: TestAccount, n: int
) -> None:
    """An image of ``n`` bytes in the account's storage (as a stored input would be)."""
    async with sessions() as s:
        s.add(
            Asset(
                account_id=account.id, role="image", key=f"inputs/{uuid.uuid4().hex}.png",
                mime="image/png", width=256, height=256, bytes=n,
            )
        )  # fmt: skip
        await s.commit()


async def test_over_the_storage_quota_a_submit_is_refused_with_the_numbers(
    http: httpx.AsyncClient,
    quota_settings: Settings,
    quota_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    account = await customer(sessions, quota_settings, storage_quota_mb=2)
    await store_bytes(sessions, account, MB)
    # Under the quota: accepted (and run, so its output counts too).
    body = await gql(http, SUBMIT, {"input": SMALL}, key=account.api_key)
    first = body["data"]["generateImage"]["id"]
    assert (await wait_for_final(http, account.api_key, first))["status"] == "completed"
    charged = 1000 - (await balance(sessions, account.id)).available
    assert charged > 0
    output_bytes = await storage_bytes(sessions, account) - MB
    assert output_bytes > 0
    await store_bytes(sessions, account, 3 * MB // 2)  # 2.5 MB and the output: over
    used = round((5 * MB // 2 + output_bytes) / MB, 2)
    error = one_error(
        await gql(http, SUBMIT, {"input": SMALL}, key=account.api_key), "QUOTA_EXCEEDED"
    )
    assert error["extensions"] == {
        "code": "QUOTA_EXCEEDED", "limit": "storage", "used": used, "quota": 2,
    }  # fmt: skip
    assert f"{used} of 2 MB" in error["message"]
    # Every kind, every surface: REST answers 403, as seed 000 does for a spent quota.
    response = await rest_submit(http, account, "image_to_image", {"prompt": "x"}, {"image": PNG})
    assert refusal(response, 403, "QUOTA_EXCEEDED")["extensions"]["used"] == used
    response = await http.post(
        "/v1/text_to_image", json=SMALL, headers={"X-API-Key": account.api_key}
    )
    assert refusal(response, 403, "QUOTA_EXCEEDED")["extensions"]["limit"] == "storage"
    # Nothing charged, no job.
    now = await balance(sessions, account.id)
    assert (now.available, await job_rows(sessions, account)) == (1000 - charged, 1)
    usage = (await gql(http, USAGE, {"days": 7}, key=account.api_key))["data"]["usage"]
    total = 5 * MB // 2 + output_bytes
    assert usage["storage"] == {
        "usedBytes": total, "usedMb": used, "quotaMb": 2,
        "percentUsed": round(100 * total / (2 * MB), 1), "retentionDays": None,
    }  # fmt: skip


# --- daily quotas and resolution -----------------------------------------------------


async def test_a_daily_quota_per_kind_is_enforced_and_shown_in_usage(
    http: httpx.AsyncClient,
    quota_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    account = await customer(
        sessions, quota_settings, daily={"text_to_image": 2, "image_to_image": 5}
    )
    for _ in range(2):
        assert (await gql(http, SUBMIT, {"input": SMALL}, key=account.api_key))["data"][
            "generateImage"
        ]
    spent = 1000 - (await balance(sessions, account.id)).available
    error = one_error(
        await gql(http, SUBMIT, {"input": SMALL}, key=account.api_key), "QUOTA_EXCEEDED"
    )
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    reset = f"{tomorrow.isoformat()}T00:00:00Z"
    assert error["extensions"] == {
        "code": "QUOTA_EXCEEDED", "limit": "daily", "used": 2, "quota": 2,
        "kind": "text_to_image", "resetAt": reset,
    }  # fmt: skip
    body = await gql(http, CREATE, {"kind": "text_to_image", "input": SMALL}, key=account.api_key)
    assert one_error(body, "QUOTA_EXCEEDED")["extensions"]["kind"] == "text_to_image"
    # Another kind has its own quota.
    response = await rest_submit(http, account, "image_to_image", {"prompt": "x"}, {"image": PNG})
    assert response.status_code == 202, response.text
    assert (await balance(sessions, account.id)).available < 1000 - spent
    assert await job_rows(sessions, account) == 3

    usage = (await gql(http, USAGE, {"days": 3}, key=account.api_key))["data"]["usage"]
    kinds = {k["kind"]: k for k in usage["kinds"]}
    assert kinds["text_to_image"] == {
        "kind": "text_to_image", "jobs": 2, "today": 2, "dailyQuota": 2, "remaining": 0,
    }  # fmt: skip
    assert kinds["image_to_image"]["remaining"] == 4
    assert usage["resetAt"] == reset
    assert usage["jobsToday"] == 3 and usage["jobsPerDay"] is None
    assert [d["jobs"] for d in usage["days"]] == [0, 0, 3]
    assert usage["days"][-1]["day"] == datetime.now(UTC).date().isoformat()
    # Bad input costs nothing either.
    bad = await gql(http, USAGE, {"days": 0}, key=account.api_key)
    assert one_error(bad, "BAD_USER_INPUT")["extensions"]["field"] == "days"


async def test_the_plans_largest_image_is_enforced(
    http: httpx.AsyncClient,
    quota_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # The plans as published: free allows 1024x1024, starter and pro 2048x2048.
    book = PlanBook.load()
    assert 1024 * 1024 / 1e6 <= (book.plans["free"].max_megapixels or 0) < 1024 * 1040 / 1e6
    assert (book.plans["pro"].max_megapixels or 0) >= 2048 * 2048 / 1e6
    account = await customer(sessions, quota_settings, max_megapixels=0.3)
    ok = await gql(
        http, SUBMIT, {"input": {**SMALL, "width": 512, "height": 512}}, key=account.api_key
    )
    assert ok["data"]["generateImage"]["id"]
    spent = 1000 - (await balance(sessions, account.id)).available
    big = {**SMALL, "width": 768, "height": 512}
    error = one_error(
        await gql(http, SUBMIT, {"input": big}, key=account.api_key), "QUOTA_EXCEEDED"
    )
    assert error["extensions"] == {
        "code": "QUOTA_EXCEEDED", "limit": "resolution", "used": 0.393, "quota": 0.3,
    }  # fmt: skip
    response = await rest_submit(
        http, account, "image_to_image", {"prompt": "x", "width": 768, "height": 512},
        {"image": PNG},
    )  # fmt: skip
    assert refusal(response, 403, "QUOTA_EXCEEDED")["extensions"]["limit"] == "resolution"
    assert (await balance(sessions, account.id)).available == 1000 - spent
    assert await job_rows(sessions, account) == 1
    me = await gql(http, "{ me { limits { maxMegapixels daily { kind perDay } } } }",
                   key=account.api_key)  # fmt: skip
    assert me["data"]["me"]["limits"]["maxMegapixels"] == 0.3


# --- low-credit alert ----------------------------------------------------------------


async def low_events(sessions: async_sessionmaker[AsyncSession], account: TestAccount) -> int:
    async with sessions() as s:
        count = await s.scalar(
            select(func.count())
            .select_from(WebhookEvent)
            .where(
                WebhookEvent.account_id == account.id,  # type: ignore[arg-type]  # SQLModel column
                WebhookEvent.event == "credits.low",  # type: ignore[arg-type]
            )
        )
    return int(count or 0)


async def test_credits_low_is_sent_once_per_crossing(
    http: httpx.AsyncClient,
    quota_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    receiver = Receiver()
    try:
        with ThreadedWorker(quota_settings, build=build_webhook_worker):
            account = await customer(sessions, quota_settings, credits=100)
            cost_body = await gql(
                http, "query P($i: ImageGenerationInput!) { price(input: $i) { credits } }",
                {"i": SMALL}, key=account.api_key,
            )  # fmt: skip
            cost = cost_body["data"]["price"]["credits"]
            threshold = 100 - 2 * cost  # the 3rd job crosses it
            set_it = """mutation T($t: Int, $u: String) {
              setLowCreditThreshold(threshold: $t, webhookUrl: $u) {
                threshold webhookUrl creditsAvailable lowCredit } }"""
            bad = await gql(http, set_it, {"t": 0, "u": receiver.url}, key=account.api_key)
            assert one_error(bad, "BAD_USER_INPUT")["extensions"]["field"] == "threshold"
            bad = await gql(http, set_it, {"t": 5, "u": "ftp://x"}, key=account.api_key)
            assert one_error(bad, "BAD_USER_INPUT")["extensions"]["field"] == "webhookUrl"
            body = await gql(http, set_it, {"t": threshold, "u": receiver.url}, key=account.api_key)
            assert body["data"]["setLowCreditThreshold"] == {
                "threshold": threshold, "webhookUrl": receiver.url, "creditsAvailable": 100,
                "lowCredit": False,
            }  # fmt: skip

            async def submit() -> None:
                got = await gql(http, SUBMIT, {"input": SMALL}, key=account.api_key)
                assert got["data"]["generateImage"]["id"], got

            await submit()  # 100 → 100 - cost
            await submit()  # → threshold: not below it
            assert await low_events(sessions, account) == 0
            await submit()  # → below: the crossing
            assert await low_events(sessions, account) == 1
            await submit()  # still below: no second alert
            assert await low_events(sessions, account) == 1
            usage = (await gql(http, USAGE, {"days": 1}, key=account.api_key))["data"]["usage"]
            assert (usage["lowCredit"], usage["lowCreditThreshold"]) == (True, threshold)

            # A purchase brings it back to the threshold (re-armed); the next debit
            # crosses again.
            async with sessions() as s:
                await ledger.grant(s, account.id, 2 * cost, reference=uuid.uuid4().hex, note="t")
                await s.commit()
            await submit()
            assert await low_events(sessions, account) == 2

            deadline = time.monotonic() + 30
            while len([r for r in receiver.requests if b"credits.low" in r["body"]]) < 2:
                assert time.monotonic() < deadline, receiver.requests
                await asyncio.sleep(0.05)
            sent = [r for r in receiver.requests if b"credits.low" in r["body"]]
            first, second = (json.loads(r["body"]) for r in sent)
            assert first["event"] == second["event"] == "credits.low"
            assert (first["threshold"], first["creditsAvailable"]) == (threshold, threshold - cost)
            assert (second["threshold"], second["creditsAvailable"]) == (
                threshold,
                threshold - cost,
            )
            assert first["accountId"] == str(account.id)
            assert first["generationId"] != second["generationId"]
            async with sessions() as s:
                secret = (
                    await s.execute(
                        text("SELECT webhook_secret FROM accounts WHERE id = :id"),
                        {"id": account.id},
                    )
                ).scalar_one()
            for r in sent:
                assert r["headers"]["X-Doitong-Signature"] == signature(secret, r["body"])
            # Turned off: no more alerts.
            off = await gql(http, set_it, {"t": None}, key=account.api_key)
            assert off["data"]["setLowCreditThreshold"]["threshold"] is None
    finally:
        receiver.close()


# --- the limit overrides mechanism: CLI and setAccountPlan ---------------------------


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


async def test_quota_overrides_through_the_cli_and_set_account_plan(
    http: httpx.AsyncClient,
    quota_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    user = await customer(sessions, quota_settings)
    done = run_cli(
        quota_settings, "account", "set-plan", "--account", user.email, "--plan", "free",
        "--storage-quota-mb", "50", "--max-megapixels", "2.5", "--retention-days", "unlimited",
        "--daily", "upscale=1", "--daily", "vectorize=unlimited",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    limits = json.loads(done.stdout)["limits"]
    assert (limits["storage_quota_mb"], limits["max_megapixels"], limits["retention_days"]) == (
        50, 2.5, None,
    )  # fmt: skip
    # The plan's other kinds stay; vectorize's quota is lifted.
    assert limits["daily"] == {"image_to_image": 5, "upscale": 1}
    again = run_cli(
        quota_settings, "account", "set-plan", "--account", user.email, "--daily", "edit=4"
    )
    assert json.loads(again.stdout)["limits"]["daily"] == {
        "image_to_image": 5, "upscale": 1, "edit": 4,
    }  # fmt: skip
    bad = run_cli(quota_settings, "account", "set-plan", "--account", user.email, "--daily", "x")
    assert bad.returncode != 0

    admin = await create_account(sessions, quota_settings)
    async with sessions() as s:
        await s.execute(
            text("UPDATE accounts SET is_admin = true WHERE id = :id"), {"id": admin.id}
        )
        await s.commit()
    body = await gql(
        http,
        """mutation P($id: ID!) { setAccountPlan(accountId: $id, plan: "pro", overrides: {
             storageQuotaMb: 7, maxMegapixels: null,
             daily: [{kind: "image_to_image", perDay: 9}, {kind: "upscale", perDay: null}]}) {
           plan limits { storageQuotaMb maxMegapixels retentionDays daily { kind perDay } } } }""",
        {"id": str(user.id)},
        key=admin.api_key,
    )
    assert body["data"]["setAccountPlan"] == {
        "plan": "pro",
        "limits": {
            "storageQuotaMb": 7, "maxMegapixels": None, "retentionDays": 90,
            "daily": [{"kind": "image_to_image", "perDay": 9}],
        },
    }  # fmt: skip
    usage = (await gql(http, USAGE, {"days": 1}, key=user.api_key))["data"]["usage"]
    assert usage["storage"]["quotaMb"] == 7
    assert {k["kind"]: k["dailyQuota"] for k in usage["kinds"]} == {"image_to_image": 9}
