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
from typing import Any

import httpx
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
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, free_port
from tests.factories import TestAccount, create_account
from tests.server.test_hostile_input import (
    Collector,
    server_logs,  # noqa: F401  # the fixture
)
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

        # Text that can never be stored is refused on the socket as over HTTP.
        for prompt in ("a\u0000b", "x\ud800y"):
            with pytest.raises(TransportQueryError) as unstorable:
                await session.execute(
                    GraphQLRequest(SUBMIT, variable_values={"input": {"service": "flux-dev",
                                   "prompt": prompt, "width": 256, "height": 256}})
                )  # fmt: skip
            assert unstorable.value.errors is not None
            [error] = unstorable.value.errors
            assert error["extensions"]["code"] == "BAD_USER_INPUT"
            assert "prompt" in error["extensions"]["field"]

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


# --- Operation selection and malformed messages (review of issue 9, items 5 and 10) ---

TWO_OPERATIONS = "query A { me { email } } query B { me { creditsAvailable } }"


def first_error(message: dict[str, Any]) -> dict[str, Any]:
    """The GraphQL error of an ``error`` message: graphql-transport-ws sends a list of
    them, graphql-ws one."""
    assert message["type"] == "error", message
    payload = message["payload"]
    error: dict[str, Any] = payload[0] if isinstance(payload, list) else payload
    return error


def assert_operation_name_error(error: dict[str, Any]) -> None:
    assert isinstance(error["message"], str) and error["message"], error
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert error["extensions"]["field"] == "operationName", error


async def send_operation(ws: GraphQLWebSocket, op_id: Any, payload: Any) -> None:
    assert ws.ws is not None
    kind = "subscribe" if ws.protocol == TRANSPORT_WS else "start"
    await ws.ws.send(json.dumps({"id": op_id, "type": kind, "payload": payload}))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("query", "operation_name"),
    [(ME, "Nope"), (TWO_OPERATIONS, None), (TWO_OPERATIONS, "C")],
    ids=["unknown name", "two operations without a name", "two operations, unknown name"],
)
async def test_unknown_or_ambiguous_operation_is_bad_user_input_on_the_socket(
    ws_api: str,
    customer: TestAccount,
    server_logs: Collector,  # noqa: F811  # the fixture imported above
    protocol: str,
    query: str,
    operation_name: str | None,
) -> None:
    """An operationName naming no operation, or a document of several operations without
    one (the GraphQL spec's "Must provide operation name"), is the client's mistake: an
    ``error`` for that id with BAD_USER_INPUT, the connection kept, nothing run, nothing
    logged as an error."""
    async with GraphQLWebSocket(ws_api, protocol, {"apiKey": customer.api_key}) as ws:
        await send_operation(ws, "1", {"query": query, "operationName": operation_name})
        answer = await ws.receive()
        assert answer["id"] == "1", answer
        assert_operation_name_error(first_error(answer))
        # The same connection runs the operation once it is named.
        await send_operation(ws, "2", {"query": TWO_OPERATIONS, "operationName": "B"})
        assert await ws.next() == {"me": {"creditsAvailable": 1000}}
        assert await ws.next() is None
    assert not server_logs.problems()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "query",
    ["{ me { id ", "{{{", "{ me { id } } trailing", "{ me \u0000 }", "{ me { id } } }"],
    ids=["unclosed", "braces", "trailing junk", "NUL", "extra brace"],
)
async def test_a_document_that_does_not_parse_is_answered_on_the_socket(
    ws_api: str,
    customer: TestAccount,
    server_logs: Collector,  # noqa: F811  # the fixture imported above
    protocol: str,
    query: str,
) -> None:
    """Answered, never silently dropped (before, the parser cache's exception escaped:
    graphql-transport-ws sent a bare ``complete``, graphql-ws nothing at all), and nothing
    logged as an error. graphql-ws: an ``error`` for that id with GRAPHQL_PARSE_FAILED, as
    over HTTP, the connection kept. graphql-transport-ws: the socket closed with 4400 and
    the syntax error as its reason, as its reference server does for a document it cannot
    parse."""
    async with GraphQLWebSocket(ws_api, protocol, {"apiKey": customer.api_key}) as ws:
        await send_operation(ws, "1", {"query": query})
        if protocol == TRANSPORT_WS:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
            assert closed.value.rcvd.reason.startswith("Syntax Error"), closed.value
        else:
            answer = await ws.receive()
            assert answer["id"] == "1", answer
            error = first_error(answer)
            assert error["extensions"]["code"] == "GRAPHQL_PARSE_FAILED", error
            assert isinstance(error["message"], str) and error["message"], error
            await send_operation(ws, "2", {"query": ME})
            expected = {"me": {"email": customer.email, "creditsAvailable": 1000}}
            assert await ws.next() == expected
    assert not server_logs.problems()
    async with httpx.AsyncClient(base_url=ws_api, timeout=30) as http:
        over_http = await http.post(
            "/graphql", json={"query": query}, headers={"X-API-Key": customer.api_key}
        )
    assert over_http.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_gql_gets_bad_user_input_for_an_unknown_or_missing_operation_name(
    ws_api: str,
    customer: TestAccount,
    protocol: str,
    server_logs: Collector,  # noqa: F811  # the fixture imported above
) -> None:
    async with Client(transport=transport(ws_api, protocol, key=customer.api_key)) as session:
        for request in (
            GraphQLRequest(ME, operation_name="Nope"),
            GraphQLRequest(TWO_OPERATIONS),
        ):
            with pytest.raises(TransportQueryError) as refused:
                await session.execute(request)
            assert refused.value.errors is not None
            assert_operation_name_error(refused.value.errors[0])
        named = await session.execute(GraphQLRequest(TWO_OPERATIONS, operation_name="A"))
        assert named == {"me": {"email": customer.email}}
    assert not server_logs.problems()


async def test_http_refuses_an_unknown_or_missing_operation_name(
    ws_api: str,
    customer: TestAccount,
    server_logs: Collector,  # noqa: F811  # the fixture imported above
) -> None:
    """The same rule over HTTP: 400, BAD_USER_INPUT, field operationName; nothing runs
    (a document whose first operation is a mutation is not silently executed)."""
    mutation_first = 'mutation M { createApiKey(name: "never") { secret } } query Q { me { id } }'
    async with httpx.AsyncClient(base_url=ws_api, timeout=30) as client:
        for body in (
            {"query": TWO_OPERATIONS},
            {"query": mutation_first},
            {"query": ME, "operationName": "Nope"},
            {"query": TWO_OPERATIONS, "operationName": "C"},
        ):
            response = await client.post("/graphql", json=body, headers=customer.bearer)
            assert response.status_code == 400, (body, response.text)
            [error] = response.json()["errors"]
            assert_operation_name_error(error)
        named = await client.post(
            "/graphql",
            json={"query": TWO_OPERATIONS, "operationName": "A"},
            headers=customer.bearer,
        )
        assert named.json() == {"data": {"me": {"email": customer.email}}}
        keys = await client.post(
            "/graphql", json={"query": "{ apiKeys { name } }"}, headers=customer.bearer
        )
        assert "never" not in {k["name"] for k in keys.json()["data"]["apiKeys"]}
    assert not server_logs.problems()


# Subscribe messages outside graphql-transport-ws's message format: its PROTOCOL.md closes
# the socket with 4400 for those (as the reference server's validateMessage does).
MALFORMED_SUBSCRIBES: list[tuple[str, Any, Any]] = [
    ("payload a string", "1", "x"),
    ("payload null", "1", None),
    ("payload a list", "1", [ME]),
    ("no query", "1", {"variables": {}}),
    ("query a number", "1", {"query": 5}),
    ("operationName a number", "1", {"query": ME, "operationName": 5}),
    ("variables a string", "1", {"query": ME, "variables": "x"}),
    ("variables a list", "1", {"query": ME, "variables": [1]}),
    ("extensions a string", "1", {"query": ME, "extensions": "x"}),
    ("id a number", 1, {"query": ME}),
    ("id empty", "", {"query": ME}),
]


@pytest.mark.parametrize(
    ("op_id", "payload"),
    [case[1:] for case in MALFORMED_SUBSCRIBES],
    ids=[case[0] for case in MALFORMED_SUBSCRIBES],
)
async def test_transport_ws_closes_4400_on_a_malformed_subscribe(
    ws_api: str,
    customer: TestAccount,
    server_logs: Collector,  # noqa: F811  # the fixture imported above
    op_id: Any,
    payload: Any,
) -> None:
    async with GraphQLWebSocket(ws_api, TRANSPORT_WS, {"apiKey": customer.api_key}) as ws:
        await send_operation(ws, op_id, payload)
        assert ws.ws is not None
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4400
        assert closed.value.rcvd.reason.startswith("Invalid message received")
    assert not server_logs.problems()


LEGACY_BAD_STARTS: list[tuple[str, Any, str]] = [
    ("payload a string", "x", "payload"),
    ("payload null", None, "payload"),
    ("no query", {"variables": {}}, "query"),
    ("query a number", {"query": 5}, "query"),
    ("operationName a number", {"query": ME, "operationName": 5}, "operationName"),
    ("variables a string", {"query": ME, "variables": "x"}, "variables"),
    ("variables a list", {"query": ME, "variables": [1]}, "variables"),
]


async def test_legacy_ws_answers_bad_user_input_for_a_malformed_start(
    ws_api: str,
    customer: TestAccount,
    server_logs: Collector,  # noqa: F811  # the fixture imported above
) -> None:
    """graphql-ws has no close-on-invalid rule: a coded ``error`` naming the field, and the
    connection stays usable."""
    async with GraphQLWebSocket(ws_api, LEGACY_WS, {"apiKey": customer.api_key}) as ws:
        for name, payload, field in LEGACY_BAD_STARTS:
            await send_operation(ws, name, payload)
            error = first_error(await ws.receive())
            assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, name
        await ws.subscribe(ME)
        assert await ws.next() == {"me": {"email": customer.email, "creditsAvailable": 1000}}
    assert not server_logs.problems()


@pytest.mark.parametrize("init_payload", ["x", [1], 5, True], ids=repr)
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_non_object_connection_init_payload_is_refused_with_a_code(
    ws_api: str,
    customer: TestAccount,
    server_logs: Collector,  # noqa: F811  # the fixture imported above
    protocol: str,
    init_payload: Any,
) -> None:
    """graphql-ws: ``connection_error`` with ``{"message", "code": "BAD_USER_INPUT"}``,
    then the socket closes; graphql-transport-ws: close 4400, as its protocol says."""
    async with connect(
        ws_url(ws_api),
        subprotocols=[Subprotocol(protocol)],
        additional_headers=customer.bearer,
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": init_payload}))
        if protocol == LEGACY_WS:
            refusal = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert refusal["type"] == "connection_error", refusal
            assert refusal["payload"]["code"] == "BAD_USER_INPUT", refusal
            assert isinstance(refusal["payload"]["message"], str), refusal
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    if protocol == TRANSPORT_WS:
        assert closed.value.rcvd.code == 4400
    assert not server_logs.problems()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_null_connection_init_payload_uses_the_handshake_key(
    ws_api: str, customer: TestAccount, protocol: str
) -> None:
    """Both protocols allow a null (or missing) connection_init payload."""
    for init in ({"type": "connection_init", "payload": None}, {"type": "connection_init"}):
        async with connect(
            ws_url(ws_api),
            subprotocols=[Subprotocol(protocol)],
            additional_headers=customer.bearer,
        ) as ws:
            await ws.send(json.dumps(init))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert ack["type"] == "connection_ack", (init, ack)
