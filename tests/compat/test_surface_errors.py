"""Errors made outside a compatible surface's endpoints — the router's 404 and 405, a body
over the size limit (BodySizeLimit's 413) — for a path the surface owns are in that
surface's error shape, like its endpoints' own refusals; other paths keep Fluxgate's."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.factories import TestAccount


def v2(body: dict[str, Any]) -> str:
    assert set(body) >= {"error", "details", "code", "request_id"}, body
    return str(body["code"])


def images_v1(body: dict[str, Any]) -> str:
    assert (set(body) >= {"message", "code"} and "errors" not in body) or "message" in body, body
    return str(body["code"])


def flux(body: dict[str, Any]) -> str:
    assert body["success"] is False and set(body["error"]) >= {"code", "message"}, body
    return str(body["error"]["code"]).upper()


def tasks(body: dict[str, Any]) -> str:
    assert body["err_code"] == 1 and isinstance(body["err_msg"], str), body
    return "TASK"


def ours(body: dict[str, Any]) -> str:
    [error] = body["errors"]
    return str(error["extensions"]["code"])


async def test_router_errors_are_in_the_surfaces_shape(client: httpx.AsyncClient) -> None:
    cases = [
        ("GET", "/api/no-such-endpoint", 404, v2, "NOT_FOUND"),
        ("GET", "/api/generate", 405, v2, "METHOD_NOT_ALLOWED"),
        ("PATCH", "/api/images", 405, v2, "METHOD_NOT_ALLOWED"),
        ("PUT", "/api/v1/images", 405, images_v1, "METHOD_NOT_ALLOWED"),
        ("GET", "/flux/images", 405, flux, "METHOD_NOT_ALLOWED"),
        ("GET", "/flux/other", 404, flux, "NOT_FOUND"),
        ("GET", "/api/submit_task", 405, tasks, "TASK"),
        ("GET", "/v1/jobs", 405, ours, "METHOD_NOT_ALLOWED"),
        ("GET", "/nowhere", 404, ours, "NOT_FOUND"),
    ]
    for method, path, status, shape, code in cases:
        response = await client.request(method, path)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert shape(response.json()) == code, (path, response.text)


async def test_a_405_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    """Allow lists each method a compatible path takes, whichever the surface declared
    first (schemathesis ST205)."""
    cases = {
        "/api/images/x": {"GET", "HEAD", "DELETE"},
        "/api/batch/x": {"GET", "HEAD", "DELETE"},
        "/api/v1/images/x": {"GET", "HEAD", "PUT", "PATCH", "DELETE"},
        "/api/user/api-keys": {"GET", "HEAD", "POST"},
        "/api/user/profile": {"GET", "HEAD", "PUT"},
        "/api/user/password": {"POST", "PUT"},
    }
    for path, methods in cases.items():
        response = await client.request("OPTIONS", path)
        assert response.status_code == 405, (path, response.text)
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert allowed == methods, (path, allowed)
    # Every method it names is routed (a wrong key, not a wrong method).
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        answer = await client.request(method, "/api/v1/images/x")
        assert answer.status_code == 401, (method, answer.text)


async def _raw(api: str, request: bytes) -> tuple[int, dict[str, Any]]:
    """A request written by hand (a Content-Length no client library would send)."""
    url = urlsplit(api)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, json.loads(await reader.readexactly(length))
    finally:
        writer.close()


async def test_a_body_over_the_limit_is_refused_in_the_surfaces_shape(api: str) -> None:
    for path, shape in (
        ("/api/generate", v2),
        ("/api/v1/images", images_v1),
        ("/flux/images", flux),
        ("/api/submit_vector_task", tasks),
        ("/v1/text_to_image", ours),
    ):
        status, body = await _raw(
            api,
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Content-Length: 99999999999\r\nConnection: close\r\n\r\n".encode(),
        )
        assert status == 413, (path, body)
        shape(body)
        if shape is v2:  # the offending field, and the request's id, as its own refusals
            assert body["field"] == "body" and body["request_id"], body


async def test_numbered_pages_reach_the_first_ten_thousand_images(
    client: httpx.AsyncClient, account: TestAccount
) -> None:
    """A page number is a walk of the library's cursor: pages past the first 10,000
    images are refused (one request stays at most 100 queries), naming the field."""
    headers = {"Authorization": f"Bearer {account.api_key}", "X-API-Key": account.api_key}
    far = await client.get("/api/images?page=101&per_page=100", headers=headers)
    assert far.status_code == 400 and far.json()["field"] == "page", far.text
    far = await client.get("/api/v1/images?page=401&per_page=25", headers=headers)
    assert far.status_code == 400 and far.json()["code"] == "BAD_USER_INPUT", far.text
    near = await client.get("/api/images?page=100&per_page=100", headers=headers)
    assert near.status_code == 200 and near.json()["images"] == [], near.text
    near = await client.get("/api/v1/images?page=400&per_page=25", headers=headers)
    assert near.status_code == 200 and near.json()["data"] == [], near.text
