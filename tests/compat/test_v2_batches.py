"""Seed 000's batches (server/compat/v2/batches.py): ``POST /api/batch/generate``,
``POST /api/batch/img2img``, ``GET`` and ``DELETE /api/batch/{batch_id}`` against a real
API, Postgres, Redis and arq worker on the tiny FLUX pipeline: every request example of
the seed's batch sections with only the base URL and key changed, the seed's Python and
JavaScript BatchProcessor run as written, and per endpoint 401, 402, 429, another
account's batch, bad and hostile input in the seed's error shape (nothing charged)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gpu_worker.webhooks import build_webhook_worker
from runtime.settings import ROOT, Settings
from tests.compat.test_v2_account import seed_signature_ok
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, balance, create_account, gql
from tests.gpu_worker.test_webhooks import Receiver

Sessions = async_sessionmaker[AsyncSession]
SEED = ROOT / "tests" / "compat" / "seed000"
ERROR_KEYS = {"error", "details", "code", "request_id"}
FINAL = ("completed", "failed", "cancelled")
SMALL = {"width": 512, "height": 512, "steps": 2}

# The seed's "JSON структура" body of /api/batch/generate, as written.
SEED_JSON: dict[str, Any] = {
    "batch": [
        {"id": "req_001", "prompt": "futuristic city at night",
         "params": {"width": 1024, "height": 1024, "steps": 30, "seed": 42}},
        {"id": "req_002", "prompt": "magical forest with fireflies",
         "params": {"width": 1920, "height": 1080, "smart_upscale": True,
                    "target_width": 3840, "target_height": 2160}},
        {"id": "req_003", "prompt": "underwater ancient ruins",
         "params": {"model": "flux-schnell", "steps": 20}},
    ],
    "parallel": True,
    "priority": "high",
}  # fmt: skip


def key(account: TestAccount) -> dict[str, str]:
    return {"X-API-Key": account.api_key}


def png(width: int = 256, height: int = 256, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.paste(colour, (width // 4, height // 4, width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= ERROR_KEYS, body
    assert body["code"] == code, body
    assert body["request_id"] and body["request_id"] == response.headers["X-Request-Id"]
    assert isinstance(body["details"], str) and body["details"]
    return body


async def untouched(sessions: Sessions, account: TestAccount, credits: int = 1000) -> None:
    held = await balance(sessions, account.id)
    assert (held.available, held.reserved) == (credits, 0)


async def wait_batch(
    http: httpx.AsyncClient, account: TestAccount, batch_id: str, timeout: float = 180
) -> dict[str, Any]:
    """Poll the seed's status_url until the batch is no longer processing."""
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get(f"/api/batch/{batch_id}", headers=key(account))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] != "processing":
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


@pytest.fixture
async def http(api: str, worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=120) as client:
        yield client


@pytest.fixture
async def other(sessions: Sessions, settings: Settings) -> TestAccount:
    return await create_account(sessions, settings, credits=1000)


# --- POST /api/batch/generate, GET /api/batch/{id} -------------------------------------


async def test_batch_runs_to_the_end_with_client_ids(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    body = {
        "batch": [
            {"id": "req_001", "prompt": "a red lighthouse", "params": {**SMALL, "seed": 42}},
            {"prompt": "a green field", **SMALL},  # the flat form of the seed's clients
            {"id": "req_003", "prompt": "a blue sea",
             "params": {**SMALL, "model": "flux-schnell"}},
        ],
        "parallel": True,
        "priority": "high",
    }  # fmt: skip
    response = await http.post("/api/batch/generate", json=body, headers=key(account))
    assert response.status_code == 201, response.text
    created = response.json()
    batch_id = created["batch_id"]
    assert re.fullmatch(r"batch_[0-9a-f]{24}", batch_id), batch_id
    assert created["status"] == "processing"
    assert created["total"] == created["total_jobs"] == 3
    assert created["queued"] + created["processing"] + created["completed"] == 3
    assert created["failed"] == 0
    assert created["status_url"] == f"/api/batch/{batch_id}"
    assert created["websocket_channel"] == batch_id
    assert "estimated_time" in created
    jobs = created["jobs"]
    assert [j["position"] for j in jobs] == [1, 2, 3]
    assert [j["id"] for j in jobs] == ["req_001", jobs[1]["image_id"], "req_003"]
    assert len({j["image_id"] for j in jobs}) == 3
    assert (await balance(sessions, account.id)).reserved > 0

    done = await wait_batch(http, account, batch_id)
    assert done["status"] == "completed", done
    assert (done["completed"], done["failed"], done["queued"], done["processing"]) == (3, 0, 0, 0)
    assert done["progress"] == 100
    assert done["started_at"] and done["completed_at"] and done["total_time"] >= 0
    assert [j["id"] for j in done["jobs"]] == [j["id"] for j in jobs]
    assert [j["image_id"] for j in done["jobs"]] == [j["image_id"] for j in jobs]
    assert done["jobs"][0]["seed"] == 42
    for job in done["jobs"]:
        assert job["status"] == "completed" and job["url"], job
        assert job["generation_time"] is not None and job["error_message"] is None
        picture = await http.get(job["url"])
        assert picture.status_code == 200
        assert Image.open(io.BytesIO(picture.content)).size == (512, 512)
    held = await balance(sessions, account.id)
    assert held.reserved == 0 and held.available < 1000
    # Each item is an ordinary job of the account: /api/images/{image_id} shows it.
    image = await http.get(f"/api/images/{jobs[0]['image_id']}", headers=key(account))
    assert image.status_code == 200 and image.json()["status"] == "completed"


async def test_idempotency_key_returns_the_first_batch(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    body = {"batch": [{"id": "a", "prompt": "one dot", **SMALL}]}
    headers = {**key(account), "Idempotency-Key": "batch-retry-1"}
    first = await http.post("/api/batch/generate", json=body, headers=headers)
    assert first.status_code == 201, first.text
    spent = (await balance(sessions, account.id)).available
    again = await http.post("/api/batch/generate", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert (await balance(sessions, account.id)).available == spent  # charged once
    other_body = {"batch": [{"id": "a", "prompt": "two dots", **SMALL}]}
    reused = await http.post("/api/batch/generate", json=other_body, headers=headers)
    assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED")
    # The items' ids are part of the request: other ids under the same key are refused
    # too (they once made a second batch), and charge nothing.
    for ids in (["b"], [None]):
        renamed = {"batch": [{"prompt": "one dot", **SMALL, **({"id": i} if i else {})}
                             for i in ids]}  # fmt: skip
        refused = await http.post("/api/batch/generate", json=renamed, headers=headers)
        assert_error(refused, 422, "IDEMPOTENCY_KEY_REUSED")
    assert (await balance(sessions, account.id)).available == spent
    # GraphQL shows the key as the batch's id and the item's id as its clientId.
    shown = await gql(
        http, "query B($id: ID!) { batch(id: $id) { clientBatchId items { clientId } } }",
        {"id": first.json()["batch_id"].removeprefix("batch_")}, key=account.api_key,
    )  # fmt: skip
    assert shown["data"]["batch"] == {
        "clientBatchId": "batch-retry-1",
        "items": [{"clientId": "a"}],
    }
    await wait_batch(http, account, first.json()["batch_id"])
    # Without client ids the key alone is the batch's identity: other items under the
    # same key, another count included, are refused and charge nothing.
    plain = {**key(account), "Idempotency-Key": "batch-retry-2"}
    one = {"batch": [{"prompt": "one dot", **SMALL}]}
    created = await http.post("/api/batch/generate", json=one, headers=plain)
    assert created.status_code == 201, created.text
    spent = (await balance(sessions, account.id)).available
    two = {"batch": [{"prompt": "one dot", **SMALL}, {"prompt": "two dots", **SMALL}]}
    assert_error(
        await http.post("/api/batch/generate", json=two, headers=plain), 422,
        "IDEMPOTENCY_KEY_REUSED",
    )  # fmt: skip
    assert (await balance(sessions, account.id)).available == spent
    await wait_batch(http, account, created.json()["batch_id"])


DELIVERIES = """query D($id: ID) { webhookDeliveries(generationId: $id) { event status } }"""


async def test_webhook_url_gets_seed_000s_batch_complete_body(
    settings: Settings, sessions: Sessions, database: str
) -> None:
    """The batch's webhook_url gets exactly one POST, seed 000's body: ``batch.complete``,
    ``data`` shaped like GET's answer (the client ids as ``jobs[].id``), signed as a
    single job's seed-000 webhook is."""
    hooked = own_queue(
        settings, "v2-batch-hooks", webhook_allowed_hosts="127.0.0.1",
        webhook_retry_schedule="0.3,0.3", webhook_timeout_s=2.0,
    )  # fmt: skip
    account = await create_account(sessions, hooked, credits=1000)
    receiver = Receiver()
    try:
        with (
            ThreadedServer.of(hooked) as server,
            ThreadedWorker(hooked),
            ThreadedWorker(hooked, build=build_webhook_worker),
        ):
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                body = {
                    "batch": [
                        {"id": "req_001", "prompt": "a red lighthouse",
                         "params": {**SMALL, "seed": 42}},
                        {"prompt": "a green field", **SMALL},
                        {"id": "req_003", "prompt": "a blue sea", **SMALL},
                    ],
                    "webhook_url": receiver.url,
                }  # fmt: skip
                response = await http.post("/api/batch/generate", json=body, headers=key(account))
                assert response.status_code == 201, response.text
                batch_id = response.json()["batch_id"]
                image_ids = [j["image_id"] for j in response.json()["jobs"]]
                done = await wait_batch(http, account, batch_id)
                deadline = time.monotonic() + 60
                while True:
                    found = await gql(http, DELIVERIES, {"id": image_ids[0]}, key=account.api_key)
                    rows = found["data"]["webhookDeliveries"]
                    if rows and all(r["status"] == "delivered" for r in rows):
                        break
                    assert time.monotonic() < deadline, rows
                    await asyncio.sleep(0.1)
                assert [r["event"] for r in rows] == ["batch.completed"]  # ours, as for jobs
                me = await gql(http, "{ me { webhookSecret } }", key=account.api_key)
                secret = me["data"]["me"]["webhookSecret"]
                await asyncio.sleep(0.5)  # a second POST would have come by now
    finally:
        receiver.close()
    assert done["status"] == "completed", done
    [request] = receiver.requests
    sent = json.loads(request["body"])
    assert list(sent) == ["event", "timestamp", "data", "signature"]
    assert sent["event"] == "batch.complete" and sent["timestamp"].endswith("Z")
    assert seed_signature_ok(request["body"], secret)
    headers = {k.lower(): v for k, v in request["headers"].items()}
    whole = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-doitong-signature"], whole)
    assert not seed_signature_ok(request["body"].replace(b"req_001", b"req_999"), secret)
    data = sent["data"]
    assert data["batch_id"] == batch_id
    assert [j["id"] for j in data["jobs"]] == ["req_001", image_ids[1], "req_003"]
    assert [j["image_id"] for j in data["jobs"]] == image_ids
    # GET's answer, field for field.
    for name in ("status", "total", "queued", "processing", "completed", "failed", "cancelled",
                 "started_at", "completed_at", "total_time"):  # fmt: skip
        assert data[name] == done[name], name
    for job, shown in zip(data["jobs"], done["jobs"], strict=True):
        for name in ("id", "image_id", "status", "position", "url", "seed", "generation_time",
                     "error_message"):  # fmt: skip
            assert job[name] == shown[name], (name, job, shown)
        assert job["url"], job
    assert data["jobs"][0]["seed"] == 42


async def test_seed_json_structure_is_refused_whole_when_one_item_cannot_run(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    """The seed's "JSON структура" (and its curl, the first two items) as written: item
    req_002 asks for 1920x1080 smart-upscaled to 3840x2160, which
    this deployment cannot render (no upscaler, 2048 px at most). A batch is accepted
    whole or not at all: 400 naming the item, nothing charged."""
    refused = await http.post("/api/batch/generate", json=SEED_JSON, headers=key(account))
    body = assert_error(refused, 400, "BAD_USER_INPUT")
    assert body["field"].startswith("batch.1."), body
    curl = {**SEED_JSON, "batch": SEED_JSON["batch"][:2]}
    assert_error(
        await http.post("/api/batch/generate", json=curl, headers=key(account)),
        400,
        "BAD_USER_INPUT",
    )
    await untouched(sessions, account)
    # Its other two items, as written, are accepted (then cancelled: 1024 px, 30 steps).
    runnable = {**SEED_JSON, "batch": [SEED_JSON["batch"][0], SEED_JSON["batch"][2]]}
    response = await http.post("/api/batch/generate", json=runnable, headers=key(account))
    assert response.status_code == 201, response.text
    created = response.json()
    assert [j["id"] for j in created["jobs"]] == ["req_001", "req_003"]
    cancelled = await http.delete(f"/api/batch/{created['batch_id']}", headers=key(account))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["batch_id"] == created["batch_id"]


async def test_seed_curl_status_and_cancel_of_an_unknown_batch(
    http: httpx.AsyncClient, account: TestAccount
) -> None:
    """The seed's GET and DELETE curl lines as written (its batch id is not ours)."""
    for method in ("GET", "DELETE"):
        response = await http.request(
            method, "/api/batch/batch_1736856789_a5f3b2c1", headers=key(account)
        )
        assert_error(response, 404, "NOT_FOUND")


# --- DELETE /api/batch/{id} ----------------------------------------------------------


async def test_cancel_releases_the_unfinished_items(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    slow = {"width": 1024, "height": 1024, "steps": 100}
    body = {"batch": [{"id": f"s{n}", "prompt": f"slow {n}", "params": slow} for n in range(3)]}
    response = await http.post("/api/batch/generate", json=body, headers=key(account))
    assert response.status_code == 201, response.text
    batch_id = response.json()["batch_id"]
    cancelled = await http.delete(f"/api/batch/{batch_id}", headers=key(account))
    assert cancelled.status_code == 200, cancelled.text
    answer = cancelled.json()
    assert set(answer) == {"batch_id", "cancelled", "completed", "message"}
    assert answer["batch_id"] == batch_id
    assert answer["message"] == "Batch processing cancelled"
    assert answer["cancelled"] + answer["completed"] == 3 and answer["cancelled"] >= 1
    status = await wait_batch(http, account, batch_id)
    assert status["status"] in {"cancelled", "completed"}
    assert status["cancelled"] == answer["cancelled"]
    assert all(j["status"] in {"failed", "completed"} for j in status["jobs"])
    held = await balance(sessions, account.id)
    assert held.reserved == 0
    # The cancelled items cost nothing: only completed ones were charged.
    if answer["completed"] == 0:
        assert held.available == 1000


# --- POST /api/batch/img2img ----------------------------------------------------------


async def test_batch_img2img_one_job_per_prompt(
    http: httpx.AsyncClient, account: TestAccount
) -> None:
    files = [
        ("images[]", ("image1.png", png(), "image/png")),
        ("images[]", ("image2.png", png(colour=(40, 200, 40)), "image/png")),
    ]
    data = {
        "prompts[]": ["convert to cyberpunk style", "make it look vintage"],
        "shared_params": json.dumps({"strength": 0.75, "steps": 2, "smart_upscale": False,
                                     "width": 512, "height": 512}),
    }  # fmt: skip
    response = await http.post("/api/batch/img2img", files=files, data=data, headers=key(account))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["total"] == 2 and created["websocket_channel"] == created["batch_id"]
    done = await wait_batch(http, account, created["batch_id"])
    assert done["status"] == "completed", done
    for job in done["jobs"]:
        image = await http.get(f"/api/images/{job['image_id']}", headers=key(account))
        assert image.json()["kind"] == "image_to_image"


async def test_seed_img2img_curl_examples(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    """The seed's three curl lines as written (files made here), then cancelled: they ask
    for 30-40 steps at up to 2048 px, slow on the CPU's tiny pipeline."""
    three = [("images[]", (f"image{n}.jpg", png(), "image/jpeg")) for n in (1, 2, 3)]
    first = await http.post(
        "/api/batch/img2img",
        headers=key(account),
        files=three,
        data={
            "prompts[]": [
                "convert to cyberpunk style", "make it look vintage", "transform to anime style"
            ],
            "shared_params": '{"strength": 0.75, "steps": 30, "smart_upscale": true, '
            '"target_width": 2048, "target_height": 2048}',
        },
    )  # fmt: skip
    assert first.status_code == 201, first.text
    assert first.json()["total"] == 3
    portrait = [("images[]", ("portrait.jpg", png(), "image/jpeg"))]
    second = await http.post(
        "/api/batch/img2img",
        headers=key(account),
        files=portrait,
        data={
            "prompts[]": ["oil painting style", "watercolor style", "pencil sketch style"],
            "shared_params": '{"strength": 0.8, "steps": 40}',
        },
    )
    assert second.status_code == 201, second.text
    assert second.json()["total"] == 3
    for created in (first.json(), second.json()):
        cancelled = await http.delete(f"/api/batch/{created['batch_id']}", headers=key(account))
        assert cancelled.status_code == 200, cancelled.text
    # The third names LoRAs this deployment does not have: refused, nothing more charged.
    before = await balance(sessions, account.id)
    photos = [("images[]", (f"photo{n}.jpg", png(), "image/jpeg")) for n in (1, 2)]
    third = await http.post(
        "/api/batch/img2img",
        headers=key(account),
        files=photos,
        data={
            "prompts[]": ["anime character with detailed eyes", "manga style illustration"],
            "shared_params": '{"lora_models": ["anime-style-v2", "detailed-eyes-v1"], '
            '"strength": 0.7}',
        },
    )
    # The catalogue is the deployment's: another test may have added the seed's LoRAs.
    catalogue = (await http.get("/api/loras", headers=key(account))).json()
    names = {entry["id"] for entry in catalogue["loras"]}
    if {"anime-style-v2", "detailed-eyes-v1"} <= names:
        assert third.status_code == 201, third.text
        await wait_batch(http, account, third.json()["batch_id"])
        return
    assert third.status_code in {400, 404}, third.text
    assert third.json()["code"] in {"BAD_USER_INPUT", "NOT_FOUND"}
    after = await balance(sessions, account.id)
    assert after.available + after.reserved == before.available + before.reserved


async def test_batch_img2img_bad_input(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    one = [("images[]", ("a.png", png(), "image/png"))]
    two = [*one, ("images[]", ("b.png", png(), "image/png"))]
    cases: list[tuple[Any, dict[str, Any], str]] = [
        (two, {"prompts[]": ["a", "b", "c"]}, "prompts[]"),
        (one, {"prompts[]": "a", "shared_params": "[1, 2]"}, "shared_params"),
        (one, {"prompts[]": "a", "shared_params": "{not json"}, "shared_params"),
        (one, {"prompts[]": "a", "shared_params": "[" * 10000}, "shared_params"),
        (
            one,
            {"prompts[]": "a", "shared_params": '{"seed": 1' + "0" * 5000 + "}"},
            "shared_params",
        ),
        (one, {"prompts[]": "a", "shared_params": '{"strength": 7}'}, "batch.0.strength"),
        (one, {}, "prompts[]"),
    ]
    for files, data, field in cases:
        response = await http.post(
            "/api/batch/img2img", files=files, data=data, headers=key(account)
        )
        body = assert_error(response, 400, "BAD_USER_INPUT")
        assert body["field"] == field, body
    not_an_image = [("images[]", ("a.png", b"not an image", "image/png"))]
    response = await http.post(
        "/api/batch/img2img", files=not_an_image, data={"prompts[]": "a"}, headers=key(account)
    )
    assert_error(response, 400, "BAD_USER_INPUT")
    await untouched(sessions, account)


# --- the seed's clients as written -----------------------------------------------------


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, cwd=SEED, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_seed_python_batch_processor_as_written(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    env = {**os.environ, "FLUX_BASE_URL": api, "FLUX_API_KEY": account.api_key}
    out = await asyncio.to_thread(_run, [sys.executable, "batch_processor.py"], env)
    assert "✅ Batch created: batch_" in out, out
    assert "📊 Total jobs: 5" in out
    assert "✅ Batch completed!" in out, out
    assert out.count("🖼️ Image ") == 5 and "/files/" in out


async def test_seed_javascript_batch_processor_as_written(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    env = {**os.environ, "FLUX_BASE_URL": api, "FLUX_API_KEY": account.api_key}
    out = await asyncio.to_thread(_run, ["node", "batch_processor.mjs"], env)
    assert "✅ Batch created: batch_" in out, out
    assert "📊 Total jobs: 5" in out
    assert "✅ Batch completed!" in out, out
    assert out.count("🖼️ Image ") == 5


# --- refusals --------------------------------------------------------------------------


async def test_no_key_or_a_bad_key_is_401(http: httpx.AsyncClient) -> None:
    body = {"batch": [{"prompt": "x", **SMALL}]}
    for headers in ({}, {"X-API-Key": "fg_not_a_key"}):
        assert_error(
            await http.post("/api/batch/generate", json=body, headers=headers),
            401,
            "UNAUTHENTICATED",
        )
        assert_error(await http.get("/api/batch/batch_x", headers=headers), 401, "UNAUTHENTICATED")
        assert_error(
            await http.delete("/api/batch/batch_x", headers=headers), 401, "UNAUTHENTICATED"
        )


async def test_insufficient_credits_is_402_and_nothing_is_reserved(
    http: httpx.AsyncClient, sessions: Sessions, settings: Settings
) -> None:
    poor = await create_account(sessions, settings, credits=1)
    body = {"batch": [{"prompt": f"p{n}", **SMALL} for n in range(3)]}
    response = await http.post("/api/batch/generate", json=body, headers=key(poor))
    assert_error(response, 402, "INSUFFICIENT_CREDITS")
    await untouched(sessions, poor, credits=1)


async def test_rate_limit_is_429(
    http: httpx.AsyncClient, sessions: Sessions, settings: Settings
) -> None:
    limited = await create_account(sessions, settings, plan="free")
    for _ in range(10):
        response = await http.get("/api/batch/batch_0", headers=key(limited))
        assert response.status_code == 404, response.text
    body = {"batch": [{"prompt": "x", **SMALL}]}
    refused = await http.post("/api/batch/generate", json=body, headers=key(limited))
    error = assert_error(refused, 429, "RATE_LIMITED")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert error["retry_after"] == int(refused.headers["Retry-After"])
    await untouched(sessions, limited)


async def test_another_accounts_batch_is_404(
    http: httpx.AsyncClient, account: TestAccount, other: TestAccount
) -> None:
    body = {"batch": [{"id": "mine", "prompt": "private", **SMALL}]}
    response = await http.post("/api/batch/generate", json=body, headers=key(account))
    assert response.status_code == 201, response.text
    batch_id = response.json()["batch_id"]
    for method in ("GET", "DELETE"):
        refused = await http.request(method, f"/api/batch/{batch_id}", headers=key(other))
        error = assert_error(refused, 404, "NOT_FOUND")
        assert "private" not in refused.text and "mine" not in json.dumps(error)
    done = await wait_batch(http, account, batch_id)
    assert done["status"] == "completed"  # the other account's DELETE did nothing


async def test_bad_input_is_400_in_the_seed_shape_and_costs_nothing(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    cases: list[tuple[Any, str]] = [
        ({}, "batch"),
        ({"batch": []}, "batch"),
        ({"batch": [{"prompt": f"p{n}", **SMALL} for n in range(11)]}, "batch"),
        ({"batch": [{"params": SMALL}]}, "batch.0.prompt"),
        ({"batch": [{"prompt": "ok", **SMALL}, {"prompt": "x", "width": 100}]}, "batch.1.width"),
        ({"batch": [{"prompt": "x", "params": {"steps": 1000}}]}, "batch.0.steps"),
        ({"batch": [{"prompt": "x", "params": {"model": "dall-e"}}]}, "batch.0.model"),
        ({"batch": [{"prompt": "x", "unknown_field": 1}]}, "batch.0.unknown_field"),
        ({"batch": [{"prompt": "x", **SMALL}], "priority": "urgent"}, "priority"),
        ({"batch": [{"prompt": "x", **SMALL}], "surprise": True}, "surprise"),
        ({"batch": [{"prompt": "x", **SMALL, "webhook_url": "https://example.com/h"}]},
         "batch.0.webhook_url"),
        ({"batch": [{"prompt": "x", **SMALL}], "webhook_url": "http://127.0.0.1:1/h"},
         "webhook_url"),
        ({"batch": [{"id": "x" * 65, "prompt": "x"}]}, "batch.0.id"),
        ({"batch": [{"id": "a\u0000", "prompt": "x", **SMALL}]}, "batch.0.id"),
    ]  # fmt: skip
    for payload, field in cases:
        response = await http.post("/api/batch/generate", json=payload, headers=key(account))
        body = assert_error(response, 400, "BAD_USER_INPUT")
        assert body["field"] == field, (payload, body)
    await untouched(sessions, account)
    # Each item's id has room of its own (they no longer share clientBatchId's 255
    # characters): ten of 64 are accepted, and answered back.
    ids = [str(n).rjust(64, "y") for n in range(10)]
    body = {"batch": [{"id": i, "prompt": "x", **SMALL} for i in ids]}
    accepted = await http.post("/api/batch/generate", json=body, headers=key(account))
    assert accepted.status_code == 201, accepted.text
    assert [j["id"] for j in accepted.json()["jobs"]] == ids
    cancelled = await http.delete(f"/api/batch/{accepted.json()['batch_id']}", headers=key(account))
    assert cancelled.status_code == 200, cancelled.text


async def test_hostile_input_is_4xx(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    headers = {**key(account), "Content-Type": "application/json"}
    deep: Any = {"prompt": "x"}
    for _ in range(200):
        deep = {"params": deep}
    bodies = [
        b"[1, 2, 3]",
        b'"batch"',
        b"null",
        b"{not json",
        json.dumps({"batch": [{"prompt": "nul\x00byte", **SMALL}]}).encode(),
        json.dumps({"batch": [{"prompt": "x", "params": {"seed": 10**40}}]}).encode(),
        json.dumps({"batch": [{"prompt": "x", "params": {"width": 10**12}}]}).encode(),
        json.dumps({"batch": [{"prompt": "x", "params": "not an object"}]}).encode(),
        json.dumps({"batch": [deep]}).encode(),
        json.dumps({"batch": "x" * 100_000}).encode(),
    ]
    for raw in bodies:
        response = await http.post("/api/batch/generate", content=raw, headers=headers)
        assert 400 <= response.status_code < 500, (raw[:60], response.text)
        assert set(response.json()) >= ERROR_KEYS
    for path in ("/api/batch/%00", "/api/batch/" + "9" * 5000, "/api/batch/batch_%27--"):
        response = await http.get(path, headers=key(account))
        assert 400 <= response.status_code < 500, (path, response.text)
    wrong_type = await http.post(
        "/api/batch/generate", content=b"batch=1", headers={**key(account),
        "Content-Type": "application/x-www-form-urlencoded"}
    )  # fmt: skip
    assert wrong_type.status_code == 415
    await untouched(sessions, account)


async def test_graphql_create_batch_images_must_be_files(
    http: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    """createBatch's ``images`` (added for /api/batch/img2img) refuses a JSON value where
    a multipart file part belongs, and an imageUpload index with no such file."""
    mutation = """mutation B($input: CreateBatchInput!, $images: [Upload!]) {
      createBatch(input: $input, images: $images) { id } }"""
    item = {"kind": "image_to_image",
            "input": {"service": "flux-dev", "prompt": "x", "imageUpload": 0}}  # fmt: skip
    for images, field in ((["not a file"], "images.0"), (None, "items.0.imageUpload")):
        body = await gql(
            http, mutation, {"input": {"items": [item]}, "images": images}, key=account.api_key
        )
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
        assert body["errors"][0]["extensions"]["field"] == field, body
    await untouched(sessions, account)


async def test_seed_python_sdk_batch_generate(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    """The seed's Python SDK (tests/compat/seed000/flux_api_sdk.py, as written)."""
    from tests.compat.seed000.flux_api_sdk import FluxAPISDK

    sdk = FluxAPISDK(account.api_key, base_url=api)
    created = await asyncio.to_thread(
        sdk.batch_generate,
        ["a red kite", "a blue kite"],
        {"width": 512, "height": 512, "steps": 2},
        "https://your-webhook.com/batch-complete",
    )
    assert created["total_jobs"] == 2 and created["batch_id"].startswith("batch_")
    done = await wait_batch(http, account, created["batch_id"])
    assert done["status"] == "completed" and all(j["url"] for j in done["jobs"])
    with pytest.raises(Exception, match="API Error 400"):
        await asyncio.to_thread(sdk.batch_generate, ["x"], {"width": 100})


JS_SDK_BATCH = """
(async () => {
  const sdk = new FluxAPISDK(KEY, BASE);
  const batch = await sdk.batchGenerate(
    ['a red kite', 'a blue kite'], { width: 512, height: 512, steps: 2 });
  console.log(JSON.stringify(batch));
})().catch((error) => { console.error(error.message); process.exit(1); });
"""


async def test_seed_javascript_sdk_batch_generate(
    http: httpx.AsyncClient, api: str, account: TestAccount
) -> None:
    """The seed's JavaScript SDK class as written (tests/compat/seed000/flux-api-sdk.js),
    its batchGenerate driven from a script of ours."""
    sdk = (SEED / "flux-api-sdk.js").read_text().split("// Example usage")[0]
    script = sdk + JS_SDK_BATCH.replace("KEY", repr(account.api_key)).replace("BASE", repr(api))
    done = await asyncio.to_thread(
        subprocess.run, ["node", "-e", script], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["total_jobs"] == 2 and created["status"] == "processing"
    finished = await wait_batch(http, account, created["batch_id"])
    assert finished["status"] == "completed"
