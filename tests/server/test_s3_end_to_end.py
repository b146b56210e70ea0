"""The real API and a real worker with ``FLUXGATE_STORAGE_URL=s3://…`` against a real S3
server process (moto's, tests/s3_server.py): a text-to-image job, an image_to_image job
with an uploaded input, and an edit of an earlier output (the API reads it back from the
bucket) complete; their URLs are presigned S3 URLs that download the images; the inputs
and outputs are objects under the prefix, none on the local disk.

Then the store failing: an upload while it is down is a 503 that charges nothing; a job
whose input the worker cannot read is retried and completes once the store answers; a
job whose image cannot be stored fails and its credits are released."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gpu_worker.worker import FAILURE_MESSAGE
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, create_account, gql
from tests.s3_server import S3Server, aws_test_credentials
from tests.server.kinds_support import (
    PNG,
    assert_charged,
    assert_untouched,
    download,
    headers,
    refusal,
    rest_json,
    rest_submit,
    sniffed,
    wait_job,
)

START = 1000
BUCKET = "fluxgate-images"
PREFIX = "e2e"
GENERATE = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
T2I = {"service": "flux-schnell", "prompt": "a lighthouse", "width": 256, "height": 256}


@pytest.fixture(scope="module", autouse=True)
def aws_env() -> Iterator[None]:
    with aws_test_credentials():
        yield


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


def on_s3(settings: Settings, s3: S3Server, name: str, **update: Any) -> Settings:
    return own_queue(
        settings,
        name,
        storage_url=f"s3://{BUCKET}/{PREFIX}",
        s3_endpoint_url=s3.url,
        **update,
    )


@pytest.fixture(scope="module")
def s3_settings(settings: Settings, s3: S3Server) -> Settings:
    return on_s3(settings, s3, "s3")


@pytest.fixture(scope="module")
def s3_api(s3_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(s3_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def s3_worker(s3_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(s3_settings) as w:
        yield w


@pytest.fixture
async def http(s3_api: str, s3_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=s3_api, timeout=60) as client:
        yield client


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], s3_settings: Settings
) -> TestAccount:
    return await create_account(sessions, s3_settings, credits=START)


def objects(s3: S3Server, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def assert_presigned(url: str, s3: S3Server, name_prefix: str) -> str:
    """``url`` is a presigned GET of an object under ``name_prefix``; its object name."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3.url, url
    assert parts.path.startswith(f"/{BUCKET}/{name_prefix}"), url
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "X-Amz-Signature" in query
    assert query["X-Amz-Expires"] == ["3600"]
    return parts.path.removeprefix(f"/{BUCKET}/")


async def submit_t2i(http: httpx.AsyncClient, customer: TestAccount) -> str:
    made = await gql(http, GENERATE, {"input": T2I}, key=customer.api_key)
    assert "errors" not in made, made
    job_id: str = made["data"]["generateImage"]["id"]
    return job_id


async def test_deleting_a_library_image_deletes_its_objects(
    http: httpx.AsyncClient, customer: TestAccount, s3: S3Server
) -> None:
    """deleteImage (issue 13) removes the output and its thumbnail from the bucket."""
    job_id = await submit_t2i(http, customer)
    assert (await wait_job(http, customer, job_id))["status"] == "completed"
    assert len(objects(s3, f"{PREFIX}/{job_id}-")) == 2
    body = await gql(http, "{ images(first: 100) { edges { node { id generationId } } } }",
                     key=customer.api_key)  # fmt: skip
    [image_id] = [
        e["node"]["id"] for e in body["data"]["images"]["edges"]
        if e["node"]["generationId"] == job_id
    ]  # fmt: skip
    deleted = await gql(
        http, "mutation D($id: ID!) { deleteImage(id: $id) }", {"id": image_id},
        key=customer.api_key,
    )  # fmt: skip
    assert deleted == {"data": {"deleteImage": image_id}}
    assert objects(s3, f"{PREFIX}/{job_id}-") == {}


async def test_text_to_image_output_is_a_presigned_s3_url(
    http: httpx.AsyncClient,
    customer: TestAccount,
    s3: S3Server,
    s3_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await submit_t2i(http, customer)
    job = await wait_job(http, customer, job_id)
    assert job["status"] == "completed", job
    [output] = job["outputs"]
    name = assert_presigned(output["url"], s3, f"{PREFIX}/{job_id}-")
    assert urlsplit(job["url"]).path == urlsplit(output["url"]).path  # each signed anew
    await download(http, output)  # from S3 itself: PNG bytes, image/png, the right size

    stored = objects(s3, f"{PREFIX}/{job_id}-")
    thumbnail = f"{name.rpartition('.')[0]}.thumb.webp"  # the library's (issue 13)
    assert sorted(stored) == sorted([name, thumbnail]) and sniffed(stored[name]) == "png"
    assert sniffed(stored[thumbnail]) == "webp"
    assert not list(s3_settings.storage_dir.glob(f"{job_id}*"))  # nothing on the local disk
    # The API serves local files only: with S3 its /files/ route has nothing.
    key = name.removeprefix(f"{PREFIX}/")
    assert (await http.get(f"/files/{key}")).status_code == 404
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_image_to_image_with_an_uploaded_input(
    http: httpx.AsyncClient,
    customer: TestAccount,
    s3: S3Server,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    response = await rest_submit(
        http, customer, "image_to_image", {"prompt": "at night", "strength": 0.8}, {"image": PNG}
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    [given] = accepted["inputs"]
    name = assert_presigned(given["url"], s3, f"{PREFIX}/inputs/")
    # The upload is an object in the bucket, and its URL serves it.
    stored = objects(s3, name)
    assert sniffed(stored[name]) == "png"
    fetched = await http.get(given["url"])
    assert fetched.status_code == 200 and fetched.content == stored[name]
    assert fetched.headers["content-type"] == "image/png"

    job = await wait_job(http, customer, accepted["id"])
    assert job["status"] == "completed", job
    [output] = job["outputs"]
    assert_presigned(output["url"], s3, f"{PREFIX}/{job['id']}-")
    image = await download(http, output)
    assert image.size == (320, 256)
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_an_edit_of_an_earlier_output_reads_it_from_the_bucket(
    http: httpx.AsyncClient, customer: TestAccount, s3: S3Server
) -> None:
    first = await wait_job(http, customer, await submit_t2i(http, customer))
    assert first["status"] == "completed", first
    response = await rest_json(
        http, customer, "edit", {"prompt": "make it blue", "image_id": first["id"]}
    )
    assert response.status_code == 202, response.text
    edited = await wait_job(http, customer, response.json()["id"])
    assert edited["status"] == "completed", edited
    [given] = edited["inputs"]
    assert_presigned(given["url"], s3, f"{PREFIX}/inputs/")
    await download(http, edited["outputs"][0])


# --- the store failing -------------------------------------------------------------------


@dataclass
class Faulty:
    """An API on an S3 server of its own, which the test stops or stalls."""

    s3: S3Server
    settings: Settings
    api: str


@pytest.fixture
def faulty(settings: Settings, database: str) -> Iterator[Faulty]:
    server = S3Server().start()
    try:
        server.create_bucket(BUCKET)
        # Short timeouts: a stalled store fails a call within about 2 x 0.5 s.
        own = on_s3(settings, server, "s3-faulty", s3_timeout_s=0.5, s3_max_attempts=2)
        with ThreadedServer.of(own) as api:
            yield Faulty(server, own, api.url)
    finally:
        server.stop()


@pytest.fixture
async def faulty_http(faulty: Faulty) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=faulty.api, timeout=60) as client:
        yield client


async def wait_logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, f"never logged: {text}"
        await asyncio.sleep(0.05)


async def test_an_upload_while_the_store_is_down_is_503_and_charges_nothing(
    faulty: Faulty, faulty_http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    customer = await create_account(sessions, faulty.settings, credits=START)
    faulty.s3.kill()
    response = await rest_submit(
        faulty_http, customer, "image_to_image", {"prompt": "p", "strength": 0.5}, {"image": PNG}
    )
    error = refusal(response, 503, "SERVICE_UNAVAILABLE")
    assert error["message"] == "Image storage is temporarily unavailable; retry shortly"
    assert response.headers["retry-after"] == "5"
    await assert_untouched(sessions, customer, START)
    # The rest of the API is unaffected.
    missing = await faulty_http.get(f"/v1/jobs/{uuid.uuid4()}", headers=headers(customer))
    assert missing.status_code == 404


async def test_a_job_whose_input_cannot_be_read_is_retried_until_the_store_answers(
    faulty: Faulty,
    faulty_http: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="runtime.storage")
    customer = await create_account(sessions, faulty.settings, credits=START)
    response = await rest_submit(
        faulty_http, customer, "image_to_image", {"prompt": "p", "strength": 0.5}, {"image": PNG}
    )
    assert response.status_code == 202, response.text  # stored; no worker yet
    faulty.s3.pause()
    with ThreadedWorker(faulty.settings):
        await wait_logged(caplog, "S3 get of")  # the worker's read failed: arq retries
        faulty.s3.resume()
        job = await wait_job(faulty_http, customer, response.json()["id"])
    assert job["status"] == "completed", job
    await assert_charged(sessions, customer, START, job["creditCost"])  # once


async def test_a_job_whose_image_cannot_be_stored_fails_and_is_released(
    faulty: Faulty,
    faulty_http: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="runtime.storage")
    customer = await create_account(sessions, faulty.settings, credits=START)
    faulty.s3.pause()  # a text-to-image job needs the store only for its output
    with ThreadedWorker(faulty.settings):
        job_id = await submit_t2i(faulty_http, customer)
        job = await wait_job(faulty_http, customer, job_id)
    faulty.s3.resume()
    assert job["status"] == "failed", job
    assert job["error"] == FAILURE_MESSAGE and job["outputs"] == []
    assert any("S3 put of" in r.getMessage() for r in caplog.records)
    await assert_charged(sessions, customer, START, 0)  # released: nothing spent or held
