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

_AT_PATH = re.compile(r'at "(?P<path>[^"]+)"')
_MISSING_FIELD = re.compile(r'Field "(?P<field>[^"]+)" of required type')
_VARIABLE = re.compile(r'^Variable "\$(?P<name>\w+)"')


def _coercion_field(message: str) -> str | None:
    variable = _VARIABLE.match(message)
    if variable is None:
        return None
    path = variable["name"]
    at = _AT_PATH.search(message)
    if at is not None:
        path = at["path"]
    missing = _MISSING_FIELD.search(message)
    if missing is not None:
        path = f"{path}.{missing['field']}"
    # Report the field inside the variable ("options.width"), as the domain errors do.
    head, _, rest = path.partition(".")
    return rest if head == variable["name"] and rest else path


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


class ErrorMapping(MaskErrors):
    def __init__(self) -> None:
        super().__init__(error_message="Internal server error")

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [self._map(e) for e in errors]

    def _map(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, FluxgateError):
            return _with(error, original.message, original.extensions)
        if original is None:
            if error.extensions and "code" in error.extensions:
                return error
            field = _coercion_field(error.message)
            if field is not None:
                return _with(
                    error,
                    error.message,
                    {"code": ErrorCode.BAD_USER_INPUT.value, "field": field},
                )
            code = (
                "GRAPHQL_PARSE_FAILED"
                if error.message.startswith("Syntax Error")
                else "GRAPHQL_VALIDATION_FAILED"
            )
            return _with(error, error.message, {"code": code})
        log.error("unexpected error in %s", error.path, exc_info=original)
        return _with(error, self.error_message, {"code": ErrorCode.INTERNAL_SERVER_ERROR.value})
