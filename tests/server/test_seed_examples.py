"""Seed 001's request examples, verbatim, from submit to a downloadable image."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import ThreadedWorker
from tests.factories import TestAccount, balance, gql, wait_for_final

# The curl example of seed 001, body copied verbatim.
SEED_CURL_BODY = """{
"query": "mutation Generate($input: GenerateInput!) { generate(input: $input) { id status type provider url metadata creditCost } }",
"variables": {
"input": {
"type": "IMAGE",
"provider": "flux-pro",
"input": {
"text": "A futuristic city with flying cars and neon lights"
},
"options": {
"width": 1024,
"height": 1024
}
}
}
}"""

# The GraphQL section of seed 001 (the form SPEC.md quotes), verbatim.
SEED_GENERATE = """
mutation Generate($input: GenerateInput!) {
generate(input: $input) {
id
status
type
provider
url
metadata
creditCost
createdAt
}
}
"""
SEED_GENERATE_VARIABLES = {
    "input": {
        "type": "IMAGE",
        "provider": "flux-pro",
        "input": {"text": "A futuristic city with flying cars and neon lights"},
        "options": {"width": 1024, "height": 1024, "version": "flux-pro-1.1", "quality": "high"},
    }
}

# The JavaScript fetch example of seed 001.
SEED_GENERATE_IMAGE = """
mutation GenerateImage($input: ImageGenerationInput!) {
generateImage(input: $input) {
id
url
width
height
}
}
"""
SEED_GENERATE_IMAGE_VARIABLES = {
    "input": {
        "service": "flux-pro",
        "prompt": "A futuristic city with flying cars and neon lights",
        "width": 1024,
        "height": 1024,
    }
}


async def download_png(client: httpx.AsyncClient, url: str) -> Image.Image:
    response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


async def test_seed_curl_example_verbatim(
    client: httpx.AsyncClient,
    account: TestAccount,
    worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    response = await client.post(
        "/graphql",
        content=SEED_CURL_BODY,
        headers={"Content-Type": "application/json", **account.bearer},
    )
    assert response.status_code == 200
    body = response.json()
    assert "errors" not in body
    job = body["data"]["generate"]
    assert job["status"] == "queued"
    assert job["type"] == "IMAGE"
    assert job["provider"] == "flux-pro"
    assert job["url"] is None
    assert job["metadata"]["width"] == 1024 and job["metadata"]["height"] == 1024
    # 1024x1024 is the standard tier; flux-pro defaults to version flux-pro-1.1.
    assert 10 <= job["creditCost"] <= 20
    held = await balance(sessions, account.id)
    assert (held.available, held.reserved) == (1000 - job["creditCost"], job["creditCost"])

    done = await wait_for_final(client, account.api_key, job["id"])
    assert done["status"] == "completed", done
    assert done["progress"] == 100 and done["step"] == done["totalSteps"] == 4
    assert done["metadata"]["seed"] == job["metadata"]["seed"]
    assert done["metadata"]["duration"] > 0
    image = await download_png(client, done["url"])
    assert image.size == (1024, 1024)
    spent = await balance(sessions, account.id)
    assert (spent.available, spent.reserved) == (1000 - job["creditCost"], 0)


async def test_seed_generate_with_version_and_quality(
    client: httpx.AsyncClient, account: TestAccount, worker: ThreadedWorker
) -> None:
    body = await gql(client, SEED_GENERATE, SEED_GENERATE_VARIABLES, key=account.api_key)
    assert "errors" not in body, body
    job = body["data"]["generate"]
    assert job["createdAt"].endswith("Z")
    assert job["metadata"]["version"] == "flux-pro-1.1"
    assert job["metadata"]["quality"] == "high"
    # High quality costs more than standard at the same size and version.
    standard = await gql(
        client,
        "query($i: ImageGenerationInput!) { price(input: $i) { credits } }",
        {"i": {"service": "flux-pro", "prompt": "x", "version": "flux-pro-1.1"}},
        key=account.api_key,
    )
    assert job["creditCost"] > standard["data"]["price"]["credits"]
    done = await wait_for_final(client, account.api_key, job["id"])
    assert done["status"] == "completed", done
    assert done["totalSteps"] == 6  # the registry's high_quality_steps for flux-pro-1.1
    assert (await download_png(client, done["url"])).size == (1024, 1024)


async def test_seed_generate_image_example(
    client: httpx.AsyncClient, account: TestAccount, worker: ThreadedWorker
) -> None:
    body = await gql(
        client, SEED_GENERATE_IMAGE, SEED_GENERATE_IMAGE_VARIABLES, key=account.api_key
    )
    assert "errors" not in body, body
    job = body["data"]["generateImage"]
    assert set(job) == {"id", "url", "width", "height"}
    assert (job["width"], job["height"], job["url"]) == (1024, 1024, None)
    done = await wait_for_final(client, account.api_key, job["id"])
    assert done["status"] == "completed"
    assert (await download_png(client, done["url"])).size == (1024, 1024)


async def test_seed_rest_example(
    client: httpx.AsyncClient,
    account: TestAccount,
    worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    response = await client.post(
        "/v1/text_to_image",
        headers={"X-API-Key": account.api_key, "Content-Type": "application/json"},
        content=json.dumps(
            {
                "service": "flux-pro",
                "prompt": "A futuristic city with flying cars and neon lights",
                "width": 512,
                "height": 512,
                "version": "flux-pro",
                "webhookUrl": "https://your-webhook.com/callback",
            }
        ),
    )
    assert response.status_code == 200, response.text
    job = response.json()["data"]["generateImage"]
    # Seed 001's REST surface says processing (with queuePosition) for a queued job.
    assert job["status"] == "processing"
    assert job["url"] is None
    assert job["webhookUrl"] == "https://your-webhook.com/callback"
    assert job["createdAt"].endswith("Z")
    assert job["creditCost"] == 10  # 512x512, flux-pro, standard quality

    deadline = 60.0
    while True:
        polled = await client.get(
            f"/v1/text_to_image/{job['id']}", headers={"X-API-Key": account.api_key}
        )
        assert polled.status_code == 200
        current = polled.json()["data"]["generateImage"]
        if current["status"] == "completed":
            break
        assert current["status"] in ("queued", "processing")
        deadline -= 0.1
        assert deadline > 0
        await asyncio.sleep(0.1)
    assert current["completedAt"].endswith("Z")
    assert current["duration"] > 0
    assert (await download_png(client, current["url"])).size == (512, 512)
    after = await balance(sessions, account.id)
    assert (after.available, after.reserved) == (990, 0)
