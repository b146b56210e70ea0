"""GraphQL over both websocket protocols, driven by third-party clients: gql itself (its
websockets transport, which picks the legacy ``graphql-ws`` protocol by default) and its
``gql-cli`` entry point, against a real uvicorn server, Postgres, Redis and an arq worker
running the tiny FLUX pipeline (issue 9, items 5, 6 and 18)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from gql import Client, GraphQLRequest
from gql.transport.exceptions import (
    TransportConnectionFailed,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.websockets import WebsocketsTransport
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from billing.plans import default_plan_book
from billing.service import accounts
from server.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, free_port
from tests.factories import TestAccount, create_account
from tests.wsclient import LEGACY_WS, PROTOCOLS, TRANSPORT_WS, GraphQLWebSocket

# The server's keep-alive interval here: short, so an idle period of several intervals
# (longer than the client's keep_alive_timeout) passes quickly.
KEEPALIVE_S = 0.25
SUBMIT = """mutation S($input: ImageGenerationInput!) {
  generateImage(input: $input) { id status creditCost } }"""
FOLLOW = "subscription F($id: ID!) { generationUpdated(id: $id) { id status url } }"
ME = "{ me { email creditsAvailable } }"


@pytest.fixture(scope="module")
def ws_api(settings: Settings, database: str) -> Iterator[str]:
    port = free_port()
    own = settings.model_copy(
        update={"public_url": f"http://127.0.0.1:{port}", "ws_keepalive_s": KEEPALIVE_S}
    )
    with ThreadedServer(own, port) as server:
        yield server.url


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/graphql"


def transport(
    base: str,
    protocol: str,
    *,
    key: str | None = None,
    header_key: str | None = None,
    keep_alive_timeout: float | None = None,
) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=ws_url(base),
        subprotocols=[protocol],
        init_payload={"Authorization": f"Bearer {key}"} if key else {},
        headers={"Authorization": f"Bearer {header_key}"} if header_key else None,
        keep_alive_timeout=keep_alive_timeout,
    )


@pytest.fixture
async def customer(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> TestAccount:
    return await create_account(sessions, settings, credits=1000)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_gql_runs_queries_mutations_and_subscriptions(
    ws_api: str, worker: ThreadedWorker, customer: TestAccount, protocol: str
) -> None:
    client = Client(
        transport=transport(ws_api, protocol, key=customer.api_key),
        fetch_schema_from_transport=True,
    )
    async with client as session:
        assert client.schema is not None  # introspection ran over the socket
        assert client.schema.get_type("Subscription") is not None
        me = await session.execute(GraphQLRequest(ME))
        assert me["me"]["email"] == customer.email

        new_key = await session.execute(
            GraphQLRequest('mutation { createApiKey(name: "over-ws") { secret key { name } } }')
        )
        assert new_key["createApiKey"]["key"]["name"] == "over-ws"
        assert new_key["createApiKey"]["secret"].startswith("fgk_")

        job_input = {"service": "flux-dev", "prompt": "a lighthouse", "width": 256, "height": 256}
        submitted = await session.execute(
            GraphQLRequest(SUBMIT, variable_values={"input": job_input})
        )
        job = submitted["generateImage"]
        assert job["status"] == "queued" and job["creditCost"] > 0

        states = [
            update["generationUpdated"]
            async for update in session.subscribe(
                GraphQLRequest(FOLLOW, variable_values={"id": job["id"]})
            )
        ]
    assert {s["id"] for s in states} == {job["id"]}
    assert states[-1]["status"] == "completed" and states[-1]["url"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_errors_on_the_socket_have_the_http_shape(
    ws_api: str, sessions: async_sessionmaker[AsyncSession], settings: Settings, protocol: str
) -> None:
    limited = await create_account(sessions, settings, credits=100)
    async with sessions() as s:
        await accounts.set_plan(
            s, limited.id, plan=None, overrides={"requests_per_minute": 3},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    async with Client(transport=transport(ws_api, protocol, key=limited.api_key)) as session:
        with pytest.raises(TransportQueryError) as invalid:
            await session.execute(GraphQLRequest("{ me { noSuchField } }"))
        assert invalid.value.errors is not None
        assert invalid.value.errors[0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"

        with pytest.raises(TransportQueryError) as missing:
            await session.execute(GraphQLRequest('{ generation(id: "nope") { id } }'))
        assert missing.value.errors is not None
        assert missing.value.errors[0]["extensions"] == {"code": "NOT_FOUND"}

        with pytest.raises(TransportQueryError) as bad_input:
            await session.execute(
                GraphQLRequest(SUBMIT, variable_values={"input": {"service": "flux-dev",
                               "prompt": "x", "width": 99999, "height": 256}})
            )  # fmt: skip
        assert bad_input.value.errors is not None
        assert bad_input.value.errors[0]["extensions"]["code"] == "BAD_USER_INPUT"

        with pytest.raises(TransportQueryError) as limited_out:
            for _ in range(4):  # past the 3 requests a minute, whatever counted above
                await session.execute(GraphQLRequest(ME))
        assert limited_out.value.errors is not None
        [error] = limited_out.value.errors
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] >= 1
    # Refused requests cost nothing.
    async with sessions() as s:
        account = await accounts.get_account(s, limited.id)
    assert (account.credits_available, account.credits_reserved) == (100, 0)


def gql_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("gql-cli")), *args],
        input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_gql_cli_prints_the_schema_and_runs_a_query(
    ws_api: str, customer: TestAccount
) -> None:
    header = f"Authorization:Bearer {customer.api_key}"
    # gql-cli's default websocket transport offers both protocols, legacy first.
    printed = await asyncio.to_thread(gql_cli, ws_url(ws_api), "--print-schema", "-H", header)
    assert printed.returncode == 0, printed.stderr
    assert "type Subscription" in printed.stdout
    assert "generationUpdated(id: ID!): Generation!" in printed.stdout

    ran = await asyncio.to_thread(gql_cli, ws_url(ws_api), "-H", header, stdin=ME)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["me"]["email"] == customer.email


async def keepalives(base: str, protocol: str, key: str) -> AsyncIterator[float]:
    """The monotonic time of every keep-alive frame the server sends on a connection:
    ``ka`` on graphql-ws, ``ping`` on graphql-transport-ws."""
    async with connect(ws_url(base), subprotocols=[Subprotocol(protocol)]) as ws:
        init = {"type": "connection_init", "payload": {"apiKey": key}}
        await ws.send(json.dumps(init))
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert first["type"] == "connection_ack", first
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] == ("ka" if protocol == LEGACY_WS else "ping"):
                yield time.monotonic()


async def test_legacy_protocol_sends_ka_at_once_and_periodically(
    ws_api: str, customer: TestAccount
) -> None:
    async with GraphQLWebSocket(ws_api, LEGACY_WS, {"apiKey": customer.api_key}) as ws:
        assert ws.ws is not None
        # `ka` follows connection_ack immediately (gql starts its liveness clock there).
        assert json.loads(await asyncio.wait_for(ws.ws.recv(), 30)) == {"type": "ka"}
    seen = 0
    async for _ in keepalives(ws_api, LEGACY_WS, customer.api_key):
        seen += 1
        if seen == 4:
            break


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_gql_with_keep_alive_timeout_survives_idle_periods(
    ws_api: str, customer: TestAccount, protocol: str
) -> None:
    timeout = 4 * KEEPALIVE_S
    watched = transport(ws_api, protocol, key=customer.api_key, keep_alive_timeout=timeout)
    async with Client(transport=watched) as session:
        await session.execute(GraphQLRequest(ME))
        idle_since = time.monotonic()
        # Idle for three keep_alive_timeouts, measured by the server's own keep-alive
        # frames on a second connection (without them, gql would have given up).
        async for at in keepalives(ws_api, protocol, customer.api_key):
            if at - idle_since > 3 * timeout:
                break
        assert watched.check_keep_alive_task is not None
        assert not watched.check_keep_alive_task.done()
        me = await session.execute(GraphQLRequest(ME))
        assert me["me"]["email"] == customer.email


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_connection_init_key_wins_over_the_handshake_header(
    ws_api: str, customer: TestAccount, protocol: str
) -> None:
    invalid = "fgk_" + "A" * 32 + "000000"
    # An invalid key in the header, a valid one in connection_init: accepted, as the
    # connection_init key's account.
    client = Client(transport=transport(ws_api, protocol, key=customer.api_key, header_key=invalid))
    async with client as session:
        me = await session.execute(GraphQLRequest(ME))
    assert me["me"]["email"] == customer.email

    # No key in connection_init: the header's is used.
    async with Client(transport=transport(ws_api, protocol, header_key=customer.api_key)) as s:
        assert (await s.execute(GraphQLRequest(ME)))["me"]["email"] == customer.email

    # A valid header does not rescue an invalid connection_init key: it was chosen last.
    refused = Client(
        transport=transport(ws_api, protocol, key=invalid, header_key=customer.api_key)
    )
    if protocol == LEGACY_WS:
        with pytest.raises(TransportServerError, match="UNAUTHENTICATED"):
            async with refused:
                pass
    else:
        with pytest.raises(TransportConnectionFailed) as closed:
            async with refused:
                pass
        assert close_code(closed.value) == 4403


def close_code(error: BaseException) -> int | None:
    """The close code the server sent, from the exception chain gql raised."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionClosed):
            return cause.rcvd.code if cause.rcvd else None
        cause = cause.__cause__ or cause.__context__
    return None


async def test_connection_init_key_wins_with_the_raw_protocols(
    ws_api: str, customer: TestAccount
) -> None:
    """The same precedence on the wire, for both protocols, without gql in between."""
    for protocol in PROTOCOLS:
        ws = GraphQLWebSocket(
            ws_api, protocol, {"Authorization": f"Bearer {customer.api_key}"},
            headers={"Authorization": "Bearer fgk_not-a-key"},
        )  # fmt: skip
        async with ws:
            await ws.subscribe(ME)
            data = await ws.next()
            assert data == {"me": {"email": customer.email, "creditsAvailable": 1000}}
            assert await ws.next() is None  # a query completes after its one result


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_malformed_frames_are_answered_by_the_protocol(
    ws_api: str, customer: TestAccount, protocol: str
) -> None:
    """Not JSON, a start without a query: graphql-transport-ws closes with 4400 as its
    spec says; graphql-ws answers a coded error (or ignores what is not JSON, as
    strawberry's handler always did) and keeps the connection."""
    if protocol == TRANSPORT_WS:
        for frame in ("this is not json", "42", "[" * 5000 + "]" * 5000):
            async with GraphQLWebSocket(ws_api, protocol, {"apiKey": customer.api_key}) as ws:
                assert ws.ws is not None
                await ws.ws.send(frame)
                assert await ws.close_code() == 4400
        return
    async with GraphQLWebSocket(ws_api, protocol, {"apiKey": customer.api_key}) as ws:
        assert ws.ws is not None
        for frame in ("this is not json", "42", '{"type": "stop"}', "[" * 5000 + "]" * 5000):
            await ws.ws.send(frame)
        await ws.ws.send(json.dumps({"id": "7", "type": "start", "payload": {"query": 42}}))
        error = await ws.receive()
        assert error["type"] == "error" and error["id"] == "7"
        assert error["payload"]["extensions"]["code"] == "BAD_USER_INPUT"
        await ws.subscribe(ME)
        assert await ws.next() == {"me": {"email": customer.email, "creditsAvailable": 1000}}
