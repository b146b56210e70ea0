"""The GraphQL endpoint: strawberry's ASGI app with our typed context."""

from __future__ import annotations

import contextlib
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UNSET, UnsetType

from billing.errors import Unauthenticated
from schema.context import Context, Services
from server.auth import api_key_from, idempotency_key_from


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


class GraphQLApp(GraphQL[Context, None]):
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
        """Refuse a websocket whose connection_init carries no valid key (and whose
        handshake carried none either): graphql-transport-ws closes with 4403, graphql-ws
        answers connection_error."""
        try:
            await context.caller()
        except Unauthenticated as exc:
            payload: dict[str, object] = {"message": exc.message, "code": exc.code.value}
            raise ConnectionRejectionError(payload) from exc
        return cast(UnsetType, UNSET)
