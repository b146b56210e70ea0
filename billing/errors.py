"""Typed domain errors with stable codes. No HTTP status here: the edges map codes."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


class FluxgateError(Exception):
    """An error a client may see: its message and ``extensions`` are safe to send."""

    code: ErrorCode = ErrorCode.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extensions

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code.value, **self.extra}


class BadUserInput(FluxgateError):
    code = ErrorCode.BAD_USER_INPUT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)
        self.field = field


class Unauthenticated(FluxgateError):
    code = ErrorCode.UNAUTHENTICATED

    def __init__(self, message: str = "Missing or invalid API key") -> None:
        super().__init__(message)


class Forbidden(FluxgateError):
    code = ErrorCode.FORBIDDEN


class NotFound(FluxgateError):
    code = ErrorCode.NOT_FOUND

    def __init__(self, what: str = "Generation", field: str | None = None) -> None:
        if field is None:
            super().__init__(f"{what} not found")
        else:  # the request field that named it (an image_id, say)
            super().__init__(f"{what} not found", field=field)
        self.field = field


class Conflict(FluxgateError):
    """The request is valid but the resource's state does not allow it."""

    code = ErrorCode.CONFLICT


class InsufficientCredits(FluxgateError):
    code = ErrorCode.INSUFFICIENT_CREDITS

    def __init__(self, required: int, available: int) -> None:
        super().__init__(
            "Insufficient credits for this operation",
            creditsRequired=required,
            creditsAvailable=available,
        )
        self.required = required
        self.available = available


class RateLimited(FluxgateError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, limit: str, retry_after: int, message: str) -> None:
        super().__init__(message, retryAfter=retry_after, limit=limit)
        self.limit = limit
        self.retry_after = retry_after


class QuotaExceeded(FluxgateError):
    """A plan quota refuses the job (nothing charged). ``limit`` names it: ``storage``
    (used and quota in MB), ``daily`` (jobs of ``kind`` today, with ``resetAt``) or
    ``resolution`` (megapixels)."""

    code = ErrorCode.QUOTA_EXCEEDED

    def __init__(self, limit: str, used: float, quota: float, message: str, **extra: Any) -> None:
        super().__init__(message, limit=limit, used=used, quota=quota, **extra)
        self.limit = limit
        self.used = used
        self.quota = quota


class ServiceUnavailable(FluxgateError):
    """A store the request needs (Redis) is unreachable or too slow: nothing was done or
    charged, and the same request may be sent again after ``retry_after`` seconds."""

    code = ErrorCode.SERVICE_UNAVAILABLE

    def __init__(
        self,
        message: str = "The service is temporarily unavailable; retry shortly",
        retry_after: int = 5,
    ) -> None:
        super().__init__(message, retryAfter=retry_after)
        self.retry_after = retry_after


class IdempotencyKeyReused(FluxgateError):
    code = ErrorCode.IDEMPOTENCY_KEY_REUSED

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was already used with a different request body",
            field="Idempotency-Key",
        )


class BatchIdReused(IdempotencyKeyReused):
    """A ``clientBatchId`` sent again with a different batch (issue 13)."""

    def __init__(self) -> None:
        FluxgateError.__init__(
            self,
            "This clientBatchId was already used with a different batch",
            field="clientBatchId",
        )
