"""The image tools of issue 12 end to end: a real API and a real arq worker (tiny
pipelines) on real Postgres and Redis. Seamless, cleanup and extract_pattern are
submitted over REST and GraphQL, run, downloaded and checked for what they claim; bad
inputs are refused naming the field with nothing charged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kinds.tiling import seam_ratio
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, create_account
from tests.server.kinds_support import (
    GQL_JOB_FIELDS,
    PNG,
    assert_charged,
    assert_untouched,
    download,
    encoded,
    gql_upload,
    picture,
    refusal,
    rest_json,
    rest_submit,
    wait_job,
)

START = 1000
TILES = 1.5
PATTERN = f"""mutation M($input: ExtractPatternInput!, $image: Upload) {{
  job: extractPattern(input: $input, image: $image) {{ {GQL_JOB_FIELDS} }} }}"""
SEAMLESS = f"""mutation M($input: SeamlessInput!) {{
  job: seamlessTile(input: $input) {{ {GQL_JOB_FIELDS} }} }}"""


@pytest.fixture(scope="module")
def tool_settings(settings: Settings) -> Settings:
    return own_queue(settings, "tools")


@pytest.fixture(scope="module")
def tool_api(tool_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(tool_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def tool_worker(tool_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(tool_settings) as w:
        yield w


@pytest.fixture
async def http(tool_api: str, tool_worker: ThreadedWorker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tool_api, timeout=60) as client:
        yield client


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], tool_settings: Settings
) -> TestAccount:
    return await create_account(sessions, tool_settings, credits=START)


async def test_seamless_from_a_prompt_and_from_an_image(
    http: httpx.AsyncClient,
    tool_api: str,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sent = await gql_upload(
        tool_api, customer, SEAMLESS,
        {"input": {"prompt": "a floral print", "width": 320, "height": 256}},
    )  # fmt: skip
    assert "errors" not in sent, sent
    first = await wait_job(http, customer, sent["data"]["job"]["id"])
    assert first["status"] == "completed", first
    tile = await download(http, first["outputs"][0])
    grid = await download(http, first["outputs"][1])
    assert (tile.size, grid.size) == ((320, 256), (960, 768))
    assert seam_ratio(tile, "x") < TILES and seam_ratio(tile, "y") < TILES

    rest = await rest_submit(http, customer, "seamless", {"fit": "0.5"}, {"image": PNG})
    assert rest.status_code == 202, rest.text
    second = await wait_job(http, customer, rest.json()["id"])
    assert second["status"] == "completed", second
    assert [o["width"] for o in second["outputs"]] == [320, 960]
    tile = await download(http, second["outputs"][0])
    assert seam_ratio(tile, "x", near=16) < TILES and seam_ratio(tile, "y", near=16) < TILES
    # Two outputs, one image's price.
    assert second["creditCost"] == first["creditCost"]
    await assert_charged(sessions, customer, START, first["creditCost"] + second["creditCost"])


async def test_cleanup_changes_only_the_rectangles(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    rest = await rest_submit(
        http, customer, "cleanup",
        {"preset": "remove_watermark", "rectangles": "200,20,80,40"}, {"image": PNG},
    )  # fmt: skip
    assert rest.status_code == 202, rest.text
    job = await wait_job(http, customer, rest.json()["id"])
    assert job["status"] == "completed", job
    out = np.asarray((await download(http, job["outputs"][0])).convert("RGB"), dtype=np.int16)
    original = np.asarray(picture(), dtype=np.int16)
    inside = np.zeros(original.shape[:2], dtype=bool)
    inside[20:60, 200:280] = True
    diff = (out != original).any(axis=2)
    assert not diff[~inside].any()
    assert diff[inside].any()
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_extract_pattern_over_graphql(
    http: httpx.AsyncClient,
    tool_api: str,
    customer: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sent = await gql_upload(
        tool_api, customer, PATTERN,
        {"input": {"aspectRatio": "4:3", "longSide": 384}},
        {"image": encoded(picture(256, 320))},
    )  # fmt: skip
    assert "errors" not in sent, sent
    job = await wait_job(http, customer, sent["data"]["job"]["id"])
    assert job["status"] == "completed", job
    assert [(i["role"], i["width"]) for i in job["inputs"]] == [("image", 256)]
    [output] = job["outputs"]
    tile = await download(http, output)
    assert tile.size == (384, 288)
    assert seam_ratio(tile, "x") < TILES and seam_ratio(tile, "y") < TILES
    await assert_charged(sessions, customer, START, job["creditCost"])


async def test_bad_inputs_name_the_field_and_charge_nothing(
    http: httpx.AsyncClient, customer: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    small_mask = encoded(Image.new("L", (160, 128), 255))
    cases = [
        ("cleanup", {"preset": "remove_fabric"}, {"image": PNG, "mask": small_mask}, "mask"),
        ("cleanup", {"preset": "remove_diamonds", "rectangles": "300,0,64,64"},
         {"image": PNG}, "rectangles"),
        ("cleanup", {"preset": "remove_stains", "rectangles": "0,0,8,8"},
         {"image": PNG}, "preset"),
        ("cleanup", {"preset": "remove_watermark", "rectangles": "0,0,8,8"},
         {"image": b"\x89PNG\r\n\x1a\nnot really"}, "image"),
        ("extract_pattern", {"aspect_ratio": "wide"}, {"image": PNG}, "aspect_ratio"),
        ("seamless", {"prompt": "x", "expand_left": "0.1"}, {}, "expand_left"),
        ("seamless", {"fit": "0.5"}, {}, "fit"),
    ]  # fmt: skip
    for kind, fields, files, field in cases:
        response = await rest_submit(http, customer, kind, fields, files)
        error = refusal(response, 400, "BAD_USER_INPUT")
        assert error["extensions"]["field"] == field, (kind, fields, error)
    response = await rest_json(
        http, customer, "cleanup",
        {"prompt": "sky", "rectangles": [[0, 0, 8]], "image_url": "http://127.0.0.1/x.png"},
    )  # fmt: skip
    assert refusal(response, 400, "BAD_USER_INPUT")["extensions"]["field"] == "rectangles"
    await assert_untouched(sessions, customer, START)
