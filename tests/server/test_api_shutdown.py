"""An API process stopped with SIGTERM (a rolling restart) drains its websockets (issue
11, graceful lifecycle): each open subscription is closed with 1012 "service restart",
the close code that tells a client to reconnect (to another replica), its subscription
slot is given back, and the process ends as uvicorn ends on SIGTERM. A real `fluxgate
serve` process and a websocket client speaking graphql-transport-ws."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis.asyncio
import websockets
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.typing import Subprotocol

from runtime.queue import Keys
from runtime.settings import ROOT, Settings
from tests.conftest import own_queue, wait_healthy
from tests.factories import create_account, subscribed


@pytest.mark.slow
async def test_sigterm_closes_subscriptions_with_service_restart_and_exits_cleanly(
    settings: Settings, database: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    own = own_queue(settings, "shutdown")
    port = int(own.public_url.rsplit(":", 1)[1])
    env = {
        **os.environ,
        "FLUXGATE_DATABASE_URL": own.database_url,
        "FLUXGATE_REDIS_URL": own.redis_url,
        "FLUXGATE_QUEUE_NAME": own.queue_name,
        "FLUXGATE_SECRET_KEY": own.secret_key.get_secret_value(),
        "FLUXGATE_STORAGE_DIR": str(own.storage_dir),
        "FLUXGATE_PUBLIC_URL": own.public_url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    account = await create_account(sessions, own, credits=100)
    slots = redis.asyncio.Redis.from_url(own.redis_url)
    try:
        wait_healthy(own.public_url, [proc])
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/graphql", subprotocols=[Subprotocol("graphql-transport-ws")]
        ) as ws:
            init = {"Authorization": f"Bearer {account.api_key}"}
            await ws.send(json.dumps({"type": "connection_init", "payload": init}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            query = "subscription { generationsUpdated { id status } }"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            await subscribed(own, account)

            proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:  # keep-alive pings may come first
                    await asyncio.wait_for(ws.recv(), 30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        # uvicorn shuts down, then re-raises the signal it caught: "terminated by SIGTERM"
        # is its clean exit (a shell shows 143).
        assert await asyncio.to_thread(proc.wait, 60) == -signal.SIGTERM
        # The subscription ended on the server, and its slot went back with it.
        key = f"{Keys(own.queue_name).events}:subscribers:{account.id}"
        deadline = time.monotonic() + 30
        while await slots.zcard(key):
            assert time.monotonic() < deadline, "the subscription slot was never released"
            await asyncio.sleep(0.05)  # polling the slot set above
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await slots.aclose()
