"""A job faster than the progress interval (issue 9, item 16): the worker never gets to
write a step before the job completes. The completed job must still show its last step,
and a webhook that asked for progress must still get every mark (25/50/75), each
reporting its own mark, before or beside the completion.

Real API, real GPU worker running the tiny FLUX pipeline at full speed, real webhook
worker and receiver; the progress interval is set far above the job's run time."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gpu_worker.webhooks import build_webhook_worker
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import create_account, gql, wait_for_final
from tests.gpu_worker.test_webhooks import Receiver, deliveries


@pytest.fixture(scope="module")
def fast_settings(settings: Settings) -> Settings:
    return own_queue(
        settings, "marks",
        webhook_allowed_hosts="127.0.0.1", webhook_retry_schedule="0.3,0.3",
        progress_interval_s=600.0,  # no progress write can happen before the job ends
    )  # fmt: skip


@pytest.fixture(scope="module")
def fast_api(fast_settings: Settings, database: str) -> Iterator[str]:
    with (
        ThreadedServer.of(fast_settings) as server,
        ThreadedWorker(fast_settings),
        ThreadedWorker(fast_settings, build=build_webhook_worker),
    ):
        yield server.url


async def test_fast_job_records_last_step_and_every_progress_mark(
    fast_api: str, fast_settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    account = await create_account(sessions, fast_settings, credits=100)
    receiver = Receiver()
    try:
        async with httpx.AsyncClient(base_url=fast_api, timeout=60) as http:
            body = await gql(
                http,
                """mutation S($input: ImageGenerationInput!) {
                     generateImage(input: $input) { id } }""",
                {"input": {"service": "flux-dev", "prompt": "quick", "width": 256,
                           "height": 256, "webhookUrl": receiver.url,
                           "webhookEvents": ["progress", "completed"]}},
                key=account.api_key,
            )  # fmt: skip
            assert "errors" not in body, body
            job = body["data"]["generateImage"]["id"]
            done = await wait_for_final(http, account.api_key, job)
            assert done["status"] == "completed", done
            assert done["progress"] == 100
            assert done["totalSteps"] > 0 and done["step"] == done["totalSteps"], done
            # The form the README documents: /files/<job id>-<16 hex>-<output index>.png
            assert re.fullmatch(rf"{fast_api}/files/{job}-[0-9a-f]{{16}}-0\.png", done["url"])

            # The marks are queued in the completion's transaction: all four exist now.
            found = await deliveries(http, account, job, until="delivered")
            events = sorted(d["event"] for d in found)
            assert events == ["completed", "progress.25", "progress.50", "progress.75"]
    finally:
        receiver.close()

    sent = {json.loads(r["body"])["event"]: json.loads(r["body"]) for r in receiver.requests}
    for mark in (25, 50, 75):
        progress = sent[f"progress.{mark}"]
        assert progress["progress"] == mark and progress["status"] == "processing"
        assert progress["url"] is None and progress["completedAt"] is None
    assert sent["completed"]["progress"] == 100 and sent["completed"]["url"]
