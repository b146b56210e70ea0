"""Maps errors to the wire shape of SPEC.md, once, for every operation.

- Domain errors (``billing.errors.FluxgateError``) keep their message and carry their
  code and fields in ``extensions``.
- Errors GraphQL itself raises before running a resolver get a code too: variable
  coercion (wrong types, missing fields) is ``BAD_USER_INPUT`` with the offending
  ``field``; syntax errors ``GRAPHQL_PARSE_FAILED``; other validation errors
  ``GRAPHQL_VALIDATION_FAILED``.
- Redis unreachable or stalled is ``SERVICE_UNAVAILABLE`` (with ``retryAfter``), logged
  as a warning; the HTTP layer answers it 503 with ``Retry-After``.
- Anything else is masked as ``INTERNAL_SERVER_ERROR`` and logged: no stack traces or
  SQL reach clients.
"""

from __future__ import annotations

import logging
import re
import sys

from graphql.error import GraphQLError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from strawberry.extensions import MaskErrors

from billing.errors import ErrorCode, FluxgateError, ServiceUnavailable

log = logging.getLogger("fluxgate.graphql")

_VARIABLE = re.compile(
    r"^Variable '\$(?P<name>\w+)' has invalid value(?: at \.(?P<path>[\w.\[\]]+))?:"
)
_NAMED_FIELD = re.compile(r"(?:include required field|not to include unknown field) '(?P<f>\w+)'")


def _coercion_field(message: str) -> str | None:
    """The input field a variable-coercion error is about, as a dotted path inside the
    variable ("options.width"), like the domain errors name it."""
    variable = _VARIABLE.match(message)
    if variable is None:
        return None
    parts = [p for p in (variable["path"] or "").split(".") if p]
    named = _NAMED_FIELD.search(message)
    if named is not None:
        parts.append(named["f"])
    return ".".join(parts) or variable["name"]


def _with(error: GraphQLError, message: str, extensions: dict[str, object]) -> GraphQLError:
    return GraphQLError(
        message=message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


def document_error_code(error: GraphQLError) -> str:
    if error.message.startswith("Syntax Error"):
        return "GRAPHQL_PARSE_FAILED"
    return "GRAPHQL_VALIDATION_FAILED"


INTERNAL_MESSAGE = "Internal server error"
unavailable = ServiceUnavailable()


def map_error(error: GraphQLError) -> GraphQLError:
    """The client-facing version of an error (see the module docstring)."""
    original = error.original_error
    if isinstance(original, FluxgateError):
        return _with(error, original.message, original.extensions)
    if original is None or isinstance(original, GraphQLError):
        if error.extensions and "code" in error.extensions:
            return error
        field = _coercion_field(error.message)
        if field is not None:
            return _with(
                error, error.message, {"code": ErrorCode.BAD_USER_INPUT.value, "field": field}
            )
        return _with(error, error.message, {"code": document_error_code(error)})
    if isinstance(original, RedisConnectionError | RedisTimeoutError):
        # An outage, not a bug: answered 503 with Retry-After by the HTTP layer.
        log.warning("Redis unavailable in %s: %s", error.path, original)
        return _with(error, unavailable.message, unavailable.extensions)
    if isinstance(original, ValueError) and error.nodes and error.path is None:
        # A literal its scalar cannot parse while the document is validated (an integer
        # of thousands of digits exceeds Python's int conversion limit): the client's.
        digits = sys.get_int_max_str_digits()
        reason = (
            f"an integer of more than {digits} digits"
            if "integer string conversion" in str(original)
            else "it cannot be parsed"
        )
        return _with(
            error, f"Invalid literal value: {reason}", {"code": "GRAPHQL_VALIDATION_FAILED"}
        )
    log.error("unexpected error in %s", error.path, exc_info=original)
    return _with(error, INTERNAL_MESSAGE, {"code": ErrorCode.INTERNAL_SERVER_ERROR.value})


def map_errors_in_place(errors: list[GraphQLError]) -> None:
    """For errors strawberry returns without running the operation hook (parse and
    validation errors, and anything raised by an extension before execution, such as the
    rate limit or a database failure while authenticating): the same mapping, applied to
    the error objects themselves."""
    for error in errors:
        mapped = map_error(error)
        if mapped is not error:
            error.message = mapped.message
            error.extensions = mapped.extensions
            error.original_error = None


class ErrorMapping(MaskErrors):
    def __init__(self) -> None:
        super().__init__(error_message=INTERNAL_MESSAGE)

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [map_error(e) for e in errors]
