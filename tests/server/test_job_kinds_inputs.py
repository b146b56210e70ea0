"""Image inputs of the job kinds end to end, and the money around them: ``image_url``
(fetched through the SSRF guard), ``image_id`` (an earlier output of the same account),
hostile or malformed uploads (refused naming the field, nothing charged, no job), too few
credits, cancelling a queued job, and an idempotent multipart retry."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Asset
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, balance, create_account, gql, wait_for_final
from tests.server.kinds_support import (
    GQL_JOB_FIELDS,
    MASK,
    PNG,
    ImageHost,
    assert_charged,
    assert_untouched,
    download,
    encoded,
    gql_upload,
    headers,
    job_count,
    mask,
    picture,
    refusal,
    rest_json,
    rest_submit,
    wait_job,
)

START = 1000
# Lowered from 16 MB so an oversized upload stays small; every image here is far below.
MAX_INPUT_BYTES = 1024 * 1024
IMG2IMG = """mutation M($input: ImageToImageInput!, $image: Upload) {
  job: imageToImage(input: $input, image: $image) { id kind status creditCost } }"""
INPAINT = """mutation M($input: InpaintInput!, $image: Upload, $mask: Upload) {
  job: inpaintImage(input: $input, image: $image, mask: $mask) { id } }"""
EDIT = """mutation M($input: EditInput!, $image: Upload) {
  job: editImage(input: $input, image: $image) { id } }"""
OUTPAINT = f"""mutation M($input: OutpaintInput!) {{
  job: outpaintImage(input: $input) {{ {GQL_JOB_FIELDS} }} }}"""
GENERATE = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""


@pytest.fixture(scope="module")
def input_settings(settings: Settings) -> Settings:
    return own_queue(
        settings, "inputs", webhook_allowed_hosts="127.0.0.1", max_input_bytes=MAX_INPUT_BYTES
    )


@pytest.fixture(scope="module")
def input_api(input_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(input_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def input_worker(input_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(input_settings) as w:
        yield w


@pytest.fixture
async def http(input_api: str, input_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=input_api, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def host() -> Iterator[ImageHost]:
    h = ImageHost()
    yield h
    h.close()


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], input_settings: Settings
) -> TestAccount:
    return await create_account(sessions, input_settings, credits=START)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``x``height`` (a decompression bomb's header) over
    a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + chunk(b"IEND", b"")
    )


# --- image_url ---------------------------------------------------------------------------


async def test_image_url_from_an_allowed_host(
    http: httpx.AsyncClient,
    input_api: str,
    customer: TestAccount,
    host: ImageHost,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    url = host.serve(encoded(picture(), "JPEG"), "image/jpeg")
    rest = await rest_json(http, customer, "image_to_image", {"prompt": "fetched", "imageUrl": url})
    assert rest.status_code == 202, rest.text
    assert url.removeprefix(host.base) in host.hits
    first = await wait_job(http, customer, rest.json()["id"])
    assert first["status"] == "completed", first
    assert [(i["role"], i["width"], i["height"]) for i in first["inputs"]] == [("image", 320, 256)]
    await download(http, first["outputs"][0])

    sent = await gql_upload(
        input_api, customer, IMG2IMG,
        {"input": {"prompt": "fetched", "imageUrl": host.serve(PNG)}},
    )  # fmt: skip
    assert "errors" not in sent, sent
    second = await wait_job(http, customer, sent["data"]["job"]["id"])
    assert second["status"] == "completed", second
    await assert_charged(sessions, customer, START, first["creditCost"] + second["creditCost"])


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.1.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "file:///etc/passwd",
    ],
)
async def test_private_image_urls_are_refused(
    url: str,
    http: httpx.AsyncClient,
    input_api: str,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    rest = await rest_json(http, customer, "image_to_image", {"prompt": "x", "image_url": url})
    error = refusal(rest, 400, "BAD_USER_INPUT")
    assert error["extensions"]["field"] == "image_url", error
    sent = await gql_upload(
        input_api, customer, IMG2IMG, {"input": {"prompt": "x", "imageUrl": url}}
    )
    [error] = sent["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "imageUrl"}, error
    await assert_untouched(sessions, customer, START)


async def test_image_url_failures_name_the_field(
    http: httpx.AsyncClient,
    customer: TestAccount,
    host: ImageHost,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    missing = f"{host.base}/nothing-here.png"
    too_large = host.serve(PNG + b"\0" * MAX_INPUT_BYTES)
    not_an_image = host.serve(b"<html><body>hello</body></html>", "text/html")
    for url in (missing, too_large, not_an_image):
        rest = await rest_json(http, customer, "edit", {"prompt": "x", "image_url": url})
        error = refusal(rest, 400, "BAD_USER_INPUT")
        assert error["extensions"]["field"] == "image_url", (url, error)
    await assert_untouched(sessions, customer, START)


async def test_loopback_url_is_refused_unless_allowed(
    api: str,
    settings: Settings,
    host: ImageHost,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The session's API allows no private host: 127.0.0.1 is never even connected to."""
    assert settings.webhook_allowed_hosts == ""
    account = await create_account(sessions, settings, credits=START)
    url = host.serve(PNG)
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        rest = await rest_json(client, account, "image_to_image", {"prompt": "x", "image_url": url})
        error = refusal(rest, 400, "BAD_USER_INPUT")
        assert error["extensions"]["field"] == "image_url"
        sent = await gql_upload(api, account, IMG2IMG, {"input": {"prompt": "x", "imageUrl": url}})
    [error] = sent["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "imageUrl"}
    assert url.removeprefix(host.base) not in host.hits
    await assert_untouched(sessions, account, START)


# --- image_id ----------------------------------------------------------------------------


async def test_image_id_chain_and_another_accounts_image(
    http: httpx.AsyncClient,
    input_api: str,
    customer: TestAccount,
    input_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # text-to-image → edit (image_id = that job's id) → outpaint (image_id = the output's id)
    made = await gql(
        http, GENERATE,
        {"input": {"service": "flux-schnell", "prompt": "a cat", "width": 256, "height": 256}},
        key=customer.api_key,
    )  # fmt: skip
    assert "errors" not in made, made
    t2i = await wait_for_final(http, customer.api_key, made["data"]["generateImage"]["id"])
    assert t2i["status"] == "completed", t2i

    rest = await rest_json(
        http, customer, "edit", {"prompt": "make it blue", "image_id": t2i["id"]}
    )
    assert rest.status_code == 202, rest.text
    edited = await wait_job(http, customer, rest.json()["id"])
    assert edited["status"] == "completed", edited
    assert [(i["role"], i["width"], i["height"]) for i in edited["inputs"]] == [("image", 256, 256)]
    edit_output = edited["outputs"][0]
    edit_pixels = await download(http, edit_output)

    sent = await gql_upload(
        input_api, customer, OUTPAINT,
        {"input": {"prompt": "more sky", "imageId": edit_output["id"], "top": 64}},
    )  # fmt: skip
    assert "errors" not in sent, sent
    outpainted = await wait_job(http, customer, sent["data"]["job"]["id"])
    assert outpainted["status"] == "completed", outpainted
    [given] = outpainted["inputs"]
    assert (given["role"], given["width"], given["height"]) == ("image", 256, 256)
    stored = await download(http, {**given, "format": "png"})
    assert stored.convert("RGB").tobytes() == edit_pixels.convert("RGB").tobytes()
    [output] = outpainted["outputs"]
    assert (output["width"], output["height"]) == (256, 320)
    await download(http, output)
    spent = sum(job["creditCost"] for job in (t2i, edited, outpainted))
    await assert_charged(sessions, customer, START, spent)

    # The text-to-image job is a job like the others, and its seed-001 poll still works.
    polled = await http.get(f"/v1/jobs/{t2i['id']}", headers=headers(customer))
    assert (polled.json()["kind"], polled.json()["url"]) == ("text_to_image", t2i["url"])
    seed = await http.get(f"/v1/text_to_image/{t2i['id']}", headers=headers(customer))
    assert seed.status_code == 200, seed.text

    # Someone else's image (by output id or by job id) is as good as missing.
    stranger = await create_account(sessions, input_settings, credits=START)
    for image_id in (edit_output["id"], t2i["id"], edited["id"], "not-an-image"):
        rest = await rest_json(http, stranger, "edit", {"prompt": "mine", "image_id": image_id})
        assert refusal(rest, 404, "NOT_FOUND")["extensions"]["field"] == "image_id"
    sent = await gql_upload(
        input_api, stranger, EDIT, {"input": {"prompt": "mine", "imageId": edit_output["id"]}}
    )
    assert sent["errors"][0]["extensions"] == {"code": "NOT_FOUND", "field": "imageId"}, sent
    await assert_untouched(sessions, stranger, START)

    # An image whose file is gone from the store (deleted by hand, lost) is missing too:
    # a 404 naming the field, not a 500, and nothing charged.
    async with sessions() as session:
        asset = await session.get(Asset, edit_output["id"])
    assert asset is not None
    (input_settings.storage_dir / asset.key).unlink()
    rest = await rest_json(http, customer, "edit", {"prompt": "gone", "image_id": str(asset.id)})
    assert refusal(rest, 404, "NOT_FOUND")["extensions"]["field"] == "image_id"
    await assert_charged(sessions, customer, START, spent)


async def test_create_job_and_price_job_name_a_field_alike(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """On GraphQL, fields are camelCase, errors included: ``priceJob`` and ``createJob``
    given the same input refuse it naming the same field."""
    values = {"prompt": "x", "imageUrl": "http://10.0.0.1/x.png"}
    price = await gql(
        http, "query P($input: JSON!) { priceJob(kind: \"edit\", input: $input) { credits } }",
        {"input": values}, key=customer.api_key,
    )  # fmt: skip
    create = await gql(
        http, "mutation C($input: JSON!) { createJob(kind: \"edit\", input: $input) { id } }",
        {"input": values}, key=customer.api_key,
    )  # fmt: skip
    assert price["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "imageUrl"}
    assert create["errors"][0]["extensions"] == price["errors"][0]["extensions"]
    await assert_untouched(sessions, customer, START)


# --- hostile and malformed uploads -----------------------------------------------------

SMALL_MASK = encoded(mask(256, 256))
BAD_UPLOADS: dict[str, tuple[str, dict[str, Any], dict[str, bytes], str]] = {
    # case → (kind, form fields, files, the field named)
    "truncated png": ("image_to_image", {}, {"image": PNG[: len(PNG) // 2]}, "image"),
    "text file": ("image_to_image", {}, {"image": b"just some text\n"}, "image"),
    "empty file": ("image_to_image", {}, {"image": b""}, "image"),
    "gif": ("edit", {}, {"image": encoded(picture(), "GIF")}, "image"),
    "svg": ("edit", {}, {"image": b'<svg xmlns="http://www.w3.org/2000/svg"/>'}, "image"),
    "over the byte cap": ("edit", {}, {"image": PNG + b"\0" * MAX_INPUT_BYTES}, "image"),
    "bomb header": ("image_to_image", {}, {"image": png_header(30000, 30000)}, "image"),
    "too thin": ("image_to_image", {}, {"image": png_header(9000, 16)}, "image"),
    "mask of another size": ("inpaint", {}, {"image": PNG, "mask": SMALL_MASK}, "mask"),
    "truncated mask": ("inpaint", {}, {"image": PNG, "mask": MASK[:100]}, "mask"),
    "no image": ("image_to_image", {}, {}, "image"),
    "no mask": ("inpaint", {}, {"image": PNG}, "mask"),
    "a mask where none is taken": ("edit", {}, {"image": PNG, "mask": MASK}, "mask"),
    "file and url": ("image_to_image", {"image_url": "http://127.0.0.1/x.png"}, {"image": PNG},
                     "image"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
async def test_bad_uploads_are_refused_and_cost_nothing(
    case: str,
    http: httpx.AsyncClient,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    kind, fields, files, field = BAD_UPLOADS[case]
    response = await rest_submit(http, customer, kind, {"prompt": "x", **fields}, files)
    error = refusal(response, 400, "BAD_USER_INPUT")
    assert error["extensions"]["field"] == field, error
    await assert_untouched(sessions, customer, START)


async def test_bad_uploads_on_graphql(
    input_api: str, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    cases: list[tuple[str, dict[str, Any], dict[str, bytes], str]] = [
        (IMG2IMG, {"prompt": "x"}, {"image": PNG[:200]}, "image"),
        (IMG2IMG, {"prompt": "x"}, {"image": png_header(30000, 30000)}, "image"),
        (IMG2IMG, {"prompt": "x"}, {}, "image"),
        (INPAINT, {"prompt": "x"}, {"image": PNG, "mask": encoded(picture(), "GIF")}, "mask"),
        (INPAINT, {"prompt": "x"}, {"image": PNG, "mask": SMALL_MASK}, "mask"),
        (IMG2IMG, {"prompt": "x", "imageUrl": "http://127.0.0.1/x.png"}, {"image": PNG}, "image"),
    ]
    for document, values, files, field in cases:
        sent = await gql_upload(input_api, customer, document, {"input": values}, files)
        [error] = sent["errors"]
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, (values, error)
    await assert_untouched(sessions, customer, START)


async def test_a_value_that_is_not_a_file_in_an_upload_variable_is_bad_input(
    input_api: str, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """An ``Upload`` variable sent as plain JSON (a string, a number, an object) instead of
    a multipart file: a 400 naming the variable, never an internal error, nothing charged."""
    create = (
        "mutation C($input: JSON!, $image: Upload) "
        '{ createJob(kind: "image_to_image", input: $input, image: $image) { id } }'
    )
    async with httpx.AsyncClient(base_url=input_api, timeout=30) as http:
        for value in ("not a file", 42, {"read": 1}, ["x"]):
            for document, variables in (
                (IMG2IMG, {"input": {"prompt": "x"}, "image": value}),
                (create, {"input": {"prompt": "x"}, "image": value}),
            ):
                response = await http.post(
                    "/graphql",
                    json={"query": document, "variables": variables},
                    headers={"Authorization": f"Bearer {customer.api_key}"},
                )
                [error] = response.json()["errors"]
                assert error["extensions"]["code"] in ("BAD_USER_INPUT",), (value, error)
                assert response.status_code < 500
    await assert_untouched(sessions, customer, START)


# --- credits, cancel, idempotency ----------------------------------------------------------


async def test_too_few_credits_for_a_kind(
    http: httpx.AsyncClient,
    input_api: str,
    input_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    poor = await create_account(sessions, input_settings, credits=5)
    response = await rest_submit(
        http, poor, "inpaint", {"prompt": "x"}, {"image": PNG, "mask": MASK}
    )
    refusal(response, 402, "INSUFFICIENT_CREDITS")
    sent = await gql_upload(input_api, poor, IMG2IMG, {"input": {"prompt": "x"}}, {"image": PNG})
    assert sent["errors"][0]["extensions"]["code"] == "INSUFFICIENT_CREDITS", sent
    await assert_untouched(sessions, poor, 5)


@pytest.fixture(scope="module")
def idle_api(settings: Settings, database: str) -> Iterator[str]:
    """An API on a queue no worker takes: its jobs stay queued."""
    with ThreadedServer.of(own_queue(settings, "idle")) as server:
        yield server.url


async def test_cancelling_a_queued_job_releases_its_credits(
    idle_api: str, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with httpx.AsyncClient(base_url=idle_api, timeout=60) as client:
        response = await rest_submit(
            client, customer, "image_to_image", {"prompt": "never run"}, {"image": PNG}
        )
        assert response.status_code == 202, response.text
        job = response.json()
        held = await balance(sessions, customer.id)
        assert (held.available, held.reserved) == (START - job["creditCost"], job["creditCost"])

        cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers(customer))
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        polled = await client.get(f"/v1/jobs/{job['id']}", headers=headers(customer))
        assert polled.status_code == 200
        assert (polled.json()["status"], polled.json()["outputs"]) == ("cancelled", [])
        again = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers(customer))
        refusal(again, 409, "CONFLICT")
    await assert_charged(sessions, customer, START, 0)


async def test_idempotent_multipart_retry_charges_once(
    http: httpx.AsyncClient,
    input_api: str,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    key = {"Idempotency-Key": "kinds-retry-1"}
    fields = {"prompt": "once", "seed": 7}
    first = await rest_submit(http, customer, "image_to_image", fields, {"image": PNG}, key)
    again = await rest_submit(http, customer, "image_to_image", fields, {"image": PNG}, key)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    job = await wait_job(http, customer, first.json()["id"])
    assert job["status"] == "completed", job
    # The retry's own copy of the upload was discarded, not the first one's.
    for given in job["inputs"]:
        assert (await http.get(given["url"])).status_code == 200

    other = encoded(Image.new("RGB", (320, 256), (10, 200, 30)))
    changed = await rest_submit(http, customer, "image_to_image", fields, {"image": other}, key)
    refusal(changed, 422, "IDEMPOTENCY_KEY_REUSED")

    # GraphQL uploads take the header too.
    document_key = {"Idempotency-Key": "kinds-retry-2"}
    sent = [
        await gql_upload(
            input_api, customer, IMG2IMG, {"input": {"prompt": "once more"}}, {"image": PNG},
            document_key,
        )
        for _ in range(2)
    ]  # fmt: skip
    assert sent[0]["data"]["job"]["id"] == sent[1]["data"]["job"]["id"], sent
    second = await wait_job(http, customer, sent[0]["data"]["job"]["id"])
    assert second["status"] == "completed"
    assert await job_count(sessions, customer) == 2
    await assert_charged(sessions, customer, START, job["creditCost"] + second["creditCost"])


async def test_unstorable_text_names_the_body_field_on_rest(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A NUL or a lone surrogate in a REST body's field is refused naming that field as the
    body has it (`prompt`), not the GraphQL variable it travels in (`input.prompt`)."""
    for prompt in ("a\x00b", "\ud800"):
        body = json.dumps({"prompt": prompt, "image_id": "x"}).encode()
        response = await http.post(
            "/v1/edit",
            content=body,
            headers=headers(customer, {"Content-Type": "application/json"}),
        )
        error = refusal(response, 400, "BAD_USER_INPUT")
        assert error["extensions"]["field"] == "prompt", error
    await assert_untouched(sessions, customer, START)
