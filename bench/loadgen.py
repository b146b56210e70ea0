"""A small HTTP/1.1 load generator for bench/accept.py: ``connections`` keep-alive
connections, each sending its next request as soon as the last answer is in, for
``seconds`` (closed loop); or, with ``rate``, requests sent on a fixed schedule of
``rate`` a second in total, each latency measured from its scheduled time (so a stall
counts against every request it delays, not only the one in flight). Plain asyncio
streams and pre-encoded requests, so the generator costs little CPU beside the servers it
measures (this machine has 2 cores; wrk is not here).

Run as a process: ``python bench/loadgen.py SPEC_JSON`` prints a JSON result."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


def encode(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def connection(
    host: str,
    port: int,
    requests: list[bytes],
    deadline: float,
    result: dict[str, Any],
    schedule: tuple[float, float, int, int] | None = None,
) -> None:
    """``schedule``: (start, rate, this connection's index, connections): the k-th request
    of connection c is due at start + (k * connections + c) / rate."""
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            if schedule is not None:
                start, rate, c, n = schedule
                due = start + (i * n + c) / rate
                if due >= deadline:
                    break
                if due > sent:
                    await asyncio.sleep(due - sent)  # pacing the load, not synchronising
                sent = due
            writer.write(requests[i % len(requests)])
            i += 1
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            elapsed = time.perf_counter() - sent
            status = int(status_line.split()[1])
            accepted = status in (200, 202) and b'"id"' in body and b'"errors"' not in body
            result["latencies"].append(elapsed)
            result["accepted" if accepted else "refused"] += 1
            if not accepted and len(result["samples"]) < 3:
                result["samples"].append(f"{status} {body[:300]!r}")
    finally:
        writer.close()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"accepted": 0, "refused": 0, "latencies": [], "samples": []}
    keys: list[str] = spec["keys"]
    per_connection = []
    for c in range(spec["connections"]):
        key = keys[c % len(keys)]
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        bodies = [json.dumps(b).encode() for b in spec["bodies"]]
        per_connection.append(
            [encode(spec["host"], spec["port"], spec["path"], b, headers) for b in bodies]
        )
    started = time.perf_counter()
    deadline = started + spec["seconds"]
    rate = spec.get("rate")
    n = len(per_connection)
    await asyncio.gather(
        *(
            connection(
                spec["host"],
                spec["port"],
                reqs,
                deadline,
                result,
                None if rate is None else (started, float(rate), c, n),
            )
            for c, reqs in enumerate(per_connection)
        )
    )
    result["seconds"] = time.perf_counter() - started
    return result


if __name__ == "__main__":
    outcome = asyncio.run(run(json.loads(sys.argv[1])))
    print(json.dumps(outcome))
