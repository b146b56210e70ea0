"""``queuePosition`` counts the jobs waiting ahead: 0 means the job is next (issue 9, item
20). arq keeps a running job in its queue until it finishes, so a job behind a running
one must still say 0, not 1. Real API, real Redis queue, a real worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.catalog import Catalog
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import create_account, gql, wait_for_final
from tests.runners import SlowRunner

SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
STATE = "query Q($id: ID!) { generation(id: $id) { status queuePosition } }"
CANCEL = "mutation C($id: ID!) { cancelGeneration(id: $id) { status } }"


@pytest.fixture(scope="module")
def queue_settings(settings: Settings) -> Settings:
    return own_queue(settings, "position")


@pytest.fixture(scope="module")
def queue_api(queue_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(queue_settings) as server:
        yield server.url


async def state(http: httpx.AsyncClient, key: str, job: str) -> dict[str, Any]:
    body = await gql(http, STATE, {"id": job}, key=key)
    g: dict[str, Any] = body["data"]["generation"]
    return g


async def test_queue_position_counts_waiting_jobs_only(
    queue_api: str, queue_settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    account = await create_account(sessions, queue_settings, credits=1000)
    key = account.api_key
    async with httpx.AsyncClient(base_url=queue_api, timeout=60) as http:
        jobs = []
        for n in range(3):
            body = await gql(
                http, SUBMIT,
                {"input": {"service": "flux-dev", "prompt": f"job {n}", "width": 256,
                           "height": 256}},
                key=key,
            )  # fmt: skip
            jobs.append(body["data"]["generateImage"]["id"])
        # No worker yet: all three wait, the first is next.
        assert [(await state(http, key, j))["queuePosition"] for j in jobs] == [0, 1, 2]

        runner = SlowRunner(Catalog.load(queue_settings.models), step_seconds=1.0)
        with ThreadedWorker(queue_settings, runner=runner):
            deadline = time.monotonic() + 60
            while (await state(http, key, jobs[0]))["status"] != "processing":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # The first runs (still in arq's queue): the second is next, the third after it.
            second = await state(http, key, jobs[1])
            third = await state(http, key, jobs[2])
            assert (second["status"], second["queuePosition"]) == ("queued", 0)
            assert (third["status"], third["queuePosition"]) == ("queued", 1)
            for job in jobs[1:]:
                await gql(http, CANCEL, {"id": job}, key=key)
            assert (await wait_for_final(http, key, jobs[0]))["status"] == "completed"
