"""A worker's own metrics and readiness, on a port of its own (``--metrics-port``,
``FLUXGATE_WORKER_METRICS_PORT``): ``/metrics`` (what this process counted; see
``runtime/metrics.py``), ``/readyz`` and ``/healthz``.

The server is a thread (wsgiref), not a task of the worker's event loop: it lives across
the worker's rebuilds after a Redis outage, and answers while the loop is busy. What it
reports the loop only writes as plain attribute assignments.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from billing.models import Generation
from runtime import metrics as m
from runtime.queue import WORKER_TTL_S
from runtime.settings import Settings

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass
class Probe:
    """What a worker's ``/readyz`` reports. Ready: its models are loaded (``loaded``)
    and, when ``heartbeat_max_age_s`` is set, its last heartbeat in Redis is at most that
    old: the worker is connected and takes jobs. The webhook worker has no heartbeat; it
    is ready while started."""

    heartbeat_max_age_s: float | None = WORKER_TTL_S
    loaded: bool = False
    beat_at: float | None = None  # time.monotonic() of the last heartbeat sent

    def beat(self) -> None:
        self.beat_at = time.monotonic()

    def stopped(self) -> None:
        """The heartbeat ended (Redis lost, worker closing): not ready until the next."""
        self.beat_at = None

    def check(self) -> tuple[bool, dict[str, Any]]:
        beat_at = self.beat_at
        age = None if beat_at is None else round(time.monotonic() - beat_at, 3)
        fresh = self.heartbeat_max_age_s is None or (
            age is not None and age <= self.heartbeat_max_age_s
        )
        ready = self.loaded and fresh
        report: dict[str, Any] = {
            "status": "ready" if ready else "not ready",
            "loaded": self.loaded,
        }
        if self.heartbeat_max_age_s is not None:
            report["heartbeat_age_s"] = age
        return ready, report


def probe(ctx: dict[str, Any], **options: Any) -> Probe:
    """The worker's probe, kept in its ``ctx`` (which outlives its rebuilds)."""
    found: Probe | None = ctx.get("probe")
    if found is None:
        found = ctx["probe"] = Probe(**options)
    return found


# --- what a GPU worker counts ----------------------------------------------------------


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())  # clocks of two hosts may disagree


def serving(versions: Iterable[str]) -> None:
    """The models this worker loaded: their device-time series start at 0."""
    for version in versions:
        m.GPU_SECONDS.labels(version)


def job_started(generation: Generation) -> None:
    """A run claimed the job: how long it waited in the queue (since it last entered it)."""
    waited = _seconds(generation.queued_at or generation.created_at, generation.started_at)
    if waited is not None:
        m.JOB_QUEUE_WAIT.labels(generation.kind, generation.version).observe(waited)


def job_finished(generation: Generation, outcome: str) -> None:
    """A run ended the job (``completed``/``failed``: the row as it settled) or stopped."""
    m.JOBS.labels(generation.kind, generation.version, outcome).inc()
    if outcome != "stopped":
        ran = _seconds(generation.started_at, generation.completed_at)
        if ran is not None:
            m.JOB_RUN.labels(generation.kind, generation.version).observe(ran)


def device_time(generation: Generation, seconds: float) -> None:
    m.GPU_SECONDS.labels(generation.version).inc(max(0.0, seconds))


def delivery(outcome: str, seconds: float) -> None:
    m.WEBHOOK_DELIVERIES.labels(outcome).inc()
    m.WEBHOOK_DURATION.observe(max(0.0, seconds))


# --- the server ------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class MetricsServer:
    """``/metrics``, ``/readyz`` and ``/healthz`` of one worker process, from a thread.
    ``port`` 0 picks a free one (tests); the bound port is ``self.port``."""

    def __init__(
        self, role: m.Role, probe: Probe, *, host: str, port: int, token: str | None = None
    ) -> None:
        self.exposition = m.exposition(role)
        self.probe = probe
        self.token = token.encode() if token else None
        self.server = make_server(host, port, self._app, server_class=_Server, handler_class=_Quiet)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{role}-metrics",
            daemon=True,
        )

    def start(self) -> MetricsServer:
        self.thread.start()
        log.info("metrics and readiness on port %d (/metrics, /readyz)", self.port)
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json(start_response, 405, _error("METHOD_NOT_ALLOWED", "Use GET"))
        if path == "/metrics":
            if self.token is not None and not self._authorized(environ):
                return _json(
                    start_response, 401, _error("UNAUTHENTICATED", "Metrics need a bearer token")
                )
            body = self.exposition.render()
            start_response("200 OK", [("Content-Type", m.CONTENT_TYPE),
                                      ("Content-Length", str(len(body)))])  # fmt: skip
            return [body]
        if path == "/readyz":
            ready, report = self.probe.check()
            return _json(start_response, 200 if ready else 503, report)
        if path == "/healthz":
            return _json(start_response, 200, {"status": "ok"})
        return _json(start_response, 404, _error("NOT_FOUND", "No such path"))

    def _authorized(self, environ: dict[str, Any]) -> bool:
        assert self.token is not None
        scheme, _, given = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("latin-1", "replace"), self.token
        )


def _error(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}  # fmt: skip


def _json(start_response: StartResponse, status: int, content: dict[str, Any]) -> list[bytes]:
    body = json.dumps(content).encode()
    start_response(
        f"{status} {_REASONS[status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def serve(
    role: m.Role, probe: Probe, settings: Settings, port: int | None = None
) -> MetricsServer | None:
    """Start a worker's metrics server on ``port`` (default ``worker_metrics_port``), or
    none when it is 0. An OSError if the port is taken."""
    port = settings.worker_metrics_port if port is None else port
    if not port:
        return None
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    return MetricsServer(
        role, probe, host=settings.worker_metrics_host, port=port, token=token
    ).start()
