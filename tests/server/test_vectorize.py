"""``vectorize`` end to end: an image of flat shapes made here is submitted on REST
(multipart) and GraphQL (``vectorizeImage``, by URL), traced by the real worker, stored
as an SVG or EPS asset, downloaded with its own Content-Type, checked for what it claims
(the SVG parses and renders back close to the input; the EPS is EPS with a bounding box),
shown on the dashboard's job page, and charged its quote; bad inputs cost nothing."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from typing import Any

import cairosvg
import httpx
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.pricing import PriceTable
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, create_account, gql
from tests.server.kinds_support import (
    GQL_JOB_FIELDS,
    PNG,
    ImageHost,
    assert_charged,
    assert_untouched,
    encoded,
    gql_upload,
    headers,
    refusal,
    rest_json,
    rest_submit,
    wait_job,
)
from tests.server.test_dashboard_checkout import signed_in

START = 1000
SVG_NS = "{http://www.w3.org/2000/svg}"
# Mean absolute difference per channel (0-255) between the input and the SVG rendered
# back: flat shapes trace to within a pixel along their edges, so the mean over the
# image stays far below this; a wrong colour or a missing shape would exceed it.
TOLERANCE = 4.0
COLOURS = [(245, 245, 240), (200, 30, 40), (30, 90, 200), (250, 200, 20)]


def shapes(width: int = 320, height: int = 256) -> Image.Image:
    """Flat shapes in four colours: a rectangle, an ellipse and a triangle on off-white."""
    image = Image.new("RGB", (width, height), COLOURS[0])
    draw = ImageDraw.Draw(image)
    sx, sy = width / 320, height / 256
    draw.rectangle((20 * sx, 20 * sy, 140 * sx, 120 * sy), fill=COLOURS[1])
    draw.ellipse((160 * sx, 40 * sy, 300 * sx, 200 * sy), fill=COLOURS[2])
    draw.polygon([(40 * sx, 230 * sy), (120 * sx, 140 * sy), (200 * sx, 230 * sy)], fill=COLOURS[3])
    return image


SHAPES = encoded(shapes())


@pytest.fixture(scope="module")
def vec_settings(settings: Settings) -> Settings:
    # 127.0.0.1 allowed: image URLs served by this test reach the server.
    return own_queue(settings, "vectorize", webhook_allowed_hosts="127.0.0.1")


@pytest.fixture(scope="module")
def vec_api(vec_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(vec_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def vec_worker(vec_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(vec_settings) as worker:
        yield worker


@pytest.fixture
async def http(vec_api: str, vec_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=vec_api, timeout=60) as client:
        yield client


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], vec_settings: Settings
) -> TestAccount:
    return await create_account(sessions, vec_settings, credits=START)


def price(width: int = 320, height: int = 256) -> int:
    return PriceTable.load().quote(
        width=width, height=height, version="vtracer", kind="vectorize"
    ).credits  # fmt: skip


async def fetch(http: httpx.AsyncClient, output: dict[str, Any], mime: str) -> bytes:
    response = await http.get(output["url"])
    assert response.status_code == 200, (output, response.status_code)
    assert response.headers["content-type"].partition(";")[0] == mime, response.headers
    return response.content


def rendered(svg: bytes, width: int, height: int) -> Image.Image:
    png = cairosvg.svg2png(bytestring=svg, output_width=width, output_height=height)
    return Image.open(io.BytesIO(png)).convert("RGB")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return max(ImageStat.Stat(ImageChops.difference(a, b)).mean)


async def test_svg_on_rest_renders_back_to_the_input(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    fields = {"color_count": 4, "preset": "logo"}
    response = await rest_submit(http, customer, "vectorize", fields, {"image": SHAPES})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["kind"], accepted["creditCost"]) == ("vectorize", price())
    job = await wait_job(http, customer, accepted["id"])
    assert job["status"] == "completed", job
    [output] = job["outputs"]
    assert (output["format"], output["width"], output["height"]) == ("svg", 320, 256)
    assert output["url"].endswith(".svg") and job["url"] == output["url"]

    svg = await fetch(http, output, "image/svg+xml")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    assert root.get("viewBox") == "0 0 320 256"
    fills = {p.get("fill") for p in root.iter(f"{SVG_NS}path")}
    assert fills == {"#{:02X}{:02X}{:02X}".format(*c) for c in COLOURS}
    assert mean_difference(rendered(svg, 320, 256), shapes()) < TOLERANCE
    await assert_charged(sessions, customer, START, price())


async def test_eps_on_graphql_by_url(
    http: httpx.AsyncClient,
    vec_api: str,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    host = ImageHost()
    try:
        document = f"""mutation V($input: VectorizeInput!) {{
          job: vectorizeImage(input: $input) {{ {GQL_JOB_FIELDS} }} }}"""
        variables = {"input": {"imageUrl": host.serve(SHAPES), "format": "eps", "colorCount": 4}}
        sent = await gql_upload(vec_api, customer, document, variables)
    finally:
        host.close()
    assert "errors" not in sent, sent
    accepted = sent["data"]["job"]
    assert (accepted["kind"], accepted["creditCost"]) == ("vectorize", price())
    await wait_job(http, customer, accepted["id"])
    body = await gql(
        http,
        f"query G($id: ID!) {{ generation(id: $id) {{ {GQL_JOB_FIELDS} }} }}",
        {"id": accepted["id"]},
        key=customer.api_key,
    )
    job = body["data"]["generation"]
    assert job["status"] == "completed", job
    [output] = job["outputs"]
    assert (output["format"], output["width"], output["height"]) == ("eps", 320, 256)
    eps = await fetch(http, output, "application/postscript")
    assert eps.startswith(b"%!PS-Adobe-3.0 EPSF-3.0")
    # In points: 320x256 CSS pixels at 96 per inch are 240x192 points.
    found = re.search(rb"^%%BoundingBox: (\d+) (\d+) (\d+) (\d+)$", eps, re.MULTILINE)
    assert found is not None, eps[:500]
    assert [int(v) for v in found.groups()] == [0, 0, 240, 192]
    await assert_charged(sessions, customer, START, price())


async def test_a_large_image_is_traced_scaled_down_and_priced_so(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    big = shapes(2048, 1536)
    host = ImageHost()
    try:
        body = {"image_url": host.serve(encoded(big)), "preset": "poster"}
        response = await rest_json(http, customer, "vectorize", body)
    finally:
        host.close()
    assert response.status_code == 202, response.text
    # 1024x1024 pixels at most, the aspect kept: 1182x886.
    assert response.json()["creditCost"] == price(1182, 886)
    job = await wait_job(http, customer, response.json()["id"])
    [output] = job["outputs"]
    assert (output["width"], output["height"]) == (1182, 886)
    svg = await fetch(http, output, "image/svg+xml")
    want = big.resize((1182, 886), Image.Resampling.LANCZOS)
    assert mean_difference(rendered(svg, 1182, 886), want) < TOLERANCE
    await assert_charged(sessions, customer, START, price(1182, 886))


async def test_the_dashboard_shows_the_svg_and_links_the_eps(
    http: httpx.AsyncClient, customer: TestAccount
) -> None:
    urls = {}
    for output_format in ("svg", "eps"):
        fields = {"format": output_format, "color_count": 4}
        response = await rest_submit(http, customer, "vectorize", fields, {"image": SHAPES})
        assert response.status_code == 202, response.text
        job = await wait_job(http, customer, response.json()["id"])
        urls[output_format] = (job["id"], job["outputs"][0]["url"])
    await signed_in(http, customer.api_key)

    svg_id, svg_url = urls["svg"]
    page = await http.get(f"/dashboard/jobs/{svg_id}")
    assert page.status_code == 200, page.text
    outputs = page.text[page.text.index('id="outputs"') :]
    assert f'<img class="job-image" src="{svg_url}"' in outputs
    assert "image/svg+xml" in outputs

    eps_id, eps_url = urls["eps"]
    page = await http.get(f"/dashboard/jobs/{eps_id}")
    assert page.status_code == 200, page.text
    outputs = page.text[page.text.index('id="outputs"') :]
    assert f'<a class="download" href="{eps_url}" download>Download EPS</a>' in outputs
    assert "<img" not in outputs.partition("</ul>")[0]


BAD = {
    "color_count 0": ({"color_count": 0}, {"image": SHAPES}, "color_count"),
    "color_count 1000": ({"color_count": 1000}, {"image": SHAPES}, "color_count"),
    "unknown preset": ({"preset": "sketch"}, {"image": SHAPES}, "preset"),
    "unknown format": ({"format": "pdf"}, {"image": SHAPES}, "format"),
    "corrupt image": ({}, {"image": PNG[: len(PNG) // 2]}, "image"),
    "no image": ({"preset": "logo"}, {}, "image"),
}


@pytest.mark.parametrize(("fields", "files", "field"), BAD.values(), ids=list(BAD))
async def test_bad_input_is_refused_and_costs_nothing(
    http: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    vec_settings: Settings,
    fields: dict[str, Any],
    files: dict[str, bytes],
    field: str,
) -> None:
    account = await create_account(sessions, vec_settings, credits=START)
    response = await rest_submit(http, account, "vectorize", fields, files)
    error = refusal(response, 400, "BAD_USER_INPUT")
    assert error["extensions"]["field"] == field, error
    assert field in error["message"], error
    await assert_untouched(sessions, account, START)


async def test_an_svg_output_is_not_an_input_image(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    response = await rest_submit(http, customer, "vectorize", {}, {"image": SHAPES})
    job = await wait_job(http, customer, response.json()["id"])
    spent = price()
    again = await http.post(
        "/v1/vectorize", json={"image_id": job["outputs"][0]["id"]}, headers=headers(customer)
    )
    error = refusal(again, 400, "BAD_USER_INPUT")
    assert error["extensions"]["field"] == "image_id", error
    await assert_charged(sessions, customer, START, spent)
