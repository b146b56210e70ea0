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
import resource
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
    cpu_seconds,
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


def load(
    port: int, path: str, body: dict[str, Any], keys: list[str], args: Any,
    rate: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    spec = {
        "host": "127.0.0.1", "port": port, "path": path, "bodies": [body], "keys": keys,
        "connections": args.connections, "seconds": args.seconds,
        "rate": rate,
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


DB_NAME = DB_URL.rsplit("/", 1)[1]


def named(name: str, argument: str = "") -> list[int]:
    """The pids of the processes with this command name whose command line mentions
    ``argument`` (a Postgres backend's names its database: one per connection, so they
    are found again at each sample)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name and argument in (
                    entry / "cmdline"
                ).read_text(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def machine_cpu(server: int) -> dict[str, Any]:
    """CPU seconds so far: the server, each of the bench database's Postgres backends (by
    pid: a connection may close or open during a round), Redis, and this bench's finished
    children (the load generator)."""
    return {
        "server": cpu_seconds(server),
        "postgres": {p: cpu_seconds(p) for p in named("postgres", f" {DB_NAME} ")},
        "redis": sum(cpu_seconds(p) for p in named("redis-server")),
        "loadgen": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]),
    }


def spent_between(start: dict[str, Any], end: dict[str, Any]) -> dict[str, float]:
    """CPU seconds spent from ``start`` to ``end``; a backend that closed meanwhile counts
    what it had spent by ``start`` as nothing (its last moments are not seen)."""
    spent = {k: end[k] - start[k] for k in ("server", "redis", "loadgen")}
    before, after = start["postgres"], end["postgres"]
    spent["postgres"] = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    return {k: spent[k] for k in ("server", "postgres", "redis", "loadgen")}


async def measure(name: str, port: int, path: str, body: dict[str, Any], keys: list[str],
                  args: Any, pid: int, rate: float | None = None) -> dict[str, Any]:  # fmt: skip
    before = await job_rows()
    start = machine_cpu(pid)
    result = load(port, path, body, keys, args, rate)
    spent = spent_between(start, machine_cpu(pid))
    made = await job_rows() - before
    if made != result["accepted"] or result["refused"]:
        raise SystemExit(
            f"{name}: {result['accepted']} counted, {made} job rows, {result['refused']} "
            f"refused: {result['samples']}"
        )
    rate = result["accepted"] / result["seconds"]
    p50, p99 = (1000 * percentile(result["latencies"], q) for q in (0.5, 0.99))
    # CPU time per accepted request, of the server and of what it makes work (Postgres
    # Redis): less swayed than the rate by whatever else the machine is doing.
    per = {k: 1000 * v / max(1, result["accepted"]) for k, v in spent.items()}
    print(f"  {name:<8} {rate:7.1f} accepted/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   CPU "
          + " ".join(f"{k} {v:.2f}" for k, v in per.items()) + " ms/accepted",
          flush=True)  # fmt: skip
    return {"rate": rate, "p50": p50, "p99": p99, "cpu": per["server"]}


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
    targets: dict[str, tuple[int, str, dict[str, Any], int]] = {
        "bare": (bare_port, "/graphql", GENERATE_BODY, bare.pid),
        "generate": (api_port, "/graphql", GENERATE_BODY, api.pid),
        "rest": (api_port, "/v1/text_to_image", REST_BODY, api.pid),
    }
    try:
        await wait_healthy(f"http://127.0.0.1:{api_port}")
        await wait_healthy(f"http://127.0.0.1:{bare_port}")
        warm = argparse.Namespace(connections=4, seconds=2)
        for port, path, body, _ in targets.values():  # warm-up, not counted
            load(port, path, body, keys[:1], warm)
        print(f"one account, {args.connections} connections, {args.seconds}s per round")
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for r in range(args.rounds):
            print(f"round {r + 1}")
            for name, (port, path, body, pid) in targets.items():
                rounds[name].append(await measure(name, port, path, body, keys[:1], args, pid))
        medians = {n: statistics.median(x["rate"] for x in v) for n, v in rounds.items()}
        print("medians: " + ", ".join(f"{n} {m:.1f}/s" for n, m in medians.items()))
        cpu = {n: statistics.median(x["cpu"] for x in v) for n, v in rounds.items()}
        print("server CPU per accepted (median): " + ", ".join(
            f"{n} {c:.2f} ms" for n, c in cpu.items()
        ) + f"; bare/generate {cpu['bare'] / cpu['generate']:.2f}")  # fmt: skip
        print("p50/p99 (median of rounds): " + ", ".join(
            f"{n} {statistics.median(x['p50'] for x in v):.1f}/"
            f"{statistics.median(x['p99'] for x in v):.1f} ms" for n, v in rounds.items()
        ))  # fmt: skip
        if args.rate:
            print(f"fixed rate: {args.rate}/s over {args.connections} connections")
            for name, (port, path, body, pid) in targets.items():
                await measure(name, port, path, body, keys[:1], args, pid, args.rate)
        if args.accounts > 1:
            print(f"{args.accounts} accounts, {args.connections} connections")
            for name in ("bare", "generate"):
                port, path, body, pid = targets[name]
                await measure(name, port, path, body, keys, args, pid)
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
    parser.add_argument(
        "--rate", type=float, default=100, help="the fixed-rate run's requests/s (0: none)"
    )
    parser.add_argument("--port", type=int, default=8775)
    asyncio.run(main(parser.parse_args()))
