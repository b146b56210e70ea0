"""Every response carries an ``X-Request-Id``: the caller's when it is sane, a fresh one
otherwise, on errors too (401, 404, 405, 413, 500); and a real ``fluxgate serve`` with
``FLUXGATE_LOG_FORMAT=json`` writes JSON lines carrying that id. With several API
processes (``--workers 2``) every ``/metrics`` serves the sum of their counts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from runtime.settings import ROOT, Settings
from server.metrics import MAX_REQUEST_ID
from tests.conftest import ThreadedServer, free_port, own_queue, wait_healthy
from tests.server.test_metrics import parse, value

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def id_server(settings: Settings, database: str) -> Iterator[ThreadedServer]:
    with ThreadedServer.of(own_queue(settings, "request-id", max_body_bytes=2048)) as server:
        yield server


@pytest.fixture
async def http(id_server: ThreadedServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=id_server.url, timeout=30) as client:
        yield client


async def test_a_fresh_id_on_every_response_errors_included(http: httpx.AsyncClient) -> None:
    responses = [
        await http.get("/healthz"),  # 200
        await http.get(f"/v1/jobs/{uuid.uuid4()}"),  # 401
        await http.get("/no/such/route"),  # 404
        await http.delete("/healthz"),  # 405
        await http.post("/graphql", content=b"x" * 4096,
                        headers={"Content-Type": "application/json"}),  # 413
    ]  # fmt: skip
    assert [r.status_code for r in responses] == [200, 401, 404, 405, 413]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(GENERATED.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


async def test_the_callers_id_is_returned(http: httpx.AsyncClient) -> None:
    for sent in ("abc-123", str(uuid.uuid4()), "Root=1-5759e988-bd862e3fe1be46a9", "x" * 128):
        for response in (
            await http.get("/healthz", headers={"X-Request-Id": sent}),
            await http.get(f"/v1/jobs/{uuid.uuid4()}", headers={"X-Request-Id": sent}),
        ):
            assert response.headers["x-request-id"] == sent


@pytest.mark.parametrize(
    "hostile",
    [
        b"x" * (MAX_REQUEST_ID + 1),  # too long for a log line
        b"two words",  # spaces
        b"tab\there",  # a control character HTTP lets through
        "caf\u00e9".encode("latin-1"),  # not ASCII
        b"\xff\xfe\x00"[:2],  # bytes that decode to nothing sane
        b"",  # empty
    ],
)
async def test_a_hostile_id_is_replaced(http: httpx.AsyncClient, hostile: bytes) -> None:
    response = await http.get("/healthz", headers={b"X-Request-Id": hostile})
    assert response.status_code == 200
    assert GENERATED.fullmatch(response.headers["x-request-id"])


async def test_an_unhandled_error_still_carries_the_id(
    id_server: ThreadedServer, http: httpx.AsyncClient
) -> None:
    app = id_server.server.config.app
    assert isinstance(app, Starlette)

    async def broken(request: Request) -> Response:
        raise RuntimeError("an unexpected error")

    app.router.add_route("/test-boom", broken)
    response = await http.get("/test-boom", headers={"X-Request-Id": "boom-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    # The server drops the connection after an unhandled error: the answer says so, so the
    # client's next request opens a new one instead of failing on this one.
    assert response.headers["connection"] == "close"
    assert response.json()["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    after = await http.get("/metrics")
    samples = parse(after.text)
    assert (
        value(
            samples, "fluxgate_http_requests_total", route="/test-boom", method="GET", status="500"
        )
        >= 1
    )


# --- a real `fluxgate serve`: JSON logs, and two processes behind one port -------------


class Served:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def lines(self) -> list[dict[str, Any]]:
        """Every line written so far (each must be a JSON object)."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def served(
    settings: Settings, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "stderr.log"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "FLUXGATE_DATABASE_URL": settings.database_url,
        "FLUXGATE_REDIS_URL": settings.redis_url,
        "FLUXGATE_QUEUE_NAME": f"fluxgate:json:{uuid.uuid4().hex[:8]}",
        "FLUXGATE_SECRET_KEY": settings.secret_key.get_secret_value(),
        "FLUXGATE_STORAGE_DIR": str(settings.storage_dir),
        "FLUXGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "FLUXGATE_LOG_FORMAT": "json",
    }
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--workers", "2"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, [proc])
        yield Served(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_json_log_lines_carry_the_request_id(served: Served) -> None:
    sent = f"json-{uuid.uuid4().hex[:12]}"
    response = httpx.get(f"{served.url}/v1/jobs/{uuid.uuid4()}", headers={"X-Request-Id": sent})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == sent
    # uvicorn writes its access line before the response leaves the process.
    [access] = [line for line in served.lines() if line.get("request_id") == sent]
    assert access["logger"] == "uvicorn.access"
    assert access["level"] == "INFO"
    assert access["status"] == 401 and access["method"] == "GET"
    assert access["time"].endswith("Z")
    assert {"time", "level", "logger", "message", "request_id", "job_id"} <= set(access)
    # uvicorn's own start-up lines go through the same formatter.
    assert any(line["logger"].startswith("uvicorn.error") for line in served.lines())


def test_every_process_serves_the_sum_of_the_counts(served: Served) -> None:
    route = {"route": "/v1/jobs/{id}", "method": "GET", "status": "401"}
    name = "fluxgate_http_requests_total"

    def counted(client: httpx.Client) -> float:
        return value(parse(client.get("/metrics").text), name, **route)

    # Fresh connections each time: the kernel spreads them over both processes.
    with httpx.Client(base_url=served.url, timeout=30) as client:
        before = counted(client)
    for _ in range(40):
        with httpx.Client(base_url=served.url, timeout=30) as client:
            assert client.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 401
    for _ in range(6):
        with httpx.Client(base_url=served.url, timeout=30) as client:
            assert counted(client) - before == 40
