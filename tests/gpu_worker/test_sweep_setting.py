"""FLUXGATE_SWEEP: a worker process sweeps unless it is set false (a deployment keeps one
sweeper: deploy/k8s sets it false on the GPU workers). A worker that does not sweep runs
jobs all the same. Real API, worker, Postgres and Redis."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import create_account, gql, wait_for_final

SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""


@pytest.mark.parametrize("sweep", [True, False])
async def test_a_worker_sweeps_unless_told_not_to_and_runs_jobs_either_way(
    settings: Settings, database: str, sessions: async_sessionmaker[AsyncSession], sweep: bool
) -> None:
    own = own_queue(settings, f"sweep-{sweep}", sweep=sweep)
    account = await create_account(sessions, own, credits=1000)
    with ThreadedServer.of(own) as api, ThreadedWorker(own) as worker:
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            body = await gql(
                http, SUBMIT,
                {"input": {"service": "flux-dev", "prompt": "swept?", "width": 256, "height": 256}},
                key=account.api_key,
            )  # fmt: skip
            done = await wait_for_final(http, account.api_key, body["data"]["generateImage"]["id"])
        assert done["status"] == "completed", done
        # The job ran, so the worker's start-up is over: its tasks are in place.
        ctx = getattr(worker.worker, "ctx")  # noqa: B009  # typed as object in the fixture
        assert "heartbeat" in ctx
        assert ("sweeper" in ctx) is sweep
