"""A job kind registered from outside the application runs on every surface with no
other change: ``invert`` (no model: Pillow inverts the colours) is registered here, given
a price row, and submitted on REST (``POST /v1/invert``, multipart) and GraphQL
(``createJob``); the real worker runs it, the ledger settles it at its quote, the job
document and the webhook show it."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image, ImageOps
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import kinds
from billing.pricing import PRICES_FILE, PriceTable
from gpu_worker.webhooks import build_webhook_worker
from kinds.base import (
    ImageInfo,
    InputSpec,
    JobKind,
    KindParams,
    Output,
    OutputOptions,
    Pipelines,
    Plan,
    PlanContext,
    StepCallback,
)
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, create_account, gql
from tests.gpu_worker.test_webhooks import Receiver
from tests.server.kinds_support import (
    GQL_JOB_FIELDS,
    PNG,
    ImageHost,
    assert_charged,
    download,
    gql_upload,
    picture,
    price_job,
    rest_submit,
    wait_job,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


START = 1000
SURCHARGE = 2


class InvertParams(OutputOptions):
    """format, output_quality, count: nothing of its own."""


class Invert(JobKind):
    name = "invert"
    title = "Invert colours"
    Params = InvertParams
    inputs = (InputSpec("image", description="The image to invert."),)

    def plan(self, params: KindParams, inputs: Mapping[str, ImageInfo], ctx: PlanContext) -> Plan:
        assert isinstance(params, InvertParams)
        image = inputs["image"]
        quote = ctx.prices.quote(
            width=image.width, height=image.height, version="invert", kind=self.name,
            count=params.count,
        )  # fmt: skip
        return Plan(
            params={
                "format": params.format,
                "output_quality": params.output_quality,
                "count": params.count,
            },
            quote=quote,
            provider="pillow",
            version="invert",
            prompt="",
            width=image.width,
            height=image.height,
            steps=1,
            guidance=0.0,
            seed=0,
        )

    def run(
        self,
        pipelines: Pipelines,
        params: Mapping[str, Any],
        inputs: Mapping[str, PILImage],
        on_step: StepCallback,
    ) -> list[Output]:
        inverted = ImageOps.invert(inputs["image"].convert("RGB"))
        on_step(1, 1, None)
        return [Output(image=inverted.copy()) for _ in range(int(params["count"]))]


@pytest.fixture(scope="module")
def invert_kind() -> Iterator[Invert]:
    kind = Invert()
    kinds.register(kind)
    try:
        yield kind
    finally:
        kinds.unregister(kind.name)


@pytest.fixture(scope="module")
def prices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped price table with a row for ``invert`` in its ``[kind_surcharge]``."""
    text = PRICES_FILE.read_text()
    header = "\n[kind_surcharge]\n"
    assert text.count(header) == 1, "no [kind_surcharge] section"
    path = tmp_path_factory.mktemp("prices") / "prices.toml"
    path.write_text(text.replace(header, f"{header}invert = {SURCHARGE}\n"))
    return path


@pytest.fixture(scope="module")
def invert_settings(settings: Settings, prices: Path) -> Settings:
    return own_queue(
        settings, "invert", prices=prices, webhook_allowed_hosts="127.0.0.1",
        webhook_retry_schedule="0.3,0.3",
    )  # fmt: skip


@pytest.fixture(scope="module")
def invert_api(invert_kind: Invert, invert_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(invert_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def invert_worker(
    invert_kind: Invert, invert_settings: Settings, database: str
) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(invert_settings) as w:
        yield w


@pytest.fixture
async def http(invert_api: str, invert_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=invert_api, timeout=60) as client:
        yield client


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], invert_settings: Settings
) -> TestAccount:
    return await create_account(sessions, invert_settings, credits=START)


def expected_price(prices: Path, count: int = 1) -> int:
    # small tier (320x256) + no version surcharge + standard quality + invert's row
    quote = PriceTable.load(prices).quote(
        width=320, height=256, version="invert", kind="invert", count=count
    )
    assert quote.unit_credits == 10 + SURCHARGE
    return quote.credits


async def inverted_output(http: httpx.AsyncClient, output: Mapping[str, Any]) -> None:
    image = await download(http, output)
    assert (output["width"], output["height"], output["format"]) == (320, 256, "png")
    want = ImageOps.invert(Image.open(io.BytesIO(PNG)).convert("RGB"))
    assert image.convert("RGB").tobytes() == want.tobytes()
    assert want.tobytes() != picture().tobytes()


async def test_invert_on_rest_with_its_webhook(
    http: httpx.AsyncClient,
    invert_settings: Settings,
    customer: TestAccount,
    prices: Path,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    receiver = Receiver()
    try:
        with ThreadedWorker(invert_settings, build=build_webhook_worker):
            fields = {"count": 2, "webhook_url": receiver.url}
            response = await rest_submit(http, customer, "invert", fields, {"image": PNG})
            assert response.status_code == 202, response.text
            accepted = response.json()
            assert (accepted["kind"], accepted["status"]) == ("invert", "queued")
            assert accepted["creditCost"] == expected_price(prices, count=2)
            job = await wait_job(http, customer, accepted["id"])  # GET /v1/jobs/{id}
            assert job["status"] == "completed", job
            deadline = time.monotonic() + 30
            while not receiver.requests:
                assert time.monotonic() < deadline, "no webhook"
                await asyncio.sleep(0.05)
    finally:
        receiver.close()
    assert job["kind"] == "invert" and len(job["outputs"]) == 2
    for output in job["outputs"]:
        await inverted_output(http, output)
    assert [(i["role"], i["width"], i["height"]) for i in job["inputs"]] == [("image", 320, 256)]
    await assert_charged(sessions, customer, START, expected_price(prices, count=2))

    [request] = receiver.requests
    payload = json.loads(request["body"])
    assert (payload["id"], payload["kind"], payload["status"]) == (job["id"], "invert", "completed")
    assert payload["url"] == job["url"] == job["outputs"][0]["url"]
    assert [o["url"] for o in payload["outputs"]] == [o["url"] for o in job["outputs"]]


async def test_invert_on_graphql_create_job(
    http: httpx.AsyncClient,
    invert_api: str,
    customer: TestAccount,
    prices: Path,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    host = ImageHost()
    try:
        quote = await price_job(http, customer, "invert", {"imageUrl": host.serve(PNG)})
    finally:
        host.close()
    assert (quote["kind"], quote["credits"]) == ("invert", expected_price(prices))

    document = f"""mutation C($input: JSON!, $image: Upload) {{
      job: createJob(kind: "invert", input: $input, image: $image) {{ {GQL_JOB_FIELDS} }} }}"""
    sent = await gql_upload(invert_api, customer, document, {"input": {}}, {"image": PNG})
    assert "errors" not in sent, sent
    accepted = sent["data"]["job"]
    assert accepted["kind"] == "invert" and accepted["creditCost"] == quote["credits"]
    await wait_job(http, customer, accepted["id"])
    body = await gql(
        http,
        f"query G($id: ID!) {{ generation(id: $id) {{ {GQL_JOB_FIELDS} }} }}",
        {"id": accepted["id"]},
        key=customer.api_key,
    )
    job = body["data"]["generation"]
    assert (job["kind"], job["status"]) == ("invert", "completed"), job
    [output] = job["outputs"]
    await inverted_output(http, output)
    await assert_charged(sessions, customer, START, quote["credits"])


async def test_invert_is_refused_without_its_image(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    response = await rest_submit(http, customer, "invert", {"count": 1})
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"] == {
        "code": "BAD_USER_INPUT", "field": "image"
    }  # fmt: skip
    await assert_charged(sessions, customer, START, 0)
