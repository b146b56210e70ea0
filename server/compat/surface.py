"""A REST surface declared once: each endpoint names the pydantic models that validate its
query, body and responses, and the same declarations produce the OpenAPI document
(server/openapi.py). The compatible surfaces (seeds 000, 002, 003, 004) are thin adapters
on it: they validate their wire shape, run GraphQL documents through the one schema (so
authentication, limits, credits, idempotency, isolation and error codes are the GraphQL
surface's) and translate the result into their own envelope.

An endpoint is an ``async def handler(call: Call) -> Response | dict | list``; a dict or
list is sent as JSON with the first declared 2xx status. A refusal anywhere
(``call.run`` on a GraphQL error, a body that does not validate, a bad key) is a
``Refused`` that the surface's ``error`` formats in its own error shape.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, PlainValidator, ValidationError, WithJsonSchema
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billing.errors import ErrorCode, Forbidden, Unauthenticated
from schema.context import Context
from server.errors import SURFACE_ERRORS, BadBody, ErrorResponse, decode_json
from server.graphql import authenticate, build_context
from server.metrics import REQUEST_ID_HEADER
from server.middleware import BodyTooLarge
from server.rest import RETRYABLE, STATUS_BY_CODE, formatted, renamed, snake_path

__all__ = [
    "Call", "ErrorFormat", "FormFile", "Operation", "Refused", "Surface", "json_error",
]  # fmt: skip


def _upload(value: Any) -> UploadFile:
    if not isinstance(value, UploadFile):
        raise ValueError("send a file (multipart/form-data)")
    return value


# A multipart file field: validated as starlette's UploadFile (no arbitrary_types_allowed
# needed), described as binary.
FormFile = Annotated[
    UploadFile, PlainValidator(_upload), WithJsonSchema({"type": "string", "format": "binary"})
]

JSON = "application/json"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
FORMS = (MULTIPART, URLENCODED)
MAX_FILES = 8
MAX_FIELDS = 200


class Refused(Exception):
    """A request refused: its HTTP status, error code, a message that names the problem,
    the offending field (snake_case, as this surface names it) and, for a retryable code,
    the seconds after which to retry."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    @classmethod
    def bad_input(cls, message: str, field: str | None = None) -> Refused:
        return cls(400, ErrorCode.BAD_USER_INPUT.value, message, field)

    @classmethod
    def not_found(cls, message: str = "Not found") -> Refused:
        return cls(404, ErrorCode.NOT_FOUND.value, message)

    @classmethod
    def from_graphql(cls, error: Mapping[str, Any]) -> Refused:
        extensions = error.get("extensions") or {}
        code = str(extensions.get("code", "INTERNAL_SERVER_ERROR"))
        field = extensions.get("field")
        retry = extensions.get("retryAfter")
        return cls(
            STATUS_BY_CODE.get(code, 500),
            code,
            str(error.get("message", "")),
            field if isinstance(field, str) else None,
            int(retry) if code in RETRYABLE and isinstance(retry, int | float) else None,
        )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


# How a surface writes a refusal: (request, refusal) -> response.
ErrorFormat = Callable[[Request, Refused], Response]


def request_id(request: Request) -> str | None:
    """The id the telemetry middleware gave this request (also in X-Request-Id)."""
    return request.scope.get("fluxgate.request_id") or request.headers.get(REQUEST_ID_HEADER)


def json_error(request: Request, refused: Refused) -> Response:
    """Fluxgate's own error shape (SPEC): ``{"errors": [{"message", "extensions"}]}``."""
    extensions: dict[str, Any] = {"code": refused.code}
    if refused.field is not None:
        extensions["field"] = refused.field
    if refused.retry_after is not None:
        extensions["retryAfter"] = refused.retry_after
    return ErrorResponse(
        {"errors": [{"message": refused.message, "extensions": extensions}]},
        status_code=refused.status,
        headers=refused.headers(),
    )


@dataclass(frozen=True)
class Operation:
    """One endpoint as the OpenAPI document describes it."""

    method: str
    path: str
    summary: str
    tag: str
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    # The body's media types, the first preferred (a form model accepts both form types).
    media: tuple[str, ...] = (JSON,)
    # Status -> response model (None: no body, or a body not described by a model).
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    # Extra response media types of the first 2xx status (e.g. application/x-ndjson).
    streams: tuple[str, ...] = ()
    # How the key is sent: "header" (Authorization: Bearer / X-API-Key), "form" (a body
    # field, seed 004's user_key), "none" (public).
    auth: Literal["header", "form", "none"] = "header"
    description: str = ""


@dataclass
class Call:
    """One request to an endpoint: the validated query and body, the path parameters and
    the context its GraphQL documents run in: the caller's, or an anonymous one for a
    public endpoint (its documents may only read public fields)."""

    request: Request
    context: Context
    query: Any
    body: Any
    path: dict[str, str]
    surface: Surface

    async def run(self, document: str, variables: Mapping[str, Any] | None = None) -> Any:
        """Execute a GraphQL document as this caller: its ``data``, or ``Refused`` with
        the first error's code (mapped to this surface's HTTP status)."""
        # One REST request counts once against the rate limit, however many operations
        # it runs (schema/ratelimit.py).
        self.request.state.fluxgate_rest_call = True
        schema = self.request.app.state.schema
        result = await schema.execute(
            document, variable_values=dict(variables or {}), context_value=self.context
        )
        if result.errors:
            raise Refused.from_graphql(
                renamed(formatted(result.errors[0]), self.surface.rename_field)
            )
        return result.data or {}


Handler = Callable[[Call], Awaitable[Response | dict[str, Any] | list[Any]]]


class Surface:
    """A compatible API: its routes, their operations, how it formats a refusal and how it
    names a GraphQL field in its errors."""

    def __init__(
        self,
        name: str,
        *,
        error: ErrorFormat = json_error,
        rename_field: Callable[[str], str] | None = None,
        description: str = "",
        prefixes: tuple[str, ...] = (),
    ) -> None:
        """``prefixes``: the paths this surface owns, so that the errors made for them
        outside its endpoints (the router's 404 and 405, a body over the size limit, Redis
        down, an internal error) are in its shape too."""
        self.name = name
        self.error = error
        self.description = description
        self._rename = rename_field
        # Path -> method -> endpoint: one route per path, so that a 405 on it names
        # every method it takes in Allow (one route per method named only the first's).
        self._endpoints: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
        self.operations: list[Operation] = []
        for prefix in prefixes:
            SURFACE_ERRORS[prefix] = self._answer

    @property
    def routes(self) -> list[Route]:
        """One route per path, taking each method an endpoint was declared for (and HEAD
        with GET, as starlette does)."""
        found: list[Route] = []
        for path, by_method in self._endpoints.items():

            async def dispatch(
                request: Request, by_method: Mapping[str, Any] = by_method
            ) -> Response:
                method = "GET" if request.method == "HEAD" else request.method
                response: Response = await by_method[method](request)
                return response

            found.append(Route(path, dispatch, methods=list(by_method), name=self.name + path))
        return found

    def _answer(
        self, request: Request, status: int, code: str, message: str,
        headers: Mapping[str, str] | None, field: str | None,
    ) -> Response:  # fmt: skip
        response = self.error(request, Refused(status, code, message, field))
        response.headers.update(headers or {})
        return response

    def rename_field(self, field: str) -> str:
        return self._rename(field) if self._rename is not None else snake_path(field)

    def endpoint(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        media: tuple[str, ...] = (JSON,),
        responses: Mapping[int, type[BaseModel] | None] | None = None,
        streams: tuple[str, ...] = (),
        auth: Literal["header", "form", "none"] = "header",
        key_field: str = "user_key",
        description: str = "",
    ) -> Callable[[Handler], Handler]:
        """Declare ``handler`` as ``method path``. ``key_field``: the body field that
        carries the key when ``auth`` is "form"."""
        operation = Operation(
            method=method.upper(), path=path, summary=summary, tag=self.name, query=query,
            body=body, media=media, responses=dict(responses or {200: None}), streams=streams,
            auth=auth, description=description,
        )  # fmt: skip
        success = min((s for s in operation.responses if 200 <= s < 300), default=200)

        def register(handler: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                form: FormData | None = None
                try:
                    context: Context | None = None
                    if auth == "header":
                        context = await self._authenticate(request, None)
                    elif auth == "none":
                        context = anonymous(request)
                    parsed_query = _validate(query, dict(request.query_params), "query")
                    raw, form = await _read_body(request, operation) if body else (None, None)
                    if auth == "form":
                        key = raw.get(key_field) if isinstance(raw, dict) else None
                        if not isinstance(key, str) or not key.strip():
                            raise Refused(
                                401, ErrorCode.UNAUTHENTICATED.value,
                                f"Send your API key in the {key_field} field", key_field,
                            )  # fmt: skip
                        context = await self._authenticate(request, key.strip())
                    parsed_body = _validate(body, raw, "body") if body else None
                    assert context is not None
                    call = Call(
                        request, context, parsed_query, parsed_body,
                        dict(request.path_params), self,
                    )  # fmt: skip
                    try:
                        result = await handler(call)
                    finally:
                        await context.close()
                except Refused as refused:
                    return self.error(request, refused)
                finally:
                    if form is not None:
                        await form.close()
                if isinstance(result, Response):
                    return result
                return JSONResponse(result, status_code=success)

            endpoint.__name__ = handler.__name__
            self._endpoints.setdefault(path, {})[operation.method] = endpoint
            self.operations.append(operation)
            return handler

        return register

    async def _authenticate(self, request: Request, key: str | None) -> Context:
        context = build_context(request, request.app.state.services)
        if key is not None:
            context.api_key = key
        try:
            await authenticate(request, context)
        except Unauthenticated as exc:
            raise Refused(401, exc.code.value, exc.message) from None
        except Forbidden as exc:  # a banned account
            raise Refused(403, exc.code.value, exc.message) from None
        return context


def anonymous(request: Request) -> Context:
    """A public endpoint's context: no caller, whatever key the request carries."""
    context = build_context(request, request.app.state.services)
    context.api_key = None
    return context


async def _read_body(request: Request, operation: Operation) -> tuple[Any, FormData | None]:
    """The body as a dict (JSON object or form fields, repeated fields as lists, files as
    UploadFile), refusing a media type the operation does not take."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    accepted = set(operation.media) | (set(FORMS) if set(operation.media) & set(FORMS) else set())
    if media_type not in accepted:
        raise Refused(
            415, ErrorCode.BAD_USER_INPUT.value,
            f"Send the body as {' or '.join(sorted(accepted))}", "Content-Type",
        )  # fmt: skip
    if media_type == JSON:
        try:
            value = decode_json(await request.body())
        except BadBody as exc:
            raise Refused.bad_input(exc.message, "body") from None
        if not isinstance(value, dict):
            raise Refused.bad_input("The body must be a JSON object", "body")
        return value, None
    if media_type == URLENCODED:
        # Kept by starlette: authenticating a form key reads the body again (graphql.py).
        await request.body()
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
    except BodyTooLarge:  # answered by the middleware (413, in the surface's shape)
        raise
    except Exception:  # starlette's MultiPartException and malformed bodies
        raise Refused.bad_input("The form body is malformed", "body") from None
    fields: dict[str, Any] = {}
    for name, item in form.multi_items():
        if name in fields:
            previous = fields[name]
            fields[name] = [*previous, item] if isinstance(previous, list) else [previous, item]
        else:
            fields[name] = item
    return fields, form


def _validate(model: type[BaseModel] | None, raw: Any, where: str) -> Any:
    if model is None:
        return None
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        location = ".".join(str(part) for part in error["loc"]) or where
        raise Refused.bad_input(f"{location}: {error['msg']}", location) from None


# Page-numbered lists (seeds 000 and 002) walk the library's cursor to their page, 100
# images a query: pages reach this far (the first 10,000 images of a listing; filters and
# search narrow it), so one request is at most 100 queries.
MAX_OFFSET = 10_000


def check_offset(page: int, per_page: int) -> None:
    if (page - 1) * per_page >= MAX_OFFSET:
        raise Refused.bad_input(
            f"page: pages reach the first {MAX_OFFSET} images (page {page} of {per_page} "
            "starts past them); narrow the listing with its filters or search",
            "page",
        )


def dumps(value: Any) -> str:
    """One JSON line (NDJSON), ASCII-safe."""
    return json.dumps(value, separators=(",", ":"))
