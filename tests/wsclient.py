"""A minimal GraphQL-over-websocket client speaking both protocols, for tests."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = [TRANSPORT_WS, LEGACY_WS]


class SubscriptionError(Exception):
    def __init__(self, payload: Any) -> None:
        super().__init__(payload)
        self.payload = payload


class GraphQLWebSocket:
    def __init__(
        self,
        base_url: str,
        protocol: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = base_url.replace("http://", "ws://") + "/graphql"
        self.protocol = protocol
        self.params = params
        self.headers = headers
        self.ws: ClientConnection | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> GraphQLWebSocket:
        self.ws = await connect(
            self.url,
            subprotocols=[Subprotocol(self.protocol)],
            additional_headers=self.headers,
        )
        init: dict[str, Any] = {"type": "connection_init"}
        if self.params is not None:
            init["payload"] = self.params
        await self.ws.send(json.dumps(init))
        ack = await self.receive(timeout=10)
        if ack["type"] != "connection_ack":
            raise SubscriptionError(ack)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def receive(self, timeout: float = 30) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            message: dict[str, Any] = json.loads(raw)
            if message["type"] not in ("ka", "ping", "pong"):
                return message

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        assert self.ws is not None
        op_id = str(next(self._ids))
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        payload = {"query": query, "variables": variables or {}}
        await self.ws.send(json.dumps({"id": op_id, "type": kind, "payload": payload}))
        return op_id

    async def next(self, timeout: float = 30) -> dict[str, Any] | None:
        """The next result's data, or None when the server completed the subscription."""
        message = await self.receive(timeout)
        if message["type"] in ("next", "data"):
            payload = message["payload"]
            if payload.get("errors"):
                raise SubscriptionError(payload["errors"])
            data: dict[str, Any] = payload["data"]
            return data
        if message["type"] == "complete":
            return None
        raise SubscriptionError(message.get("payload", message))

    async def close_code(self, timeout: float = 10) -> int | None:
        """Wait for the server to close the socket; its close code."""
        assert self.ws is not None
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


async def collect(
    client: GraphQLWebSocket, field: str, timeout: float = 60
) -> list[dict[str, Any]]:
    """Every result of a subscription until the server completes it."""
    results = []
    while (data := await client.next(timeout)) is not None:
        results.append(data[field])
    return results
