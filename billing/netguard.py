"""Which network addresses the server may connect to on a customer's behalf (webhooks,
later image URLs): public unicast addresses only, unless the operator allows more.

Hosts are read the way a C resolver reads them, so every spelling of an address is
caught: ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.1`` are all 127.0.0.1,
and ``[::ffff:127.0.0.1]`` is too. A name is checked by the addresses it resolves to, at
connection time (see ``gpu_worker/webhooks.py``), so DNS rebinding cannot slip through.

URLs are parsed strictly (:func:`parse_http_url`) before any of that: no spaces or
control characters, no ``user:password@``, a valid port, and a host that is an address
or a valid (IDNA) host name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import idna

from billing.errors import BadUserInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_LIKE = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)
# Never in a URI (RFC 3986): spaces and control characters, raw or anywhere.
_NOT_IN_URLS = re.compile(r"[\x00-\x20\x7f-\x9f]")
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class Refused(Exception):
    """The address is not one the server may connect to."""


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally (in any spelling), or None for a DNS name."""
    host = host.strip("[]")
    if _IPV4_LIKE.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise Refused(f"{host!r} is not a valid address") from None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# IPv6 ranges that carry an IPv4 address (NAT64, 6to4, IPv4-compatible, IPv4-translated)
# or are deprecated site-local: Python counts several as global, but through them a
# request can reach any IPv4 address, private ones included.
_V6_REFUSED = tuple(
    ipaddress.IPv6Network(n)
    for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96", "::ffff:0:0:0/96",
              "fec0::/10")
)  # fmt: skip


def is_public(address: IPAddress) -> bool:
    """Public unicast: not private, loopback, link-local (cloud metadata lives there),
    multicast, reserved, unspecified, an IPv4 address in IPv6 clothing, or any other
    special-purpose range."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif any(address in network for network in _V6_REFUSED):
            return False
    return address.is_global and not address.is_multicast


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """``FLUXGATE_WEBHOOK_ALLOWED_HOSTS``: host names and CIDR ranges allowed even though
    they are not public (tests allow 127.0.0.1)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, allowed: str) -> AddressPolicy:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for item in (part.strip() for part in allowed.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def address_allowed(self, address: IPAddress) -> bool:
        if is_public(address):
            return True
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return any(address in n or (mapped is not None and mapped in n) for n in self.networks)

    def check_url(self, url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of a well-formed http(s) URL whose host is not refused by
        name or literal address (a DNS name comes back in its ASCII form). DNS names are
        left to :meth:`check_resolved`."""
        scheme, host, port = parse_http_url(url)
        if self.host_allowed(host):
            return scheme, host, port
        if host.lower().rstrip(".") in _LOCAL_NAMES or host.lower().endswith(".localhost"):
            raise Refused(f"{host} is a local address")
        address = literal_address(host)
        if address is not None and not self.address_allowed(address):
            raise Refused(f"{address} is not a public address")
        return scheme, host, port

    def check_resolved(self, host: str, addresses: list[IPAddress]) -> None:
        if self.host_allowed(host):
            return
        if not addresses:
            raise Refused(f"{host} did not resolve")
        for address in addresses:
            if not self.address_allowed(address):
                # Which address is not said: the delivery log is the customer's to read,
                # and must not become a way to map internal DNS names.
                raise Refused(f"{host} does not resolve to a public address")


def parse_http_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an absolute http(s) URL, parsed strictly; :class:`Refused`
    says what is wrong. The host is an address literal or a valid host name (IDNA, in
    its ASCII form): ``exa mple.com``, ``ex_ample.com`` or ``a..b`` are refused, and so
    are credentials, which would otherwise be silently dropped."""
    if _NOT_IN_URLS.search(url):
        raise Refused("a URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError as exc:
        raise Refused(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("only absolute http(s) URLs are allowed")
    if "@" in parts.netloc:
        raise Refused("credentials (user:password@) are not allowed in the URL")
    if explicit_port == 0:
        raise Refused("invalid port")
    port = explicit_port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    if literal_address(host) is not None:
        return parts.scheme, host, port
    if parts.netloc.startswith("["):
        raise Refused(f"{host!r} is not a valid IPv6 address")
    try:
        ascii_host = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise Refused(f"{host!r} is not a valid host name") from None
    return parts.scheme, ascii_host, port


def validate_webhook_url(url: str, policy: AddressPolicy, field_name: str) -> None:
    """Submit-time check: refuse what can be known to be refused without DNS."""
    try:
        policy.check_url(url)
    except Refused as exc:
        raise BadUserInput(field_name, f"{field_name} is not allowed: {exc}") from None
