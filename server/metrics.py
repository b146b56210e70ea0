"""The API's telemetry: the request id and the HTTP metrics of every request (one pure
ASGI middleware, outermost), ``GET /metrics`` and ``GET /readyz``.

The middleware is on the accept path of every job, so it does the least it can: no I/O,
one counter increment and one histogram observation on label children it keeps bound
(route templates, methods and statuses are few), and the request id set where the log
lines and the response headers find it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing.errors import ErrorCode
from runtime import logs
from runtime import metrics as m
from runtime.settings import Settings
from schema.context import Services
from server.errors import error_response

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# Where the middleware leaves the request id for what answers outside it (the 500 handler).
SCOPE_KEY = "fluxgate.request_id"
# A caller's own id is kept when it is visible ASCII and at most this long (a UUID, a
# trace id); anything else is replaced: it goes into every log line of the request.
MAX_REQUEST_ID = 128
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def request_id_header(scope: Scope) -> dict[str, str]:
    """The ``X-Request-Id`` header of the id the middleware gave this request."""
    value = scope.get(SCOPE_KEY)
    return {REQUEST_ID_HEADER: value} if isinstance(value, str) else {}


def _incoming_id(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return value if _SANE_ID.fullmatch(value) else None
    return None


class Telemetry:
    """Gives every request an id (the caller's ``X-Request-Id`` if sane, else a new
    one), returns it in the ``X-Request-Id`` response header, and counts the request by
    route template, method and status, with its duration.

    Outermost of the app's middleware. The one response that bypasses it is the 500 of
    an unhandled exception (Starlette's ServerErrorMiddleware sits outside every user
    middleware): that handler reads the id from the scope (``request_id_header``), and the
    request is counted here as a 500 when the exception passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        incoming = _incoming_id(scope)
        rid = incoming.decode("ascii") if incoming is not None else os.urandom(16).hex()
        scope[SCOPE_KEY] = rid
        # Not reset: uvicorn serves each request in a task of its own, whose context ends
        # with it; the 500 handler's log line, which runs after this returns, keeps it.
        logs.request_id.set(rid)
        if kind != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        header = (b"x-request-id", incoming if incoming is not None else rid.encode("ascii"))
        status = 500  # unless a response starts: an exception the 500 handler answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self._count(path, method, status, time.perf_counter() - started)

    def _count(self, route: str, method: str, status: int, seconds: float) -> None:
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self._counters[route, method, status] = m.HTTP_REQUESTS.labels(
                route, method, str(status)
            )
        timer = self._timers.get((route, method))
        if timer is None:
            timer = self._timers[route, method] = m.HTTP_DURATION.labels(route, method)
        counter.inc()
        timer.observe(seconds)


def metrics_endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``: this process's counts (or, in multiprocess mode, those of every
    process sharing the directory) and the queue gauges read from Redis now. With
    ``FLUXGATE_METRICS_TOKEN`` set, only for ``Authorization: Bearer <token>``."""
    exposition = m.exposition("api")
    token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None
    gauges: dict[int, m.QueueGauges] = {}  # per Redis pool: built on the first scrape

    async def metrics(request: Request) -> Response:
        if token is not None and not authorized(request, token):
            return error_response(
                401,
                ErrorCode.UNAUTHENTICATED.value,
                "Metrics need Authorization: Bearer <FLUXGATE_METRICS_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        services: Services = request.app.state.services
        redis = services.queue.redis
        reader = gauges.get(id(redis))
        if reader is None:
            pools = m.pools(settings, services.catalog)
            reader = gauges[id(redis)] = m.QueueGauges(redis, pools)
        try:
            extra = [*await reader.read(), m.redis_up(True)]
        except (RedisError, OSError) as exc:
            # The counts are still worth serving; the gauges are missing, and say why.
            log.warning("metrics: queue gauges not read (%s: %s)", type(exc).__name__, exc)
            extra = [m.redis_up(False)]
        return Response(exposition.render(extra), media_type=m.CONTENT_TYPE)

    return metrics


def authorized(request: Request, token: bytes) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


def readiness_endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """``GET /readyz``: 200 when the database and Redis both answer within
    ``readiness_timeout_s``, else 503 (SERVICE_UNAVAILABLE) naming what did not.
    ``/healthz`` stays the liveness check."""
    timeout_s = settings.readiness_timeout_s

    async def ready(request: Request) -> Response:
        services: Services = request.app.state.services

        async def database() -> None:
            async with services.sessions() as session:
                await session.execute(text("SELECT 1"))

        results = await asyncio.gather(
            _check("database", database(), timeout_s),
            _check("redis", services.queue.redis.ping(), timeout_s),
        )
        checks = dict(zip(("database", "redis"), results, strict=True))
        failing = [name for name, result in checks.items() if result != "ok"]
        if not failing:
            return JSONResponse({"status": "ready", "checks": checks})
        return error_response(
            503,
            ErrorCode.SERVICE_UNAVAILABLE.value,
            f"Not ready: {' and '.join(failing)} not reachable",
            headers={"Retry-After": "1"},
            failing=failing,
            checks=checks,
        )

    return ready


async def _check(name: str, probe: Awaitable[Any], timeout_s: float) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            await probe
    except TimeoutError:
        log.warning("readiness: %s did not answer within %ss", name, timeout_s)
        return "timeout"
    except Exception as exc:  # any failure of the dependency means "not ready"
        log.warning("readiness: %s unreachable (%s: %s)", name, type(exc).__name__, exc)
        return "unreachable"
    return "ok"
