"""Seed 003's ``POST /flux/images`` end to end: the seed's curl example (its placeholders
refused, then with real values), the JSON answer and the NDJSON stream, edit with an
image served by a local host, the callback, a client leaving mid-stream, and the
refusals (401, 402, 429, another account's Idempotency-Key, bad and hostile input),
against a real API, a real worker running the tiny FLUX pipelines and a webhook worker."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.errors import BadUserInput
from billing.models import Generation
from billing.plans import default_plan_book
from billing.service import accounts
from billing.service.webhooks import FINAL_EVENTS, flux_images_payload, validate_filter
from billing.service.webhooks import _wants as wants
from gpu_worker.webhooks import build_webhook_worker
from runtime.queue import Keys
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import (
    TestAccount,
    balance,
    create_account,
    gql,
    subscribed,
    wait_for_final,
)
from tests.gpu_worker.test_webhooks import Receiver
from tests.server.kinds_support import PNG, ImageHost, assert_charged, assert_untouched

START = 1000
NDJSON = "application/x-ndjson"
# The seed's curl example, as written.
SEED_EXAMPLE: dict[str, Any] = {
    "action": "generate",
    "prompt": "a white siamese cat",
    "size": "1024x1024",
    "count": 123,
    "model": "generate",
    "image_url": "<string>",
    "callback_url": "<string>",
}
JOB = """query J($id: ID!) { generation(id: $id) {
  id kind status creditCost service version width height seed prompt
  outputs { url width height } } }"""
CANCEL = "mutation C($id: ID!) { cancelGeneration(id: $id) { status } }"
LATEST = "query L { generations(first: 1) { items { id status } } }"
CREATE_JOB = """mutation C($kind: String!, $input: JSON!) {
  createJob(kind: $kind, input: $input) { id } }"""


@pytest.fixture(scope="module")
def flux_settings(settings: Settings) -> Settings:
    # 127.0.0.1 allowed: the image host and the callback receiver of this module.
    return own_queue(
        settings, "flux-images", webhook_allowed_hosts="127.0.0.1", webhook_retry_schedule="0.3"
    )


@pytest.fixture(scope="module")
def flux_api(flux_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(flux_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def flux_worker(flux_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(flux_settings) as w:
        yield w


@pytest.fixture
async def http(flux_api: str, flux_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=flux_api, timeout=120) as client:
        yield client


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], flux_settings: Settings
) -> TestAccount:
    return await create_account(sessions, flux_settings, credits=START)


@pytest.fixture(scope="module")
def host() -> Iterator[ImageHost]:
    h = ImageHost()
    yield h
    h.close()


async def post(
    http: httpx.AsyncClient,
    account: TestAccount | None,
    body: Any,
    **headers: str,
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **headers}
    if account is not None:
        sent["Authorization"] = f"Bearer {account.api_key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post("/flux/images", content=content, headers=sent)


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The seed-style error body, checked."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False, body
    assert body["error"]["code"] == code, body
    assert body["trace_id"] == response.headers["X-Request-Id"]
    return body


async def job_of(http: httpx.AsyncClient, account: TestAccount, job_id: str) -> dict[str, Any]:
    body = await gql(http, JOB, {"id": job_id}, key=account.api_key)
    assert "errors" not in body, body
    job: dict[str, Any] = body["data"]["generation"]
    return job


async def image_at(http: httpx.AsyncClient, url: str) -> Image.Image:
    response = await http.get(url)
    assert response.status_code == 200
    assert response.content.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(response.content))


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_seed_example_placeholders_are_refused_by_name(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The seed's curl example as written: "model": "generate" and "count": 123 are the
    docs' placeholders, refused naming the field and what is accepted; nothing charged."""
    body = refused(await post(http, customer, SEED_EXAMPLE), 400, "bad_user_input")
    assert body["error"]["field"] == "count"
    assert "4" in body["error"]["message"]
    body = refused(await post(http, customer, {**SEED_EXAMPLE, "count": 1}), 400, "bad_user_input")
    assert body["error"]["field"] == "model"
    for served in ("flux-dev", "flux-pro-1.1", "flux-kontext-pro"):
        assert served in body["error"]["message"]
    # A served model: the "<string>" callback_url is refused as the URL it is not.
    example = {**SEED_EXAMPLE, "count": 1, "model": "flux-pro-1.1"}
    body = refused(await post(http, customer, example), 400, "bad_user_input")
    assert body["error"]["field"] == "callback_url", body
    await assert_untouched(sessions, customer, START)


async def test_seed_example_with_real_values_answers_the_images(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    flux_settings: Settings,
    host: ImageHost,
) -> None:
    """The seed's example with valid values (image_url has no effect on generate): the
    seed's envelope once the job is done, its images at their URLs, the callback sent to
    callback_url, charged exactly once."""
    receiver = Receiver()
    try:
        with ThreadedWorker(flux_settings, build=build_webhook_worker):
            example = {
                **SEED_EXAMPLE, "count": 2, "model": "flux-pro-1.1",
                "image_url": host.serve(PNG), "callback_url": receiver.url,
            }  # fmt: skip
            response = await post(http, customer, example)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/json")
            deadline = time.monotonic() + 30
            while not receiver.requests:
                assert time.monotonic() < deadline, "no callback"
                await asyncio.sleep(0.05)
    finally:
        receiver.close()
    body = response.json()
    assert set(body) == {"success", "data", "task_id", "trace_id"}
    assert body["success"] is True
    assert len(body["data"]) == 2
    job = await job_of(http, customer, body["task_id"])
    assert (job["kind"], job["status"], job["service"], job["version"]) == (
        "text_to_image", "completed", "flux-pro", "flux-pro-1.1",
    )  # fmt: skip
    assert [item["image_url"] for item in body["data"]] == [o["url"] for o in job["outputs"]]
    for item in body["data"]:
        assert set(item) == {"seed", "prompt", "image_url"}
        assert item["prompt"] == "a white siamese cat"
        assert item["seed"] == str(job["seed"])
        assert (await image_at(http, item["image_url"])).size == (1024, 1024)
    # The callback: the seed's envelope, once (the job's final event), signed.
    [delivery] = receiver.requests
    assert json.loads(delivery["body"]) == {
        "success": True, "task_id": body["task_id"], "data": body["data"],
    }  # fmt: skip
    assert delivery["headers"]["X-Doitong-Signature"].startswith("sha256=")
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_ndjson_streams_each_state_then_the_result(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    request = {"action": "generate", "prompt": "a lighthouse", "size": "256x256",
               "model": "flux-dev"}  # fmt: skip
    response = await post(http, customer, request, Accept=NDJSON)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(NDJSON)
    events = lines(response.text)
    *progress, final = events
    assert final["type"] == "result" and final["success"] is True, final
    task_id = final["task_id"]
    assert all(e["task_id"] == task_id for e in events)
    types = [e["type"] for e in progress]
    assert "started" in types, types
    assert types.count("started") == 1
    assert set(types) <= {"queued", "started", "progress"}
    # In order: queued lines before started, progress after it.
    assert types == sorted(types, key=["queued", "started", "progress"].index)
    for e in progress:
        if e["type"] == "queued":
            assert e["status"] == "queued" and isinstance(e["queue_position"], int)
        else:
            assert e["status"] == "processing"
            assert 0 <= e["step"] <= e["total_steps"] and 0 <= e["progress"] <= 100
    [image] = final["data"]
    assert (await image_at(http, image["image_url"])).size == (256, 256)
    job = await job_of(http, customer, task_id)
    assert job["status"] == "completed"
    await assert_charged(sessions, customer, START, job["creditCost"])


@pytest.mark.parametrize("model", ["flux-dev", "flux-pro"])
async def test_generate_models(http: httpx.AsyncClient, customer: TestAccount, model: str) -> None:
    request = {"action": "generate", "prompt": "a fox", "size": "320x256", "model": model}
    response = await post(http, customer, request)
    assert response.status_code == 200, response.text
    job = await job_of(http, customer, response.json()["task_id"])
    assert (job["service"], job["version"], job["width"], job["height"]) == (
        model, model, 320, 256,
    )  # fmt: skip


async def test_edit_fetches_image_url_and_keeps_its_size(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    host: ImageHost,
) -> None:
    url = host.serve(PNG)
    request = {"action": "edit", "prompt": "make it snow", "model": "flux-kontext-max",
               "image_url": url}  # fmt: skip
    response = await post(http, customer, request)
    assert response.status_code == 200, response.text
    body = response.json()
    [image] = body["data"]
    assert (await image_at(http, image["image_url"])).size == (320, 256)
    assert url.removeprefix(host.base) in host.hits
    job = await job_of(http, customer, body["task_id"])
    assert (job["kind"], job["service"]) == ("edit", "flux-kontext-max")
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_models_not_served_or_not_for_the_action_are_refused(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    host: ImageHost,
) -> None:
    # flux-pro-1.1-ultra is not in this deployment's registry (deploy/models.dev.toml).
    request = {"action": "generate", "prompt": "x", "model": "flux-pro-1.1-ultra"}
    body = refused(await post(http, customer, request), 400, "bad_user_input")
    message = body["error"]["message"]
    assert body["error"]["field"] == "model"
    assert "flux-pro-1.1-ultra is not served" in message
    assert "flux-dev, flux-pro, flux-pro-1.1" in message
    # Kontext edits; the others generate.
    request = {"action": "generate", "prompt": "x", "model": "flux-kontext-pro"}
    body = refused(await post(http, customer, request), 400, "bad_user_input")
    assert body["error"]["field"] == "model"
    assert "flux-dev" in body["error"]["message"]
    request = {"action": "edit", "prompt": "x", "model": "flux-dev", "image_url": host.serve(PNG)}
    body = refused(await post(http, customer, request), 400, "bad_user_input")
    assert "flux-kontext-pro or flux-kontext-max" in body["error"]["message"]
    # An edit needs its image.
    body = refused(
        await post(http, customer, {"action": "edit", "prompt": "x"}), 400, "bad_user_input"
    )
    assert body["error"]["field"] == "image_url", body
    await assert_untouched(sessions, customer, START)


async def test_a_client_leaving_mid_stream_leaves_the_job_to_finish_charged_once(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    flux_settings: Settings,
) -> None:
    # A job ahead on the one worker, so the streamed one is still queued when we leave.
    ahead = await gql(
        http, CREATE_JOB,
        {"kind": "text_to_image",
         "input": {"prompt": "ahead", "service": "flux-dev", "width": 1024, "height": 1024}},
        key=customer.api_key,
    )  # fmt: skip
    ahead_id = ahead["data"]["createJob"]["id"]
    request = {"action": "generate", "prompt": "left behind", "size": "256x256"}
    async with http.stream(
        "POST",
        "/flux/images",
        json=request,
        headers={"Authorization": f"Bearer {customer.api_key}", "Accept": NDJSON},
    ) as response:
        assert response.status_code == 200
        first = json.loads(await anext(response.aiter_lines()))
        assert first["type"] in ("queued", "started", "progress"), first
    task_id = first["task_id"]
    # The stream's subscription slot is given back.
    key = f"{Keys(flux_settings.queue_name).events}:subscribers:{customer.id}"
    client = redis.asyncio.Redis.from_url(flux_settings.redis_url)
    try:
        deadline = time.monotonic() + 30
        while await client.zcard(key):
            assert time.monotonic() < deadline, "the subscription slot was kept"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    job = await wait_for_final(http, customer.api_key, task_id)
    assert job["status"] == "completed"
    other = await wait_for_final(http, customer.api_key, ahead_id)
    await assert_charged(sessions, customer, START, job["creditCost"] + other["creditCost"])


async def test_a_quiet_stream_repeats_its_last_line_until_the_job_moves(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, database: str
) -> None:
    # An API whose queue no worker takes: the job waits, and the stream says so again
    # every stream_keepalive_s (here 50 ms) instead of going silent.
    quiet = own_queue(settings, "flux-keepalive", stream_keepalive_s=0.05)
    account = await create_account(sessions, quiet, credits=START)
    request = {"action": "generate", "prompt": "waiting", "size": "256x256"}
    with ThreadedServer.of(quiet) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            headers = {"Authorization": f"Bearer {account.api_key}", "Accept": NDJSON}
            async with client.stream(
                "POST", "/flux/images", json=request, headers=headers
            ) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                seen = [json.loads(await anext(lines)) for _ in range(4)]
                assert {line["type"] for line in seen} == {"queued"}, seen
                assert len({json.dumps(line, sort_keys=True) for line in seen}) == 1, seen
                task_id = seen[0]["task_id"]
                cancelled = await gql(client, CANCEL, {"id": task_id}, key=account.api_key)
                assert cancelled["data"]["cancelGeneration"]["status"] == "cancelled"
                rest = [json.loads(line) async for line in lines]
    # After the cancel: perhaps the waiting line once more, then the result, and the end.
    assert rest and rest[-1]["type"] == "result", rest
    assert rest[-1]["success"] is False and rest[-1]["task_id"] == task_id
    assert all(line["type"] == "queued" for line in rest[:-1]), rest
    # Cancelled before it ran: every credit released.
    now = await balance(sessions, account.id)
    assert (now.available, now.reserved) == (START, 0)


async def test_idempotency_key_repeats_one_job_and_is_per_account(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    flux_settings: Settings,
) -> None:
    request = {"action": "generate", "prompt": "once", "size": "256x256"}
    first = await post(http, customer, request, **{"Idempotency-Key": "flux-once"})
    again = await post(http, customer, request, **{"Idempotency-Key": "flux-once"})
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json()["task_id"] == again.json()["task_id"]
    assert first.json()["data"] == again.json()["data"]
    job = await job_of(http, customer, first.json()["task_id"])
    await assert_charged(sessions, customer, START, job["creditCost"])
    # Another account's same key: its own job, never the first account's images.
    other = await create_account(sessions, flux_settings, credits=START)
    theirs = await post(http, other, request, **{"Idempotency-Key": "flux-once"})
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["task_id"] != first.json()["task_id"]
    assert {i["image_url"] for i in theirs.json()["data"]}.isdisjoint(
        i["image_url"] for i in first.json()["data"]
    )
    # And the first account's job is not the other's to read.
    response = await gql(http, JOB, {"id": first.json()["task_id"]}, key=other.api_key)
    assert response["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_unauthenticated(http: httpx.AsyncClient) -> None:
    request = {"action": "generate", "prompt": "x"}
    body = refused(await post(http, None, request), 401, "unauthenticated")
    assert "task_id" not in body
    refused(
        await post(http, None, request, Authorization="Bearer fg_not_a_key"),
        401,
        "unauthenticated",
    )


async def test_insufficient_credits(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], flux_settings: Settings
) -> None:
    poor = await create_account(sessions, flux_settings, credits=5)
    request = {"action": "generate", "prompt": "x", "size": "256x256"}
    refused(await post(http, poor, request), 402, "insufficient_credits")
    # Streamed or not, a refusal before any job is accepted is a plain JSON error.
    response = await post(http, poor, request, Accept=NDJSON)
    assert response.headers["content-type"].startswith("application/json")
    refused(response, 402, "insufficient_credits")
    await assert_untouched(sessions, poor, 5)


async def test_rate_limited(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], flux_settings: Settings
) -> None:
    account = await create_account(sessions, flux_settings, credits=START, plan="free")
    async with sessions() as s:
        await accounts.set_plan(
            s, account.id, plan=None, overrides={"requests_per_minute": 1},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    request = {"action": "generate", "prompt": "x", "size": "256x256"}
    first = await post(http, account, request)
    assert first.status_code == 200, first.text
    response = await post(http, account, request)
    refused(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0
    # Only the first job was charged. (Reading it by GraphQL would count against the
    # limit too: the ledger is read directly.)
    now = await balance(sessions, account.id)
    assert now.reserved == 0 and 0 < START - now.available <= 50


async def test_a_request_that_cannot_follow_its_job_cancels_it(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], flux_settings: Settings
) -> None:
    """The account has no subscription to spare (max_subscriptions 0): the request cannot
    wait for its job, so the job is cancelled and its credits released."""
    account = await create_account(sessions, flux_settings, credits=START)
    async with sessions() as s:
        await accounts.set_plan(
            s, account.id, plan=None, overrides={"max_subscriptions": 0},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    request = {"action": "generate", "prompt": "x", "size": "256x256"}
    body = refused(await post(http, account, request), 429, "rate_limited")
    assert "cancelled" in body["error"]["message"]
    job = await job_of(http, account, body["task_id"])
    assert job["status"] == "cancelled"
    await assert_charged(sessions, account, START, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x"}, "action"),
        ({"action": "upscale", "prompt": "x"}, "action"),
        ({"action": "generate"}, "prompt"),
        ({"action": "generate", "prompt": "x", "size": "big"}, "size"),
        ({"action": "generate", "prompt": "x", "size": "1000x1000"}, "size"),
        ({"action": "generate", "prompt": "x", "size": "99999x99999"}, "size"),
        ({"action": "generate", "prompt": "x", "count": 0}, "count"),
        ({"action": "generate", "prompt": "x", "count": 10**30}, "count"),
        ({"action": "generate", "prompt": "x", "count": "many"}, "count"),
        ({"action": "generate", "prompt": ""}, "prompt"),
        ({"action": "generate", "prompt": "x" * 100_000}, "prompt"),
        ({"action": "generate", "prompt": "x", "callback_url": "ftp://example.com/"}, None),
        ({"action": "edit", "prompt": "x", "image_url": "http://10.0.0.1/a.png"}, "image_url"),
    ],
)
async def test_bad_input_is_refused_by_field_and_charges_nothing(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    body: dict[str, Any],
    field: str | None,
) -> None:
    found = refused(await post(http, customer, body), 400, "bad_user_input")
    if field is not None:
        assert found["error"]["field"] == field, found
    else:
        assert found["error"]["field"] == "callback_url", found
    await assert_untouched(sessions, customer, START)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"action": "generate", "prompt": "a\\u0000b"}',
        b"[1, 2, 3]",
        b'"generate"',
        b"not json",
        b'{"action": "generate", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"action": "generate", "prompt": "x", "count": 1e400}',
    ],
)
async def test_hostile_input_is_a_4xx(
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    raw: bytes,
) -> None:
    response = await post(http, customer, raw)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["success"] is False
    await assert_untouched(sessions, customer, START)


async def test_wrong_media_type(http: httpx.AsyncClient, customer: TestAccount) -> None:
    response = await http.post(
        "/flux/images",
        content=b"action=generate&prompt=x",
        headers={
            "Authorization": f"Bearer {customer.api_key}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    refused(response, 415, "bad_user_input")


async def test_a_job_that_outlasts_the_wait_answers_504_with_its_task_id(
    settings: Settings, database: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """No worker serves this queue: the request answers once sync_wait_s has passed,
    naming the job, which stays queued (cancelled here: its credits released)."""
    lonely = own_queue(settings, "flux-wait", sync_wait_s=0.5)
    account = await create_account(sessions, lonely, credits=START)
    with ThreadedServer.of(lonely) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            request = {"action": "generate", "prompt": "x", "size": "256x256"}
            body = refused(await post(client, account, request), 504, "timeout")
            task_id = body["task_id"]
            assert task_id in body["error"]["message"]
            job = await job_of(client, account, task_id)
            assert job["status"] == "queued"
            done = await gql(client, CANCEL, {"id": task_id}, key=account.api_key)
            assert done["data"]["cancelGeneration"]["status"] == "cancelled"
    await assert_charged(sessions, account, START, 0)


async def test_a_job_cancelled_while_the_request_waits_answers_409(
    settings: Settings, database: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The waiting request hears the cancellation (an event) at once: 409 naming the job,
    nothing charged."""
    lonely = own_queue(settings, "flux-cancel", sync_wait_s=60, webhook_allowed_hosts="127.0.0.1")
    account = await create_account(sessions, lonely, credits=START)
    receiver = Receiver()
    with (
        ThreadedServer.of(lonely) as server,
        ThreadedWorker(lonely, build=build_webhook_worker),
    ):
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            request = {"action": "generate", "prompt": "x", "size": "256x256",
                       "callback_url": receiver.url}  # fmt: skip
            waiting = asyncio.create_task(post(client, account, request))
            deadline = time.monotonic() + 30
            while True:  # the job, once accepted
                page = await gql(client, LATEST, key=account.api_key)
                if page["data"]["generations"]["items"]:
                    break
                assert time.monotonic() < deadline, "the job was not accepted"
                await asyncio.sleep(0.05)
            [job] = page["data"]["generations"]["items"]
            await subscribed(lonely, account)  # the request follows it
            done = await gql(client, CANCEL, {"id": job["id"]}, key=account.api_key)
            assert done["data"]["cancelGeneration"]["status"] == "cancelled"
            body = refused(await asyncio.wait_for(waiting, 30), 409, "cancelled")
            assert body["task_id"] == job["id"]
            deadline = time.monotonic() + 30
            while not receiver.requests:
                assert time.monotonic() < deadline, "no callback"
                await asyncio.sleep(0.05)
    receiver.close()
    [delivery] = receiver.requests
    callback = json.loads(delivery["body"])
    assert (callback["success"], callback["task_id"], callback["error"]["code"]) == (
        False, job["id"], "cancelled",
    )  # fmt: skip
    await assert_charged(sessions, account, START, 0)


def test_the_callback_event_is_a_vocabulary_of_its_own() -> None:
    """``flux_images.callback`` (what the surface registers for callback_url) is taken
    alone, wants only the final events, and their bodies are the seed's envelope."""
    assert validate_filter(["flux_images.callback"], "f") == ["flux_images.callback"]
    with pytest.raises(BadUserInput):
        validate_filter(["flux_images.callback", "completed"], "f")
    job = Generation(
        id="job", account_id=uuid.uuid4(), kind="text_to_image", provider="flux-dev",
        version="flux-dev", quality="standard", prompt="p", width=256, height=256, steps=4,
        guidance=3.5, seed=7, credit_cost=1, webhook_url="https://example.com/hook",
        webhook_events=["flux_images.callback"], error="boom",
    )  # fmt: skip
    assert [e for e in ("started", "progress.25", *FINAL_EVENTS) if wants(job, e)] == list(
        FINAL_EVENTS
    )
    assert flux_images_payload(job, "completed", ["u1", "u2"]) == {
        "success": True,
        "task_id": "job",
        "data": [
            {"seed": "7", "prompt": "p", "image_url": "u1"},
            {"seed": "7", "prompt": "p", "image_url": "u2"},
        ],
    }
    assert flux_images_payload(job, "failed", []) == {
        "success": False,
        "task_id": "job",
        "error": {"code": "failed", "message": "The job failed: boom"},
    }
