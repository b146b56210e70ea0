# ruff: noqa: RUF002, RUF003  (the seed's Russian section names)
"""Seed 000's REST v2, generation part (server/compat/v2/jobs.py): every request example
of ``/api/generate``, ``/api/img2img``, ``/api/upscale``, ``/api/get``, ``/api/images`` and
``/api/loras`` with only the base URL and key changed, against a real API, Postgres,
Redis and arq worker on the tiny FLUX pipeline; the seed's Python SDK as written; and per
endpoint 401, 402, 429, a foreign id, bad and hostile input in the seed's error shape."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Account
from gpu_worker.tiny import build_tiny_loras
from runtime.settings import ROOT, Settings
from tests.conftest import ThreadedWorker
from tests.factories import TestAccount, balance, create_account, gql

LORA_DIR = ROOT / "var" / "models" / "loras"
FINAL = ("completed", "failed")
ERROR_KEYS = {"error", "details", "code", "request_id"}


def key(account: TestAccount) -> dict[str, str]:
    return {"X-API-Key": account.api_key}


def png(width: int = 320, height: int = 256) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.paste((200, 40, 40), (width // 4, height // 4, width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= ERROR_KEYS, body
    assert body["code"] == code, body
    assert body["request_id"] and body["request_id"] == response.headers["X-Request-Id"]
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], str) and body["details"]
    return body


async def untouched(
    sessions: async_sessionmaker[AsyncSession], account: TestAccount, credits: int = 1000
) -> None:
    held = await balance(sessions, account.id)
    assert (held.available, held.reserved) == (credits, 0)


async def wait_image(
    client: httpx.AsyncClient, account: TestAccount, image_id: str, timeout: float = 120
) -> dict[str, Any]:
    """Poll /api/images/{id} (the seed's progress_url) until the job is final."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/api/images/{image_id}", headers=key(account))
        assert response.status_code == 200, response.text
        image: dict[str, Any] = response.json()
        if image["status"] in FINAL:
            return image
        assert time.monotonic() < deadline, f"{image_id} still {image['status']}"
        await asyncio.sleep(0.1)


async def download(client: httpx.AsyncClient, url: str) -> Image.Image:
    response = await client.get(url)
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


CANCEL = "mutation C($id: ID!) { cancelGeneration(id: $id) { status } }"


async def cancel(client: httpx.AsyncClient, account: TestAccount, job_id: str) -> None:
    """Stop a large job once its response is checked (the tiny pipeline renders 2048 px
    slowly on CPU): the worker is then free for the next test, the credits released."""
    body = await gql(client, CANCEL, {"id": job_id}, key=account.api_key)
    assert "errors" not in body or body["errors"][0]["extensions"]["code"] == "CONFLICT", body


@pytest.fixture
async def http(api: str, worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=120) as client:
        yield client


@pytest.fixture
async def other(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> TestAccount:
    return await create_account(sessions, settings, credits=1000)


# --- /api/generate -----------------------------------------------------------------------


async def test_generate_small_and_poll(
    http: httpx.AsyncClient, account: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    response = await http.post(
        "/api/generate",
        json={"prompt": "Beautiful sunset", "width": 512, "height": 512, "steps": 4},
        headers=key(account),
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["image_id"] == job["generation_id"] == job["id"]
    assert job["status"] == "queued" and job["url"] is None and job["thumbnail_url"] is None
    assert job["dimensions"] == "512x512"
    assert job["progress_url"] == f"/api/images/{job['image_id']}"
    assert job["websocket_channel"] == f"generation_{job['image_id']}"
    assert job["seed"] >= 0
    done = await wait_image(http, account, job["image_id"])
    assert done["status"] == "completed", done
    image = await download(http, done["url"])
    assert image.size == (512, 512)
    status = (await http.get(f"/api/get/{job['image_id']}", headers=key(account))).json()
    assert status["status"] == "completed" and status["url"] == done["url"]


CREDIT = "query G($id: ID!) { generation(id: $id) { creditCost status width height } }"
PRICE = """query P($input: JSON!) { priceJob(kind: "text_to_image", input: $input) {
  credits } }"""
ADD_LORA = """mutation A($id: ID!, $fields: LoraFieldsInput!) {
  addLora(id: $id, fields: $fields) { id } }"""


async def job_row(client: httpx.AsyncClient, account: TestAccount, job_id: str) -> Any:
    body = await gql(client, CREDIT, {"id": job_id}, key=account.api_key)
    assert "errors" not in body, body
    return body["data"]["generation"]


async def direct_price(
    client: httpx.AsyncClient, account: TestAccount, width: int, height: int
) -> int:
    values = {"service": "flux-dev", "prompt": "p", "width": width, "height": height}
    body = await gql(client, PRICE, {"input": values}, key=account.api_key)
    assert "errors" not in body, body
    return int(body["data"]["priceJob"]["credits"])


@pytest.fixture(scope="module")
async def seed_loras(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, api: str
) -> list[str]:
    """The LoRAs the seed's examples name, added by an admin (tiny LoRA files)."""
    build_tiny_loras(LORA_DIR)
    admin = await create_account(sessions, settings, credits=0)
    async with sessions() as session:
        row = await session.get(Account, admin.id)
        assert row is not None
        row.is_admin = True
        await session.commit()
    rows = {"anime-style-v2": ("tiny-style-a", "style", ["anime", "manga"]),
            "detailed-eyes-v1": ("tiny-style-b", "character", [])}  # fmt: skip
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        for lora_id, (file, category, words) in rows.items():
            fields = {
                "name": lora_id.replace("-", " ").title(), "category": category,
                "baseModel": "flux-dev", "path": str(LORA_DIR / f"{file}.safetensors"),
                "triggerWords": words, "description": f"{lora_id} (tiny test weights)",
            }  # fmt: skip
            body = await gql(client, ADD_LORA, {"id": lora_id, "fields": fields},
                             key=admin.api_key)  # fmt: skip
            assert "errors" not in body, body
    return list(rows)


# The curl examples of /api/generate, bodies verbatim: (body, status, dimensions).
GENERATE_EXAMPLES = [
    # Quick start (also the Python, JavaScript and PHP quick starts' body).
    (
        """{
"prompt": "beautiful sunset over mountains, professional photography",
"width": 512,
"height": 512,
"smart_upscale": true,
"target_width": 2048,
"target_height": 2048,
"model": "flux-dev"
}""",
        201,
        "2048x2048",
    ),
    # Простая генерация
    (
        """{
"prompt": "beautiful sunset over mountains",
"width": 1024,
"height": 1024,
"steps": 30
}""",
        201,
        "1024x1024",
    ),
    # С Smart Upscale
    (
        """{
"prompt": "ultra detailed portrait of a woman",
"width": 512,
"height": 512,
"steps": 30,
"smart_upscale": true,
"target_width": 2048,
"target_height": 2048
}""",
        201,
        "2048x2048",
    ),
    # С LoRA моделью
    (
        """{
"prompt": "anime character, detailed eyes",
"width": 1024,
"height": 1024,
"lora_id": "anime-style-v2",
"steps": 30
}""",
        201,
        "1024x1024",
    ),
    # LoRA section: Использование LoRA при генерации
    (
        """{
"prompt": "anime character with detailed eyes, manga style",
"lora_id": "anime-style-v2",
"width": 1024,
"height": 1024
}""",
        201,
        "1024x1024",
    ),
    # Smart Upscale section: 1024x1024, smart_upscale on by default
    (
        """{
"prompt": "ultra realistic portrait, 8k quality",
"width": 1024,
"height": 1024,
"steps": 30
}""",
        201,
        "1024x1024",
    ),
    # Явное отключение smart upscale
    (
        """{
"prompt": "detailed artwork",
"width": 1024,
"height": 1024,
"smart_upscale": false,
"steps": 30
}""",
        201,
        "1024x1024",
    ),
    # С дополнительными параметрами: off the seed's own grid of 64 (1080), rounded to
    # FLUX's grid of 16.
    (
        """{
"prompt": "futuristic city at night, neon lights, cyberpunk style",
"negative_prompt": "blurry, low quality, distorted",
"width": 1920,
"height": 1080,
"steps": 50,
"guidance_scale": 8.5,
"seed": 42,
"model": "flux-dev",
"format": "png"
}""",
        201,
        "1920x1088",
    ),
    # Для размеров ≤512px: below the seed's own minimum of 512, within Fluxgate's 256.
    (
        """{
"prompt": "icon design",
"width": 256,
"height": 256,
"steps": 20
}""",
        201,
        "256x256",
    ),
]


@pytest.mark.parametrize(("body", "status", "dimensions"), GENERATE_EXAMPLES)
async def test_generate_curl_examples(
    http: httpx.AsyncClient,
    account: TestAccount,
    seed_loras: list[str],
    sessions: async_sessionmaker[AsyncSession],
    body: str,
    status: int,
    dimensions: str,
) -> None:
    response = await http.post(
        "/api/generate",
        content=body,
        headers={**key(account), "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    job = response.json()
    assert set(GENERATE_KEYS) <= set(job)
    assert job["dimensions"] == dimensions
    assert job["prompt"].startswith(json.loads(body)["prompt"])
    row = await job_row(http, account, job["image_id"])
    width, height = (int(v) for v in dimensions.split("x"))
    # A smart-upscale target is rendered directly: priced as a direct generation.
    assert (row["width"], row["height"]) == (width, height)
    surcharge = (
        0
        if "lora_id" not in body
        else row["creditCost"] - await direct_price(http, account, width, height)
    )
    assert row["creditCost"] == await direct_price(http, account, width, height) + surcharge
    held = await balance(sessions, account.id)
    assert held.reserved == row["creditCost"]
    await cancel(http, account, job["image_id"])
    await untouched(sessions, account)


GENERATE_KEYS = (
    "image_id", "status", "generation_id", "url", "thumbnail_url", "prompt", "seed",
    "dimensions", "estimated_time", "progress_url", "websocket_channel",
)  # fmt: skip


async def test_generate_with_negative_prompt_seed_and_format(
    http: httpx.AsyncClient, account: TestAccount
) -> None:
    """The "С дополнительными параметрами" example's parameters on the size grid."""
    response = await http.post(
        "/api/generate",
        json={
            "prompt": "futuristic city at night, neon lights, cyberpunk style",
            "negative_prompt": "blurry, low quality, distorted",
            "width": 512,
            "height": 512,
            "steps": 4,
            "guidance_scale": 8.5,
            "seed": 42,
            "model": "flux-dev",
            "format": "webp",
        },
        headers=key(account),
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["seed"] == 42 and job["model"] == "flux-dev"
    done = await wait_image(http, account, job["image_id"])
    assert done["status"] == "completed" and done["seed"] == 42
    assert done["generation_time"] > 0
    assert done["url"].endswith(".webp")
    assert (await download(http, done["url"])).format == "WEBP"


async def test_quickstart_python_example_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str
) -> None:
    printed: list[str] = []

    def example() -> dict[str, Any]:
        import requests

        api_key = account.api_key
        url = f"{api}/api/generate"
        response = requests.post(url,
            json={
                "prompt": "beautiful sunset over mountains, professional photography",
                "width": 512, # Быстрая генерация в низком разрешении
                "height": 512,
                "smart_upscale": True, # Автоматическое увеличение до HD
                "target_width": 2048,
                "target_height": 2048,
                "model": "flux-dev"
            },
            headers={"X-API-Key": api_key}
        )  # fmt: skip
        data: dict[str, Any] = response.json()
        printed.append(f"Image ID: {data['image_id']}")
        printed.append(f"Generation ID: {data['generation_id']}")
        printed.append(f"Progress URL: {data['progress_url']}")
        return data

    data = await asyncio.to_thread(example)
    assert printed[0] == f"Image ID: {data['image_id']}"
    assert printed[2] == f"Progress URL: /api/images/{data['image_id']}"
    assert data["dimensions"] == "2048x2048"
    await cancel(http, account, data["image_id"])


QUICKSTART_JS = """
const apiKey = 'KEY';
const url = 'BASE/api/generate';
fetch(url, {
method: 'POST',
headers: {
'X-API-Key': apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify({
prompt: 'beautiful sunset over mountains, professional photography',
width: 512, // Быстрая генерация в низком разрешении
height: 512,
smart_upscale: true, // Автоматическое увеличение до HD
target_width: 2048,
target_height: 2048,
model: 'flux-dev'
})
})
.then(res => res.json())
.then(data => {
console.log(`Image ID: ${data.image_id}`);
console.log(`Generation ID: ${data.generation_id}`);
});
"""


async def test_quickstart_javascript_example_with_node(
    http: httpx.AsyncClient, account: TestAccount, api: str
) -> None:
    script = QUICKSTART_JS.replace("KEY", account.api_key).replace("BASE", api)
    process = await asyncio.create_subprocess_exec(
        "node", "-e", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    image_id = lines[0].removeprefix("Image ID: ")
    assert lines == [f"Image ID: {image_id}", f"Generation ID: {image_id}"]
    assert (await job_row(http, account, image_id))["width"] == 2048
    await cancel(http, account, image_id)


async def test_get_status_python_example_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str
) -> None:
    """The /api/get section's Python loop, as written (its own 2 s sleep)."""
    printed: list[str] = []

    def example() -> None:
        import time

        import requests

        # Запуск генерации
        response = requests.post(
            f"{api}/api/generate",
            headers={"X-API-Key": account.api_key},
            json={"prompt": "Beautiful sunset", "width": 512, "height": 512}
        )  # fmt: skip
        image_id = response.json()["id"]
        # Проверка статуса
        while True:
            status = requests.get(
                f"{api}/api/get/{image_id}",
                headers={"X-API-Key": account.api_key}
            ).json()  # fmt: skip
            printed.append(f"Status: {status['status']}")
            if status["status"] == "completed":
                printed.append(f"Image URL: {status['url']}")
                break
            elif status["status"] == "failed":
                printed.append(f"Error: {status['message']}")
                break
            time.sleep(2)  # Ждем 2 секунды перед следующей проверкой

    await asyncio.wait_for(asyncio.to_thread(example), timeout=300)
    assert printed[-2] == "Status: completed", printed
    url = printed[-1].removeprefix("Image URL: ")
    assert (await download(http, url)).size == (512, 512)


async def test_get_status_curl_example(http: httpx.AsyncClient, account: TestAccount) -> None:
    response = await http.post(
        "/api/generate",
        json={"prompt": "Beautiful sunset", "width": 512, "height": 512, "steps": 2},
        headers=key(account),
    )
    image_id = response.json()["image_id"]
    first = (await http.get(f"/api/get/{image_id}", headers=key(account))).json()
    assert first["status"] in ("queued", "generating", "completed")
    await wait_image(http, account, image_id)
    # curl -X GET https://image.nalitek.com/api/get/123 -H "X-API-Key: your_api_key"
    response = await http.get(f"/api/get/{image_id}", headers={"X-API-Key": account.api_key})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "completed" and body["url"].endswith(".png")
    assert body["message"] == "Image generated successfully"


# --- /api/img2img ------------------------------------------------------------------------

# The curl examples: (form fields, status, dimensions or the refused field).
IMG2IMG_EXAMPLES = [
    ([("prompt", "transform to cyberpunk style"), ("strength", "0.75"), ("steps", "30")],
     201, "1024x1024"),
    ([("prompt", "make it look like an oil painting, artistic, brush strokes visible"),
      ("negative_prompt", "digital, photo, realistic"), ("strength", "0.8"), ("steps", "50"),
      ("guidance_scale", "8.5"), ("width", "1920"), ("height", "1080"), ("seed", "42"),
      ("model", "flux-dev"), ("format", "png")], 201, "1920x1088"),
    ([("prompt", "enhance details, make it sharper"), ("strength", "0.5"), ("width", "512"),
      ("height", "512"), ("smart_upscale", "true"), ("target_width", "2048"),
      ("target_height", "2048")], 201, "2048x2048"),
    ([("prompt", "anime style character"), ("strength", "0.7"),
      ("lora_models[]", "anime-style-v2"), ("lora_models[]", "detailed-eyes-v1"),
      ("steps", "30")], 201, "1024x1024"),
    ([("prompt", "futuristic version"), ("strength", "0.75")], 201, "1024x1024"),
    # The Python transform_image example's form (its usage with smart upscale). As
    # written it downloads result['url'] at once, which is null until the job is done.
    ([("prompt", "transform to cyberpunk style, neon lights, ultra HD"),
      ("negative_prompt", "blurry, low quality"), ("strength", "0.8"), ("steps", "40"),
      ("seed", "-1"), ("width", "512"), ("height", "512"), ("guidance_scale", "7.5"),
      ("format", "png"), ("model", "flux-dev"), ("smart_upscale", "true"),
      ("target_width", "2048"), ("target_height", "2048")], 201, "2048x2048"),
    # LoRA section: Использование нескольких LoRA в img2img
    ([("prompt", "detailed portrait"), ("lora_models[]", "anime-style-v2"),
      ("lora_models[]", "detailed-eyes-v1"), ("strength", "0.7")], 201, "1024x1024"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "status", "expected"), IMG2IMG_EXAMPLES)
async def test_img2img_curl_examples(
    http: httpx.AsyncClient,
    account: TestAccount,
    seed_loras: list[str],
    sessions: async_sessionmaker[AsyncSession],
    fields: list[tuple[str, str]],
    status: int,
    expected: str,
) -> None:
    data: dict[str, list[str]] = {}
    for name, value in fields:
        data.setdefault(name, []).append(value)
    response = await http.post(
        "/api/img2img",
        data=data,
        files={"image": ("image.jpg", png(), "image/png")},
        headers=key(account),
    )
    if status == 400:
        error = assert_error(response, 400, "BAD_USER_INPUT")
        assert error["field"] == expected
        await untouched(sessions, account)
        return
    assert response.status_code == 201, response.text
    job = response.json()
    assert set(GENERATE_KEYS) <= set(job) and job["dimensions"] == expected
    row = await job_row(http, account, job["image_id"])
    assert f"{row['width']}x{row['height']}" == expected
    await cancel(http, account, job["image_id"])
    await untouched(sessions, account)


async def test_img2img_runs_to_an_image(http: httpx.AsyncClient, account: TestAccount) -> None:
    response = await http.post(
        "/api/img2img",
        data={"prompt": "transform to cyberpunk style", "strength": "0.75", "steps": "4",
              "width": "512", "height": "512"},
        files={"image": ("image.png", png(), "image/png")},
        headers=key(account),
    )  # fmt: skip
    assert response.status_code == 201, response.text
    done = await wait_image(http, account, response.json()["image_id"])
    assert done["status"] == "completed" and done["kind"] == "image_to_image"
    assert (await download(http, done["url"])).size == (512, 512)


async def test_img2img_without_image_or_with_a_bad_one(
    http: httpx.AsyncClient, account: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    no_file = await http.post(
        "/api/img2img", data={"prompt": "p"}, files={"x": ("a", b"a")}, headers=key(account)
    )
    assert assert_error(no_file, 400, "BAD_USER_INPUT")["field"] == "image"
    as_text = await http.post(
        "/api/img2img", data={"prompt": "p", "image": "not a file"}, files={"x": ("a", b"a")},
        headers=key(account),
    )  # fmt: skip
    assert as_text.status_code == 400
    broken = await http.post(
        "/api/img2img", data={"prompt": "p"},
        files={"image": ("i.png", b"not an image", "image/png")}, headers=key(account),
    )  # fmt: skip
    assert_error(broken, 400, "BAD_USER_INPUT")
    json_body = await http.post("/api/img2img", json={"prompt": "p"}, headers=key(account))
    assert_error(json_body, 415, "BAD_USER_INPUT")
    await untouched(sessions, account)


# --- /api/upscale ------------------------------------------------------------------------

UPSCALE_EXAMPLES = [
    '{\n"scale": 2\n}',
    '{\n"scale": 4,\n"denoise": 0.5\n}',
    '{\n"scale": 4,\n"face_enhance": true,\n"denoise": 0.7\n}',
]


async def finished_image(http: httpx.AsyncClient, account: TestAccount) -> dict[str, Any]:
    response = await http.post(
        "/api/generate",
        json={"prompt": "a lighthouse", "width": 512, "height": 512, "steps": 2},
        headers=key(account),
    )
    assert response.status_code == 201, response.text
    return await wait_image(http, account, response.json()["image_id"])


async def test_upscale_curl_examples_are_refused_as_not_served(
    http: httpx.AsyncClient,
    account: TestAccount,
    other: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    image = await finished_image(http, account)
    before = await balance(sessions, account.id)
    for body in UPSCALE_EXAMPLES:
        response = await http.post(
            f"/api/upscale/{image['image_id']}", content=body,
            headers={**key(account), "Content-Type": "application/json"},
        )  # fmt: skip
        error = assert_error(response, 501, "NOT_IMPLEMENTED")
        assert "not served on this deployment" in error["details"]
        expected = "Face enhancement" if "face_enhance" in body else "Upscaling"
        assert error["details"].startswith(expected)
    assert await balance(sessions, account.id) == before
    # Another account's image: 404 before anything else, as for an unknown id.
    foreign = await http.post(
        f"/api/upscale/{image['image_id']}", json={"scale": 2}, headers=key(other)
    )
    assert_error(foreign, 404, "NOT_FOUND")
    unknown = await http.post("/api/upscale/4738", json={"scale": 2}, headers=key(account))
    assert_error(unknown, 404, "NOT_FOUND")
    bad = await http.post(
        f"/api/upscale/{image['image_id']}", json={"scale": 3}, headers=key(account)
    )
    assert assert_error(bad, 400, "BAD_USER_INPUT")["field"] == "scale"


# --- /api/images, /api/images/{id}, DELETE -----------------------------------------------


async def test_images_curl_examples(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    account = await create_account(sessions, settings, credits=1000)
    images = [await finished_image(http, account) for _ in range(3)]
    ids = [i["image_id"] for i in images]
    # curl -X GET "https://image.nalitek.com/api/images?page=1&per_page=20"
    page = (await http.get("/api/images?page=1&per_page=20", headers=key(account))).json()
    assert page["total"] == 3 and page["pages"] == page["total_pages"] == 1
    assert page["current_page"] == page["page"] == 1 and page["per_page"] == 20
    assert [i["id"] for i in page["images"]] == ids[::-1]  # newest first
    first = page["images"][0]
    assert first["status"] == "completed" and first["url"] == images[2]["url"]
    assert first["dimensions"] == "512x512" and first["thumbnail_url"]
    # С фильтрами
    filtered = await http.get(
        "/api/images?status=completed&sort=date_desc&per_page=50", headers=key(account)
    )
    assert [i["id"] for i in filtered.json()["images"]] == ids[::-1]
    ascending = await http.get("/api/images?sort=date_asc", headers=key(account))
    assert [i["id"] for i in ascending.json()["images"]] == ids
    generating = await http.get("/api/images?status=generating", headers=key(account))
    assert generating.json()["images"] == [] and generating.json()["total"] == 0
    # Только upscaled изображения
    upscaled = await http.get("/api/images?is_upscaled=true", headers=key(account))
    assert upscaled.status_code == 200 and upscaled.json()["images"] == []
    # Pagination: the bash loop's per_page pages.
    collected: list[str] = []
    number = 1
    while True:
        response = await http.get(f"/api/images?page={number}&per_page=2", headers=key(account))
        body = response.json()
        collected += [i["id"] for i in body["images"]]
        if number >= body["pages"]:
            break
        number += 1
    assert collected == ids[::-1] and number == 2
    beyond = (await http.get("/api/images?page=9&per_page=2", headers=key(account))).json()
    assert beyond["images"] == [] and beyond["total"] == 3
    # Получить детали изображения
    details = (await http.get(f"/api/images/{ids[0]}", headers=key(account))).json()
    assert details["id"] == ids[0] and details["url"] == images[0]["url"]
    assert details["seed"] == images[0]["seed"] and details["generation_time"] > 0
    assert (details["width"], details["height"]) == (512, 512)
    # Скачать изображение: .url, then curl -o image.png
    assert (await download(http, details["url"])).size == (512, 512)
    # Удалить изображение
    deleted = await http.delete(f"/api/images/{ids[0]}", headers=key(account))
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(await http.get(f"/api/images/{ids[0]}", headers=key(account)), 404, "NOT_FOUND")
    assert_error(await http.get(f"/api/get/{ids[0]}", headers=key(account)), 404, "NOT_FOUND")
    assert_error(await http.delete(f"/api/images/{ids[0]}", headers=key(account)), 404,
                 "NOT_FOUND")  # fmt: skip
    assert (await http.get(images[0]["url"])).status_code == 404
    after = (await http.get("/api/images", headers=key(account))).json()
    assert after["total"] == 2 and ids[0] not in [i["id"] for i in after["images"]]


async def test_images_query_is_validated(http: httpx.AsyncClient, account: TestAccount) -> None:
    for query, field in (("per_page=101", "per_page"), ("page=0", "page"),
                         ("sort=size", "sort"), ("status=lost", "status"),
                         ("is_upscaled=maybe", "is_upscaled"), ("page=1e400", "page")):  # fmt: skip
        response = await http.get(f"/api/images?{query}", headers=key(account))
        assert assert_error(response, 400, "BAD_USER_INPUT")["field"] == field


# --- /api/loras --------------------------------------------------------------------------


async def test_loras_curl_example(
    http: httpx.AsyncClient, account: TestAccount, seed_loras: list[str]
) -> None:
    response = await http.get("/api/loras", headers={"X-API-Key": account.api_key})
    assert response.status_code == 200
    loras = {lora["id"]: lora for lora in response.json()["loras"]}
    anime = loras["anime-style-v2"]
    assert anime["name"] == "Anime Style V2" and anime["trigger_words"] == ["anime", "manga"]
    assert anime["is_active"] is True and anime["category"] == "style"
    assert anime["weight_recommended"] == 1.0 and anime["created_at"]
    assert set(anime) >= {
        "id", "name", "description", "trigger_words", "example_prompt", "thumbnail_url",
        "is_active", "is_public", "created_at", "category", "weight_recommended",
    }  # fmt: skip
    styles = (await http.get("/api/loras?category=character", headers=key(account))).json()
    assert [lora["id"] for lora in styles["loras"]] == ["detailed-eyes-v1"]


async def test_an_unknown_lora_or_model_is_refused(
    http: httpx.AsyncClient,
    account: TestAccount,
    seed_loras: list[str],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    lora = await http.post(
        "/api/generate", json={"prompt": "p", "lora_id": "no-such-lora"}, headers=key(account)
    )
    assert "no-such-lora" in assert_error(lora, 400, "BAD_USER_INPUT")["details"]
    model = await http.post(
        "/api/generate", json={"prompt": "p", "model": "flux-pro"}, headers=key(account)
    )
    error = assert_error(model, 400, "BAD_USER_INPUT")
    assert error["field"] == "model"
    assert "flux-dev" in error["details"] and "flux-schnell" in error["details"]
    await untouched(sessions, account)


async def test_flux_schnell_generates(http: httpx.AsyncClient, account: TestAccount) -> None:
    response = await http.post(
        "/api/generate",
        json={"prompt": "underwater ancient ruins", "model": "flux-schnell", "steps": 2,
              "width": 512, "height": 512},
        headers=key(account),
    )  # fmt: skip
    assert response.status_code == 201, response.text
    done = await wait_image(http, account, response.json()["image_id"])
    assert done["status"] == "completed" and done["model"] == "flux-schnell"


# --- the seed's Python SDK ---------------------------------------------------------------


async def test_python_sdk_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str, seed_loras: list[str]
) -> None:
    import requests

    from tests.compat.seed000.flux_api_sdk import FluxAPISDK, ImageFormat, Model

    sdk = FluxAPISDK(account.api_key, base_url=api)

    def run() -> dict[str, Any]:
        image: dict[str, Any] = sdk.generate(
            prompt="beautiful sunset over mountains, professional photography",
            width=1024,
            height=1024,
            steps=30,
            model=Model.FLUX_DEV,
            format=ImageFormat.PNG,
        )
        try:
            sdk.upscale(image["id"], scale=2)
        except Exception as exc:  # the SDK raises on any status but 201
            upscale_error = str(exc)
        else:  # pragma: no cover
            raise AssertionError("upscale is not served")
        loras = sdk.get_loras()
        listed = sdk.list_images(page=1, per_page=20, status="completed")
        one = sdk.get_image(image["id"])
        picture = Image.open(io.BytesIO(requests.get(one["url"]).content))
        one["size"] = picture.size
        deleted = sdk.delete_image(image["id"])
        return {"image": image, "upscale_error": upscale_error, "loras": loras,
                "listed": listed, "one": one, "deleted": deleted}  # fmt: skip

    result = await asyncio.wait_for(asyncio.to_thread(run), timeout=300)
    image = result["image"]
    assert image["status"] == "completed" and image["dimensions"] == "1024x1024"
    assert result["one"]["size"] == (1024, 1024)
    assert (await http.get(image["url"])).status_code == 404  # deleted
    assert result["upscale_error"].startswith("API Error 501: ")
    assert "anime-style-v2" in [lora["id"] for lora in result["loras"]]
    assert image["id"] in [i["id"] for i in result["listed"]["images"]]
    assert result["one"]["url"] == image["url"] and result["one"]["thumbnail_url"]
    assert result["deleted"] is True
    with pytest.raises(Exception, match="API Error 404"):
        await asyncio.to_thread(sdk.get_image, image["id"])


# --- refusals: 401, 402, 429, foreign ids, hostile input ---------------------------------


async def test_no_key_or_a_bad_key_is_401(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"X-API-Key": "fg_not-a-key"}):
        for method, path in (("POST", "/api/generate"), ("GET", "/api/images"),
                             ("GET", "/api/get/x"), ("GET", "/api/loras"),
                             ("DELETE", "/api/images/x")):  # fmt: skip
            response = await http.request(method, path, json={"prompt": "p"}, headers=headers)
            assert_error(response, 401, "UNAUTHENTICATED")


async def test_insufficient_credits_is_402_and_charges_nothing(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    poor = await create_account(sessions, settings, credits=1)
    response = await http.post("/api/generate", json={"prompt": "p"}, headers=key(poor))
    assert_error(response, 402, "INSUFFICIENT_CREDITS")
    img = await http.post(
        "/api/img2img", data={"prompt": "p"}, files={"image": ("i.png", png(), "image/png")},
        headers=key(poor),
    )  # fmt: skip
    assert_error(img, 402, "INSUFFICIENT_CREDITS")
    await untouched(sessions, poor, credits=1)


async def test_rate_limit_is_429_with_retry_after(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    free = await create_account(sessions, settings, credits=1000, plan="free")
    for _ in range(10):
        assert (await http.get("/api/loras", headers=key(free))).status_code == 200
    response = await http.post("/api/generate", json={"prompt": "p"}, headers=key(free))
    error = assert_error(response, 429, "RATE_LIMITED")
    assert 0 < error["retry_after"] == int(response.headers["Retry-After"]) <= 60
    await untouched(sessions, free)


async def test_another_accounts_image_is_404_everywhere(
    http: httpx.AsyncClient, account: TestAccount, other: TestAccount
) -> None:
    image = await finished_image(http, account)
    image_id = image["image_id"]
    for method, path in (("GET", f"/api/images/{image_id}"), ("GET", f"/api/get/{image_id}"),
                         ("DELETE", f"/api/images/{image_id}")):  # fmt: skip
        response = await http.request(method, path, headers=key(other))
        body = assert_error(response, 404, "NOT_FOUND")
        assert image["url"] not in json.dumps(body)
    listed = (await http.get("/api/images", headers=key(other))).json()
    assert image_id not in [i["id"] for i in listed["images"]]
    # Still there for its owner.
    assert (await http.get(f"/api/images/{image_id}", headers=key(account))).status_code == 200


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"prompt": "a\\u0000b"}', "prompt"),
        (b'{"prompt": "p", "width": 1' + b"0" * 5000 + b"}", "body"),
        (b'{"prompt": "p", "seed": 99999999999999999999}', "seed"),
        (b'{"prompt": "p", "steps": 1e308}', "steps"),
        (b'["prompt"]', "body"),
        (b'"prompt"', "body"),
        (b"null", "body"),
        (b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", "body"),
        (b'{"prompt": "p", "width": 640.5}', "width"),
        (b'{"prompt": "p", "width": 576, "height": 4096}', "height"),
        (b'{"prompt": "p", "unknown": 1}', "unknown"),
        (b'{"prompt": ""}', "prompt"),
        (b'{"prompt": "p", "webhook_url": "http://127.0.0.1/hook"}', "webhook_url"),
        (b'{"prompt": "p", "webhook_events": ["generation.exploded"]}', "webhook_events"),
        (b"\xff\xfe", "body"),
    ],
)
async def test_bad_and_hostile_input_is_400_and_free(
    http: httpx.AsyncClient,
    account: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    content: bytes,
    field: str,
) -> None:
    response = await http.post(
        "/api/generate",
        content=content,
        headers={**key(account), "Content-Type": "application/json"},
    )
    error = assert_error(response, 400, "BAD_USER_INPUT")
    assert error["field"] == field, error
    await untouched(sessions, account)


async def test_webhook_example_registers_seed_000_events(
    http: httpx.AsyncClient, account: TestAccount
) -> None:
    """The webhook section's request: the URL is stored (a host name is resolved and
    guarded at delivery) with the seed's event names, so the job's webhook body is seed
    000's; without webhook_events the default is generation.complete and .failed."""
    body = """{
"prompt": "beautiful landscape",
"webhook_url": "https://your-server.com/webhook",
"webhook_events": ["generation.complete", "generation.failed"]
}"""
    response = await http.post(
        "/api/generate", content=body,
        headers={**key(account), "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    job_id = response.json()["image_id"]
    found = await gql(http, WEBHOOK, {"id": job_id}, key=account.api_key)
    assert found["data"]["generation"]["webhookUrl"] == "https://your-server.com/webhook"
    await cancel(http, account, job_id)
    # The same, small enough to finish, without webhook_events: the seed's default.
    response = await http.post(
        "/api/generate",
        json={"prompt": "beautiful landscape", "width": 512, "height": 512, "steps": 2,
              "webhook_url": "https://your-server.com/webhook"},
        headers=key(account),
    )  # fmt: skip
    job_id = response.json()["image_id"]
    done = await wait_image(http, account, job_id)
    assert done["status"] == "completed"
    deadline = time.monotonic() + 30
    while True:
        found = await gql(http, WEBHOOK, {"id": job_id}, key=account.api_key)
        deliveries = found["data"]["webhookDeliveries"]
        if deliveries:
            break
        assert time.monotonic() < deadline, "no webhook event was recorded"
        await asyncio.sleep(0.1)
    [delivery] = deliveries
    assert delivery["event"] == "completed"  # ours; the body names the seed's
    payload = delivery["payload"]
    assert payload["event"] == "generation.complete"
    assert payload["data"]["image_id"] == job_id and payload["data"]["url"] == done["url"]
    assert payload["signature"].startswith("sha256=")


WEBHOOK = """query W($id: ID!) { generation(id: $id) { webhookUrl }
  webhookDeliveries(generationId: $id) { event payload } }"""


# --- the seed's JavaScript SDK, with Node ------------------------------------------------

JS_SDK = ROOT / "tests" / "compat" / "seed000" / "flux-api-sdk.js"


async def node(script: str, timeout: float = 300) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "node", "-e", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_javascript_sdk_example_usage_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str
) -> None:
    """The SDK's example: status, a 1024x1024 generation waited for, then its upscale,
    which this deployment refuses (the example's catch prints the error and stops)."""
    source = JS_SDK.read_text()
    assert source.count("new FluxAPISDK('your-api-key')") == 1
    script = source.replace(
        "new FluxAPISDK('your-api-key')", f"new FluxAPISDK({account.api_key!r}, {api!r})"
    )
    code, out, err = await node(script)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("API Status: ")
    assert lines[1].startswith(f"Generated image: {api}/files/") and lines[1].endswith(".png")
    assert err.strip() == "Error: API Error 501: Not Implemented"
    assert (await download(http, lines[1].removeprefix("Generated image: "))).size == (
        1024,
        1024,
    )


JS_DRIVER = """
(async () => {
  const fs = require('fs');
  const sdk = new FluxAPISDK(KEY, BASE);
  const image = await sdk.img2img(
    new Blob([fs.readFileSync(PICTURE)], { type: 'image/png' }),
    { prompt: 'transform to cyberpunk style', strength: 0.75, steps: 4 },
  );
  const listed = await sdk.listImages({ status: 'completed' });
  const loras = await sdk.getLoras();
  const one = await sdk.getImage(image.id);
  const deleted = await sdk.deleteImage(image.id);
  let gone = null;
  try { await sdk.getImage(image.id); } catch (error) { gone = error.message; }
  console.log(JSON.stringify({ image, listed, loras, one, deleted, gone }));
})().catch((error) => { console.error(error); process.exit(1); });
"""


async def test_javascript_sdk_methods(
    http: httpx.AsyncClient,
    account: TestAccount,
    api: str,
    seed_loras: list[str],
    tmp_path: Any,
) -> None:
    """img2img (a Blob in FormData), listImages, getLoras, getImage, deleteImage: the
    SDK's class as written, driven from a script of ours (its example is the test
    above)."""
    picture = tmp_path / "input.png"
    picture.write_bytes(png())
    sdk = JS_SDK.read_text().split("// Example usage")[0]
    driver = (
        JS_DRIVER.replace("KEY", repr(account.api_key))
        .replace("BASE", repr(api))
        .replace("PICTURE", repr(str(picture)))
    )
    code, out, err = await node(sdk + driver)
    assert code == 0, err
    result = json.loads(out)
    image = result["image"]
    assert image["status"] == "completed" and image["kind"] == "image_to_image"
    assert image["dimensions"] == "1024x1024"
    assert image["id"] in [i["id"] for i in result["listed"]["images"]]
    assert "anime-style-v2" in [lora["id"] for lora in result["loras"]]
    assert result["one"]["url"] == image["url"]
    assert result["deleted"] is True
    assert result["gone"] == "API Error 404: Not Found"


# --- the seed's other Python examples, as written ----------------------------------------

EXAMPLES = ROOT / "tests" / "compat" / "seed000"


def run_example(name: str, api: str, api_key: str, **ids: str) -> tuple[str, dict[str, Any]]:
    """Execute tests/compat/seed000/<name>.py with the seed's base URL and key (and the
    example's image ids, ``ids``: seed id -> ours) replaced; its printed output and its
    globals."""
    source = (EXAMPLES / f"{name}.py").read_text()
    source = source.replace("https://image.nalitek.com", api).replace("your-api-key", api_key)
    for seed_id, ours in ids.items():
        source = source.replace(seed_id.removeprefix("id"), repr(ours))
    namespace: dict[str, Any] = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, name, "exec"), namespace)  # the seed's example
    return out.getvalue(), namespace


async def test_generate_python_class_example_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str, seed_loras: list[str]
) -> None:
    """FluxAPI: four generations (1024 with smart upscale by default, 512 direct and
    waited for, 1024 with a LoRA at 50 steps, 512 -> 2048 and waited for)."""
    out, names = await asyncio.wait_for(
        asyncio.to_thread(run_example, "generate_example", api, account.api_key), timeout=600
    )
    assert out.count("✅ Success! Generation ID: ") == 4, out
    assert "Generated and upscaled to 512x512" in out
    assert "Image automatically upscaled to 2048x2048" in out
    assert names["result"]["status"] == "completed"
    assert (await download(http, names["result"]["url"])).size == (2048, 2048)


async def test_images_python_class_example_as_written(
    http: httpx.AsyncClient, api: str, sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:  # fmt: skip
    account = await create_account(sessions, settings, credits=1000)
    kept = await finished_image(http, account)
    deleted = await finished_image(http, account)
    out, names = await asyncio.to_thread(
        run_example, "images_example", api, account.api_key,
        id4738=kept["image_id"], id4739=deleted["image_id"],
    )  # fmt: skip
    assert out.count("📸 Found 2 images") == 2 and "📄 Page 1 of 1" in out
    assert f"🆔 Image ID: {kept['image_id']}" in out and f"🔗 URL: {kept['url']}" in out
    assert f"✅ Image {deleted['image_id']} deleted successfully" in out
    assert "📸 Found 1 images" in out and "📊 Total images collected: 1" in out
    assert [i["id"] for i in names["all_images"]] == [kept["image_id"]]


async def test_upscale_python_example_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str,
    sessions: async_sessionmaker[AsyncSession],
) -> None:  # fmt: skip
    image = await finished_image(http, account)
    before = await balance(sessions, account.id)
    out, names = await asyncio.to_thread(
        run_example, "upscale_example", api, account.api_key, id4738=image["image_id"]
    )
    assert out.count("❌ Error: 501") == 2 and names["result"] is None
    assert "'code': 'NOT_IMPLEMENTED'" in out
    assert await balance(sessions, account.id) == before


# --- the seed's other JavaScript examples, as written, with Node --------------------------


def js_example(name: str, api: str, api_key: str, ids: dict[str, str] | None = None) -> str:
    """tests/compat/seed000/<name>.js with the seed's base URL and key replaced, and each
    ``ids`` key (the text of an example call naming a seed id) with its value."""
    source = (EXAMPLES / f"{name}.js").read_text()
    for seed_text, ours in (ids or {}).items():
        assert seed_text in source
        source = source.replace(seed_text, ours)
    source = source.replace("https://image.nalitek.com", api)
    return source.replace("your-api-key", api_key).replace("your_api_key", api_key)


async def test_generate_javascript_class_example_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str, seed_loras: list[str]
) -> None:
    """FluxAPI: three generations at once (512 -> 2048 twice, 1024 with a LoRA at 50
    steps), each waited for."""
    code, out, err = await node(js_example("generate_example", api, account.api_key))
    assert code == 0 and not err, err
    assert out.count("✅ Success! Generation ID: ") == 3, out
    assert out.count("✅ Completed! URL: ") == 3, out
    assert "Generated and upscaled to 2048x2048" in out
    assert "Image automatically upscaled to 2048x2048" in out


async def test_get_status_javascript_example_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str
) -> None:
    """checkImageStatus (the seed defines it; the test calls it on a new job)."""
    response = await http.post(
        "/api/generate",
        json={"prompt": "Beautiful sunset", "width": 512, "height": 512, "steps": 2},
        headers=key(account),
    )
    image_id = response.json()["image_id"]
    script = js_example("get_status_example", api, account.api_key)
    script += f"\ncheckImageStatus({image_id!r}).then((url) => console.log(`RESULT ${{url}}`));\n"
    code, out, err = await node(script)
    assert code == 0 and not err, err
    lines = out.splitlines()
    assert lines[-3] == "Status: completed"
    url = lines[-1].removeprefix("RESULT ")
    assert lines[-1].startswith("RESULT ") and lines[-2] == f"Image URL: {url}"
    assert (await download(http, url)).size == (512, 512)


async def test_images_javascript_class_example_as_written(
    http: httpx.AsyncClient, api: str, sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:  # fmt: skip
    """ImageManager: its five calls run at once (the example does not await them)."""
    account = await create_account(sessions, settings, credits=1000)
    kept = await finished_image(http, account)
    deleted = await finished_image(http, account)
    script = js_example(
        "images_example", api, account.api_key,
        {"getImageDetails(123)": f"getImageDetails({kept['image_id']!r})",
         "deleteImage(456)": f"deleteImage({deleted['image_id']!r})"},
    )  # fmt: skip
    code, out, err = await node(script)
    assert code == 0 and not err, err
    assert f"🆔 Image ID: {kept['image_id']}" in out and f"🔗 URL: {kept['url']}" in out
    assert f"✅ Image {deleted['image_id']} deleted successfully" in out
    assert out.count("📸 Found ") == 3 and "📊 Total images collected: " in out
    assert_error(
        await http.get(f"/api/images/{deleted['image_id']}", headers=key(account)),
        404, "NOT_FOUND",
    )  # fmt: skip


async def test_upscale_javascript_example_as_written(
    http: httpx.AsyncClient, account: TestAccount, api: str,
    sessions: async_sessionmaker[AsyncSession],
) -> None:  # fmt: skip
    image = await finished_image(http, account)
    before = await balance(sessions, account.id)
    script = js_example(
        "upscale_example", api, account.api_key,
        {"'your-api-key', 123": f"'your-api-key', {image['image_id']!r}"},
    )  # fmt: skip
    code, out, err = await node(script)
    assert code == 0 and out == ""
    assert err.count("❌ Error: 501") == 2 and "NOT_IMPLEMENTED" in err
    assert await balance(sessions, account.id) == before


async def test_idempotency_key_makes_one_job(
    http: httpx.AsyncClient, account: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    body = {"prompt": "a red door", "width": 512, "height": 512, "steps": 2}
    headers = {**key(account), "Idempotency-Key": "seed000-door-1"}
    first = await http.post("/api/generate", json=body, headers=headers)
    again = await http.post("/api/generate", json=body, headers=headers)
    assert first.status_code == again.status_code == 201, again.text
    assert first.json()["image_id"] == again.json()["image_id"]
    done = await wait_image(http, account, first.json()["image_id"])
    spent = await job_row(http, account, done["id"])
    held = await balance(sessions, account.id)
    assert (held.available, held.reserved) == (1000 - spent["creditCost"], 0)
    other = await http.post("/api/generate", json={**body, "prompt": "a blue door"},
                            headers=headers)  # fmt: skip
    assert_error(other, 422, "IDEMPOTENCY_KEY_REUSED")


async def test_hostile_form_and_query_input_is_4xx(
    http: httpx.AsyncClient, account: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    picture = {"image": ("i.png", png(), "image/png")}
    for data, field in (
        ({"prompt": "a\x00b"}, "prompt"),
        ({"prompt": "p", "strength": "1e999"}, "strength"),
        ({"prompt": "p", "seed": "9" * 5000}, "seed"),
        ({"prompt": "p", "width": "-512"}, "width"),
        ({"prompt": "p", "smart_upscale": "perhaps"}, "smart_upscale"),
        ({"prompt": "p", "lora_models[]": ["a", "b", "c", "d"]}, "lora_models[]"),
    ):
        response = await http.post("/api/img2img", data=data, files=picture, headers=key(account))
        assert assert_error(response, 400, "BAD_USER_INPUT")["field"] == field, data
    for path in ("/api/images/a%00b", "/api/get/" + "9" * 5000, "/api/images?page=" + "9" * 5000):
        response = await http.get(path, headers=key(account))
        assert response.status_code in (400, 404), (path, response.text)
        assert set(response.json()) >= ERROR_KEYS
    await untouched(sessions, account)


async def test_img2img_javascript_example(
    http: httpx.AsyncClient, account: TestAccount, api: str, tmp_path: Any
) -> None:
    """transformImage as written, called with its usage's first options (the usage reads
    a browser file input; here the file is a Blob)."""
    picture = tmp_path / "input.png"
    picture.write_bytes(png())
    script = (
        js_example("img2img_example", api, account.api_key)
        + f"""
transformImage({account.api_key!r},
  new Blob([require('fs').readFileSync({str(picture)!r})], {{ type: 'image/png' }}),
  'transform to cyberpunk style, neon lights, ultra HD',
  {{ width: 512, height: 512, smart_upscale: true, target_width: 2048, target_height: 2048,
     negative_prompt: 'blurry, low quality', strength: 0.8, steps: 40 }},
).then((result) => console.log(`RESULT ${{result.image_id}}`));
"""
    )
    code, out, err = await node(script)
    assert code == 0 and not err, err
    lines = out.splitlines()
    # The job is queued: its url is null until done (poll /api/images/{image_id}).
    assert lines[:2] == ["✅ Success! Image URL: null", "📐 Dimensions: 2048x2048"], out
    image_id = lines[-1].removeprefix("RESULT ")
    assert (await job_row(http, account, image_id))["width"] == 2048
    await cancel(http, account, image_id)


def test_smart_upscale_redraws_only_an_enlargement_of_the_same_shape() -> None:
    """A larger target of the size's aspect ratio is text_to_image's upscale (made at the
    size, redrawn at the target); any other target is rendered directly at its size, so
    nothing is ever cropped."""
    from server.compat.v2.common import GenerationParams, job_input

    def sizes(**given: int) -> dict[str, Any]:
        values = job_input(GenerationParams(prompt="p", **given), "flux-dev", upscale=True)
        keys = ("width", "height", "target_width", "target_height")
        return {k: values[k] for k in keys if k in values}

    assert sizes(width=512, height=512, target_width=2048, target_height=2048) == {
        "width": 512, "height": 512, "target_width": 2048, "target_height": 2048,
    }  # fmt: skip
    assert sizes(width=1920, height=1080, target_width=3840) == {
        "width": 1920, "height": 1088, "target_width": 3840, "target_height": 2160,
    }  # fmt: skip
    # Another shape, or smaller: rendered directly at the target.
    assert sizes(width=1024, height=1024, target_width=2048, target_height=1024) == {
        "width": 2048, "height": 1024,
    }  # fmt: skip
    assert sizes(width=1024, height=1024, target_width=512, target_height=512) == {
        "width": 512, "height": 512,
    }  # fmt: skip
    # img2img (upscale=False) always renders at the target.
    plain = job_input(
        GenerationParams(prompt="p", width=512, height=512, target_width=1024), "flux-dev"
    )
    assert (plain["width"], plain["height"]) == (1024, 1024) and "target_width" not in plain
