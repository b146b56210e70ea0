"""ASGI middleware: the X-RateLimit-* headers on every authenticated response, the
request body size limit, and the end of a request's context."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schema.context import Services
from schema.limiter import RateStatus
from server.errors import by_prefix, surface_error


class RateLimitHeaders:
    """Adds the caller's rate-limit window to the response. The request itself was
    counted (or refused) by the GraphQL extension; other authenticated requests only
    read the window."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = await self._status(scope)
                if status is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in status.headers.items():
                        headers[name] = value
                    if not status.allowed:
                        headers["Retry-After"] = str(status.retry_after)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _status(self, scope: Scope) -> RateStatus | None:
        state = scope.get("state") or {}
        status: RateStatus | None = state.get("fluxgate_rate")
        if status is not None:
            return status
        caller = state.get("fluxgate_caller")
        if caller is None or state.get("fluxgate_rate_unavailable"):
            return None
        services: Services = scope["app"].state.services
        try:
            return await services.limiter.peek(*caller)
        except (RedisConnectionError, RedisTimeoutError):
            # Headers are informative: without Redis the response goes without them.
            return None


class RequestEnd:
    """Closes a request's context when the request ends, however it ended (a refusal
    returned before execution included): the database session its authentication left
    open goes back to the pool. The handlers close it sooner, before their response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            context = (scope.get("state") or {}).get("fluxgate_context")
            if context is not None:
                await context.close()


class Scoped:
    """Runs ``middleware`` only for requests under ``prefix`` (the dashboard's cookie
    session: the API never reads it, so its requests do not pay for it)."""

    def __init__(
        self, app: ASGIApp, /, prefix: str, middleware: Callable[..., ASGIApp], **options: Any
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.scoped = middleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if path == self.prefix or path.startswith(self.prefix + "/"):
            await self.scoped(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised by BodySizeLimit's receive once a streamed body passes the limit (a reader
    that catches exceptions must let it through: the middleware answers it)."""


# Path prefix -> the JSON body of a 413 for a request on it, given the limit, where a
# surface words it its own way (server/compat/tasks.py: the seed's 16 MB message). Other
# compatible surfaces answer it in their shape (server.errors.SURFACE_ERRORS); the rest
# of the paths get Fluxgate's.
TOO_LARGE_BODIES: dict[str, Callable[[int], dict[str, Any]]] = {}


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` (``max_upload_bytes`` for a multipart
    body: image uploads) with 413, by Content-Length or while reading a streamed body,
    before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes or max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-type" and value.lower().startswith(b"multipart/form-data"):
                limit = self.max_upload_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(scope, receive, send, limit)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        path = scope.get("path", "")
        message = f"Request body larger than {limit} bytes"
        worded = by_prefix(TOO_LARGE_BODIES, path)
        shaped = surface_error(path) if worded is None else None
        if shaped is not None:
            response = shaped(Request(scope), 413, "BAD_USER_INPUT", message, None, "body")
            await response(scope, receive, send)
            return
        content = (
            worded(limit)
            if worded is not None
            else {
                "errors": [
                    {
                        "message": message,
                        "extensions": {"code": "BAD_USER_INPUT", "field": "body"},
                    }
                ]
            }
        )
        body = json.dumps(content).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())],
            }
        )  # fmt: skip
        await send({"type": "http.response.body", "body": body})
