"""The GraphQL endpoint: strawberry's ASGI app with our typed context."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any, cast

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, GraphQLFormattedError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
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
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    CompleteMessage,
    ErrorMessage,
    StartMessage,
    StopMessage,
)
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from billing.errors import ErrorCode, Unauthenticated
from schema.context import Context, Services, key_from_params
from server.auth import api_key_from, idempotency_key_from
from server.errors import CODE_BY_STATUS, BadBody, decode_json, error_response


def build_context(conn: Request | WebSocket, services: Services) -> Context:
    if isinstance(conn, Request):
        return Context(
            services=services,
            api_key=api_key_from(conn),
            idempotency_key=idempotency_key_from(conn),
            state=conn.state,
        )
    # A websocket's handshake headers would apply to every operation on it: an
    # Idempotency-Key there would make every generate on the socket the same job.
    return Context(services=services, api_key=api_key_from(conn), websocket=True)


def _ws_error(message: str, code: ErrorCode = ErrorCode.BAD_USER_INPUT) -> GraphQLFormattedError:
    return GraphQLError(message, extensions={"code": code.value}).formatted


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

    async def handle_start(self, message: StartMessage) -> None:
        payload: Any = message.get("payload")
        if not isinstance(message.get("id"), str) or not (
            isinstance(payload, dict)
            and isinstance(payload.get("query"), str)
            and isinstance(payload.get("variables") or {}, dict)
            and isinstance(payload.get("operationName") or "", str)
        ):
            # Answered, not a crash of the connection's handler.
            await self.send_message(
                ErrorMessage(
                    type="error",
                    id=str(message.get("id", "")),
                    payload=_ws_error("A start message needs an id and a payload with a query"),
                )
            )
            return
        await super().handle_start(message)

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
        await super().handle_connection_init(message)
        interval = self.view.keep_alive_interval
        wanted = self.view.keep_alive and self._pinger is None
        if wanted and self.connection_acknowledged and interval:
            self._pinger = asyncio.create_task(self._ping(interval))

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
            response = await self.run(request)
        except HTTPException as exc:
            headers = {"Allow": "GET, POST"} if exc.status_code == 405 else None
            code = CODE_BY_STATUS.get(exc.status_code, ErrorCode.BAD_USER_INPUT.value)
            extra = {"field": "Content-Type"} if exc.status_code == 415 else {}
            response = error_response(exc.status_code, code, exc.reason, headers, **extra)
        await response(scope, receive, send)

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
            if content_type != "application/json":
                raise HTTPException(415, "Send GraphQL requests as application/json")
            body = self.parse_json(await request.get_body())
            if not isinstance(body, dict):
                raise HTTPException(
                    400, "The body must be one JSON object (batched operations are not supported)"
                )
        data = await super().parse_http_body(request)
        if isinstance(data, list):  # unreachable while batching is off; kept explicit
            raise HTTPException(400, "Batched operations are not supported")
        if not isinstance(data.operation_name, str | None):
            raise HTTPException(400, "The operation's `operationName` must be a string or null")
        # Subscriptions run over websockets only: no incremental HTTP transport.
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
            raise HTTPException(400, exc.as_http_error_reason()) from None
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
            with contextlib.suppress(Exception):
                await context.caller()
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
        except Unauthenticated as exc:
            payload: dict[str, object] = {"message": exc.message, "code": exc.code.value}
            raise ConnectionRejectionError(payload) from exc
        return cast(UnsetType, UNSET)
