"""The GraphQL endpoint: strawberry's ASGI app with our typed context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator
from dataclasses import replace
from functools import lru_cache
from typing import Any, cast

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, GraphQLFormattedError, OperationDefinitionNode, parse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.extensions import MaxTokensLimiter
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage as TransportInitMessage,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ErrorMessage as TransportErrorMessage,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    CompleteMessage,
    ConnectionInitMessage,
    ErrorMessage,
    StartMessage,
    StopMessage,
)
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from billing.errors import ErrorCode, Forbidden, Unauthenticated
from schema.context import Context, Services, key_from_params
from server.auth import api_key_from, idempotency_key_from
from server.errors import CODE_BY_STATUS, BadBody, decode_json, error_response

log = logging.getLogger(__name__)


def build_context(conn: Request | WebSocket, services: Services) -> Context:
    if isinstance(conn, Request):
        context = Context(
            services=services,
            api_key=api_key_from(conn),
            idempotency_key=idempotency_key_from(conn),
            state=conn.state,
        )
        # Whatever the request's path, the context is closed when it ends (RequestEnd).
        conn.state.fluxgate_context = context
        return context
    # A websocket's handshake headers would apply to every operation on it: an
    # Idempotency-Key there would make every generate on the socket the same job.
    return Context(services=services, api_key=api_key_from(conn), websocket=True)


def is_multipart(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.lower().lstrip().startswith("multipart/form-data")


async def authenticate(request: Request, context: Context, *, quietly: bool = False) -> None:
    """Authenticate an HTTP request's caller: raises what ``Context.caller`` raises,
    unless ``quietly`` (GraphQL leaves such a failure to its resolvers). Reading the body
    raises either way (a body over the limit is a 413, a client gone is gone).

    Authentication checks out the request's connection, which its unit of work continues
    on; so the body is read first (a slow client must not hold a database connection while
    it sends), except an upload's: a multipart request authenticates and gives its
    connection back at once, and opens another when its files are in."""
    multipart = is_multipart(request)
    if not multipart:
        await request.body()  # kept by starlette for the parser
    try:
        await context.caller()
    except Exception:
        if not quietly:
            raise
    finally:
        if multipart:
            await context.close()


def _ws_error(
    message: str, code: ErrorCode = ErrorCode.BAD_USER_INPUT, field: str | None = None
) -> GraphQLFormattedError:
    extensions: dict[str, object] = {"code": code.value}
    if field is not None:
        extensions["field"] = field
    return GraphQLError(message, extensions=extensions).formatted


OPERATION_NAME = "operationName"


@lru_cache(maxsize=256)
def _operation_names(query: str, max_tokens: int | None) -> tuple[str | None, ...] | None:
    """The names of the document's operations (None for an anonymous one), or None when
    the document does not parse: strawberry then reports the syntax error itself, with
    its code. Parsed under the schema's own token limit."""
    try:
        document = parse(query, max_tokens=max_tokens)
    except GraphQLError:
        return None
    return tuple(
        d.name.value if d.name else None
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    )


def operation_name_problem(
    query: str, operation_name: str | None, max_tokens: int | None
) -> str | None:
    """Why ``operation_name`` selects no single operation of ``query`` (None when it
    does, or when the document does not parse). strawberry resolves a missing name to the
    FIRST operation (``ExecutionContext.operation_name``), so a document of several
    operations would silently run its first one; the GraphQL spec requires an error
    (GetOperation). An unknown name would end in an unmapped CannotGetOperationTypeError."""
    names = _operation_names(query, max_tokens)
    if names is None:
        return None
    if operation_name is None:
        if len(names) > 1:
            return "Must provide operation name if query contains multiple operations"
        return None
    if operation_name not in names:
        return f'Unknown operation named "{operation_name}"'
    return None


_max_tokens: weakref.WeakKeyDictionary[Any, int | None] = weakref.WeakKeyDictionary()


def schema_max_tokens(schema: Any) -> int | None:
    """The token limit the schema parses documents under (its MaxTokensLimiter)."""
    if schema not in _max_tokens:
        limiters = [e for e in schema.get_extensions() if isinstance(e, MaxTokensLimiter)]
        _max_tokens[schema] = limiters[0].max_token_count if limiters else None
    return _max_tokens[schema]


def _optional(payload: dict[str, Any], key: str, kind: type) -> bool:
    return payload.get(key) is None or isinstance(payload[key], kind)


def payload_problem(payload: object) -> tuple[str, str] | None:
    """(field, reason) when a start/subscribe payload is not ``{"query": str,
    "variables"?: object | null, "operationName"?: str | null, "extensions"?: object |
    null}``, the payload both protocols define; None when it is."""
    if not isinstance(payload, dict):
        return "payload", "the payload must be an object"
    if not isinstance(payload.get("query"), str):
        return "query", "the payload's `query` must be a string"
    if not _optional(payload, "variables", dict):
        return "variables", "the payload's `variables` must be an object or null"
    if not _optional(payload, OPERATION_NAME, str):
        return OPERATION_NAME, "the payload's `operationName` must be a string or null"
    if not _optional(payload, "extensions", dict):
        return "extensions", "the payload's `extensions` must be an object or null"
    return None


class WebSocketFrames(ASGIWebSocketAdapter):
    """Websocket frames as protocol messages: JSON objects only, decoded with the same
    limits as request bodies (depth, huge integers). Anything else is "not JSON" to the
    protocol handlers (graphql-transport-ws closes with 4400, graphql-ws ignores it), never
    an exception out of the connection's handler."""

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                text = await self.ws.receive_text()
                try:
                    message = decode_json(text)
                except BadBody:
                    message = None
                if isinstance(message, dict) and isinstance(message.get("type"), str):
                    yield message
                elif not ignore_parsing_errors:
                    raise NonJsonMessageReceived
        except KeyError as exc:  # a binary frame
            raise NonTextMessageReceived from exc
        except WebSocketDisconnect:
            pass


class LegacyWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy ``graphql-ws`` protocol (subscriptions-transport-ws), which gql and other
    clients pick by default, running queries and mutations as well as subscriptions (the
    protocol carries all three; strawberry's handler runs subscriptions only). ``ka`` is
    sent right after ``connection_ack`` and then every ``keep_alive_interval``."""

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            # strawberry's answer has no payload; README promises {"message", "code"}.
            refusal = {
                "message": "The connection_init payload must be an object",
                "code": ErrorCode.BAD_USER_INPUT.value,
            }
            await self.send_message({"type": "connection_error", "payload": refusal})
            await self.websocket.close(code=1000, reason="")
            return
        await super().handle_connection_init(message)

    async def handle_start(self, message: StartMessage) -> None:
        op_id = message.get("id")
        payload: Any = message.get("payload")
        problem = payload_problem(payload)
        if not isinstance(op_id, str):
            problem = "id", "a start message needs a string id"
        if problem is not None:
            # Answered, not a crash of the connection's handler.
            field, reason = problem
            await self.send_error(op_id, f"Invalid start message: {reason}", field)
            return
        if self.connection_acknowledged:  # (before it, strawberry closes the socket)
            query, name = payload["query"], payload.get(OPERATION_NAME)
            selection = operation_name_problem(query, name, schema_max_tokens(self.schema))
            if selection is not None:
                await self.send_error(op_id, selection, OPERATION_NAME)
                return
        await super().handle_start(message)

    async def send_error(self, op_id: object, message: str, field: str) -> None:
        """A BAD_USER_INPUT ``error`` for the operation ``op_id``."""
        await self.send_message(
            ErrorMessage(
                type="error",
                id=str(op_id if op_id is not None else ""),
                payload=_ws_error(message, field=field),
            )
        )

    async def handle_stop(self, message: StopMessage) -> None:
        if isinstance(message.get("id"), str):
            await super().handle_stop(message)

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        # strawberry's own, with ``schema.stream`` (any operation type) for ``subscribe``.
        try:
            result_source = await self.schema.stream(
                query=query,
                variable_values=variables,
                operation_name=operation_name,
                context_value=self.context,
                root_value=self.root_value,
            )
            self.subscriptions[operation_id] = result_source
            is_first_result = True
            async for result in result_source:
                if is_first_result and isinstance(result, PreExecutionError):
                    assert result.errors
                    await self.send_message(
                        ErrorMessage(
                            type="error", id=operation_id, payload=result.errors[0].formatted
                        )
                    )
                    return
                if not isinstance(result, ExecutionResult):
                    # @defer/@stream frames have no representation in this protocol.
                    await self.send_message(
                        ErrorMessage(
                            type="error",
                            id=operation_id,
                            payload=_ws_error("Incremental delivery is not supported here"),
                        )
                    )
                    return
                await self.send_data_message(result, operation_id)
                is_first_result = False
            await self.send_message(CompleteMessage(type="complete", id=operation_id))
        except asyncio.CancelledError:
            await self.send_message(CompleteMessage(type="complete", id=operation_id))
        finally:
            self.subscriptions.pop(operation_id, None)
            self.tasks.pop(operation_id, None)


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """``graphql-transport-ws``, with the server's own keep-alive: a ``ping`` every
    ``keep_alive_interval`` once acknowledged (clients answer ``pong``), so clients that
    watch for liveness, and proxies that close idle connections, keep the socket."""

    _pinger: asyncio.Task[None] | None = None

    async def handle_connection_init(self, message: TransportInitMessage) -> None:
        if message.get("payload") is None:
            # The protocol allows a null payload (strawberry closes the socket on it).
            message = TransportInitMessage(type="connection_init", payload={})
        await super().handle_connection_init(message)
        interval = self.view.keep_alive_interval
        wanted = self.view.keep_alive and self._pinger is None
        if wanted and self.connection_acknowledged and interval:
            self._pinger = asyncio.create_task(self._ping(interval))

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        """A subscribe message outside the protocol's format closes the socket with 4400,
        as graphql-transport-ws prescribes (strawberry's handler raised on some: a payload
        that is not an object dropped the socket with 1006 and an ASGI traceback). A
        well-formed one that names no single operation is answered with a coded error."""
        op_id: object = message.get("id")
        payload: Any = message.get("payload")
        if not (isinstance(op_id, str) and op_id):
            await self.handle_invalid_message(
                "Invalid message received: a subscribe message needs a non-empty string id"
            )
            return
        if (problem := payload_problem(payload)) is not None:
            await self.handle_invalid_message(f"Invalid message received: {problem[1]}")
            return
        reason = operation_name_problem(
            payload["query"], payload.get(OPERATION_NAME), schema_max_tokens(self.schema)
        )
        if reason is not None and self.connection_acknowledged and op_id not in self.operations:
            # (Before the acknowledgement, or for an id in use, strawberry closes the socket.)
            error = _ws_error(reason, field=OPERATION_NAME)
            await self.send_message(TransportErrorMessage(id=op_id, type="error", payload=[error]))
            return
        await super().handle_subscribe(message)

    async def _ping(self, interval: float) -> None:
        with contextlib.suppress(Exception):  # the socket closed: nothing left to keep
            while True:
                await asyncio.sleep(interval)
                await self.send_message({"type": "ping"})

    async def shutdown(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        await super().shutdown()


class FieldHTTPException(HTTPException):
    """A refusal of one named part of the request (answered with ``field``)."""

    def __init__(self, status_code: int, reason: str, field: str) -> None:
        super().__init__(status_code, reason)
        self.field = field


class GraphQLApp(GraphQL[Context, None]):
    websocket_adapter_class = WebSocketFrames
    graphql_ws_handler_class = LegacyWSHandler
    graphql_transport_ws_handler_class = TransportWSHandler

    # --- HTTP: every refusal in the JSON error shape, never a 500 for a client's body ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope=scope, receive=receive)
        try:
            response = await self._run(request)
        except HTTPException as exc:
            headers = {"Allow": "GET, POST"} if exc.status_code == 405 else None
            code = CODE_BY_STATUS.get(exc.status_code, ErrorCode.BAD_USER_INPUT.value)
            extra = {"field": "Content-Type"} if exc.status_code == 415 else {}
            if isinstance(exc, FieldHTTPException):
                extra = {"field": exc.field}
            response = error_response(exc.status_code, code, exc.reason, headers, **extra)
        await response(scope, receive, send)

    async def _run(self, request: Request) -> Response:
        try:
            return await self.run(request)
        finally:
            # The request's database session goes back before the response is written.
            context: Context | None = getattr(request.state, "fluxgate_context", None)
            if context is not None:
                await context.close()
            # A multipart request's uploads are temporary files: closed now, not when the
            # garbage collector gets to them (neither strawberry nor starlette closes them).
            await request.close()

    def decode_json(self, data: str | bytes) -> object:
        try:
            return decode_json(data)
        except BadBody as exc:
            raise HTTPException(400, exc.message) from None

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST":
            content_type, _ = parse_content_type(request.content_type or "")
            if content_type == "multipart/form-data":
                return await self._parse_multipart(request)
            if content_type != "application/json":
                raise HTTPException(
                    415,
                    "Send GraphQL requests as application/json (or multipart/form-data "
                    "with files, by the GraphQL multipart request spec)",
                )
            body = self.parse_json(await request.get_body())
            if not isinstance(body, dict):
                raise HTTPException(
                    400, "The body must be one JSON object (batched operations are not supported)"
                )
        data = await super().parse_http_body(request)
        if isinstance(data, list):  # unreachable while batching is off; kept explicit
            raise HTTPException(400, "Batched operations are not supported")
        if not isinstance(data.operation_name, str | None):
            raise FieldHTTPException(
                400, "The operation's `operationName` must be a string or null", OPERATION_NAME
            )
        # Subscriptions run over websockets only: no incremental HTTP transport.
        return replace(data, protocol="http")

    async def _parse_multipart(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData:
        """An upload (the GraphQL multipart request spec). CSRF: a browser sends a
        cross-site form POST without custom headers, so a multipart request must carry
        the API key in a header (Authorization or X-API-Key), which no page on another
        origin can add without a CORS preflight (refused: this API sends no CORS headers)."""
        headers = request.headers
        if not (headers.get("authorization") or headers.get("x-api-key")):
            raise FieldHTTPException(
                400,
                "A multipart request must carry the API key in the Authorization or "
                "X-API-Key header",
                "Authorization",
            )
        try:
            data = await super().parse_http_body(request)
        except HTTPException:
            raise
        except Exception as exc:  # a malformed multipart body or operations/map JSON
            log.info("malformed multipart request: %s: %s", type(exc).__name__, exc)
            raise HTTPException(400, "The multipart request is malformed") from None
        if isinstance(data, list):
            raise HTTPException(400, "Batched operations are not supported")
        if not isinstance(data.operation_name, str | None):
            raise FieldHTTPException(
                400, "The operation's `operationName` must be a string or null", OPERATION_NAME
            )
        return replace(data, protocol="http")

    async def execute_single(  # strawberry's signature
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        allowed = {OperationType.QUERY}
        if request_adapter.method == "POST":
            allowed.add(OperationType.MUTATION)
        if isinstance(request_data.query, str):
            reason = operation_name_problem(
                request_data.query, request_data.operation_name, schema_max_tokens(self.schema)
            )
            if reason is not None:
                raise FieldHTTPException(400, reason, OPERATION_NAME)
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except InvalidOperationTypeError as exc:
            if exc.operation_type == OperationType.SUBSCRIPTION:
                raise HTTPException(
                    400,
                    "Subscriptions need a websocket: connect to /graphql with the "
                    "graphql-transport-ws or graphql-ws protocol",
                ) from None
            raise HTTPException(400, exc.as_http_error_reason(request_adapter.method)) from None
        except CannotGetOperationTypeError as exc:
            raise FieldHTTPException(400, exc.as_http_error_reason(), OPERATION_NAME) from None
        except MissingQueryError:
            raise HTTPException(400, "No GraphQL query found in the request") from None

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        errors: list[dict[str, Any]] = []
        if isinstance(response_data, dict):
            errors = cast(list[dict[str, Any]], response_data.get("errors") or [])
        for error in errors:
            extensions = error.get("extensions") or {}
            if extensions.get("code") == ErrorCode.SERVICE_UNAVAILABLE.value:
                # Nothing ran: a plain HTTP 503 that clients and proxies know to retry.
                response.status_code = 503
                response.headers["Retry-After"] = str(extensions.get("retryAfter", 5))
                break
        return response

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket | None
    ) -> Context:
        services: Services = request.app.state.services
        context = build_context(request, services)
        if context.api_key is not None and isinstance(request, Request):
            # Authenticate now, so even a request refused before execution (a syntax
            # error) is answered with the caller's X-RateLimit-* headers. Any failure is
            # left to the resolvers, which report it in the GraphQL way.
            await authenticate(request, context, quietly=True)
        return context

    async def get_root_value(self, request: Any) -> None:
        return None

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate a websocket on its ``connection_init``; refuse it without a valid
        key (graphql-transport-ws closes with 4403, graphql-ws answers connection_error).

        A key in the connection_init payload wins over one in the handshake headers: the
        payload is what the client chose for this connection, and browsers cannot set
        headers on a websocket at all (a stale proxy-injected header must not lock out a
        client that sends a valid key in the payload)."""
        chosen = key_from_params(context.connection_params)
        if chosen is not None:
            context.api_key = chosen
        try:
            await context.caller()
        except (Unauthenticated, Forbidden) as exc:  # Forbidden: a banned account's key
            payload: dict[str, object] = {"message": exc.message, "code": exc.code.value}
            raise ConnectionRejectionError(payload) from exc
        return cast(UnsetType, UNSET)
