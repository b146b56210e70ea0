"""The image library end to end through GraphQL, on the real stack (API, worker, Postgres,
Redis, storage): search, filters, sorts, stable pages, updateImage, deleteImage,
thumbnails, isolation between accounts and bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.db import unit_of_work_without_dispatch
from billing.service import generations
from billing.service.generations import JobSpec, NewAsset
from runtime.settings import ROOT, Settings
from runtime.storage import Storage, storage_from_settings
from tests.conftest import ThreadedWorker
from tests.factories import TestAccount, balance, create_account, gql, wait_for_final

Sessions = async_sessionmaker[AsyncSession]

IMAGE_FIELDS = """id url thumbnailUrl name description favorite generationId kind provider
  version prompt style medium filter width height bytes mime createdAt"""
IMAGES = f"""query I($filter: ImageFilter, $search: ImageSearch, $sort: ImageSort,
  $first: Int! = 25, $after: String) {{
  images(filter: $filter, search: $search, sort: $sort, first: $first, after: $after) {{
    totalCount pageInfo {{ hasNextPage endCursor }} edges {{ cursor node {{ {IMAGE_FIELDS} }} }}
  }} }}"""
IMAGE = f"query I($id: ID!) {{ image(id: $id) {{ {IMAGE_FIELDS} }} }}"
UPDATE = f"""mutation U($id: ID!, $name: String, $description: String, $favorite: Boolean) {{
  updateImage(id: $id, name: $name, description: $description, favorite: $favorite) {{
    {IMAGE_FIELDS} }} }}"""
DELETE = "mutation D($id: ID!) { deleteImage(id: $id) }"
GENERATE = """mutation G($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""

PROMPTS = (
    "a red fox sleeping in the snowy mountains",
    "portrait of an old sailor, oil painting",
)


def png(width: int, height: int, pad: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(out, format="PNG")
    return out.getvalue() + b"\0" * pad


@dataclass
class Made:
    generation_id: str
    key: str


async def make_image(
    sessions: Sessions,
    storage: Storage,
    account: TestAccount,
    *,
    prompt: str = "a picture",
    kind: str = "text_to_image",
    width: int = 256,
    height: int = 256,
    pad: int = 0,
    params: dict[str, Any] | None = None,
    count: int = 1,
) -> list[Made]:
    """A job accepted, run and completed through the service, as a worker completes one
    (outputs stored first), for kinds and presets no worker here makes."""
    job = JobSpec(
        kind=kind, params=params or {}, credits=1, provider="flux-schnell",
        version="flux-schnell-1", prompt=prompt, width=width, height=height, steps=1,
        guidance=0.0, seed=1, quality="standard", metadata={}, request_hash=uuid.uuid4().hex,
    )  # fmt: skip
    async with unit_of_work_without_dispatch(sessions) as uow:
        g = await generations.submit(
            uow, account_id=account.id, api_key_id=account.api_key_id, request=job
        )
    async with unit_of_work_without_dispatch(sessions) as uow:
        assert await generations.begin_processing(uow, g.id) is not None
    outputs = []
    for position in range(count):
        data = png(width, height, pad)
        key = f"lib-{uuid.uuid4().hex}-{position}.png"
        await storage.put(key, data, "image/png")
        outputs.append(
            NewAsset(role="output", key=key, mime="image/png", width=width, height=height,
                     bytes=len(data), sha256=None, position=position)
        )  # fmt: skip
    async with unit_of_work_without_dispatch(sessions) as uow:
        assert await generations.complete(uow, g.id, outputs=outputs, metadata={}) is not None
    return [Made(g.id, o.key) for o in outputs]


async def images(
    client: httpx.AsyncClient, account: TestAccount, **variables: Any
) -> dict[str, Any]:
    body = await gql(client, IMAGES, variables, key=account.api_key)
    assert "errors" not in body, body
    found: dict[str, Any] = body["data"]["images"]
    return found


def nodes(page: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["node"] for e in page["edges"]]


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("data") in (None, {}) or all(v is None for v in body["data"].values()), body
    [error] = body["errors"]
    extensions: dict[str, Any] = error["extensions"]
    return extensions


@pytest.fixture(scope="module")
def storage(settings: Settings) -> Iterator[Storage]:
    yield storage_from_settings(settings)


@pytest.fixture(scope="module")
async def generated(
    api: str, worker: ThreadedWorker, sessions: Sessions, settings: Settings
) -> tuple[TestAccount, list[dict[str, Any]]]:
    """An account with two images made by the real worker from prompts."""
    owner = await create_account(sessions, settings, credits=1000)
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        ids = []
        for prompt in PROMPTS:
            body = await gql(
                client,
                GENERATE,
                {"input": {"service": "flux-schnell", "prompt": prompt, "width": 512,
                           "height": 256}},
                key=owner.api_key,
            )  # fmt: skip
            ids.append(body["data"]["generateImage"]["id"])
        for job_id in ids:
            assert (await wait_for_final(client, owner.api_key, job_id))["status"] == "completed"
        found = nodes(await images(client, owner))
    assert len(found) == len(PROMPTS)
    return owner, found


async def test_every_output_is_an_image_with_a_webp_thumbnail(
    client: httpx.AsyncClient, generated: tuple[TestAccount, list[dict[str, Any]]]
) -> None:
    _, found = generated
    assert {i["prompt"] for i in found} == set(PROMPTS)
    for image in found:
        assert (image["kind"], image["provider"], image["width"]) == (
            "text_to_image", "flux-schnell", 512,
        )  # fmt: skip
        assert image["name"] is None and image["favorite"] is False
        full = await client.get(image["url"])
        assert full.status_code == 200 and len(full.content) == image["bytes"]
        thumb = await client.get(image["thumbnailUrl"])
        assert thumb.status_code == 200
        assert thumb.headers["content-type"] == "image/webp"
        with Image.open(io.BytesIO(thumb.content)) as small:
            assert small.format == "WEBP"
            assert small.size == (256, 128)  # 512x256 shrunk to 256 on the long side
    # Newest first by default.
    assert [i["prompt"] for i in found] == list(reversed(PROMPTS))


async def test_search_finds_prompt_words_and_names_partial_words_too(
    client: httpx.AsyncClient, generated: tuple[TestAccount, list[dict[str, Any]]]
) -> None:
    owner, found = generated
    fox = next(i for i in found if "fox" in i["prompt"])
    sailor = next(i for i in found if "sailor" in i["prompt"])

    async def search(text: str, by: str = "ALL") -> list[str]:
        page = await images(client, owner, search={"text": text, "by": by})
        assert page["totalCount"] == len(page["edges"])
        return [n["id"] for n in nodes(page)]

    assert await search("fox") == [fox["id"]]
    assert await search("SNOWY Fox") == [fox["id"]]  # every word, any case
    assert await search("snow") == [fox["id"]]  # a word's start (full text)
    assert await search("ountai") == [fox["id"]]  # inside a word (trigram)
    assert await search("painting sailor") == [sailor["id"]]
    assert await search("fox sailor") == []
    assert await search("zebra") == []

    body = await gql(
        client,
        UPDATE,
        {"id": sailor["id"], "name": "Harbour Keepsake", "description": "grandfather's boat"},
        key=owner.api_key,
    )
    assert body["data"]["updateImage"]["name"] == "Harbour Keepsake"
    assert await search("keepsake") == [sailor["id"]]
    assert await search("harb") == [sailor["id"]]
    assert await search("eepsak") == [sailor["id"]]  # partial, inside the name
    assert await search("keepsake", "NAME") == [sailor["id"]]
    assert await search("keepsake", "PROMPT") == []  # seed 002's search_by
    assert await search("sailor", "NAME") == []
    assert await search("sailor", "PROMPT") == [sailor["id"]]
    assert await search("grandfather", "DESCRIPTION") == [sailor["id"]]
    assert await search("grandfather", "NAME") == []


@pytest.fixture(scope="module")
async def curated(
    api: str, sessions: Sessions, settings: Settings, storage: Storage
) -> tuple[TestAccount, dict[str, str]]:
    """An account whose images differ in every filtered and sorted field."""
    owner = await create_account(sessions, settings, credits=1000)
    made: dict[str, str] = {}
    specs: dict[str, dict[str, Any]] = {
        "anime": {"params": {"style": "anime", "medium": "ink", "filter": "sepia"}, "pad": 300},
        "big": {"width": 1536, "height": 1024, "pad": 100},
        "upscaled": {"kind": "upscale", "width": 1024, "height": 1024, "pad": 500},
        "small": {"width": 256, "height": 256, "pad": 200},
        "edit": {"kind": "edit", "params": {"style": {"id": "pixel_art"}}, "pad": 400},
    }
    for label, spec in specs.items():
        [one] = await make_image(sessions, storage, owner, prompt=f"{label} picture", **spec)
        made[label] = one.generation_id
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        for node in nodes(await images(client, owner)):
            made[next(k for k, v in made.items() if v == node["generationId"])] = node["id"]
    return owner, made


async def test_filters(
    client: httpx.AsyncClient, curated: tuple[TestAccount, dict[str, str]]
) -> None:
    owner, ids = curated

    async def labels(**f: Any) -> set[str]:
        page = await images(client, owner, filter=f, first=100)
        assert page["totalCount"] == len(page["edges"])
        by_id = {v: k for k, v in ids.items()}
        return {by_id[n["id"]] for n in nodes(page)}

    everything = set(ids)
    assert await labels() == everything
    assert await labels(upscaled=True) == {"upscaled"}
    assert await labels(upscaled=False) == everything - {"upscaled"}
    assert await labels(kind=["edit", "upscale"]) == {"edit", "upscaled"}
    assert await labels(style="anime") == {"anime"}
    assert await labels(style="pixel_art") == {"edit"}  # a preset given as an object
    assert await labels(medium="ink", filter="sepia") == {"anime"}
    assert await labels(filter="grayscale") == set()
    assert await labels(resolution="1536x1024") == {"big"}
    assert await labels(width=1024, height=1024) == {"upscaled"}
    assert await labels(resolution="large") == {"big"}
    assert await labels(resolution="medium") == {"upscaled"}
    assert await labels(resolution="small") == everything - {"big", "upscaled"}
    assert await labels(provider="flux-schnell", version="flux-schnell-1") == everything
    assert await labels(provider="flux-pro") == set()
    assert await labels(status=["completed"]) == everything
    assert await labels(status=["failed", "cancelled"]) == set()
    assert await labels(createdFrom="2000-01-01T00:00:00Z") == everything
    assert await labels(createdTo="2000-01-01T00:00:00Z") == set()
    assert await labels(createdFrom="2999-01-01T00:00:00Z") == set()

    await gql(client, UPDATE, {"id": ids["small"], "favorite": True}, key=owner.api_key)
    assert await labels(favorite=True) == {"small"}
    assert await labels(favorite=False) == everything - {"small"}
    await gql(client, UPDATE, {"id": ids["small"], "favorite": False}, key=owner.api_key)


async def test_sorts_are_stable_and_pages_cover_everything_once(
    client: httpx.AsyncClient, sessions: Sessions, settings: Settings, storage: Storage
) -> None:
    owner = await create_account(sessions, settings, credits=1000)
    # Ties on purpose: three of the same size, names repeated, two favourites.
    sizes = [0, 0, 0, 50, 100, 150, 150]
    for pad in sizes:
        await make_image(sessions, storage, owner, pad=pad)
    ids = [n["id"] for n in nodes(await images(client, owner, first=100))]
    for position, image_id in enumerate(ids):
        await gql(
            client,
            UPDATE,
            {"id": image_id, "name": ["beta", "alpha", "gamma"][position % 3],
             "favorite": position in (2, 5)},
            key=owner.api_key,
        )  # fmt: skip

    for by in ("DATE", "NAME", "SIZE", "FAVORITE"):
        for direction in ("ASC", "DESC"):
            sort = {"by": by, "direction": direction}
            whole = nodes(await images(client, owner, sort=sort, first=100))
            assert len(whole) == len(sizes)
            field = {"DATE": "createdAt", "NAME": "name", "SIZE": "bytes", "FAVORITE": "favorite"}
            keys = [n[field[by]] for n in whole]
            assert keys == sorted(keys, reverse=direction == "DESC"), (by, direction)
            # Page by page, 2 at a time: the same order, each image once.
            paged: list[dict[str, Any]] = []
            after = None
            while True:
                page = await images(client, owner, sort=sort, first=2, after=after)
                assert page["totalCount"] == len(sizes)
                paged += nodes(page)
                if not page["pageInfo"]["hasNextPage"]:
                    break
                after = page["pageInfo"]["endCursor"]
                assert after == page["edges"][-1]["cursor"]
            assert [n["id"] for n in paged] == [n["id"] for n in whole], (by, direction)

    # Ties are broken by id, the same way on every request.
    by_name = nodes(await images(client, owner, sort={"by": "NAME", "direction": "ASC"}))
    alphas = [n["id"] for n in by_name if n["name"] == "alpha"]
    assert alphas == sorted(alphas)
    favourites = nodes(await images(client, owner, sort={"by": "FAVORITE"}, first=2))
    assert [n["favorite"] for n in favourites] == [True, True]


async def test_update_image_checks_its_input(
    client: httpx.AsyncClient, curated: tuple[TestAccount, dict[str, str]]
) -> None:
    owner, ids = curated
    image_id = ids["anime"]
    for variables, field in (
        ({"name": "x" * 201}, "name"),
        ({"name": "bad\x00name"}, "name"),
        ({"description": "d" * 2001}, "description"),
        ({"description": "nul\x00"}, "description"),
    ):
        body = await gql(client, UPDATE, {"id": image_id, **variables}, key=owner.api_key)
        assert error_of(body) == {"code": "BAD_USER_INPUT", "field": field}, variables
    body = await gql(
        client, UPDATE, {"id": image_id, "name": "  Ok  ", "description": "é" * 2000},
        key=owner.api_key,
    )  # fmt: skip
    assert body["data"]["updateImage"]["name"] == "Ok"
    body = await gql(client, UPDATE, {"id": image_id, "name": ""}, key=owner.api_key)
    assert body["data"]["updateImage"]["name"] is None  # cleared
    assert body["data"]["updateImage"]["description"] == "é" * 2000
    got = await gql(client, IMAGE, {"id": image_id}, key=owner.api_key)
    assert got["data"]["image"]["description"] == "é" * 2000


async def test_delete_removes_the_files_and_never_refunds(
    client: httpx.AsyncClient,
    generated: tuple[TestAccount, list[dict[str, Any]]],
    sessions: Sessions,
    settings: Settings,
) -> None:
    owner, found = generated
    target = next(i for i in found if "fox" in i["prompt"])
    before = await balance(sessions, owner.id)
    assert (await client.get(target["url"])).status_code == 200
    body = await gql(client, DELETE, {"id": target["id"]}, key=owner.api_key)
    assert body == {"data": {"deleteImage": target["id"]}}
    assert (await client.get(target["url"])).status_code == 404
    assert (await client.get(target["thumbnailUrl"])).status_code == 404
    key = target["url"].rsplit("/files/", 1)[1]
    assert not (settings.storage_dir / key).exists()
    again = await gql(client, IMAGE, {"id": target["id"]}, key=owner.api_key)
    assert error_of(again)["code"] == "NOT_FOUND"
    twice = await gql(client, DELETE, {"id": target["id"]}, key=owner.api_key)
    assert error_of(twice)["code"] == "NOT_FOUND"
    listed = [n["id"] for n in nodes(await images(client, owner, first=100))]
    assert target["id"] not in listed and len(listed) == len(found) - 1
    assert await balance(sessions, owner.id) == before  # the ledger is untouched
    job = await gql(
        client, "query J($id: ID!) { generation(id: $id) { status creditCost } }",
        {"id": target["generationId"]}, key=owner.api_key,
    )  # fmt: skip
    assert job["data"]["generation"]["status"] == "completed"


async def test_another_accounts_image_is_not_found_everywhere(
    client: httpx.AsyncClient,
    curated: tuple[TestAccount, dict[str, str]],
    sessions: Sessions,
    settings: Settings,
) -> None:
    owner, ids = curated
    stranger = await create_account(sessions, settings, credits=10)
    image_id = ids["big"]
    for query, variables in (
        (IMAGE, {"id": image_id}),
        (UPDATE, {"id": image_id, "name": "mine now", "favorite": True}),
        (DELETE, {"id": image_id}),
        (IMAGE, {"id": "not-a-uuid"}),
        (IMAGE, {"id": str(uuid.uuid4())}),
    ):
        body = await gql(client, query, variables, key=stranger.api_key)
        assert error_of(body)["code"] == "NOT_FOUND", (query, body)
    page = await images(client, stranger, search={"text": "big"})
    assert (page["totalCount"], page["edges"]) == (0, [])
    # Untouched for its owner.
    mine = await gql(client, IMAGE, {"id": image_id}, key=owner.api_key)
    assert mine["data"]["image"]["name"] is None and mine["data"]["image"]["favorite"] is False


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"first": 101}, "first"),
        ({"first": 0}, "first"),
        ({"after": "not a cursor"}, "after"),
        ({"after": "WyJkYXRlIix0cnVlLCJ4IiwieSJd"}, "after"),  # valid base64, bad key
        # GraphQL itself refuses an unknown enum value; the field is named inside the
        # variable, like every coercion error (schema/errors.py).
        ({"sort": {"by": "COLOR"}}, "by"),
        ({"sort": {"direction": "SIDEWAYS"}}, "direction"),
        ({"filter": {"resolution": "huge"}}, "filter.resolution"),
        ({"filter": {"status": ["done"]}}, "filter.status"),
        ({"filter": {"width": 0}}, "filter.width"),
        ({"search": {"text": "x" * 201}}, "search.text"),
        ({"search": {"text": "a\x00b"}}, "search.text"),
        ({"search": {"text": "a", "by": "COLOUR"}}, "by"),
    ],
)
async def test_bad_input_names_the_field(
    client: httpx.AsyncClient,
    curated: tuple[TestAccount, dict[str, str]],
    variables: dict[str, Any],
    field: str,
) -> None:
    owner, _ = curated
    body = await gql(client, IMAGES, variables, key=owner.api_key)
    assert error_of(body) == {"code": "BAD_USER_INPUT", "field": field}, body


async def test_a_cursor_belongs_to_its_sort(
    client: httpx.AsyncClient, curated: tuple[TestAccount, dict[str, str]]
) -> None:
    owner, _ = curated
    page = await images(client, owner, first=1, sort={"by": "NAME"})
    cursor = page["pageInfo"]["endCursor"]
    body = await gql(
        client, IMAGES, {"first": 1, "after": cursor, "sort": {"by": "SIZE"}}, key=owner.api_key
    )
    assert error_of(body) == {"code": "BAD_USER_INPUT", "field": "after"}


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLUXGATE_ENVIRONMENT": "test",
        "FLUXGATE_DATABASE_URL": settings.database_url,
        "FLUXGATE_REDIS_URL": settings.redis_url,
        "FLUXGATE_SECRET_KEY": settings.secret_key.get_secret_value(),
        "FLUXGATE_STORAGE_DIR": str(settings.storage_dir),
        "FLUXGATE_PUBLIC_URL": settings.public_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_the_cli_lists_searches_and_deletes(
    client: httpx.AsyncClient, sessions: Sessions, settings: Settings, storage: Storage
) -> None:
    owner = await create_account(sessions, settings, credits=10)
    [kept] = await make_image(sessions, storage, owner, prompt="a quiet lagoon")
    [gone] = await make_image(sessions, storage, owner, prompt="a noisy market")
    listed = run_cli(settings, "images", "list", "--account", owner.email, "--search", "lagoo")
    assert listed.returncode == 0, listed.stderr
    *rows, summary = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["generation_id"] for r in rows] == [kept.generation_id]
    assert summary == {"total": 1, "next": None}
    every = run_cli(settings, "images", "list", "--account", owner.email, "--sort", "size")
    image_id = next(
        json.loads(line)["id"] for line in every.stdout.splitlines()
        if json.loads(line).get("generation_id") == gone.generation_id
    )  # fmt: skip
    deleted = run_cli(settings, "images", "delete", "--account", owner.email, image_id)
    assert deleted.returncode == 0, deleted.stderr
    assert not (settings.storage_dir / gone.key).exists()
    assert (settings.storage_dir / kept.key).exists()
    again = run_cli(settings, "images", "delete", "--account", owner.email, image_id)
    assert again.returncode == 1 and "Image not found" in again.stderr
    bad = run_cli(settings, "images", "list", "--account", owner.email, "--first", "500")
    assert bad.returncode == 1 and "first" in bad.stderr
