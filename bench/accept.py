"""Accept-path benchmark (printed figures, not a test). Run: `make bench-accept`.

Fluxgate's `generate` (GraphQL, seed 001's first form) and `POST /v1/text_to_image` (the
REST shim) against a bare yardstick (bench/bare_app.py: Starlette + asyncpg + arq doing
exactly the writes of an accepted job), on the same machine, Postgres and Redis, in
alternating rounds of a closed-loop load (bench/loadgen.py, keep-alive connections). No
worker runs: every counted request is a real acceptance (its job row is checked after
each round). Accounts are unmetered, so no request is a fast refusal. Prints each round,
the medians, p50/p99 latency, a run spread over many accounts, and `ratio R` last: the
median `generate` rate over the median bare rate.

Uses its own database (fluxgate_bench) and Redis database (13), rebuilt on each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import (  # noqa: E402
    DB_URL,
    GENERATE,
    REDIS_URL,
    SECRET,
    make_key,
    reset_database,
    start,
    wait_healthy,
)

GENERATE_BODY = {
    "query": GENERATE,
    "variables": {
        "input": {
            "type": "IMAGE",
            "provider": "flux-dev",
            "input": {"text": "A futuristic city with flying cars and neon lights"},
            "options": {"width": 1024, "height": 1024},
        }
    },
}
REST_BODY = {
    "service": "flux-dev",
    "prompt": "A futuristic city with flying cars and neon lights",
    "width": 1024,
    "height": 1024,
}


def load(port: int, path: str, body: dict[str, Any], keys: list[str], args: Any) -> dict[str, Any]:
    spec = {
        "host": "127.0.0.1", "port": port, "path": path, "bodies": [body], "keys": keys,
        "connections": args.connections, "seconds": args.seconds,
    }  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), json.dumps(spec)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def job_rows() -> int:
    engine = create_async_engine(DB_URL, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT count(*) FROM generations")) or 0)
    finally:
        await engine.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(name: str, port: int, path: str, body: dict[str, Any], keys: list[str],
                  args: Any) -> dict[str, Any]:  # fmt: skip
    before = await job_rows()
    result = load(port, path, body, keys, args)
    made = await job_rows() - before
    if made != result["accepted"] or result["refused"]:
        raise SystemExit(
            f"{name}: {result['accepted']} counted, {made} job rows, {result['refused']} "
            f"refused: {result['samples']}"
        )
    rate = result["accepted"] / result["seconds"]
    p50, p99 = (1000 * percentile(result["latencies"], q) for q in (0.5, 0.99))
    print(f"  {name:<8} {rate:7.1f} accepted/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms",
          flush=True)  # fmt: skip
    return {"rate": rate, "p50": p50, "p99": p99}


def start_bare(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bare_app.py"), str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    await reset_database()
    redis.Redis.from_url(REDIS_URL).flushdb()
    storage = tempfile.mkdtemp(prefix="fluxgate-bench-accept-")
    env = {
        **os.environ,
        "FLUXGATE_DATABASE_URL": DB_URL,
        "FLUXGATE_REDIS_URL": REDIS_URL,
        "FLUXGATE_SECRET_KEY": SECRET,
        "FLUXGATE_STORAGE_DIR": storage,
        "FLUXGATE_QUEUE_NAME": "fluxgate:bench",
        "PYTHONPATH": str(ROOT),
    }
    keys = [await make_key(credits=10**12) for _ in range(args.accounts)]
    api_port, bare_port = args.port, args.port + 1
    api = start(["serve", "--port", str(api_port)], env, Path(storage) / "api.log")
    bare = start_bare(bare_port, env, Path(storage) / "bare.log")
    targets: dict[str, tuple[int, str, dict[str, Any]]] = {
        "bare": (bare_port, "/graphql", GENERATE_BODY),
        "generate": (api_port, "/graphql", GENERATE_BODY),
        "rest": (api_port, "/v1/text_to_image", REST_BODY),
    }
    try:
        await wait_healthy(f"http://127.0.0.1:{api_port}")
        await wait_healthy(f"http://127.0.0.1:{bare_port}")
        warm = argparse.Namespace(connections=4, seconds=2)
        for port, path, body in targets.values():  # warm-up, not counted
            load(port, path, body, keys[:1], warm)
        print(f"one account, {args.connections} connections, {args.seconds}s per round")
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for r in range(args.rounds):
            print(f"round {r + 1}")
            for name, (port, path, body) in targets.items():
                rounds[name].append(await measure(name, port, path, body, keys[:1], args))
        medians = {n: statistics.median(x["rate"] for x in v) for n, v in rounds.items()}
        print("medians: " + ", ".join(f"{n} {m:.1f}/s" for n, m in medians.items()))
        print("p50/p99 (median of rounds): " + ", ".join(
            f"{n} {statistics.median(x['p50'] for x in v):.1f}/"
            f"{statistics.median(x['p99'] for x in v):.1f} ms" for n, v in rounds.items()
        ))  # fmt: skip
        if args.accounts > 1:
            print(f"{args.accounts} accounts, {args.connections} connections")
            for name in ("bare", "generate"):
                port, path, body = targets[name]
                await measure(name, port, path, body, keys, args)
        print(f"rest/bare ratio {medians['rest'] / medians['bare']:.2f}")
        print(f"ratio {medians['generate'] / medians['bare']:.2f}")
    finally:
        for proc in (api, bare):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--port", type=int, default=8775)
    asyncio.run(main(parser.parse_args()))
