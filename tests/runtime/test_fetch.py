"""Fetching ``image_url`` through the SSRF guard, against a real HTTP server on 127.0.0.1
(allowed only where the policy says so: loopback is not public)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from billing.errors import BadUserInput
from billing.netguard import AddressPolicy, IPAddress, literal_address
from runtime import fetch
from runtime.fetch import fetch_image
from tests.conftest import free_port

BODY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
LOOPBACK = AddressPolicy.parse("127.0.0.1")


class Server:
    """Answers GETs by path; records each request's path and Host header. ``/hang``
    signals ``arrived`` and answers only once ``release`` is set (at teardown)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                server.requests.append((self.path, self.headers.get("Host", "")))
                route = server.routes().get(self.path.split("?")[0])
                with contextlib.suppress(OSError):  # the client may hang up first
                    if route is None:
                        self.answer(404, b"not found")
                    else:
                        route(self)

            def answer(self, status: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        # A short poll, so shutdown() at each test's end returns at once.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def routes(self) -> dict[str, Callable[[Any], None]]:
        def redirect(to: str, status: int = 302) -> Callable[[Any], None]:
            return lambda h: h.answer(status, Location=to)

        routes: dict[str, Callable[[Any], None]] = {
            "/image.png": lambda h: h.answer(200, BODY, Content_Type="image/png"),
            "/missing": lambda h: h.answer(404, b"no"),
            "/broken": lambda h: h.answer(500, b"oops"),
            "/relative": redirect("image.png", 301),
            "/absolute": redirect(f"{self.base}/image.png", 307),
            "/to-private": redirect("http://10.0.0.1/image.png"),
            "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-localhost": redirect(f"http://localhost:{self.port}/image.png"),
            "/to-file": redirect("file:///etc/passwd"),
            "/no-location": lambda h: h.answer(302),
            "/to-invalid": redirect("http://[::1/image.png"),
            "/to-spaces": redirect("http://exa mple.com/image.png"),
            "/big": lambda h: h.answer(200, bytes(4096)),
            "/endless": self.endless,
            "/gzip": lambda h: h.answer(200, BODY, Content_Encoding="gzip"),
            "/hang": self.hang,
            "/drip": self.drip,
            "/not-http": lambda h: h.wfile.write(b"SSH-2.0-OpenSSH\r\n\r\n"),
        }
        for hops in range(1, 6):  # /chain/N redirects N times, then answers
            routes[f"/chain/{hops}"] = redirect(f"/chain/{hops - 1}")
        routes["/chain/0"] = routes["/image.png"]
        return routes

    @staticmethod
    def endless(handler: Any) -> None:
        """No Content-Length (HTTP/1.0: the body ends when the connection closes)."""
        handler.send_response(200)
        handler.end_headers()
        for _ in range(1024):  # up to 64 MiB, until the client hangs up
            handler.wfile.write(bytes(65536))

    def hang(self, handler: Any) -> None:
        self.arrived.set()
        self.release.wait()

    def drip(self, handler: Any) -> None:
        """Headers at once, then a byte every 0.1 s: each read is quick, the whole is not."""
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        self.arrived.set()
        while not self.release.wait(0.1):
            handler.wfile.write(b"x")
            handler.wfile.flush()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


async def refused(url: str, policy: AddressPolicy = LOOPBACK, **kwargs: Any) -> str:
    with pytest.raises(BadUserInput) as caught:
        await fetch_image(url, policy, **kwargs)
    assert caught.value.field == kwargs.get("field", "image_url")
    return caught.value.message


async def test_fetches_when_the_policy_allows_the_host(server: Server) -> None:
    assert await fetch_image(f"{server.base}/image.png", LOOPBACK) == BODY
    assert server.requests == [("/image.png", f"127.0.0.1:{server.port}")]


async def test_loopback_is_refused_by_default(server: Server) -> None:
    message = await refused(f"{server.base}/image.png", AddressPolicy())
    assert message == "image_url is not allowed: 127.0.0.1 is not a public address"
    assert server.requests == []


@pytest.mark.parametrize("path", ["/relative", "/absolute", "/chain/3"])
async def test_redirects_to_allowed_hosts_are_followed(server: Server, path: str) -> None:
    assert await fetch_image(f"{server.base}{path}", LOOPBACK) == BODY
    assert server.requests[-1][0] in ("/image.png", "/chain/0")


async def test_more_than_three_redirects_are_refused(server: Server) -> None:
    message = await refused(f"{server.base}/chain/4")
    assert message == "image_url could not be fetched: it redirected more than 3 times"
    assert [path for path, _ in server.requests] == ["/chain/4", "/chain/3", "/chain/2", "/chain/1"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/to-private", "10.0.0.1 is not a public address"),
        ("/to-metadata", "169.254.169.254 is not a public address"),
        ("/to-localhost", "localhost is a local address"),
        ("/to-file", "only absolute http(s) URLs are allowed"),
    ],
)
async def test_redirects_to_refused_addresses_are_not_followed(
    server: Server, path: str, reason: str
) -> None:
    message = await refused(f"{server.base}{path}")
    assert message == (
        f"image_url could not be fetched: it redirected to a URL that is not allowed ({reason})"
    )
    assert [p for p, _ in server.requests] == [path]


@pytest.mark.parametrize("status", [404, 500])
async def test_an_error_status_is_named(server: Server, status: int) -> None:
    path = "/missing" if status == 404 else "/broken"
    assert await refused(f"{server.base}{path}") == f"image_url answered {status}"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/no-location", "it answered 302 without a Location"),
        # httpx itself refuses a Location it cannot parse, as a protocol error.
        ("/to-invalid", "the connection failed or the answer was not valid HTTP"),
        ("/to-spaces", "it redirected to a URL that is not allowed "
         "(a URL must not contain spaces or control characters)"),
    ],
)  # fmt: skip
async def test_a_bad_redirect(server: Server, path: str, reason: str) -> None:
    assert await refused(f"{server.base}{path}") == f"image_url could not be fetched: {reason}"


@pytest.mark.parametrize("path", ["/big", "/endless"], ids=["content-length", "no-length"])
async def test_a_body_over_the_cap_is_cut_off(server: Server, path: str) -> None:
    message = await refused(f"{server.base}{path}", max_bytes=1024)
    assert message == "image_url is larger than 1 KB"


async def test_exactly_the_cap_is_accepted(server: Server) -> None:
    assert await fetch_image(f"{server.base}/image.png", LOOPBACK, max_bytes=len(BODY)) == BODY


async def test_a_compressed_answer_is_refused(server: Server) -> None:
    message = await refused(f"{server.base}/gzip")
    assert message == "image_url could not be fetched: it answered with a compressed body"


async def test_a_server_that_never_answers_times_out(server: Server) -> None:
    message = await refused(f"{server.base}/hang", timeout_s=0.5)
    assert server.arrived.is_set()
    assert message == "image_url timed out after 0.5 s"


async def test_a_dripping_body_hits_the_overall_deadline(server: Server) -> None:
    message = await refused(f"{server.base}/drip", timeout_s=0.5)
    assert server.arrived.is_set()
    assert message == "image_url timed out after 0.5 s"


async def test_nothing_listening() -> None:
    port = free_port()
    message = await refused(f"http://127.0.0.1:{port}/image.png")
    assert message == f"image_url could not be fetched: 127.0.0.1:{port} could not be reached"


async def test_an_answer_that_is_not_http(server: Server) -> None:
    message = await refused(f"{server.base}/not-http")
    assert message == (
        "image_url could not be fetched: the connection failed or the answer was not valid HTTP"
    )


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/image.png",
        "gopher://127.0.0.1:70/_GET",
        "data:image/png;base64,iVBORw0KGgo=",
        "//127.0.0.1/image.png",
    ],
)
async def test_only_http_urls(url: str) -> None:
    message = await refused(url)
    assert message == "image_url is not allowed: only absolute http(s) URLs are allowed"


async def test_credentials_are_refused(server: Server) -> None:
    message = await refused(f"http://user:secret@127.0.0.1:{server.port}/image.png")
    assert "credentials" in message
    assert server.requests == []


async def test_a_url_over_2048_characters_is_refused(server: Server) -> None:
    message = await refused(f"{server.base}/image.png?{'a' * 2048}")
    assert message == "image_url is longer than 2048 characters"
    assert server.requests == []


async def test_the_field_name_is_the_callers(server: Server) -> None:
    message = await refused(f"{server.base}/missing", field="mask_url")
    assert message == "mask_url answered 404"


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str] | OSError]) -> list[str]:
    """Resolve names from ``answers`` (address literals still resolve to themselves)."""
    looked_up: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        looked_up.append(host)
        answer = answers[host]
        if isinstance(answer, OSError):
            raise answer
        return [a for a in map(literal_address, answer) if a is not None]

    monkeypatch.setattr(fetch, "resolve", resolve)
    return looked_up


async def test_a_name_is_connected_to_at_its_checked_address(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up = fake_dns(monkeypatch, {"images.test": ["127.0.0.1"]})
    assert await fetch_image(f"http://images.test:{server.port}/image.png", LOOPBACK) == BODY
    assert looked_up == ["images.test"]
    assert server.requests == [("/image.png", f"images.test:{server.port}")]


async def test_an_international_name_is_sent_in_its_ascii_form(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up = fake_dns(monkeypatch, {"xn--bcher-kva.test": ["127.0.0.1"]})
    assert await fetch_image(f"http://bücher.test:{server.port}/image.png", LOOPBACK) == BODY
    assert looked_up == ["xn--bcher-kva.test"]
    assert server.requests == [("/image.png", f"xn--bcher-kva.test:{server.port}")]


@pytest.mark.parametrize(
    "answer", [["10.0.0.1"], ["93.184.216.34", "169.254.169.254"], ["127.0.0.1"]]
)
async def test_a_name_resolving_to_any_private_address_is_refused(
    server: Server, monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> None:
    fake_dns(monkeypatch, {"rebind.test": answer})
    message = await refused(f"http://rebind.test:{server.port}/image.png", AddressPolicy())
    assert message == (
        "image_url could not be fetched: rebind.test does not resolve to a public address"
    )
    assert server.requests == []


async def test_a_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"nowhere.test": OSError("[Errno -2] internal resolver detail")})
    message = await refused("http://nowhere.test/image.png")
    assert message == "image_url could not be fetched: its host name could not be resolved"


@pytest.mark.parametrize(
    ("url", "address", "pinned", "host", "extensions"),
    [
        ("http://img.test/a.png?x=1#top", "93.184.216.34", "http://93.184.216.34:80/a.png?x=1",
         "img.test", {}),
        ("https://img.test:8443", "2606:4700::1", "https://[2606:4700::1]:8443/",
         "img.test:8443", {"sni_hostname": "img.test"}),
        ("https://[2606:4700::1]/a", "2606:4700::1", "https://[2606:4700::1]:443/a",
         "[2606:4700::1]", {"sni_hostname": "2606:4700::1"}),
    ],
)  # fmt: skip
def test_a_destination_is_pinned_to_its_address(
    url: str, address: str, pinned: str, host: str, extensions: dict[str, str]
) -> None:
    scheme, checked_host, port = AddressPolicy().check_url(url)
    checked = literal_address(address)
    assert checked is not None
    target = fetch.Destination(url, scheme, checked_host, port, checked)
    assert (target.pinned_url, target.host_header, target.extensions) == (pinned, host, extensions)
