"""``/metrics`` and ``/readyz`` of the API against real Postgres, Redis and a real worker:
the exposition parses; requests are counted by route template and status; the queue
gauges rise while a job waits with no worker and fall once one runs it, the credits it
moved are counted, and the worker's own endpoint shows its latencies and device time;
readiness fails, naming the dependency, when Redis or the database is gone."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gpu_worker.metrics import MetricsServer, Probe
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import create_account, wait_for_final
from tests.redis_server import RedisServer

JOB = {"service": "flux-dev", "prompt": "a lighthouse", "width": 256, "height": 256}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, url: str = "/metrics") -> Samples:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


@pytest.fixture(scope="module")
def metrics_settings(settings: Settings) -> Settings:
    return own_queue(settings, "metrics")


@pytest.fixture(scope="module")
def metrics_api(metrics_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(metrics_settings) as server:
        yield server.url


@pytest.fixture
async def http(metrics_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=metrics_api, timeout=30) as client:
        yield client


async def test_exposition_parses_and_names_every_api_metric(http: httpx.AsyncClient) -> None:
    await http.get("/healthz")
    response = await http.get("/metrics")
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "fluxgate_http_requests",
        "fluxgate_http_request_duration_seconds",
        "fluxgate_queue_depth",
        "fluxgate_queue_oldest_job_age_seconds",
        "fluxgate_jobs_running",
        "fluxgate_workers_live",
        "fluxgate_credits",
        "fluxgate_redis_up",
        "process_cpu_seconds",
    } <= names
    samples = parse(response.text)
    assert value(samples, "fluxgate_redis_up") == 1
    assert value(samples, "fluxgate_queue_depth", pool="default") == 0


async def test_requests_are_counted_by_route_template_and_status(
    http: httpx.AsyncClient,
) -> None:
    before = await scrape(http)
    ids = [uuid.uuid4().hex for _ in range(3)]
    for job_id in ids:
        assert (await http.get(f"/v1/jobs/{job_id}")).status_code == 401
    assert (await http.get(f"/no/such/{ids[0]}")).status_code == 404
    assert (await http.delete("/healthz")).status_code == 405
    assert (await http.request("PROPFIND", "/healthz")).status_code == 405
    after = await scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    counted = "fluxgate_http_requests_total"
    assert moved(counted, route="/v1/jobs/{id}", method="GET", status="401") == 3
    assert moved(counted, route="unmatched", method="GET", status="404") == 1
    assert moved(counted, route="/healthz", method="DELETE", status="405") == 1
    # An unknown method is not a label value of its own: the methods are a closed set.
    assert moved(counted, route="/healthz", method="other", status="405") == 1
    timed = "fluxgate_http_request_duration_seconds_count"
    assert moved(timed, route="/v1/jobs/{id}", method="GET") == 3
    # Raw paths never become labels: the ids sent appear in no series.
    assert not any(job_id in repr(key) for key in after for job_id in ids)


async def test_queue_gauges_credits_and_job_metrics_move_when_a_job_runs(
    http: httpx.AsyncClient,
    metrics_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    account = await create_account(sessions, metrics_settings, credits=1000)
    started_at = await db_now(sessions)
    before = await scrape(http)
    assert value(before, "fluxgate_workers_live", pool="default") == 0

    # No worker runs on this queue yet: the job waits, and the gauges say so.
    response = await http.post(
        "/v1/text_to_image", json=JOB, headers={"X-API-Key": account.api_key}
    )
    assert response.status_code == 200, response.text
    job = response.json()["data"]["generateImage"]
    queued = await scrape(http)
    assert value(queued, "fluxgate_queue_depth", pool="default") == 1
    assert value(queued, "fluxgate_queue_oldest_job_age_seconds", pool="default") >= 0
    assert value(queued, "fluxgate_jobs_running", pool="default") == 0
    reserved = value(queued, "fluxgate_credits_total", movement="reserved") - value(
        before, "fluxgate_credits_total", movement="reserved"
    )

    probe = Probe()
    with MetricsServer("worker", probe, host="127.0.0.1", port=0) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as worker_http:
            assert (await worker_http.get("/readyz")).status_code == 503  # nothing loaded
            worker_before = await scrape(worker_http)
            with ThreadedWorker(metrics_settings, ctx={"probe": probe}):
                final = await wait_for_final(http, account.api_key, job["id"])
                assert final["status"] == "completed"
                ran = await scrape(http)
                ended_at = await db_now(sessions)
                ready = await ready_within(worker_http, 30)
            worker_after = await scrape(worker_http)

    assert reserved == final["creditCost"] > 0
    captured = value(ran, "fluxgate_credits_total", movement="captured") - value(
        before, "fluxgate_credits_total", movement="captured"
    )
    # The counter is this process's: every capture it committed meanwhile, this job's and
    # any other (a sweeper of this process may finish a job an earlier test left behind),
    # exactly what the ledger captured in the same window.
    async with sessions() as session:
        in_window = await session.scalar(
            text(
                "SELECT coalesce(sum(-reserved_delta), 0) FROM ledger_entries "
                "WHERE kind = 'capture' AND created_at BETWEEN :a AND :b"
            ),
            {"a": started_at, "b": ended_at},
        )
        mine = await session.scalar(
            text("SELECT -reserved_delta FROM ledger_entries WHERE kind = 'capture' "
                 "AND generation_id = :id"),
            {"id": job["id"]},
        )  # fmt: skip
    assert mine == final["creditCost"]
    assert captured == in_window >= final["creditCost"]
    assert value(ran, "fluxgate_queue_depth", pool="default") == 0
    assert value(ran, "fluxgate_queue_oldest_job_age_seconds", pool="default") == 0
    assert value(ran, "fluxgate_workers_live", pool="default") == 1

    assert ready["loaded"] is True and ready["heartbeat_age_s"] is not None

    def moved(name: str, **labels: str) -> float:
        return value(worker_after, name, **labels) - value(worker_before, name, **labels)

    job_labels = {"kind": "text_to_image", "model": "flux-dev"}
    assert moved("fluxgate_job_queue_wait_seconds_count", **job_labels) == 1
    assert moved("fluxgate_job_queue_wait_seconds_sum", **job_labels) > 0
    assert moved("fluxgate_job_run_seconds_count", **job_labels) == 1
    assert moved("fluxgate_job_run_seconds_sum", **job_labels) > 0
    assert moved("fluxgate_jobs_total", outcome="completed", **job_labels) == 1
    assert moved("fluxgate_gpu_seconds_total", model="flux-dev") > 0


async def db_now(sessions: async_sessionmaker[AsyncSession]) -> datetime:
    async with sessions() as session:
        now = await session.scalar(text("SELECT clock_timestamp()"))
    assert isinstance(now, datetime)
    return now


async def ready_within(client: httpx.AsyncClient, timeout: float) -> dict[str, object]:
    """The worker's /readyz once it answers 200 (its first heartbeat is on its way)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/readyz")
        if response.status_code == 200:
            report: dict[str, object] = response.json()
            return report
        assert time.monotonic() < deadline, response.text


async def test_metrics_token_guards_the_endpoint(metrics_settings: Settings, database: str) -> None:
    guarded = own_queue(metrics_settings, "metrics-token", metrics_token=SecretStr("s3cret-token"))
    with ThreadedServer.of(guarded) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            refused = await client.get("/metrics")
            assert refused.status_code == 401
            assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
            wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
            assert ok.status_code == 200
            parse(ok.text)
            # Probes stay open.
            assert (await client.get("/readyz")).status_code == 200


async def test_readyz_reports_database_and_redis(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def assert_not_ready(response: httpx.Response, failing: list[str]) -> None:
    assert response.status_code == 503, response.text
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert error["extensions"]["failing"] == failing
    assert response.headers["x-request-id"]


async def test_readyz_fails_naming_redis_while_it_is_down(
    metrics_settings: Settings, database: str, private_redis: RedisServer
) -> None:
    own = own_queue(metrics_settings, "ready-redis", redis_url=private_redis.url)
    with ThreadedServer.of(own) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert (await client.get("/readyz")).status_code == 200
            private_redis.kill()
            response = await client.get("/readyz")
            assert_not_ready(response, ["redis"])
            assert response.json()["errors"][0]["extensions"]["checks"]["database"] == "ok"
            # The counts are still served; the queue gauges are missing, and say so.
            samples = await scrape(client)
            assert value(samples, "fluxgate_redis_up") == 0
            assert ("fluxgate_queue_depth", frozenset({("pool", "default")})) not in samples
            private_redis.start()
            assert (await client.get("/readyz")).status_code == 200


async def test_readyz_fails_naming_the_database_when_it_is_gone(
    metrics_settings: Settings, database: str
) -> None:
    missing = metrics_settings.database_url.rsplit("/", 1)[0] + "/fluxgate_test_metrics_missing"
    own = own_queue(metrics_settings, "ready-db", database_url=missing)
    with ThreadedServer.of(own) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert_not_ready(await client.get("/readyz"), ["database"])
