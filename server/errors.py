"""Every HTTP error in the one documented shape,
``{"errors": [{"message", "extensions": {"code", ...}}]}`` — whether a handler, the
GraphQL view, the router (404, 405) or a failing store produced it — and the one guarded
JSON decoder every request body goes through."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from billing.errors import ErrorCode, ServiceUnavailable

log = logging.getLogger(__name__)

METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
# Deeper than any valid request (inputs are at most a few levels deep); refused before
# anything walks the value, so no code path can recurse on client-controlled depth.
MAX_JSON_DEPTH = 32
# Python refuses to convert longer integers (sys.get_int_max_str_digits()).
MAX_DIGITS = sys.get_int_max_str_digits()
# Statuses the router and the GraphQL view raise, with the code they answer.
CODE_BY_STATUS = {
    400: ErrorCode.BAD_USER_INPUT.value,
    404: ErrorCode.NOT_FOUND.value,
    405: METHOD_NOT_ALLOWED,
    413: ErrorCode.BAD_USER_INPUT.value,
    415: ErrorCode.BAD_USER_INPUT.value,
    503: ErrorCode.SERVICE_UNAVAILABLE.value,
}


# Path prefix -> how a compatible surface (server/compat) writes an error the router or a
# handler here makes for a request on it (404, 405, 503, 500): (request, status, code,
# message, headers) -> its own shape. The longest matching prefix wins; other paths get
# Fluxgate's shape.
# (request, status, code, message, headers, field) -> the surface's error response.
SurfaceError = Callable[[Request, int, str, str, Mapping[str, str] | None, str | None], Response]
SURFACE_ERRORS: dict[str, SurfaceError] = {}
_T = TypeVar("_T")


def by_prefix(registry: Mapping[str, _T], path: str) -> _T | None:
    """The entry of the longest prefix of ``path`` in ``registry``, if any."""
    own = [prefix for prefix in registry if path.startswith(prefix)]
    return registry[max(own, key=len)] if own else None


def surface_error(path: str) -> SurfaceError | None:
    return by_prefix(SURFACE_ERRORS, path)


class ErrorResponse(JSONResponse):
    """ASCII-escaped JSON: an error message may quote client text, and a lone surrogate in
    it must not break the response's UTF-8 encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return ErrorResponse(
        {"errors": [{"message": message, "extensions": {"code": code, **extra}}]},
        status_code=status,
        headers=headers,
    )


class BadBody(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def decode_json(raw: str | bytes) -> Any:
    """A request body (or query parameter) as JSON, or ``BadBody`` saying what is wrong
    with it: not UTF-8, empty, malformed, a number beyond Python's int conversion limit,
    or nested deeper than MAX_JSON_DEPTH."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadBody("The body is not valid UTF-8") from None
    if not raw.strip():
        raise BadBody("The body is empty: send a JSON object")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BadBody(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise BadBody(f"Malformed JSON: {exc}") from None
    except ValueError:  # an integer beyond Python's int conversion limit
        raise BadBody(f"A number in the body has more than {MAX_DIGITS} digits") from None
    if _too_deep(value):
        raise BadBody(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


async def http_error(request: Request, exc: Exception) -> Response:
    """The router's 404 and 405 (and any other HTTPException), as JSON."""
    assert isinstance(exc, HTTPException)
    code = CODE_BY_STATUS.get(exc.status_code, ErrorCode.BAD_USER_INPUT.value)
    message = exc.detail
    if exc.status_code == 404:
        message = f"No route {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed on {request.url.path}"
    own = surface_error(request.url.path)
    if own is not None:
        return own(request, exc.status_code, code, message, exc.headers, None)
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client closed the connection before sending its whole body: nobody is left to
    answer, and it is not a server error."""
    log.info("client disconnected mid-request on %s %s", request.method, request.url.path)
    # Never delivered (the connection is gone); in the one shape all the same.
    return error_response(
        400, ErrorCode.BAD_USER_INPUT.value, "The request body was cut short", field="body"
    )


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """Redis unreachable or stalled outside GraphQL (a route's own call): 503, retry."""
    assert isinstance(exc, RedisConnectionError | RedisTimeoutError)
    log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    error = ServiceUnavailable()
    own = surface_error(request.url.path)
    if own is not None:
        headers = {"Retry-After": str(error.retry_after)}
        return own(request, 503, error.code.value, error.message, headers, None)
    return unavailable_response(error)


def unavailable_response(error: ServiceUnavailable) -> JSONResponse:
    return error_response(
        503,
        error.code.value,
        error.message,
        headers={"Retry-After": str(error.retry_after)},
        retryAfter=error.retry_after,
    )


EXCEPTION_HANDLERS = {
    HTTPException: http_error,
    ClientDisconnect: client_gone,
    RedisConnectionError: store_unavailable,
    RedisTimeoutError: store_unavailable,
}
