"""Live-path benchmark (printed figures, not a test). Run: `make bench-live`.

What N open subscriptions cost the API process (`fluxgate serve`, one uvicorn process):
its CPU share (utime + stime from /proc/<pid>/stat, in % of one core) and the database's
transactions per second (xact_commit + xact_rollback of the bench database in
pg_stat_database, read from the maintenance database so that the reads themselves do
not count), over a window of ``--seconds``:

- ``none``: the server with no subscription open (the floor);
- ``idle``: N subscriptions open (one websocket each, graphql-transport-ws), half
  ``generationUpdated`` on queued jobs (no worker runs: they stay queued; ``--followed``
  sets the share), the rest ``generationsUpdated``, spread over several accounts (a plan
  caps open subscriptions per account), and nothing happening;
- ``active``: the same N while ``generate`` is called ``--rate`` times a second, round
  robin over the accounts, so every ``generationsUpdated`` subscriber receives events.
  Its database figure includes the submissions' own transactions.

The client is light (the ``websockets`` package speaking the protocol directly, one task
per socket); its own CPU share is printed too. The database's statistics reach
pg_stat_database up to ~10 s late, so the opening burst is left to settle before the
first window. A subscriptions sweep (FLUXGATE_SUBSCRIPTION_RECHECK_S, default 30 s) falls
in about every window of 30 s.

Uses its own database and Redis database (bench/throughput.py's DB_URL and REDIS_URL:
FLUXGATE_BENCH_DATABASE_URL, FLUXGATE_BENCH_REDIS_URL), rebuilt on each run, and port
8795 by default (bench/accept.py uses 8775-8776).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import (  # noqa: E402
    DB_URL,
    GENERATE,
    REDIS_URL,
    SECRET,
    cpu_seconds,
    make_key,
    reset_database,
    start,
    variables,
    wait_healthy,
)

from runtime.queue import Keys  # noqa: E402

QUEUE = "fluxgate:bench-live"
FOLLOW = "subscription F($id: ID!) { generationUpdated(id: $id) { id status queuePosition } }"
FOLLOW_ALL = "subscription { generationsUpdated { id status } }"
# Open subscriptions per account on the plan make_key gives (enterprise).
PER_ACCOUNT = 200


@dataclass
class Tally:
    events: int = 0
    errors: list[Any] = field(default_factory=list)


class Subscriber:
    """One websocket with one subscription; counts the results it receives."""

    def __init__(self, ws: ClientConnection, tally: Tally) -> None:
        self.ws = ws
        self.tally = tally
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, url: str, key: str, query: str, variables: dict[str, Any], tally: Tally
    ) -> Subscriber:
        # No client pings (browsers send none): the server's own keep-alive is measured.
        ws = await connect(
            url, subprotocols=[Subprotocol("graphql-transport-ws")], ping_interval=None
        )
        await ws.send(json.dumps({
            "type": "connection_init", "payload": {"Authorization": f"Bearer {key}"},
        }))  # fmt: skip
        ack = json.loads(await ws.recv())
        if ack["type"] != "connection_ack":
            raise RuntimeError(f"refused: {ack}")
        await ws.send(json.dumps({
            "id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables},
        }))  # fmt: skip
        return cls(ws, tally)

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            kind = message["type"]
            if kind == "next":
                self.tally.events += 1
                self.first.set()
            elif kind == "ping":
                await self.ws.send('{"type":"pong"}')
            elif kind in ("error", "complete"):
                self.tally.errors.append(message)
                self.first.set()
                return

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


class Transactions:
    """Committed + rolled-back transactions of the bench database so far, read over a
    connection to the maintenance database (so that reading them adds none)."""

    def __init__(self) -> None:
        base, _, self.database = DB_URL.rpartition("/")
        self.engine = create_async_engine(
            f"{base}/postgres", poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        self.conn: AsyncConnection | None = None

    async def __call__(self) -> int:
        if self.conn is None:
            self.conn = await self.engine.connect()
            await self.conn.execute(text("SET stats_fetch_consistency = 'none'"))
        value = await self.conn.scalar(
            text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"),
            {"d": self.database},
        )
        return int(value)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        await self.engine.dispose()


@dataclass
class Figures:
    phase: str
    subscriptions: int
    seconds: float
    api_cpu: float  # % of one core
    client_cpu: float
    tx_per_s: float
    events_per_s: float
    accepted_per_s: float | None = None


async def window(
    phase: str, subscriptions: int, seconds: float, pid: int, transactions: Transactions,
    tally: Tally, accepted: list[int] | None = None,
) -> Figures:  # fmt: skip
    started = time.monotonic()
    cpu, client, xacts, events = cpu_seconds(pid), os.times(), await transactions(), tally.events
    done = len(accepted) if accepted is not None else 0
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    after = os.times()
    figures = Figures(
        phase=phase,
        subscriptions=subscriptions,
        seconds=elapsed,
        api_cpu=100 * (cpu_seconds(pid) - cpu) / elapsed,
        client_cpu=100 * ((after.user - client.user) + (after.system - client.system)) / elapsed,
        tx_per_s=(await transactions() - xacts) / elapsed,
        events_per_s=(tally.events - events) / elapsed,
        accepted_per_s=(len(accepted) - done) / elapsed if accepted is not None else None,
    )
    print(f"  {phase}: measured over {elapsed:.1f}s", flush=True)
    return figures


async def submit(http: httpx.AsyncClient, key: str, i: int) -> str:
    response = await http.post(
        "/graphql",
        json={"query": GENERATE, "variables": variables(i, 256)},
        headers={"Authorization": f"Bearer {key}"},
    )
    body = response.json()
    if "errors" in body:
        raise RuntimeError(body["errors"])
    job_id: str = body["data"]["generate"]["id"]
    return job_id


async def submit_steadily(
    http: httpx.AsyncClient, keys: list[str], rate: float, stop: asyncio.Event,
    accepted: list[int],
) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[str]] = set()
    failed: list[BaseException] = []

    def accepted_or_failed(task: asyncio.Task[str]) -> None:
        error = task.exception()
        if error is None:
            accepted.append(1)
        else:
            failed.append(error)

    due = loop.time()
    for i in itertools.count():
        if stop.is_set():
            break
        task = asyncio.create_task(submit(http, keys[i % len(keys)], 10**6 + i))
        task.add_done_callback(accepted_or_failed)
        pending.add(task)
        task.add_done_callback(pending.discard)
        due += 1 / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
    await asyncio.gather(*pending)
    if failed:
        raise SystemExit(f"{len(failed)} submissions failed: {failed[:3]}")


async def open_slots(client: Redis) -> int:
    prefix = f"{Keys(QUEUE).events}:subscribers:"
    return sum([await client.zcard(k) async for k in client.scan_iter(match=f"{prefix}*")])


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the server inherits it
        if wanted < needed:
            raise SystemExit(f"RLIMIT_NOFILE: {needed} file descriptors needed, {hard} allowed")


async def main(args: argparse.Namespace) -> None:
    n = args.subscriptions
    raise_file_limit(2 * n + 512)
    await reset_database()
    redis.Redis.from_url(REDIS_URL).flushdb()
    storage = tempfile.mkdtemp(prefix="fluxgate-bench-live-")
    env = {
        **os.environ,
        "FLUXGATE_DATABASE_URL": DB_URL,
        "FLUXGATE_REDIS_URL": REDIS_URL,
        "FLUXGATE_SECRET_KEY": SECRET,
        "FLUXGATE_STORAGE_DIR": storage,
        "FLUXGATE_QUEUE_NAME": QUEUE,
        "PYTHONPATH": str(ROOT),
    }
    accounts = max(args.accounts, -(-n // PER_ACCOUNT))
    keys = [await make_key(credits=10**12) for _ in range(accounts)]
    url = f"http://127.0.0.1:{args.port}"
    api = start(["serve", "--port", str(args.port)], env, Path(storage) / "api.log")
    transactions = Transactions()
    tally = Tally()
    subscribers: list[Subscriber] = []
    slots = Redis.from_url(REDIS_URL)
    results: list[Figures] = []
    try:
        await wait_healthy(url)
        print(f"{n} subscriptions over {accounts} accounts, windows of {args.seconds}s, "
              f"{args.rate} generate/s when active", flush=True)  # fmt: skip
        results.append(await window("none", 0, args.seconds, api.pid, transactions, tally))

        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
            gate = asyncio.Semaphore(16)

            async def queued(i: int) -> tuple[str, str]:
                async with gate:
                    key = keys[i % accounts]
                    return key, await submit(http, key, i)

            count = round(n * args.followed)
            followed = await asyncio.gather(*(queued(i) for i in range(count)))
            ws_url = url.replace("http://", "ws://") + "/graphql"
            opening = asyncio.Semaphore(50)

            async def subscribe(i: int) -> Subscriber:
                async with opening:
                    if i < len(followed):
                        key, job_id = followed[i]
                        one = await Subscriber.open(ws_url, key, FOLLOW, {"id": job_id}, tally)
                        await asyncio.wait_for(one.first.wait(), 60)  # listening
                    else:
                        key = keys[i % accounts]
                        one = await Subscriber.open(ws_url, key, FOLLOW_ALL, {}, tally)
                    return one

            opened = time.monotonic()
            subscribers = list(await asyncio.gather(*(subscribe(i) for i in range(n))))
            # Every subscription holds its slot (taken right before it listens). Redis is
            # outside this process: nothing to wait on but its answer.
            while await open_slots(slots) < n:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if tally.errors:
                raise SystemExit(f"subscriptions refused or ended: {tally.errors[:3]}")
            print(f"  opened {n} in {time.monotonic() - opened:.1f}s; settling "
                  f"{args.settle}s", flush=True)  # fmt: skip
            await asyncio.sleep(args.settle)
            results.append(await window("idle", n, args.seconds, api.pid, transactions, tally))

            stop = asyncio.Event()
            accepted: list[int] = []
            submitter = asyncio.create_task(submit_steadily(http, keys, args.rate, stop, accepted))
            await asyncio.sleep(args.settle)
            results.append(
                await window("active", n, args.seconds, api.pid, transactions, tally, accepted)
            )
            stop.set()
            await submitter
            if tally.errors:
                raise SystemExit(f"subscriptions ended: {tally.errors[:3]}")
    finally:
        await asyncio.gather(*(s.close() for s in subscribers), return_exceptions=True)
        await slots.aclose()
        await transactions.close()
        api.terminate()
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()  # a subscription that never ended holds up uvicorn's shutdown
            print("the API did not stop within 30 s: killed", flush=True)
            api.wait()

    print()
    print("| phase | subscriptions | API CPU (% of a core) | DB tx/s | events delivered/s "
          "| generate/s | client CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for f in results:
        rate = "" if f.accepted_per_s is None else f"{f.accepted_per_s:.1f}"
        print(f"| {f.phase} | {f.subscriptions} | {f.api_cpu:.1f} | {f.tx_per_s:.2f} "
              f"| {f.events_per_s:.1f} | {rate} | {f.client_cpu:.1f} |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--settle", type=float, default=12, help="seconds before a window")
    parser.add_argument("--rate", type=float, default=20, help="generate/s when active")
    parser.add_argument(
        "--followed", type=float, default=0.5, help="share of generationUpdated (queued jobs)"
    )
    parser.add_argument("--port", type=int, default=8795)
    asyncio.run(main(parser.parse_args()))
