"""The REST shim of seed 001: the same operations as GraphQL, executed through the same
schema, so the envelope (``{"data": {"generateImage": ...}}`` or ``{"errors": [...]}``)
and every rule are identical; only the HTTP status differs by error code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import GraphQLError
from pydantic.alias_generators import to_snake
from starlette.requests import Request
from starlette.responses import JSONResponse

from billing.errors import ErrorCode, Forbidden, Unauthenticated
from schema.context import Context
from server.errors import BadBody, ErrorResponse, decode_json, error_response
from server.graphql import authenticate, build_context

__all__ = [
    "authenticated", "cancel_text_to_image", "error_response", "execute", "get_text_to_image",
    "text_to_image",
]  # fmt: skip

STATUS_BY_CODE = {
    ErrorCode.BAD_USER_INPUT.value: 400,
    "GRAPHQL_VALIDATION_FAILED": 400,
    "GRAPHQL_PARSE_FAILED": 400,
    ErrorCode.UNAUTHENTICATED.value: 401,
    ErrorCode.INSUFFICIENT_CREDITS.value: 402,
    ErrorCode.FORBIDDEN.value: 403,
    # Seed 000 answers a spent quota 403 ("wait for the quota to reset"); 429 stays the
    # retry-after-a-moment rate limit.
    ErrorCode.QUOTA_EXCEEDED.value: 403,
    ErrorCode.NOT_FOUND.value: 404,
    ErrorCode.CONFLICT.value: 409,
    ErrorCode.IDEMPOTENCY_KEY_REUSED.value: 422,
    ErrorCode.RATE_LIMITED.value: 429,
    ErrorCode.SERVICE_UNAVAILABLE.value: 503,
}
# Codes whose refusal says when to try again (extensions.retryAfter → Retry-After).
RETRYABLE = {ErrorCode.RATE_LIMITED.value, ErrorCode.SERVICE_UNAVAILABLE.value}

_FIELDS = """
    id status service provider version quality prompt url width height seed
    webhookUrl creditCost metadata progress step totalSteps duration error
    queuePosition etaSeconds createdAt startedAt completedAt
"""
GENERATE_IMAGE = f"""
mutation GenerateImage($input: ImageGenerationInput!) {{
  generateImage(input: $input) {{ {_FIELDS} }}
}}"""
CANCEL_GENERATION = f"""
mutation Cancel($id: ID!) {{
  cancelGeneration(id: $id) {{ {_FIELDS} }}
}}"""
GET_GENERATION = f"""
query Generation($id: ID!) {{
  generateImage: generation(id: $id) {{ {_FIELDS} }}
}}"""


async def authenticated(request: Request) -> Context | JSONResponse:
    """The request's context, or the 401 response. Authentication comes first, so a bad
    key is a 401 whatever else is wrong with the request."""
    context = build_context(request, request.app.state.services)
    try:
        await authenticate(request, context)
    except Unauthenticated as exc:
        return error_response(401, exc.code.value, exc.message)
    except Forbidden as exc:  # a banned account's key (issue 13)
        return error_response(403, exc.code.value, exc.message)
    return context


async def execute(
    request: Request,
    context: Context,
    document: str,
    variables: dict[str, Any],
    *,
    envelope: Callable[[dict[str, Any]], Any] | None = None,
    status: int = 200,
    rename_field: Callable[[str], str] | None = None,
) -> JSONResponse:
    """Run ``document`` through the schema; a refusal is ``{"errors": [...]}`` with its
    code's status, a success ``{"data": ...}`` (or ``envelope(data)``) with ``status``.
    ``rename_field``: how this surface names a field GraphQL names in camelCase."""
    schema = request.app.state.schema
    try:
        result = await schema.execute(document, variable_values=variables, context_value=context)
    finally:
        await context.close()  # the request's session goes back before the response
    if result.errors:
        errors = [formatted(e) for e in result.errors]
        if rename_field is not None:
            errors = [renamed(e, rename_field) for e in errors]
        extensions = errors[0].get("extensions", {})
        code = extensions.get("code", "")
        headers = {}
        if code in RETRYABLE and "retryAfter" in extensions:
            headers["Retry-After"] = str(extensions["retryAfter"])
        return ErrorResponse(
            {"errors": errors}, status_code=STATUS_BY_CODE.get(code, 500), headers=headers
        )
    # The documents name their field as the envelope shows it: seed 001 shows the accepted
    # and the completed job under "generateImage" (the poll aliases `generation` so).
    data = result.data or {}
    return JSONResponse(envelope(data) if envelope else {"data": data}, status_code=status)


def snake_path(field: str) -> str:
    """A GraphQL field path as the REST surfaces name it: snake_case (SPEC), and as the
    body has it, not under the ``input`` variable the body is sent as."""
    return ".".join(to_snake(part) for part in field.removeprefix("input.").split("."))


def renamed(error: dict[str, Any], rename: Callable[[str], str]) -> dict[str, Any]:
    """A formatted error with its ``extensions.field`` as a surface names it (in the
    message too)."""
    field = error.get("extensions", {}).get("field")
    if not isinstance(field, str):
        return error
    renamed = rename(field)
    return {
        **error,
        "message": error["message"].replace(field, renamed, 1),
        "extensions": {**error["extensions"], "field": renamed},
    }


def formatted(error: GraphQLError) -> dict[str, Any]:
    formatted: dict[str, Any] = {"message": error.message}
    if error.extensions:
        formatted["extensions"] = error.extensions
    return formatted


def seed_001(data: dict[str, Any]) -> dict[str, Any]:
    """The envelope of seed 001's REST surface. Seed 001 knows no ``queued``: a job is
    ``processing`` from its acceptance until it is final (its examples show ``processing``
    right after submit, and its polling loop keeps polling only while ``processing``), so a
    queued job reads ``processing`` here, with ``queuePosition`` (set only while queued)
    telling that it still waits. GraphQL keeps ``queued`` (SPEC)."""
    return {
        "data": {
            name: {**job, "status": "processing"}
            if isinstance(job, dict) and job.get("status") == "queued"
            else job
            for name, job in data.items()
        }
    }


async def text_to_image(request: Request) -> JSONResponse:
    context = await authenticated(request)
    if isinstance(context, JSONResponse):
        return context
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        # Refused before the body is read: only JSON is a request (nothing is charged).
        return error_response(
            415,
            ErrorCode.BAD_USER_INPUT.value,
            "Send the request body as application/json",
            field="Content-Type",
        )
    try:
        body = decode_json(await request.body())
    except BadBody as exc:
        return error_response(400, ErrorCode.BAD_USER_INPUT.value, exc.message, field="body")
    if not isinstance(body, dict):
        return error_response(400, "BAD_USER_INPUT", "The body must be a JSON object", field="body")
    return await execute(request, context, GENERATE_IMAGE, {"input": body}, envelope=seed_001)


async def get_text_to_image(request: Request) -> JSONResponse:
    context = await authenticated(request)
    if isinstance(context, JSONResponse):
        return context
    return await execute(
        request, context, GET_GENERATION, {"id": request.path_params["id"]}, envelope=seed_001
    )


async def cancel_text_to_image(request: Request) -> JSONResponse:
    context = await authenticated(request)
    if isinstance(context, JSONResponse):
        return context
    return await execute(
        request, context, CANCEL_GENERATION, {"id": request.path_params["id"]}, envelope=seed_001
    )
