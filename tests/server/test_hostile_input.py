"""Hostile input on every HTTP surface (issue 9, items 7-10 and 19): a table of bodies,
content types, paths and methods that used to give a 500, a dropped connection or a
text/plain answer. Each must be a 4xx (or a GraphQL error) in the documented JSON error
shape with a code, charge nothing, log no error or traceback, and leave the connection
usable for the next request."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runtime.settings import Settings
from tests.factories import TestAccount, audit, create_account, gql
from tests.server.test_errors import job_count

ME = "{ me { id } }"
PRICE = 'query { price(input: {service: "flux-dev", prompt: "p", width: %s}) { credits } }'
GENERATE_IMAGE = """mutation G($input: ImageGenerationInput!) {
  generateImage(input: $input) { id } }"""
JSON = "application/json"


class Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def problems(self) -> list[str]:
        """ERROR records and anything carrying a traceback."""
        return [
            f"{r.name} {r.levelname}: {r.getMessage()}"
            for r in self.records
            if r.levelno >= logging.ERROR or r.exc_info
        ]


@pytest.fixture
def server_logs() -> Iterator[Collector]:
    """Everything the in-process API server logs: the root logger (our loggers,
    strawberry) and uvicorn's own, which does not propagate to the root."""
    collector = Collector()
    loggers = [
        logging.getLogger(),
        logging.getLogger("uvicorn"),
        logging.getLogger("uvicorn.error"),
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(collector)
    logging.getLogger().setLevel(logging.INFO)
    try:
        yield collector
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(collector)
            lg.setLevel(level)


def assert_error_shape(body: Any, code: str | None = None) -> dict[str, Any]:
    assert isinstance(body, dict) and isinstance(body.get("errors"), list), body
    assert body["errors"], body
    for error in body["errors"]:
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["extensions"]["code"], str), error
        # No Python internals in what a client reads (the int-conversion limit's advice
        # to call sys.set_int_max_str_digits() once leaked through).
        for internal in ("sys.", "Traceback", "ValueError", "asyncpg", "sqlalchemy"):
            assert internal not in error["message"], error
    first: dict[str, Any] = body["errors"][0]
    if code is not None:
        assert first["extensions"]["code"] == code, body
    return first


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = JSON
    status: int = 400
    code: str | None = "BAD_USER_INPUT"
    field: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    auth: bool = True


def q(query: str, **extra: Any) -> bytes:
    return json.dumps({"query": query, **extra}).encode()


def gql_vars(query: str, variables: dict[str, Any]) -> bytes:
    # ensure_ascii: lone surrogates travel as JSON escapes, as any client would send them.
    return json.dumps({"query": query, "variables": variables}).encode()


NUL_ID = 'query { generation(id: "a\\u0000b") { id } }'
CASES: list[Case] = [
    # item 9: bodies that are not a JSON object, or not JSON at all
    Case("json null", "POST", "/graphql", b"null"),
    Case("json number", "POST", "/graphql", b"42"),
    Case("json string", "POST", "/graphql", b'"x"'),
    Case("invalid utf-8", "POST", "/graphql", b'{"query": "\xff\xfe"}'),
    Case(
        "5001-digit number",
        "POST",
        "/graphql",
        b'{"query": "{ me { id } }", "x": ' + b"1" * 5001 + b"}",
    ),
    Case("deep nesting", "POST", "/graphql", b"[" * 100_000),
    Case("deep object", "POST", "/graphql", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    Case(
        "deep variables",
        "POST",
        "/graphql",
        b'{"query": "{ me { id } }", "variables": {"v": ' + b"[" * 900 + b"]" * 900 + b"}}",
    ),
    # item 10: malformed requests answered in the JSON error shape
    Case("empty body", "POST", "/graphql", b""),
    Case("invalid json", "POST", "/graphql", b"{"),
    Case("batched array", "POST", "/graphql", b'[{"query": "{ me { id } }"}]'),
    Case("empty array", "POST", "/graphql", b"[]"),
    Case("query not a string", "POST", "/graphql", b'{"query": 42}'),
    Case("variables not an object", "POST", "/graphql", q(ME, variables="x")),
    Case("operationName not a string", "POST", "/graphql", q(ME, operationName=5)),
    Case(
        "unknown operationName", "POST", "/graphql", q("query A { me { id } }", operationName="B")
    ),
    Case("no query", "POST", "/graphql", b'{"variables": {}}'),
    Case("text/plain", "POST", "/graphql", q(ME), "text/plain", 415, field="Content-Type"),
    Case("form", "POST", "/graphql", b"query=x", "application/x-www-form-urlencoded", 415),
    # Uploads are multipart (the GraphQL multipart request spec): a body with no operations
    # in it is malformed, not an unsupported type.
    Case("multipart", "POST", "/graphql", b"--x--", "multipart/form-data; boundary=x", 400),
    Case("no content type", "POST", "/graphql", q(ME), None, 415),
    Case("GET without query", "GET", "/graphql", None, None, headers={"Accept": JSON}),
    Case(
        "GET mutation", "GET", "/graphql?query=mutation%7BcreateApiKey%7Bsecret%7D%7D", None, None
    ),
    Case(
        "GET bad variables", "GET", "/graphql?query=%7Bme%7Bid%7D%7D&variables=%5B%5B", None, None
    ),
    Case(
        "GET nested variables",
        "GET",
        "/graphql?query=%7Bme%7Bid%7D%7D&variables=" + "%5B" * 5000,
        None,
        None,
    ),
    Case("wrong method", "DELETE", "/graphql", None, None, 405, "METHOD_NOT_ALLOWED"),
    Case("unknown route", "GET", "/nope", None, None, 404, "NOT_FOUND", auth=False),
    Case("unknown route, POST", "POST", "/v2/anything", b"{}", status=404, code="NOT_FOUND"),
    # item 7: a subscription over HTTP
    Case(
        "subscription over POST",
        "POST",
        "/graphql",
        q('subscription { generationUpdated(id: "x") { id } }'),
    ),
    Case(
        "subscription over multipart HTTP",
        "POST",
        "/graphql",
        q('subscription { generationUpdated(id: "x") { id } }'),
        headers={"Accept": 'multipart/mixed;subscriptionSpec="1.0",application/json'},
    ),
    # REST shim: content type, bodies, path parameters (items 8-10)
    Case(
        "REST text/plain",
        "POST",
        "/v1/text_to_image",
        b'{"service": "flux-dev", "prompt": "p"}',
        "text/plain",
        415,
        field="Content-Type",
    ),
    Case(
        "REST no content type",
        "POST",
        "/v1/text_to_image",
        b'{"service": "flux-dev", "prompt": "p"}',
        None,
        415,
    ),
    Case("REST null", "POST", "/v1/text_to_image", b"null", field="body"),
    Case("REST array", "POST", "/v1/text_to_image", b"[1]", field="body"),
    Case("REST deep nesting", "POST", "/v1/text_to_image", b"[" * 100_000, field="body"),
    Case(
        "REST 5001 digits",
        "POST",
        "/v1/text_to_image",
        b'{"service": "flux-dev", "prompt": "p", "width": ' + b"1" * 5001 + b"}",
        field="body",
    ),
    Case(
        "REST invalid utf-8", "POST", "/v1/text_to_image", b'{"prompt": "\xc3\x28"}', field="body"
    ),
    Case("REST empty", "POST", "/v1/text_to_image", b"", field="body"),
    Case(
        "REST NUL prompt",
        "POST",
        "/v1/text_to_image",
        b'{"service": "flux-dev", "prompt": "a\\u0000b"}',
        field="input.prompt",
    ),
    Case(
        "REST surrogate prompt",
        "POST",
        "/v1/text_to_image",
        b'{"service": "flux-dev", "prompt": "x\\ud800y"}',
        field="input.prompt",
    ),
    Case(
        "REST surrogate key",
        "POST",
        "/v1/text_to_image",
        b'{"service": "flux-dev", "prompt": "p", "x\\udfffy": 1}',
    ),
    Case(
        "REST NUL webhookUrl",
        "POST",
        "/v1/text_to_image",
        b'{"service": "flux-dev", "prompt": "p", "webhookUrl": "https://a\\u0000.example/h"}',
        field="input.webhookUrl",
    ),
    Case("REST GET NUL id", "GET", "/v1/text_to_image/a%00b", None, None, field="id"),
    Case("REST cancel NUL id", "POST", "/v1/text_to_image/a%00b/cancel", None, None, field="id"),
    Case("REST wrong method", "DELETE", "/v1/text_to_image", None, None, 405, "METHOD_NOT_ALLOWED"),
    # files and the Stripe endpoint
    Case("file NUL", "GET", "/files/a%00b.png", None, None, 404, "NOT_FOUND", auth=False),
    Case(
        "file traversal",
        "GET",
        "/files/..%2F..%2Fetc%2Fpasswd",
        None,
        None,
        404,
        "NOT_FOUND",
        auth=False,
    ),
    Case(
        "stripe unsigned",
        "POST",
        "/webhooks/stripe",
        b"[" * 100_000,
        status=400,
        code=None,
        auth=False,
    ),
    Case(
        "stripe GET", "GET", "/webhooks/stripe", None, None, 405, "METHOD_NOT_ALLOWED", auth=False
    ),
    # a large (but acceptable) header does not change anything
    Case("huge header", "POST", "/graphql", b"42", headers={"X-Junk": "j" * 100_000}),
]

# item 8: NUL and lone surrogates in every text argument, as literals and as variables;
# GraphQL answers them in its own envelope (HTTP 200), refused before anything runs.
GRAPHQL_TEXT_CASES: list[tuple[str, bytes, str | None]] = [
    ("generation NUL literal", q(NUL_ID), "id"),
    (
        "generation NUL variable",
        gql_vars("query ($id: ID!) { generation(id: $id) { id } }", {"id": "a\x00b"}),
        "id",
    ),
    (
        "webhookDeliveries NUL",
        q('{ webhookDeliveries(generationId: "a\\u0000") { id } }'),
        "generationId",
    ),
    ("redeliverWebhook NUL", q('mutation { redeliverWebhook(id: "\\u0000") { id } }'), "id"),
    (
        "cancelGeneration NUL",
        gql_vars("mutation ($id: ID!) { cancelGeneration(id: $id) { id } }", {"id": "x\x00"}),
        "id",
    ),
    ("createApiKey name NUL", q('mutation { createApiKey(name: "k\\u0000") { secret } }'), "name"),
    (
        "webhookUrl NUL",
        gql_vars(
            GENERATE_IMAGE,
            {
                "input": {
                    "service": "flux-dev",
                    "prompt": "p",
                    "webhookUrl": "https://h\x00.example/",
                }
            },
        ),
        "input.webhookUrl",
    ),
    (
        "prompt surrogate",
        gql_vars(GENERATE_IMAGE, {"input": {"service": "flux-dev", "prompt": "x\ud800y"}}),
        "input.prompt",
    ),
    # graphql-core's lexer refuses lone surrogates in the document itself, escaped or not.
    (
        "prompt surrogate escape",
        q('mutation { generateImage(input: {service: "flux-dev", prompt: "x\\ud800y"}) { id } }'),
        None,
    ),
    (
        "prompt surrogate char",
        q('mutation { generateImage(input: {service: "flux-dev", prompt: "x\ud800y"}) { id } }'),
        None,
    ),
    (
        "variable key surrogate",
        gql_vars(GENERATE_IMAGE, {"input": {"service": "flux-dev", "prompt": "p", "\udc00": 1}}),
        "input",
    ),
]


def request(case: Case, account: TestAccount) -> tuple[dict[str, str], bytes | None]:
    headers = dict(case.headers)
    if case.auth:
        headers["X-API-Key"] = account.api_key
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    return headers, case.body


@pytest.fixture
async def victim(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> TestAccount:
    return await create_account(sessions, settings, credits=1000)


async def assert_nothing_charged(
    sessions: async_sessionmaker[AsyncSession], account: TestAccount
) -> None:
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    assert (cached.available, cached.reserved) == (1000, 0)
    assert await job_count(sessions, account) == 0


async def test_hostile_input_table(
    api: str,
    victim: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    server_logs: Collector,
) -> None:
    """One keep-alive connection for the whole table: every refusal leaves it usable."""
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        for case in CASES:
            headers, body = request(case, victim)
            response = await client.request(case.method, case.path, content=body, headers=headers)
            try:
                assert response.status_code == case.status, response.text
                assert response.headers["content-type"].startswith(JSON), response.headers
                error = assert_error_shape(response.json(), case.code)
                if case.field is not None:
                    assert error["extensions"].get("field") == case.field, error
                if case.status == 405:
                    assert "Allow" in response.headers
                assert response.headers.get("connection") != "close"
            except AssertionError as exc:
                failures.append(f"{case.name}: {exc}")
        for name, body, field_name in GRAPHQL_TEXT_CASES:
            response = await client.post(
                "/graphql",
                content=body,
                headers={"X-API-Key": victim.api_key, "Content-Type": JSON},
            )
            try:
                assert response.status_code == 200, response.text
                if field_name is None:
                    assert_error_shape(response.json(), "GRAPHQL_PARSE_FAILED")
                else:
                    error = assert_error_shape(response.json(), "BAD_USER_INPUT")
                    assert error["extensions"]["field"] == field_name, error
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
        # Still the same, working connection.
        assert (await gql(client, ME, key=victim.api_key))["data"]["me"]["id"] == str(victim.id)
    assert not failures, "\n".join(failures)
    assert not server_logs.problems()
    await assert_nothing_charged(sessions, victim)


def raw_exchange(
    url: str, requests: list[tuple[str, str, bytes, dict[str, str]]]
) -> list[tuple[int, bytes]]:
    """Several requests on ONE http.client connection; fails if the server closed it."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    answers = []
    sock: socket.socket | None = None
    try:
        for method, path, body, headers in requests:
            conn.request(method, path, body=body, headers=headers)
            if sock is not None:
                assert conn.sock is sock, "the server dropped the connection"
            response = conn.getresponse()
            answers.append((response.status, response.read()))
            assert response.getheader("Connection") != "close"
            sock = conn.sock
            assert sock is not None, "the server closed the connection"
    finally:
        conn.close()
    return answers


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/graphql", b"null"),
        ("/graphql", b'{"query": "\xff"}'),
        ("/graphql", b"[" * 100_000),
        ("/graphql", json.dumps({"query": PRICE % ("1" * 5001)}).encode()),
        ("/v1/text_to_image", b"[" * 100_000),
    ],
    ids=["null", "invalid-utf8", "deep-graphql", "5001-digit-literal", "deep-rest"],
)
async def test_bad_body_keeps_the_connection(
    api: str,
    victim: TestAccount,
    sessions: async_sessionmaker[AsyncSession],
    server_logs: Collector,
    path: str,
    body: bytes,
) -> None:
    """Item 9 with a plain http.client connection: the bad request, then a good one."""
    headers = {"X-API-Key": victim.api_key, "Content-Type": JSON}
    good = json.dumps({"query": ME}).encode()
    answers = await asyncio.to_thread(
        raw_exchange, api, [("POST", path, body, headers), ("POST", "/graphql", good, headers)]
    )
    (bad_status, bad_body), (good_status, good_body) = answers
    assert bad_status in (200, 400), bad_body  # a GraphQL validation error is HTTP 200
    assert_error_shape(json.loads(bad_body))
    assert good_status == 200 and json.loads(good_body)["data"]["me"]["id"] == str(victim.id)
    assert not server_logs.problems()
    await assert_nothing_charged(sessions, victim)


async def test_subscription_over_http_says_to_use_a_websocket(
    client: httpx.AsyncClient, victim: TestAccount
) -> None:
    response = await client.post(
        "/graphql",
        json={"query": 'subscription { generationUpdated(id: "x") { id } }'},
        headers=victim.bearer,
    )
    assert response.status_code == 400
    error = assert_error_shape(response.json(), "BAD_USER_INPUT")
    assert "websocket" in error["message"]


async def test_rest_refuses_non_json_content_type_without_charging(
    client: httpx.AsyncClient, victim: TestAccount, sessions: async_sessionmaker[AsyncSession]
) -> None:
    body = json.dumps({"service": "flux-dev", "prompt": "p", "width": 256, "height": 256})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
        response = await client.post(
            "/v1/text_to_image",
            content=body,
            headers={"X-API-Key": victim.api_key, "Content-Type": content_type},
        )
        assert response.status_code == 415, response.text
        assert_error_shape(response.json(), "BAD_USER_INPUT")
    await assert_nothing_charged(sessions, victim)
    # The same body as JSON (charset parameter and all) is accepted.
    accepted = await client.post(
        "/v1/text_to_image",
        content=body,
        headers={"X-API-Key": victim.api_key, "Content-Type": "application/json; charset=utf-8"},
    )
    assert accepted.status_code == 200, accepted.text


async def test_impossible_rate_limit_does_not_invite_a_retry(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """Item 19: a document counting more requests than the plan's limit per minute can
    never succeed: no retryAfter, no Retry-After header, and nothing counted."""
    free = await create_account(sessions, settings, credits=1000, plan="free")
    me = await client.post("/graphql", json={"query": ME}, headers=free.bearer)
    limit = int(me.headers["X-RateLimit-Limit"])
    fields = " ".join(
        f'a{i}: generateImage(input: {{service: "flux-dev", prompt: "p", width: 256, '
        f"height: 256}}) {{ id }}"
        for i in range(limit + 1)
    )
    response = await client.post(
        "/graphql", json={"query": f"mutation {{ {fields} }}"}, headers=free.bearer
    )
    # In-band, as every resolver refusal on /graphql (a rate limit too, test_limits.py).
    assert response.status_code == 200
    error = assert_error_shape(response.json(), "BAD_USER_INPUT")
    assert "can never fit" in error["message"]
    assert "retryAfter" not in error["extensions"]
    assert "Retry-After" not in response.headers
    assert response.headers["X-RateLimit-Remaining"] == me.headers["X-RateLimit-Remaining"]
    assert await job_count(sessions, free) == 0


async def test_client_disconnect_mid_body_is_not_an_error(
    api: str, victim: TestAccount, server_logs: Collector
) -> None:
    """Item 19: a client that goes away before its announced body is complete is logged
    quietly (no ERROR, no traceback), on GraphQL and on REST."""
    parts = urlsplit(api)
    for path in ("/graphql", "/v1/text_to_image"):
        seen = len(server_logs.records)
        with socket.create_connection((parts.hostname or "", parts.port or 80)) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f'X-API-Key: {victim.api_key}\r\nContent-Length: 1000\r\n\r\n{{"query":'.encode()
            )
        # Wait on the event itself: the server noticing the disconnect.
        deadline = time.monotonic() + 30
        while not any(
            "disconnected mid-request" in r.getMessage() for r in server_logs.records[seen:]
        ):
            assert time.monotonic() < deadline, "the server never noticed the disconnect"
            await asyncio.sleep(0.02)
    assert not server_logs.problems()


DASHBOARD_KEYS = ["fgk_a\x00b", "\x00", "x" * 20_000, "fgk_\u00e9\u4e2d", "fgk_" + "A" * 60]


async def test_dashboard_login_hostile_keys(
    api: str, victim: TestAccount, server_logs: Collector
) -> None:
    """The dashboard sign-in form (HTML, a browser surface): hostile keys are a 4xx page,
    never a 500, and log no error."""
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        page = await client.get("/dashboard/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None, page.text
        for key in DASHBOARD_KEYS:
            response = await client.post(
                "/dashboard/login", data={"api_key": key, "csrf_token": token[1]}
            )
            assert 400 <= response.status_code < 500, (key[:20], response.status_code)
        raw = await client.post(
            "/dashboard/login",
            content=b"api_key=%ED%A0%80%00&csrf_token=" + token[1].encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert 400 <= raw.status_code < 500, raw.status_code
    assert not server_logs.problems()
