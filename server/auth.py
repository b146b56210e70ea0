"""Where a request's API key and idempotency key come from. Keys never travel in URLs."""

from __future__ import annotations

from starlette.requests import HTTPConnection


def api_key_from(conn: HTTPConnection) -> str | None:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, on both surfaces."""
    authorization = conn.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = conn.headers.get("x-api-key", "").strip()
    return key or None


def idempotency_key_from(conn: HTTPConnection) -> str | None:
    key = conn.headers.get("idempotency-key")
    return key if key is not None else None
