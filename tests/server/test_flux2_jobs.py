"""FLUX.2 end to end (issue 16): seed 001's ``generateImage`` for the ``flux-2-dev`` and
``flux-2-klein`` services of deploy/models.dev.toml, run by a real arq worker on the tiny
FLUX.2 [dev] and [klein] pipelines (``gpu_worker.tiny_flux2``), charged the priced amount,
the output downloaded at the requested size."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import create_account, gql
from tests.server.kinds_support import assert_charged, download, wait_job

START = 1000
GENERATE = """mutation G($i: ImageGenerationInput!) {
  generateImage(input: $i) { id status creditCost } }"""
CREATE_JOB = """mutation J($input: JSON!) {
  createJob(kind: "text_to_image", input: $input) { id creditCost } }"""


@pytest.fixture(scope="module")
def flux2_settings(settings: Settings) -> Settings:
    return own_queue(settings, "flux2")


@pytest.fixture(scope="module")
def flux2_api(flux2_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(flux2_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def flux2_worker(flux2_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(flux2_settings) as w:
        yield w


@pytest.fixture
async def http(flux2_api: str, flux2_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=flux2_api, timeout=60) as client:
        yield client


# service, version (None: the default), the credits of one 320x256 image (the small tier,
# 10, plus the version's surcharge in billing/prices.toml)
CASES = [
    ("flux-2-dev", None, 12),
    ("flux-2-klein", None, 10),
    ("flux-2-klein", "flux-2-klein-9b", 11),
]


@pytest.mark.parametrize(("service", "version", "credits"), CASES)
async def test_generate_image_with_flux2_completes_and_is_charged(
    http: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    flux2_settings: Settings,
    service: str,
    version: str | None,
    credits: int,
) -> None:
    account = await create_account(sessions, flux2_settings, credits=START)
    request = {
        "service": service, "version": version, "prompt": "a photo of the cat",
        "width": 320, "height": 256, "seed": 11, "preview": True,
    }  # fmt: skip
    body = await gql(http, GENERATE, {"i": request}, key=account.api_key)
    assert "errors" not in body, body
    created = body["data"]["generateImage"]
    assert created["creditCost"] == credits
    job = await wait_job(http, account, created["id"])
    assert job["status"] == "completed", job
    assert job["creditCost"] == credits
    [output] = job["outputs"]
    image = await download(http, output)
    assert image.size == (320, 256)
    await assert_charged(sessions, account, START, credits)


async def test_a_text_to_image_job_with_flux2_refuses_a_negative_prompt(
    http: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    flux2_settings: Settings,
) -> None:
    account = await create_account(sessions, flux2_settings, credits=START)
    job = {"service": "flux-2-klein", "prompt": "a cat", "negativePrompt": "blurry"}
    body = await gql(http, CREATE_JOB, {"input": job}, key=account.api_key)
    [error] = body["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "negativePrompt"}
    assert "takes no negative prompt" in error["message"]
    await assert_charged(sessions, account, START, 0)
