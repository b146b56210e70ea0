"""Bad input, bad keys and other accounts' jobs: the documented error, no job, no charge."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.db import unit_of_work_without_dispatch
from billing.models import Generation
from billing.service import accounts
from runtime.settings import Settings
from tests.conftest import ThreadedServer, free_port
from tests.factories import TestAccount, audit, create_account, gql

GENERATE = """mutation G($input: GenerateInput!) { generate(input: $input) { id creditCost } }"""
GENERATE_IMAGE = """mutation G($input: ImageGenerationInput!) {
  generateImage(input: $input) { id } }"""


def generate_vars(**options: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "IMAGE",
        "provider": "flux-pro",
        "input": {"text": "a lighthouse at dusk"},
        "options": {"width": 512, "height": 512},
    }
    for path, value in options.items():
        target = base
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        if value is _DROP:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return {"input": base}


_DROP = object()

# (variables override, expected field) for `generate` over GraphQL.
GENERATE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"input__text": _DROP}, "input.text"),
    ({"input__text": ""}, "input.text"),
    ({"input__text": "   "}, "input.text"),
    ({"input__text": "x" * 4001}, "input.text"),
    ({"input__text": 42}, "input.text"),
    ({"options__width": 0}, "options.width"),
    ({"options__width": -1}, "options.width"),
    ({"options__width": 100000}, "options.width"),
    ({"options__width": 1000}, "options.width"),
    ({"options__height": 1000}, "options.height"),
    ({"options__width": "wide"}, "options.width"),
    ({"options__width": 512.5}, "options.width"),
    ({"options__height": None, "options__width": [512]}, "options.width"),
    ({"provider": "dall-e"}, "provider"),
    ({"provider": _DROP}, "provider"),
    ({"options__version": "flux-pro-9"}, "options.version"),
    ({"options__quality": "ultra"}, "options.quality"),
    ({"options__seed": -5}, "options.seed"),
    ({"type": "VIDEO"}, "type"),
    ({"webhookUrl": "ftp://example.com/hook"}, "webhookUrl"),
    ({"options__colour": "red"}, "options.colour"),
]


async def job_count(sessions: async_sessionmaker[AsyncSession], account: TestAccount) -> int:
    async with sessions() as s:
        result = await s.execute(
            select(func.count()).select_from(Generation).where(Generation.account_id == account.id)  # type: ignore[arg-type]
        )
        return int(result.scalar_one())


async def assert_untouched(
    sessions: async_sessionmaker[AsyncSession], account: TestAccount, credits: int = 1000
) -> None:
    assert await job_count(sessions, account) == 0
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    assert (cached.available, cached.reserved) == (credits, 0)


@pytest.mark.parametrize(("override", "field"), GENERATE_CASES)
async def test_generate_bad_input(
    client: httpx.AsyncClient,
    account: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    override: dict[str, Any],
    field: str,
) -> None:
    body = await gql(client, GENERATE, generate_vars(**override), key=account.api_key)
    assert body.get("data") is None or body["data"].get("generate") is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert error["extensions"]["field"] == field, error
    assert error["message"]
    await assert_untouched(sessions, account)


REST_CASES: list[tuple[dict[str, Any] | str, str]] = [
    ({"prompt": "x"}, "service"),
    ({"service": "flux-pro"}, "prompt"),
    ({"service": "flux-pro", "prompt": ""}, "prompt"),
    ({"service": "flux-pro", "prompt": "x", "width": 0}, "width"),
    ({"service": "flux-pro", "prompt": "x", "width": -1}, "width"),
    ({"service": "flux-pro", "prompt": "x", "height": 100000}, "height"),
    ({"service": "flux-pro", "prompt": "x", "width": 1001}, "width"),
    ({"service": "flux-pro", "prompt": "x", "width": "1024"}, "width"),
    ({"service": "flux-pro", "prompt": "x", "version": "flux-pro-2"}, "version"),
    ({"service": "midjourney", "prompt": "x"}, "service"),
    ({"service": "flux-pro", "prompt": "x", "webhookUrl": "not a url"}, "webhookUrl"),
    ('{"service": "flux-pro", "prompt": ', "body"),
    ("[1, 2, 3]", "body"),
    ("\xff\xfe", "body"),
]


@pytest.mark.parametrize(("payload", "field"), REST_CASES)
async def test_rest_bad_input(
    client: httpx.AsyncClient,
    account: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    payload: dict[str, Any] | str,
    field: str,
) -> None:
    content = payload.encode("latin-1") if isinstance(payload, str) else json.dumps(payload)
    response = await client.post(
        "/v1/text_to_image",
        content=content,
        headers={"X-API-Key": account.api_key, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["field"] == field
    await assert_untouched(sessions, account)


async def test_syntax_error_has_a_code(client: httpx.AsyncClient, account: TestAccount) -> None:
    body = await gql(client, "mutation { generate(", key=account.api_key)
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"


async def test_insufficient_credits_shape_on_both_surfaces(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    poor = await create_account(sessions, settings, credits=5)
    body = await gql(client, GENERATE, generate_vars(), key=poor.api_key)
    assert body["errors"] == [
        {
            "message": "Insufficient credits for this operation",
            "locations": [{"line": 1, "column": 38}],
            "path": ["generate"],
            "extensions": {
                "code": "INSUFFICIENT_CREDITS",
                "creditsRequired": 12,  # 512x512 on flux-pro-1.1, the default version
                "creditsAvailable": 5,
            },
        }
    ]
    response = await client.post(
        "/v1/text_to_image",
        json={"service": "flux-pro", "prompt": "x", "width": 2048, "height": 2048},
        headers={"X-API-Key": poor.api_key},
    )
    assert response.status_code == 402
    assert response.json() == {
        "errors": [
            {
                "message": "Insufficient credits for this operation",
                "extensions": {
                    "code": "INSUFFICIENT_CREDITS",
                    "creditsRequired": 37,
                    "creditsAvailable": 5,
                },
            }
        ]
    }
    await assert_untouched(sessions, poor, credits=5)


async def revoked_key(sessions: async_sessionmaker[AsyncSession], account: TestAccount) -> str:
    async with unit_of_work_without_dispatch(sessions) as uow:
        await accounts.revoke_key(uow, account.api_key_id, allow_last=True)
    return account.api_key


BAD_KEYS = {
    "missing": None,
    "malformed": "hello",
    "unknown": "fgk_" + "A" * 32 + "000000",
    "typo": None,  # filled in from the account's real key
    "revoked": None,
}


@pytest.mark.parametrize("kind", list(BAD_KEYS))
async def test_bad_keys_are_refused_everywhere(
    client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    kind: str,
) -> None:
    victim = await create_account(sessions, settings, credits=100)
    key = BAD_KEYS[kind]
    if kind == "typo":
        key = (
            victim.api_key[:-8] + ("x" if victim.api_key[-8] != "x" else "y") + victim.api_key[-7:]
        )
    elif kind == "revoked":
        key = await revoked_key(sessions, victim)
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}

    for query, variables in [
        ("{ me { id } }", {}),
        (GENERATE, generate_vars()),
        ("query($id: ID!) { generation(id: $id) { id } }", {"id": "abc"}),
    ]:
        body = await gql(client, query, variables, headers=headers)
        [error] = body["errors"]
        assert error["extensions"] == {"code": "UNAUTHENTICATED"}
        assert not any((body["data"] or {}).values())

    rest_headers = {} if key is None else {"X-API-Key": key}
    post = await client.post(
        "/v1/text_to_image", json={"service": "flux-pro", "prompt": "x"}, headers=rest_headers
    )
    get = await client.get("/v1/text_to_image/abc", headers=rest_headers)
    for response in (post, get):
        assert response.status_code == 401
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    # A bad key with bad input is still a 401: authentication comes first.
    bad_both = await client.post("/v1/text_to_image", content="{", headers=rest_headers)
    assert bad_both.status_code == 401
    await assert_untouched(sessions, victim, credits=100)


async def test_both_key_headers_work_on_both_surfaces(
    client: httpx.AsyncClient, account: TestAccount
) -> None:
    body = await gql(client, "{ me { email } }", headers={"X-API-Key": account.api_key})
    assert body["data"]["me"]["email"] == account.email
    response = await client.get(
        "/v1/text_to_image/nope", headers={"Authorization": f"Bearer {account.api_key}"}
    )
    assert response.status_code == 404
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_another_accounts_job_is_not_found(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    alice = await create_account(sessions, settings, credits=100)
    mallory = await create_account(sessions, settings, credits=100)
    body = await gql(client, GENERATE, generate_vars(), key=alice.api_key)
    job_id = body["data"]["generate"]["id"]

    stolen = await gql(
        client,
        "query($id: ID!) { generation(id: $id) { id prompt url } }",
        {"id": job_id},
        key=mallory.api_key,
    )
    assert stolen["data"] is None
    assert stolen["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert stolen["errors"][0]["message"] == "Generation not found"
    missing = await gql(
        client,
        "query($id: ID!) { generation(id: $id) { id } }",
        {"id": "0" * 24},
        key=mallory.api_key,
    )
    assert missing["errors"][0]["message"] == stolen["errors"][0]["message"]

    rest = await client.get(f"/v1/text_to_image/{job_id}", headers={"X-API-Key": mallory.api_key})
    assert rest.status_code == 404
    listing = await gql(client, "{ generations { items { id } } }", key=mallory.api_key)
    assert listing["data"]["generations"]["items"] == []
    mine = await gql(client, "{ generations { items { id } } }", key=alice.api_key)
    assert [g["id"] for g in mine["data"]["generations"]["items"]] == [job_id]


async def test_unexpected_errors_are_masked(settings: Settings, account: TestAccount) -> None:
    """With the database unreachable, clients get INTERNAL_SERVER_ERROR and no details."""
    broken = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"}
    )
    with ThreadedServer(broken, free_port()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            body = await gql(c, "{ me { id } }", key=account.api_key)
            rest = await c.post(
                "/v1/text_to_image",
                json={"service": "flux-pro", "prompt": "x"},
                headers={"X-API-Key": account.api_key},
            )
    [error] = body["errors"]
    assert error["message"] == "Internal server error"
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert rest.status_code == 500
    assert rest.json() == {
        "errors": [
            {"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
        ]
    }
    for text in (json.dumps(body), rest.text):
        for leak in ("127.0.0.1", "postgres", "Traceback", "Errno", "nowhere"):
            assert leak not in text
