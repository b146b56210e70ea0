"""Helpers for the end-to-end tests of the job kinds (tests/server/test_job_kinds*.py,
tests/server/test_custom_kind.py): input images, a local image host, REST and GraphQL
(multipart upload) clients, polling and the ledger checks. Fixtures live in each module:
an API server and a worker of its own on one queue."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from gql import Client, FileVar, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Generation
from tests.factories import TestAccount, balance

FINAL = ("completed", "failed", "cancelled")
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
JOB_DOCUMENT_KEYS = {
    "id", "kind", "status", "progress", "creditCost", "url", "outputs", "inputs", "error",
    "createdAt", "completedAt",
}  # fmt: skip
GQL_JOB_FIELDS = """
  id kind status creditCost url width height progress error
  outputs { id url width height format }
  inputs { role url width height }
"""
PRICE_JOB = """query P($kind: String!, $input: JSON!) { priceJob(kind: $kind, input: $input) {
  credits unitCredits count kind width height tier } }"""


def picture(width: int = 320, height: int = 256) -> Image.Image:
    """An RGB image with some structure (a gradient and a red block)."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.paste((200, 40, 40), (width // 4, height // 4, width // 2, height // 2))
    return image


def mask(width: int = 320, height: int = 256) -> Image.Image:
    """White (repaint) on the right half, black (keep) elsewhere."""
    image = Image.new("L", (width, height), 0)
    image.paste(255, (width // 2, 0, width, height))
    return image


def encoded(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


PNG = encoded(picture())
MASK = encoded(mask())


def sniffed(data: bytes) -> str | None:
    """The format of ``data`` from its magic bytes (never from a header the server sent)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def headers(account: TestAccount, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.api_key}", **(extra or {})}


def form_fields(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else str(v) for k, v in values.items()}


class ImageHost:
    """An HTTP server on 127.0.0.1 answering GET /<name> with the bytes given to ``serve``;
    counts the requests it gets."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.hits: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                host.hits.append(self.path)
                found = host.files.get(self.path)
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, content_type = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, data: bytes, content_type: str = "image/png") -> str:
        """A fresh URL answering ``data``."""
        path = f"/{uuid.uuid4().hex}.img"
        self.files[path] = (data, content_type)
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def rest_submit(
    http: httpx.AsyncClient,
    account: TestAccount,
    kind: str,
    fields: Mapping[str, Any],
    files: Mapping[str, bytes] | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """``POST /v1/<kind>`` as multipart/form-data (files ``image``/``mask``), multipart
    even with no file: the fields are parts without a file name."""
    parts: list[tuple[str, tuple[str | None, bytes | str] | tuple[str, bytes, str]]] = [
        (name, (None, value)) for name, value in form_fields(fields).items()
    ]
    parts += [(name, (f"{name}.png", data, "image/png")) for name, data in (files or {}).items()]
    return await http.post(f"/v1/{kind}", files=parts, headers=headers(account, extra_headers))


async def rest_json(
    http: httpx.AsyncClient, account: TestAccount, kind: str, body: Mapping[str, Any]
) -> httpx.Response:
    return await http.post(f"/v1/{kind}", json=dict(body), headers=headers(account))


async def wait_job(
    http: httpx.AsyncClient, account: TestAccount, job_id: str, timeout: float = 60
) -> dict[str, Any]:
    """``GET /v1/jobs/{id}`` until the job is final."""
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get(f"/v1/jobs/{job_id}", headers=headers(account))
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in FINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']}")
        await asyncio.sleep(0.05)


async def download(http: httpx.AsyncClient, output: Mapping[str, Any]) -> Image.Image:
    """An output fetched from its URL: the right content type, bytes and size."""
    response = await http.get(output["url"])
    assert response.status_code == 200, (output, response.status_code)
    fmt = output["format"]
    assert response.headers["content-type"] == MIME[fmt], response.headers
    assert sniffed(response.content) == fmt
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.size == (output["width"], output["height"])
    return image


async def gql_upload(
    url: str,
    account: TestAccount,
    query: str,
    variables: dict[str, Any],
    files: Mapping[str, bytes] | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A GraphQL request by the multipart request spec, sent by gql's own client (the
    files become the variables of the same names). Returns ``{"data"}`` or ``{"errors"}``."""
    transport = HTTPXAsyncTransport(
        url=f"{url}/graphql", headers=headers(account, extra_headers), timeout=60
    )
    uploads = {
        name: FileVar(io.BytesIO(data), filename=f"{name}.png", content_type="image/png")
        for name, data in (files or {}).items()
    }
    request = GraphQLRequest(query, variable_values={**variables, **uploads})
    async with Client(transport=transport) as session:
        try:
            data = await session.execute(request, upload_files=bool(uploads))
        except TransportQueryError as exc:
            return {"errors": exc.errors}
    return {"data": data}


async def price_job(
    http: httpx.AsyncClient, account: TestAccount, kind: str, values: Mapping[str, Any]
) -> dict[str, Any]:
    response = await http.post(
        "/graphql",
        json={"query": PRICE_JOB, "variables": {"kind": kind, "input": dict(values)}},
        headers=headers(account),
    )
    body = response.json()
    assert "errors" not in body, body
    quote: dict[str, Any] = body["data"]["priceJob"]
    return quote


async def job_count(sessions: async_sessionmaker[AsyncSession], account: TestAccount) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Generation)
            .where(
                Generation.account_id == account.id  # type: ignore[arg-type]  # SQLModel column
            )
        )
    return int(count or 0)


async def assert_charged(
    sessions: async_sessionmaker[AsyncSession], account: TestAccount, start: int, spent: int
) -> None:
    """Every job settled: ``spent`` captured, nothing still reserved."""
    now = await balance(sessions, account.id)
    assert (now.available, now.reserved) == (start - spent, 0)


async def assert_untouched(
    sessions: async_sessionmaker[AsyncSession], account: TestAccount, start: int
) -> None:
    """A refused request: nothing charged or reserved, no job row."""
    now = await balance(sessions, account.id)
    assert (now.available, now.reserved) == (start, 0)
    assert await job_count(sessions, account) == 0


def refusal(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error of a REST refusal, checked."""
    assert response.status_code == status, response.text
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == code, error
    found: dict[str, Any] = error
    return found
