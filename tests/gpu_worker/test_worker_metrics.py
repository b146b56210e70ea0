"""The workers' own endpoint (``/metrics``, ``/readyz``) and logs, against real Postgres,
Redis, the tiny pipeline and a webhook receiver: readiness follows the models and the
heartbeat; webhook deliveries are counted by outcome; every log line written while a job
runs carries its id."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gpu_worker.metrics import MetricsServer, Probe
from gpu_worker.webhooks import build_webhook_worker
from runtime.logs import JsonFormatter
from runtime.queue import WORKER_TTL_S
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, wait_for_final
from tests.gpu_worker.test_webhooks import Receiver, deliveries, submit
from tests.server.test_metrics import Samples, parse, scrape, value


def test_readiness_wants_models_and_a_fresh_heartbeat() -> None:
    probe = Probe()
    assert probe.check() == (False, {"status": "not ready", "loaded": False,
                                     "heartbeat_age_s": None})  # fmt: skip
    probe.loaded = True
    assert probe.check()[0] is False  # no heartbeat yet
    probe.beat()
    ready, report = probe.check()
    assert ready and report["status"] == "ready" and report["heartbeat_age_s"] >= 0
    probe.beat_at = time.monotonic() - WORKER_TTL_S - 1  # the heartbeat stalled
    assert probe.check()[0] is False
    probe.beat()
    probe.stopped()  # Redis lost: the heartbeat task ended
    assert probe.check()[0] is False

    webhooks = Probe(heartbeat_max_age_s=None)  # no heartbeat to wait for
    assert webhooks.check()[0] is False
    webhooks.loaded = True
    assert webhooks.check() == (True, {"status": "ready", "loaded": True})


async def test_the_metrics_server_answers_only_what_it_serves() -> None:
    probe = Probe(loaded=True)
    probe.beat()
    with MetricsServer("worker", probe, host="127.0.0.1", port=0, token="t0ken") as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/readyz")).json()["status"] == "ready"
            assert (await client.get("/healthz")).status_code == 200
            missing = await client.get("/nope")
            assert missing.status_code == 404
            assert missing.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
            assert (await client.post("/metrics")).status_code == 405
            assert (await client.get("/metrics")).status_code == 401
            authorized = {"Authorization": "Bearer t0ken"}
            families = parse((await client.get("/metrics", headers=authorized)).text)
            assert ("process_cpu_seconds_total", frozenset()) in families


# --- end to end: the API, a GPU worker, the webhook worker ---------------------------


@pytest.fixture(scope="module")
def hook_settings(settings: Settings) -> Settings:
    return own_queue(
        settings,
        "worker-metrics",
        webhook_allowed_hosts="127.0.0.1",
        webhook_retry_schedule="0.2,0.2",
        webhook_timeout_s=2.0,
    )


@pytest.fixture(scope="module")
def hook_api(hook_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(hook_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def gpu(hook_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(hook_settings) as w:
        yield w


@pytest.fixture
async def http(hook_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hook_api, timeout=60) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def test_webhook_deliveries_are_counted_by_outcome(
    http: httpx.AsyncClient, gpu: ThreadedWorker, hook_settings: Settings,
    account: TestAccount, receiver: Receiver,
) -> None:  # fmt: skip
    probe = Probe(heartbeat_max_age_s=None)
    with MetricsServer("webhooks", probe, host="127.0.0.1", port=0) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as metrics:
            assert (await metrics.get("/readyz")).status_code == 503  # not started
            before = await scrape(metrics)
            # One answered 500 then 200 (retried, then delivered); one answered 410 (a
            # final answer: failed).
            receiver.plan = [(500, {}, b"boom")]
            with ThreadedWorker(hook_settings, build=build_webhook_worker, ctx={"probe": probe}):
                retried = await submit(http, account, receiver.url)
                await deliveries(http, account, retried, until="delivered")
                receiver.plan = [(410, {}, b"gone")]
                gone = await submit(http, account, receiver.url)
                await deliveries(http, account, gone, until="failed")
                assert (await metrics.get("/readyz")).json()["status"] == "ready"
                after = await scrape(metrics)
            # Stopped: its shutdown hook ran.
            assert (await metrics.get("/readyz")).status_code == 503

    def moved(name: str, samples: Samples = after, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    counted = "fluxgate_webhook_deliveries_total"
    assert moved(counted, outcome="retrying") == 1
    assert moved(counted, outcome="delivered") == 1
    assert moved(counted, outcome="failed") == 1
    assert moved("fluxgate_webhook_delivery_seconds_count") == 3


class Captured(logging.Handler):
    """The JSON lines of some loggers, for the length of a ``with`` block."""

    def __init__(self, *names: str) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.stream = io.StringIO()
        self.loggers = [logging.getLogger(n) for n in names]
        self.levels = [logger.level for logger in self.loggers]

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write(self.format(record) + "\n")

    def __enter__(self) -> Captured:
        for logger in self.loggers:
            logger.addHandler(self)
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, level in zip(self.loggers, self.levels, strict=True):
            logger.removeHandler(self)
            logger.setLevel(level)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


async def test_log_lines_of_a_running_job_carry_its_id(
    http: httpx.AsyncClient, gpu: ThreadedWorker, account: TestAccount
) -> None:
    with Captured("arq.worker") as captured:
        response = await http.post(
            "/v1/text_to_image",
            json={"service": "flux-dev", "prompt": "logged", "width": 256, "height": 256},
            headers={"X-API-Key": account.api_key},
        )
        job_id = response.json()["data"]["generateImage"]["id"]
        final = await wait_for_final(http, account.api_key, job_id)
    assert final["status"] == "completed"
    lines = [line for line in captured.lines() if job_id in line["message"]]
    # arq's start (→) and end (←) lines: both written in the job's task.
    assert len(lines) >= 2, captured.lines()
    assert all(line["job_id"] == job_id for line in lines)
    assert all(line["request_id"] is None for line in lines)
    # Lines written outside any job carry none.
    assert all(line["job_id"] in (None, job_id) for line in captured.lines())


def test_an_exception_is_one_json_line_with_its_traceback() -> None:
    captured = Captured("fluxgate.test")
    with captured:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            logging.getLogger("fluxgate.test").exception("it failed: %s", "details")
    [line] = captured.lines()
    assert line["message"] == "it failed: details"
    assert line["level"] == "ERROR"
    assert "Traceback" in line["exception"] and "ValueError: bad" in line["exception"]
