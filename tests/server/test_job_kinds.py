"""The image job kinds end to end: image_to_image, edit, inpaint and outpaint submitted on
REST (a real multipart upload) and on GraphQL (gql's client, by the GraphQL multipart
request spec), run by a real arq worker on the tiny FLUX pipelines, their outputs
downloaded from their URLs, the credits settled at the quoted price; several images and
output formats; the webhook of an edit job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic.alias_generators import to_camel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import UploadFile

from gpu_worker.webhooks import build_webhook_worker
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, create_account, gql
from tests.gpu_worker.test_webhooks import Receiver
from tests.server.kinds_support import (
    GQL_JOB_FIELDS,
    JOB_DOCUMENT_KEYS,
    MASK,
    PNG,
    ImageHost,
    assert_charged,
    download,
    gql_upload,
    price_job,
    rest_submit,
    sniffed,
    wait_job,
)
from tests.server.test_dashboard_checkout import signed_in

START = 1000
SIZE = (320, 256)
# kind → (its own parameters, its uploads, the output size for a 320x256 input)
KINDS: dict[str, tuple[dict[str, Any], dict[str, bytes], tuple[int, int]]] = {
    "image_to_image": ({"strength": 0.8}, {"image": PNG}, SIZE),
    "edit": ({}, {"image": PNG}, SIZE),
    "inpaint": ({}, {"image": PNG, "mask": MASK}, SIZE),
    "outpaint": ({"left": 64}, {"image": PNG}, (SIZE[0] + 64, SIZE[1])),
}
MUTATIONS = {
    "image_to_image": ("imageToImage", "ImageToImageInput"),
    "edit": ("editImage", "EditInput"),
    "inpaint": ("inpaintImage", "InpaintInput"),
    "outpaint": ("outpaintImage", "OutpaintInput"),
}
GENERATION = f"query G($id: ID!) {{ generation(id: $id) {{ {GQL_JOB_FIELDS} }} }}"
CREATE_JOB = """mutation C($input: JSON!) {
  createJob(kind: "text_to_image", input: $input) { id width height creditCost } }"""


@pytest.fixture(scope="module")
def kind_settings(settings: Settings) -> Settings:
    # 127.0.0.1 allowed: image URLs and webhooks served by this test reach the server.
    return own_queue(
        settings, "kinds", webhook_allowed_hosts="127.0.0.1", webhook_retry_schedule="0.3,0.3"
    )


@pytest.fixture(scope="module")
def kind_api(kind_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(kind_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def kind_worker(kind_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(kind_settings) as w:
        yield w


@pytest.fixture
async def http(kind_api: str, kind_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=kind_api, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def host() -> Iterator[ImageHost]:
    h = ImageHost()
    yield h
    h.close()


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], kind_settings: Settings
) -> TestAccount:
    return await create_account(sessions, kind_settings, credits=START)


def quote_input(kind: str, host: ImageHost, own: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``priceJob``'s input for the same job: the uploads as URLs of the same bytes."""
    values: dict[str, Any] = {"prompt": "priced", **own, **extra}
    for name, data in KINDS[kind][1].items():
        values[f"{name}Url"] = host.serve(data)
    return values


def check_inputs(job: dict[str, Any], kind: str) -> None:
    assert [(i["role"], i["width"], i["height"]) for i in job["inputs"]] == [
        (name, *SIZE) for name in KINDS[kind][1]
    ]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_kind_on_rest_with_a_multipart_upload(
    kind: str,
    http: httpx.AsyncClient,
    customer: TestAccount,
    host: ImageHost,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    own, files, size = KINDS[kind]
    response = await rest_submit(
        http, customer, kind, {"prompt": "a lighthouse at dusk", **own}, files
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) >= JOB_DOCUMENT_KEYS, accepted
    assert accepted["kind"] == kind and accepted["status"] == "queued"
    assert accepted["outputs"] == [] and accepted["url"] is None
    check_inputs(accepted, kind)

    job = await wait_job(http, customer, accepted["id"])
    assert job["status"] == "completed", job
    assert job["kind"] == kind and job["progress"] == 100 and job["error"] is None
    [output] = job["outputs"]
    assert (output["width"], output["height"], output["format"]) == (*size, "png")
    assert job["url"] == output["url"]
    assert job["completedAt"] is not None
    await download(http, output)
    check_inputs(job, kind)
    for given in job["inputs"]:  # the stored inputs are served too: clean PNGs
        stored = await http.get(given["url"])
        assert stored.status_code == 200 and sniffed(stored.content) == "png"

    quote = await price_job(http, customer, kind, quote_input(kind, host, own))
    assert (quote["kind"], quote["count"], quote["width"], quote["height"]) == (kind, 1, *size)
    assert quote["credits"] == job["creditCost"] == accepted["creditCost"]
    await assert_charged(sessions, customer, START, job["creditCost"])


@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_kind_on_graphql_with_a_multipart_upload(
    kind: str,
    http: httpx.AsyncClient,
    kind_api: str,
    customer: TestAccount,
    host: ImageHost,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    own, files, size = KINDS[kind]
    mutation, input_type = MUTATIONS[kind]
    uploads = ", ".join(f"${name}: Upload" for name in files)
    arguments = ", ".join(f"{name}: ${name}" for name in files)
    document = (
        f"mutation M($input: {input_type}!, {uploads}) "
        f"{{ job: {mutation}(input: $input, {arguments}) {{ {GQL_JOB_FIELDS} }} }}"
    )
    sent = await gql_upload(
        kind_api, customer, document, {"input": {"prompt": "a red barn", **own}}, files
    )
    assert "errors" not in sent, sent
    accepted = sent["data"]["job"]
    assert accepted["kind"] == kind and accepted["status"] == "queued"
    check_inputs(accepted, kind)

    await wait_job(http, customer, accepted["id"])
    body = await gql(http, GENERATION, {"id": accepted["id"]}, key=customer.api_key)
    job = body["data"]["generation"]
    assert job["status"] == "completed", job
    [output] = job["outputs"]
    assert (output["width"], output["height"], output["format"]) == (*size, "png")
    assert (job["width"], job["height"]) == size and job["url"] == output["url"]
    await download(http, output)
    check_inputs(job, kind)

    quote = await price_job(http, customer, kind, quote_input(kind, host, own))
    assert quote["credits"] == job["creditCost"]
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_four_webp_images_cost_four_times_one(
    http: httpx.AsyncClient,
    customer: TestAccount,
    host: ImageHost,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    fields = {"prompt": "four of a kind", "count": 4, "format": "webp", "output_quality": 70}
    response = await rest_submit(http, customer, "image_to_image", fields, {"image": PNG})
    assert response.status_code == 202, response.text
    job = await wait_job(http, customer, response.json()["id"])
    assert job["status"] == "completed", job
    outputs = job["outputs"]
    assert len(outputs) == 4
    assert len({o["id"] for o in outputs}) == len({o["url"] for o in outputs}) == 4
    assert job["url"] == outputs[0]["url"]
    for output in outputs:
        assert (output["width"], output["height"], output["format"]) == (*SIZE, "webp")
        await download(http, output)  # RIFF....WEBP, image/webp

    one = await price_job(http, customer, "image_to_image", quote_input("image_to_image", host, {}))
    four = await price_job(
        http, customer, "image_to_image", quote_input("image_to_image", host, {}, count=4)
    )
    assert (one["count"], four["count"]) == (1, 4)
    assert four["unitCredits"] == one["unitCredits"] == one["credits"]
    assert job["creditCost"] == four["credits"] == 4 * one["credits"]
    await assert_charged(sessions, customer, START, 4 * one["credits"])


async def test_jpeg_through_create_job_with_an_upload(
    http: httpx.AsyncClient,
    kind_api: str,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    document = f"""mutation C($kind: String!, $input: JSON!, $image: Upload) {{
      job: createJob(kind: $kind, input: $input, image: $image) {{ {GQL_JOB_FIELDS} }} }}"""
    sent = await gql_upload(
        kind_api,
        customer,
        document,
        {"kind": "edit", "input": {"prompt": "sepia", "format": "jpeg", "outputQuality": 60,
                                   "count": 2}},
        {"image": PNG},
    )  # fmt: skip
    assert "errors" not in sent, sent
    job = await wait_job(http, customer, sent["data"]["job"]["id"])
    assert job["status"] == "completed" and job["kind"] == "edit", job
    assert [(o["width"], o["height"], o["format"]) for o in job["outputs"]] == [
        (*SIZE, "jpeg"),
        (*SIZE, "jpeg"),
    ]
    for output in job["outputs"]:
        await download(http, output)  # FF D8 FF, image/jpeg
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_edit_webhook_names_the_kind_and_every_output(
    http: httpx.AsyncClient, kind_settings: Settings, customer: TestAccount
) -> None:
    receiver = Receiver()
    try:
        with ThreadedWorker(kind_settings, build=build_webhook_worker):
            fields = {"prompt": "make it snow", "count": 2, "webhook_url": receiver.url,
                      "webhook_events": "started,completed"}  # fmt: skip
            response = await rest_submit(http, customer, "edit", fields, {"image": PNG})
            assert response.status_code == 202, response.text
            job = await wait_job(http, customer, response.json()["id"])
            assert job["status"] == "completed", job
            deadline = time.monotonic() + 30
            while len(receiver.requests) < 2:  # started and completed
                assert time.monotonic() < deadline, receiver.requests
                await asyncio.sleep(0.05)
    finally:
        receiver.close()
    payloads = {p["event"]: p for p in (json.loads(r["body"]) for r in receiver.requests)}
    assert set(payloads) == {"started", "completed"}
    done = payloads["completed"]
    # Seed 001's fields, as they were.
    assert (done["id"], done["status"], done["service"]) == (
        job["id"],
        "completed",
        "flux-kontext-pro",
    )
    assert done["url"] == job["url"] == job["outputs"][0]["url"]
    assert done["createdAt"].endswith("Z") and done["completedAt"].endswith("Z")
    assert (done["metadata"]["width"], done["metadata"]["height"]) == SIZE
    assert done["metadata"]["duration"] > 0
    # And the kind's.
    assert done["kind"] == "edit"
    assert done["outputs"] == [
        {"url": o["url"], "width": o["width"], "height": o["height"], "format": o["format"]}
        for o in job["outputs"]
    ]
    assert len(done["outputs"]) == 2
    assert payloads["started"]["kind"] == "edit" and payloads["started"]["outputs"] == []


@pytest.mark.parametrize("surface", ["rest", "graphql"])
async def test_uploaded_files_are_closed_after_the_request(
    surface: str,
    http: httpx.AsyncClient,
    kind_api: str,
    customer: TestAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each uploaded part is spooled to a temporary file (on disk past 1 MB): the server
    must close it when the request ends, not leave it to the garbage collector. The test
    holds every upload the server makes, so none is collected before it is checked."""
    created: list[UploadFile] = []
    original = UploadFile.__init__

    def tracking(self: UploadFile, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(UploadFile, "__init__", tracking)
    try:
        if surface == "rest":
            response = await rest_submit(
                http, customer, "inpaint", {"prompt": "x"}, {"image": PNG, "mask": MASK}
            )
            assert response.status_code == 202, response.text
        else:
            sent = await gql_upload(
                kind_api, customer,
                """mutation M($input: InpaintInput!, $image: Upload, $mask: Upload) {
                  inpaintImage(input: $input, image: $image, mask: $mask) { id } }""",
                {"input": {"prompt": "x"}}, {"image": PNG, "mask": MASK},
            )  # fmt: skip
            assert "errors" not in sent, sent
        assert len(created) == 2
        deadline = time.monotonic() + 5
        while not all(upload.file.closed for upload in created):
            assert time.monotonic() < deadline, f"{surface}: the uploaded files were left open"
            await asyncio.sleep(0.02)
    finally:
        for upload in created:
            upload.file.close()


async def test_dashboard_job_page_shows_inputs_and_outputs(
    http: httpx.AsyncClient, customer: TestAccount
) -> None:
    """The dashboard's job page, for a kind with two inputs and two outputs: every image
    shown (and each one served)."""
    files = KINDS["inpaint"][1]
    response = await rest_submit(http, customer, "inpaint", {"prompt": "a door", "count": 2}, files)
    assert response.status_code == 202, response.text
    job = await wait_job(http, customer, response.json()["id"])
    assert job["status"] == "completed", job
    await signed_in(http, customer.api_key)
    page = await http.get(f"/dashboard/jobs/{job['id']}")
    assert page.status_code == 200
    html = page.text
    inputs = html[html.index('id="inputs"') : html.index('id="outputs"')]
    outputs = html[html.index('id="outputs"') :]
    for image in job["inputs"]:
        assert (
            image["url"] in inputs
            and f"{image['role']}, {SIZE[0]}\N{MULTIPLICATION SIGN}{SIZE[1]}" in inputs
        )
    assert len(job["outputs"]) == 2
    for image in job["outputs"]:
        assert image["url"] in outputs
        served = await http.get(image["url"])
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"


async def test_text_to_image_upscales_to_a_target_by_redrawing_it_there(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """target_width/target_height: made at 320x256, enlarged to 640x512 and redrawn there
    by img2img at target_strength — both passes run (the job's steps: 4 made, then 2 of 4
    at strength 0.5 redrawn), priced as a generation at the target size."""
    fields = {
        "service": "flux-dev", "prompt": "a castle on a hill", "width": 320, "height": 256,
        "target_width": 640, "target_height": 512, "target_strength": 0.5, "steps": 4,
        "seed": 7,
    }  # fmt: skip
    # POST /v1/text_to_image is seed 001's shim: the kind's own input is createJob's.
    sent = await gql(http, CREATE_JOB, {"input": fields}, key=customer.api_key)
    assert "errors" not in sent, sent
    accepted = sent["data"]["createJob"]
    assert (accepted["width"], accepted["height"]) == (640, 512)
    job = await wait_job(http, customer, accepted["id"])
    assert job["status"] == "completed", job
    [output] = job["outputs"]
    assert (output["width"], output["height"]) == (640, 512)
    await download(http, output)
    steps = await gql(
        http, "query G($id: ID!) { generation(id: $id) { step totalSteps progress } }",
        {"id": job["id"]}, key=customer.api_key,
    )  # fmt: skip
    assert steps["data"]["generation"] == {"step": 6, "totalSteps": 6, "progress": 100}
    plain = await price_job(
        http, customer, "text_to_image",
        {"service": "flux-dev", "prompt": "p", "width": 640, "height": 512},
    )  # fmt: skip
    assert plain["credits"] == job["creditCost"] == accepted["creditCost"]
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_a_bad_upscale_target_is_refused_and_costs_nothing(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    base = {"service": "flux-dev", "prompt": "p", "width": 512, "height": 512}
    for extra, field in (
        ({"target_width": 1024}, "target_height"),
        ({"target_height": 1024}, "target_width"),
        ({"target_width": 256, "target_height": 1024}, "target_width"),
        ({"target_width": 1000, "target_height": 1024}, "target_width"),
        # Another aspect ratio would crop the image: refused, not cropped.
        ({"target_width": 1024, "target_height": 768}, "target_height"),
        ({"target_width": 512, "target_height": 1024}, "target_height"),
        ({"target_width": 1024, "target_height": 99999}, "target_height"),
        ({"target_width": 1024, "target_height": 1024, "target_strength": 0}, "target_strength"),
        ({"target_width": 1024, "target_height": 1024, "service": "flux-2-klein"}, "target_width"),
    ):
        sent = await gql(http, CREATE_JOB, {"input": {**base, **extra}}, key=customer.api_key)
        [error] = sent["errors"]
        # GraphQL names the kind's fields in camelCase.
        wanted = {"code": "BAD_USER_INPUT", "field": to_camel(field)}
        assert error["extensions"] == wanted, (extra, error)
    # The same size as the image: nothing to upscale, a plain job.
    unchanged = {**base, "target_width": 512, "target_height": 512, "steps": 1}
    same = await gql(http, CREATE_JOB, {"input": unchanged}, key=customer.api_key)
    assert "errors" not in same, same
    done = await wait_job(http, customer, same["data"]["createJob"]["id"])
    assert done["status"] == "completed" and (done["width"], done["height"]) == (512, 512)
    await assert_charged(sessions, customer, START, done["creditCost"])
