"""Fetching an ``image_url`` on a client's behalf, through the same SSRF guard as webhooks
(``billing/netguard.py``): the URL parsed strictly, the host resolved here and every
address it resolves to checked, then the connection made to that checked address itself
(*pinned*), so a second DNS answer cannot send it elsewhere (DNS rebinding).

Redirects are followed by hand, at most :data:`MAX_REDIRECTS`, each new URL and address
checked again. One deadline covers the whole fetch, DNS included (httpx's timeouts are
per read: a server dripping bytes would never trip them), and the body is cut off as
soon as it passes the size cap, whatever Content-Length said.

Every failure is a :class:`BadUserInput` naming the field; its message says what the
client can act on and nothing about our network (which address a name resolved to, or
the text of a socket error).

:func:`resolve` and :class:`Destination` are what webhook delivery needs too.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from billing.errors import BadUserInput
from billing.images import MAX_BYTES, format_size
from billing.netguard import (
    AddressPolicy,
    IPAddress,
    Refused,
    literal_address,
    validate_webhook_url,
)
from billing.requests import MAX_URL_LEN

MAX_REDIRECTS: Final = 3
USER_AGENT: Final = "Fluxgate-Fetch/1.0"
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_HEADERS: Final = {
    "User-Agent": USER_AGENT,
    "Accept": "image/png, image/jpeg, image/webp",
    # Compressed transfer would need decoding, and a small gzip body can inflate past any
    # cap before the count sees it; images are compressed already.
    "Accept-Encoding": "identity",
}


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order (an address literal,
    in any spelling, is its own answer)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for info in infos:
        address = literal_address(str(info[4][0]))
        if address is not None and address not in found:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class Destination:
    """A URL the policy allows, and the checked address to connect to for it."""

    url: str
    scheme: str
    host: str
    """The host as checked: an address literal, or a DNS name in its ASCII form."""
    port: int
    address: IPAddress

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host (no fragment)."""
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        path = parts.path or "/"
        return urlunsplit((parts.scheme, f"{host}:{self.port}", path, parts.query, ""))

    @property
    def host_header(self) -> str:
        """``Host``: the name the client wrote (ASCII; a port only when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions: TLS is negotiated and verified for the host name,
        not for the pinned address."""
        return {"sni_hostname": self.host} if self.scheme == "https" else {}


async def destination(url: str, policy: AddressPolicy) -> Destination:
    """Check ``url`` and resolve its host. :class:`Refused` when the policy refuses the URL
    or any address the host resolves to; :class:`OSError` when the lookup fails."""
    scheme, host, port = policy.check_url(url)
    addresses = await resolve(host, port)
    policy.check_resolved(host, addresses)
    if not addresses:  # an allowed host name skips the check, not the lookup
        raise Refused(f"{host} did not resolve")
    return Destination(url=url, scheme=scheme, host=host, port=port, address=addresses[0])


async def fetch_image(
    url: str,
    policy: AddressPolicy,
    *,
    field: str = "image_url",
    timeout_s: float = 10.0,
    max_bytes: int = MAX_BYTES,
) -> bytes:
    """The body of a 2xx answer to GET ``url`` (at most ``max_bytes``), within
    ``timeout_s`` in all. The bytes are unchecked: decode them with
    :func:`billing.images.decode_image`."""
    if len(url) > MAX_URL_LEN:
        raise BadUserInput(field, f"{field} is longer than {MAX_URL_LEN} characters")
    validate_webhook_url(url, policy, field)
    try:
        async with asyncio.timeout(timeout_s):
            return await _fetch(url, policy, field, timeout_s, max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise BadUserInput(field, f"{field} timed out after {timeout_s:g} s") from None


async def _fetch(
    url: str, policy: AddressPolicy, field: str, timeout_s: float, max_bytes: int
) -> bytes:
    def failed(reason: str) -> BadUserInput:
        return BadUserInput(field, f"{field} could not be fetched: {reason}")

    # No keep-alive: connections are pooled by address, and a TLS connection set up for
    # one host name must not be reused for another name on the same address.
    async with httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=timeout_s,
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        current = url
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = await destination(current, policy)
            except Refused as exc:
                if hop:
                    raise failed(f"it redirected to a URL that is not allowed ({exc})") from None
                raise failed(str(exc)) from None
            except OSError:
                where = "the host it redirected to" if hop else "its host name"
                raise failed(f"{where} could not be resolved") from None
            try:
                async with client.stream(
                    "GET",
                    target.pinned_url,
                    headers={**_HEADERS, "Host": target.host_header},
                    extensions=target.extensions,
                ) as response:
                    status = response.status_code
                    if status in _REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise failed(f"it answered {status} without a Location")
                        if hop == MAX_REDIRECTS:
                            raise failed(f"it redirected more than {MAX_REDIRECTS} times")
                        try:
                            current = urljoin(current, location.strip())
                        except ValueError:  # "http://[::1", say
                            raise failed("it redirected to an invalid URL") from None
                        if len(current) > MAX_URL_LEN:
                            raise failed(f"it redirected to a URL over {MAX_URL_LEN} characters")
                        continue
                    if not 200 <= status < 300:
                        raise BadUserInput(field, f"{field} answered {status}")
                    return await _read_body(response, field, max_bytes)
            except httpx.TimeoutException:
                raise  # fetch_image reports it
            except httpx.ConnectError:
                raise failed(f"{target.host_header} could not be reached") from None
            except (httpx.HTTPError, httpx.InvalidURL):
                raise failed("the connection failed or the answer was not valid HTTP") from None
    raise AssertionError("unreachable: the last hop returns or raises")


async def _read_body(response: httpx.Response, field: str, max_bytes: int) -> bytes:
    too_large = BadUserInput(field, f"{field} is larger than {format_size(max_bytes)}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadUserInput(
            field, f"{field} could not be fetched: it answered with a compressed body"
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    # Raw: the bytes as sent (chunked transfer undone, no content decoding).
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)
