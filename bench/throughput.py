"""Throughput benchmark (printed figures, not a test). Run: `make bench`.

1. Accepted `generate` mutations per second against a running API server (real uvicorn
   subprocess, real Postgres, no worker: every accepted job prices, reserves and queues).
2. Completed jobs per second end to end with the tiny model (API + one arq worker
   subprocess), against calling the same pipeline directly in one process; reported as a
   ratio measured in the same run, since this machine is noisy.
3. Images per second of the same pipeline with and without batching (FLUXGATE_BATCH_MAX:
   ``--batch`` jobs per pipeline call, ``PipelineRunner.render_batch``). ``--batching-only``
   prints just this (no database, no API); on CPU it is a smoke run, not a GPU figure.

Uses its own database (fluxgate_bench) and Redis database (13), rebuilt on each run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from billing.catalog import Catalog  # noqa: E402
from billing.db import make_engine, make_sessionmaker  # noqa: E402
from billing.migrate import drop_database, upgrade  # noqa: E402
from billing.plans import default_plan_book  # noqa: E402
from billing.service import accounts  # noqa: E402
from gpu_worker.pipeline import PipelineRunner, RenderJob  # noqa: E402
from kinds import text_to_image  # noqa: E402
from kinds.base import model_ref  # noqa: E402

DB_URL = os.environ.get(
    "FLUXGATE_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/fluxgate_bench"
)
REDIS_URL = os.environ.get("FLUXGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
SECRET = "bench-secret"
GENERATE = """mutation G($input: GenerateInput!) { generate(input: $input) { id } }"""


def variables(i: int, size: int) -> dict[str, Any]:
    return {
        "input": {
            "type": "IMAGE",
            "provider": "flux-dev",
            "input": {"text": f"benchmark prompt {i}"},
            "options": {"width": size, "height": size},
        }
    }


async def reset_database() -> None:
    await drop_database(DB_URL)
    await upgrade(DB_URL)


async def make_key(credits: int) -> str:
    engine = make_engine(DB_URL, pool_size=1, max_overflow=0)
    async with make_sessionmaker(engine)() as session:
        account, key = await accounts.create_account(
            session,
            email=f"bench-{time.time_ns()}@example.com",
            plan="enterprise",
            credits=credits,
            pepper=SECRET.encode(),
        )
        # Unmetered: the benchmark measures the server, not the plan's limits.
        unlimited = {"requests_per_minute": None, "concurrent_jobs": None, "jobs_per_day": None}
        await accounts.set_plan(
            session, account.id, plan=None, overrides=unlimited, plans=default_plan_book()
        )
        await session.commit()
    await engine.dispose()
    return key.secret


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "server.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux /proc: fields 14 and 15 of
    proc(5)); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_healthy(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("API did not start")


async def fire(url: str, key: str, count: int, concurrency: int, size: int) -> float:
    """Submit ``count`` generate mutations; returns the elapsed seconds."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {key}"}

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            r = await client.post(
                "/graphql",
                json={"query": GENERATE, "variables": variables(i, size)},
                headers=headers,
            )
            body = r.json()
            if "errors" in body:
                raise RuntimeError(body["errors"])

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return time.perf_counter() - started


async def wait_all_completed(expected: int) -> float:
    engine = create_async_engine(DB_URL, poolclass=NullPool)
    try:
        while True:
            async with engine.connect() as conn:
                done = await conn.scalar(
                    text("SELECT count(*) FROM generations WHERE status = 'completed'")
                )
                failed = await conn.scalar(
                    text("SELECT count(*) FROM generations WHERE status = 'failed'")
                )
            if failed:
                raise RuntimeError(f"{failed} jobs failed")
            if done >= expected:
                return time.perf_counter()
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def direct_pipeline(jobs: int, size: int, batch: int = 1) -> float:
    catalog = Catalog.load(ROOT / "deploy" / "models.dev.toml")
    entry = catalog.resolve("flux-dev", None)
    runner = PipelineRunner(catalog, device="cpu", dtype="float32")
    runner.load_all()

    async def run() -> float:
        def job(i: int) -> RenderJob:
            params = {
                "model": model_ref(entry), "prompt": f"benchmark prompt {i}",
                "width": size, "height": size, "steps": entry.steps,
                "guidance": entry.guidance, "seed": i, "format": "png", "count": 1,
            }  # fmt: skip
            return RenderJob(kind=text_to_image.KIND, params=params, inputs={})

        await runner.render(job(jobs), lambda s, t, p: None)  # warm-up
        started = time.perf_counter()
        if batch <= 1:
            for i in range(jobs):
                await runner.render(job(i), lambda s, t, p: None)
        else:
            for first in range(0, jobs, batch):
                chunk = [job(i) for i in range(first, min(jobs, first + batch))]
                await runner.render_batch(chunk, lambda s, t, p: None)
        return time.perf_counter() - started

    try:
        return await run()
    finally:
        runner.close()


async def batching(args: argparse.Namespace) -> None:
    alone = await direct_pipeline(args.jobs, args.size)
    batched = await direct_pipeline(args.jobs, args.size, args.batch)
    print(f"pipeline ({args.size}x{args.size}), one job per call: {args.jobs / alone:.2f} images/s")
    print(f"pipeline ({args.size}x{args.size}), {args.batch} jobs per call: "
          f"{args.jobs / batched:.2f} images/s ({alone / batched:.2f}x)")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    if args.batching_only:
        await batching(args)
        return
    await reset_database()
    redis.Redis.from_url(REDIS_URL).flushdb()
    port = args.port
    url = f"http://127.0.0.1:{port}"
    storage = tempfile.mkdtemp(prefix="fluxgate-bench-")
    env = {
        **os.environ,
        "FLUXGATE_DATABASE_URL": DB_URL,
        "FLUXGATE_REDIS_URL": REDIS_URL,
        "FLUXGATE_SECRET_KEY": SECRET,
        "FLUXGATE_STORAGE_DIR": storage,
        "FLUXGATE_PUBLIC_URL": url,
        "FLUXGATE_QUEUE_NAME": "fluxgate:bench",
    }
    key = await make_key(credits=10**9)
    api = start(["serve", "--port", str(port)], env, Path(storage) / "api.log")
    worker: subprocess.Popen[bytes] | None = None
    try:
        await wait_healthy(url)
        await fire(url, key, 20, 4, 256)  # warm-up
        seconds = await fire(url, key, args.requests, args.concurrency, 256)
        print(f"accepted generate mutations: {args.requests} in {seconds:.2f}s "
              f"= {args.requests / seconds:.1f}/s (concurrency {args.concurrency})")  # fmt: skip

        # Start the end-to-end part from an empty queue and table.
        redis.Redis.from_url(REDIS_URL).flushdb()
        engine = create_async_engine(DB_URL, poolclass=NullPool)
        async with engine.begin() as conn:
            # Set the first part's queued jobs aside (this database is throwaway: the next
            # run drops it), so the completion count below sees only the new jobs.
            await conn.execute(text("UPDATE generations SET status = 'cancelled'"))
        await engine.dispose()

        direct = await direct_pipeline(args.jobs, args.size)
        worker = start(["worker"], env, Path(storage) / "worker.log")
        await fire(url, key, 1, 1, args.size)  # the worker is warm once this one completes
        await wait_all_completed(1)
        started = time.perf_counter()
        await fire(url, key, args.jobs, 4, args.size)
        finished = await wait_all_completed(args.jobs + 1)
        e2e = finished - started
        print(f"direct pipeline ({args.size}x{args.size}, in-process): {args.jobs} images in "
              f"{direct:.2f}s = {args.jobs / direct:.2f}/s")  # fmt: skip
        print(f"end to end (API + 1 worker): {args.jobs} jobs in {e2e:.2f}s = "
              f"{args.jobs / e2e:.2f}/s")  # fmt: skip
        print(f"end-to-end / direct throughput ratio: {direct / e2e:.2f}")
        await batching(args)
        print(f"logs: {storage}/api.log, {storage}/worker.log")
    finally:
        for proc in (api, worker):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--batch", type=int, default=4, help="jobs per call when batching")
    parser.add_argument("--batching-only", action="store_true", help="only the batching lines")
    asyncio.run(main(parser.parse_args()))
