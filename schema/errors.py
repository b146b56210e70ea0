"""Maps errors to the wire shape of SPEC.md, once, for every operation.

- Domain errors (``billing.errors.FluxgateError``) keep their message and carry their
  code and fields in ``extensions``.
- Errors GraphQL itself raises before running a resolver get a code too: variable
  coercion (wrong types, missing fields) is ``BAD_USER_INPUT`` with the offending
  ``field``; syntax errors ``GRAPHQL_PARSE_FAILED``; other validation errors
  ``GRAPHQL_VALIDATION_FAILED``.
- Anything else is masked as ``INTERNAL_SERVER_ERROR`` and logged: no stack traces or
  SQL reach clients.
"""

from __future__ import annotations

import logging
import re

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from billing.errors import ErrorCode, FluxgateError

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


def stamp_document_errors(errors: list[GraphQLError]) -> None:
    """Give parse and validation errors a code. Strawberry returns those before the
    operation hook sees a result, so :class:`ErrorMapping` cannot reach them."""
    for error in errors:
        if (
            error.original_error is None
            and not error.path
            and "code" not in (error.extensions or {})
        ):
            error.extensions = {**(error.extensions or {}), "code": document_error_code(error)}


class ErrorMapping(MaskErrors):
    def __init__(self) -> None:
        super().__init__(error_message="Internal server error")

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [self._map(e) for e in errors]

    def _map(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, FluxgateError):
            return _with(error, original.message, original.extensions)
        if original is None or isinstance(original, GraphQLError):
            if error.extensions and "code" in error.extensions:
                return error
            field = _coercion_field(error.message)
            if field is not None:
                return _with(
                    error,
                    error.message,
                    {"code": ErrorCode.BAD_USER_INPUT.value, "field": field},
                )
            return _with(error, error.message, {"code": document_error_code(error)})
        log.error("unexpected error in %s", error.path, exc_info=original)
        return _with(error, self.error_message, {"code": ErrorCode.INTERNAL_SERVER_ERROR.value})
