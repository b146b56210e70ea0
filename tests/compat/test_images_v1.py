"""Seed 002's images API (``/api/v1/images``) on the real stack: the seed's curl examples
as written (base URL and key changed), the Laravel-style page, search/filter/sort, store
through a real worker, update, delete, and per surface 401, 402, 429, a foreign id, bad
and hostile input."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.catalog import Catalog
from runtime.settings import Settings
from runtime.storage import Storage, storage_from_settings
from server.compat import images_v1
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, audit, balance, create_account, wait_for_final
from tests.runners import ExplodingRunner
from tests.server.test_library import make_image

Sessions = async_sessionmaker[AsyncSession]
PATH = "/api/v1/images"
PRICE_QUERY = "query($i: ImageGenerationInput!) { price(input: $i) { credits } }"


def bearer(account: TestAccount) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.api_key}"}


def form(account: TestAccount) -> dict[str, str]:
    return {"Content-Type": "application/x-www-form-urlencoded", **bearer(account)}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) <= {"message", "code", "errors", "retry_after"}, body
    assert isinstance(body["message"], str) and body["message"]
    return body


@pytest.fixture(scope="module")
def storage(settings: Settings) -> Iterator[Storage]:
    yield storage_from_settings(settings)


async def price(client: httpx.AsyncClient, account: TestAccount, side: int) -> int:
    job = {"service": "flux-pro", "prompt": "x", "width": side, "height": side}
    response = await client.post(
        "/graphql", json={"query": PRICE_QUERY, "variables": {"i": job}}, headers=bearer(account)
    )
    credits: int = response.json()["data"]["price"]["credits"]
    return credits


# --- the seed's examples --------------------------------------------------------------


async def test_seed_examples_store_show_list_update_delete(
    client: httpx.AsyncClient,
    account: TestAccount,
    worker: ThreadedWorker,
    sessions: Sessions,
) -> None:
    # Store, as the seed's curl: only name and description (resolution defaults).
    stored = await client.post(
        PATH,
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Authorization": f"Bearer {account.api_key}"},
        content="name=Sunset%20fox&description=a%20red%20fox%20at%20sunset",
    )  # fmt: skip
    assert stored.status_code == 201, stored.text
    image = stored.json()["data"]
    assert image["object"] == "image"
    assert image["name"] == "Sunset fox"
    assert image["description"] == "a red fox at sunset"
    assert image["prompt"] == "a red fox at sunset"
    assert (image["resolution"], image["width"], image["height"]) == ("1024x1024", 1024, 1024)
    assert image["favorite"] is False
    assert image["style"] is image["medium"] is image["filter"] is None
    assert image["created_at"].endswith("Z")
    file = await client.get(image["url"])
    assert file.status_code == 200
    assert Image.open(io.BytesIO(file.content)).size == (1024, 1024)
    cost = await price(client, account, 1024)
    after = await balance(sessions, account.id)
    assert (after.available, after.reserved) == (1000 - cost, 0)

    # Show, as the seed's curl.
    shown = await client.get(
        f"{PATH}/{image['id']}",
        headers={"Accept": "application/json", "Authorization": f"Bearer {account.api_key}"},
    )
    assert shown.status_code == 200
    assert shown.json() == {"data": image}

    # List, as the seed's curl: a Laravel page.
    listed = await client.get(
        PATH,
        headers={"Accept": "application/json", "Authorization": f"Bearer {account.api_key}"},
    )
    assert listed.status_code == 200
    page = listed.json()
    assert page["data"] == [image]
    base = f"{client.base_url}{PATH}"
    assert page["links"] == {
        "first": f"{base}?page=1", "last": f"{base}?page=1", "prev": None, "next": None,
    }  # fmt: skip
    meta = page["meta"]
    assert {k: v for k, v in meta.items() if k != "links"} == {
        "current_page": 1, "from": 1, "last_page": 1, "path": base, "per_page": 25,
        "to": 1, "total": 1,
    }  # fmt: skip
    assert [link["label"] for link in meta["links"]] == ["&laquo; Previous", "1", "Next &raquo;"]
    # The responses are what /openapi.json says (the same models).
    images_v1.ImagePage.model_validate(page)
    images_v1.ImageData.model_validate(shown.json())
    images_v1.ImageData.model_validate(stored.json())

    # Update, as the seed's curl: PUT with the form content type and no fields changes
    # nothing; then PUT a name and PATCH the favourite flag.
    same = await client.put(
        f"{PATH}/{image['id']}",
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Authorization": f"Bearer {account.api_key}"},
    )  # fmt: skip
    assert same.status_code == 200, same.text
    assert same.json() == {"data": image}
    renamed = await client.put(
        f"{PATH}/{image['id']}", headers=form(account), content="name=Fox%20at%20dusk"
    )
    assert renamed.json()["data"]["name"] == "Fox at dusk"
    favourite = await client.patch(
        f"{PATH}/{image['id']}", headers=form(account), content="favorite=1"
    )
    assert favourite.json()["data"]["favorite"] is True
    assert favourite.json()["data"]["name"] == "Fox at dusk"
    as_json = await client.patch(
        f"{PATH}/{image['id']}", headers=bearer(account), json={"favorite": False}
    )
    assert as_json.json()["data"]["favorite"] is False

    # Delete, as the seed's curl: the image and its file are gone, nothing is refunded.
    deleted = await client.delete(
        f"{PATH}/{image['id']}", headers={"Authorization": f"Bearer {account.api_key}"}
    )
    assert deleted.status_code == 200
    assert deleted.json() == {
        "id": image["id"], "object": "image", "deleted": True, "message": "Image deleted.",
    }  # fmt: skip
    assert (
        error_of(await client.get(f"{PATH}/{image['id']}", headers=bearer(account)), 404)["code"]
        == "NOT_FOUND"
    )
    images_v1.Deleted.model_validate(deleted.json())
    assert (await client.get(image["url"])).status_code == 404
    assert (await client.get(PATH, headers=bearer(account))).json()["data"] == []
    final = await balance(sessions, account.id)
    assert (final.available, final.reserved) == (1000 - cost, 0)


async def test_store_with_presets_and_resolution(
    client: httpx.AsyncClient, account: TestAccount, worker: ThreadedWorker
) -> None:
    stored = await client.post(
        PATH,
        headers=form(account),
        data={"name": "Ink fox", "description": "a fox", "resolution": "256x256",
              "style": "anime", "medium": "ink", "filter": "sepia"},
    )  # fmt: skip
    assert stored.status_code == 201, stored.text
    image = stored.json()["data"]
    assert (image["resolution"], image["style"], image["medium"], image["filter"]) == (
        "256x256", "anime", "ink", "sepia",
    )  # fmt: skip
    assert image["description"] == "a fox"
    assert "a fox" in image["prompt"] and image["prompt"] != "a fox"  # presets applied
    file = await client.get(image["url"])
    assert Image.open(io.BytesIO(file.content)).size == (256, 256)
    # The filters find it by its presets and resolution.
    for query in ({"style": "anime"}, {"medium": "ink"}, {"filter": "sepia"},
                  {"resolution": "256x256"}, {"search": "ink", "search_by": "name"}):  # fmt: skip
        found = await client.get(PATH, params=query, headers=bearer(account))
        assert [i["id"] for i in found.json()["data"]] == [image["id"]], query
    for query in ({"style": "retro"}, {"resolution": "512x512"}, {"favorite": "1"},
                  {"search": "zebra"}):  # fmt: skip
        found = await client.get(PATH, params=query, headers=bearer(account))
        assert found.json()["data"] == [], query


async def test_store_is_idempotent_with_an_idempotency_key(
    client: httpx.AsyncClient, account: TestAccount, worker: ThreadedWorker, sessions: Sessions
) -> None:
    headers = {**form(account), "Idempotency-Key": "store-once"}
    body = {"name": "Once", "description": "a lighthouse", "resolution": "256x256"}
    first = await client.post(PATH, headers=headers, data=body)
    again = await client.post(PATH, headers=headers, data=body)
    assert first.status_code == again.status_code == 201, again.text
    assert first.json()["data"]["id"] == again.json()["data"]["id"]
    cost = await price(client, account, 256)
    assert (await balance(sessions, account.id)).available == 1000 - cost
    assert len((await client.get(PATH, headers=bearer(account))).json()["data"]) == 1


@pytest.fixture(scope="module")
def queue_settings(settings: Settings) -> Settings:
    return own_queue(settings, "images-v1")


@pytest.fixture(scope="module")
def queue_api(queue_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(queue_settings) as server:
        yield server.url


async def test_store_whose_job_fails_is_500_and_releases_its_credits(
    queue_api: str, queue_settings: Settings, sessions: Sessions
) -> None:
    owner = await create_account(sessions, queue_settings)
    runner = ExplodingRunner(Catalog.load(queue_settings.models))
    async with httpx.AsyncClient(base_url=queue_api, timeout=120) as http:
        with ThreadedWorker(queue_settings, runner=runner):
            response = await http.post(
                PATH, headers=form(owner), data={"name": "a", "description": "a boat"}
            )
            body = error_of(response, 500)
            assert body["code"] == "GENERATION_FAILED"
            assert "CUDA" not in body["message"] and "released" in body["message"]
            assert (await http.get(PATH, headers=bearer(owner))).json()["data"] == []
            cached, _ = await audit(sessions, owner.id)
            assert (cached.available, cached.reserved) == (1000, 0)


async def test_store_not_done_within_the_wait_is_202_and_goes_on(
    client: httpx.AsyncClient,
    account: TestAccount,
    worker: ThreadedWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(images_v1, "STORE_WAIT_S", 0)  # the wait ends at once
    response = await client.post(
        PATH, headers=form(account), data={"name": "later", "description": "a tram"}
    )
    assert response.status_code == 202, response.text
    pending = response.json()
    assert set(pending) == {"message", "generation_id"}
    done = await wait_for_final(client, account.api_key, pending["generation_id"])
    assert done["status"] == "completed"
    [image] = (await client.get(PATH, headers=bearer(account))).json()["data"]
    assert (image["generation_id"], image["name"]) == (pending["generation_id"], None)


# --- list: filters, sorts, pages -----------------------------------------------------


async def test_list_sorts_filters_and_pages(
    client: httpx.AsyncClient, sessions: Sessions, settings: Settings, storage: Storage
) -> None:
    owner = await create_account(sessions, settings)
    for n in range(12):
        await make_image(sessions, storage, owner, prompt=f"picture {n}", width=512, height=512)
    await make_image(sessions, storage, owner, prompt="big one", width=1024, height=1024)
    newest_first = (await client.get(PATH, headers=bearer(owner))).json()["data"]
    assert len(newest_first) == 13
    ids = [i["id"] for i in newest_first]
    # Names: set some, then sort by name both ways and filter favourites.
    for position, image_id in enumerate(ids[:3]):
        response = await client.put(
            f"{PATH}/{image_id}", headers=form(owner), data={"name": f"n{2 - position}"}
        )
        assert response.status_code == 200
    await client.patch(f"{PATH}/{ids[5]}", headers=form(owner), data={"favorite": "true"})
    by_name = await client.get(
        PATH, params={"sort_by": "name", "sort": "asc"}, headers=bearer(owner)
    )
    assert [i["name"] for i in by_name.json()["data"] if i["name"]] == ["n0", "n1", "n2"]
    by_name_desc = await client.get(
        PATH, params={"sort_by": "name", "sort": "desc"}, headers=bearer(owner)
    )
    named = [i["name"] for i in by_name_desc.json()["data"] if i["name"]]
    assert named == ["n2", "n1", "n0"]
    oldest = await client.get(PATH, params={"sort_by": "id", "sort": "asc"}, headers=bearer(owner))
    assert [i["id"] for i in oldest.json()["data"]] == ids[::-1]
    favourites = await client.get(PATH, params={"favorite": "true"}, headers=bearer(owner))
    assert [i["id"] for i in favourites.json()["data"]] == [ids[5]]
    not_favourite = await client.get(PATH, params={"favorite": "0"}, headers=bearer(owner))
    assert len(not_favourite.json()["data"]) == 12
    big = await client.get(PATH, params={"resolution": "1024x1024"}, headers=bearer(owner))
    assert [i["prompt"] for i in big.json()["data"]] == ["big one"]

    # Pages of 10: two of them, every image once, in order; the links say so.
    pages = []
    for number in (1, 2, 3):
        response = await client.get(
            PATH, params={"per_page": "10", "page": str(number)}, headers=bearer(owner)
        )
        assert response.status_code == 200, response.text
        pages.append(response.json())
    assert [i["id"] for i in pages[0]["data"] + pages[1]["data"]] == ids
    assert pages[2]["data"] == []
    first, second, past = (p["meta"] for p in pages)
    assert (first["from"], first["to"], first["total"], first["last_page"]) == (1, 10, 13, 2)
    assert (second["from"], second["to"], second["current_page"]) == (11, 13, 2)
    assert (past["from"], past["to"], past["total"]) == (None, None, 13)
    links = pages[0]["links"]
    assert links["prev"] is None and links["next"] is not None
    followed = await client.get(links["next"], headers=bearer(owner))
    assert followed.json()["data"] == pages[1]["data"]
    assert "per_page=10" in links["next"] and "page=2" in links["next"]
    assert pages[1]["links"]["next"] is None
    assert [(m["label"], m["active"]) for m in second["links"]] == [
        ("&laquo; Previous", False), ("1", False), ("2", True), ("Next &raquo;", False),
    ]  # fmt: skip


# --- refusals ------------------------------------------------------------------------


async def test_without_a_valid_key_every_endpoint_is_401(
    client: httpx.AsyncClient, account: TestAccount
) -> None:
    for key in (None, "fg_not_a_key"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        calls = [
            client.get(PATH, headers=headers),
            client.get(f"{PATH}/00000000-0000-0000-0000-000000000000", headers=headers),
            client.post(PATH, headers=headers, data={"name": "a", "description": "b"}),
            client.put(f"{PATH}/x", headers=headers, data={"name": "a"}),
            client.patch(f"{PATH}/x", headers=headers, data={"name": "a"}),
            client.delete(f"{PATH}/x", headers=headers),
        ]
        for call in calls:
            body = error_of(await call, 401)
            assert body["code"] == "UNAUTHENTICATED"


async def test_insufficient_credits_is_402_and_costs_nothing(
    client: httpx.AsyncClient, sessions: Sessions, settings: Settings
) -> None:
    poor = await create_account(sessions, settings, credits=3)
    response = await client.post(
        PATH, headers=form(poor), data={"name": "a", "description": "a cat"}
    )
    body = error_of(response, 402)
    assert body["code"] == "INSUFFICIENT_CREDITS"
    cached, _ = await audit(sessions, poor.id)
    assert (cached.available, cached.reserved) == (3, 0)
    assert (await client.get(PATH, headers=bearer(poor))).json()["data"] == []


async def test_rate_limit_is_429_with_retry_after(
    client: httpx.AsyncClient, sessions: Sessions, settings: Settings, worker: ThreadedWorker
) -> None:
    limited = await create_account(sessions, settings, plan="free")
    # A store runs three operations (submit, wait, name) but is one request; so is a
    # page that walks the pages before it.
    stored = await client.post(
        PATH, headers=form(limited), data={"name": "a", "description": "b", "resolution": "256x256"}
    )
    assert stored.status_code == 201, stored.text
    assert stored.headers["X-RateLimit-Remaining"] == "9"
    spent = await balance(sessions, limited.id)
    assert spent.available < 1000 and spent.reserved == 0
    deep = await client.get(PATH, params={"page": "3", "per_page": "10"}, headers=bearer(limited))
    assert deep.status_code == 200 and deep.headers["X-RateLimit-Remaining"] == "8"
    for _ in range(8):
        assert (await client.get(PATH, headers=bearer(limited))).status_code == 200
    refused = await client.get(PATH, headers=bearer(limited))
    body = error_of(refused, 429)
    assert body["code"] == "RATE_LIMITED"
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert body["retry_after"] == int(refused.headers["Retry-After"])
    refused_store = await client.post(
        PATH, headers=form(limited), data={"name": "a", "description": "b"}
    )
    assert error_of(refused_store, 429)["code"] == "RATE_LIMITED"
    assert await balance(sessions, limited.id) == spent  # the refused store cost nothing


async def test_another_accounts_image_is_not_found(
    client: httpx.AsyncClient, sessions: Sessions, settings: Settings, storage: Storage
) -> None:
    owner = await create_account(sessions, settings)
    mallory = await create_account(sessions, settings)
    await make_image(sessions, storage, owner, prompt="private picture")
    [image] = (await client.get(PATH, headers=bearer(owner))).json()["data"]
    url = f"{PATH}/{image['id']}"
    for response in (
        await client.get(url, headers=bearer(mallory)),
        await client.put(url, headers=form(mallory), data={"name": "mine"}),
        await client.patch(url, headers=form(mallory), data={"favorite": "1"}),
        await client.delete(url, headers=bearer(mallory)),
    ):
        body = error_of(response, 404)
        assert body["code"] == "NOT_FOUND"
        assert "private" not in response.text
    assert (await client.get(PATH, headers=bearer(mallory))).json()["data"] == []
    assert (await client.get(url, headers=bearer(owner))).json()["data"] == {
        **image, "name": None, "favorite": False,
    }  # fmt: skip


async def test_bad_input_is_400_naming_the_field_and_costs_nothing(
    client: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        ({"description": "a cat"}, "name"),
        ({"name": "a"}, "description"),
        ({"name": "a", "description": "a cat", "resolution": "300x300"}, "resolution"),
        ({"name": "a", "description": "a cat", "style": "cubism"}, "style"),
        ({"name": "a", "description": "a cat", "medium": "oil"}, "medium"),
        ({"name": "a", "description": "a cat", "filter": "blur"}, "filter"),
        ({"name": "x" * 201, "description": "a cat"}, "name"),
        ({"name": "a", "description": "   "}, "description"),
    ]
    for data, field in cases:
        body = error_of(await client.post(PATH, headers=form(account), data=data), 400)
        assert body["code"] == "BAD_USER_INPUT"
        assert list(body["errors"]) == [field], (data, body)
    for params, field in (
        ({"per_page": "7"}, "per_page"),
        ({"sort_by": "size"}, "sort_by"),
        ({"sort": "up"}, "sort"),
        ({"search_by": "prompt"}, "search_by"),
        ({"resolution": "2x2"}, "resolution"),
        ({"favorite": "maybe"}, "favorite"),
        ({"page": "0"}, "page"),
    ):
        body = error_of(await client.get(PATH, params=params, headers=bearer(account)), 400)
        assert list(body["errors"]) == [field], (params, body)
    # A JSON store is not the seed's form.
    assert (
        error_of(
            await client.post(
                PATH, headers=bearer(account), json={"name": "a", "description": "b"}
            ),
            415,
        )["code"]
        == "BAD_USER_INPUT"
    )
    cached, _ = await audit(sessions, account.id)
    assert (cached.available, cached.reserved) == (1000, 0)


async def test_hostile_input_is_refused(
    client: httpx.AsyncClient, account: TestAccount, sessions: Sessions
) -> None:
    nul = await client.post(
        PATH, headers=form(account), data={"name": "a\x00b", "description": "a cat"}
    )
    assert list(error_of(nul, 400)["errors"]) == ["name"]
    nul_prompt = await client.post(
        PATH, headers=form(account), data={"name": "a", "description": "a\x00cat"}
    )
    assert list(error_of(nul_prompt, 400)["errors"]) == ["description"]
    huge = await client.get(PATH, params={"page": "9" * 400}, headers=bearer(account))
    assert list(error_of(huge, 400)["errors"]) == ["page"]
    huge_per_page = await client.get(PATH, params={"per_page": "1e309"}, headers=bearer(account))
    assert error_of(huge_per_page, 400)["code"] == "BAD_USER_INPUT"
    assert (
        error_of(
            await client.get(PATH, params={"search": "x" * 10_000}, headers=bearer(account)), 400
        )["code"]
        == "BAD_USER_INPUT"
    )
    image = f"{PATH}/not-a-uuid"
    assert error_of(await client.get(image, headers=bearer(account)), 404)["code"] == "NOT_FOUND"
    for content in ("[1, 2]", '"x"', "{" * 5000 + "}" * 5000, '{"name": "\\u0000"}', "{"):
        response = await client.put(
            f"{PATH}/00000000-0000-0000-0000-000000000000",
            headers={**bearer(account), "Content-Type": "application/json"},
            content=content,
        )
        assert 400 <= response.status_code < 500, (content[:20], response.text)
        assert json.loads(response.text)["message"]
    bad_form = await client.post(
        PATH,
        headers={**bearer(account), "Content-Type": "multipart/form-data; boundary=zz"},
        content=b"--zz\r\nbroken",
    )
    assert 400 <= bad_form.status_code < 500
    cached, _ = await audit(sessions, account.id)
    assert (cached.available, cached.reserved) == (1000, 0)
