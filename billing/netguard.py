"""Which network addresses the server may connect to on a customer's behalf (webhooks,
later image URLs): public unicast addresses only, unless the operator allows more.

Hosts are read the way a C resolver reads them, so every spelling of an address is
caught: ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.1`` are all 127.0.0.1,
and ``[::ffff:127.0.0.1]`` is too. A name is checked by the addresses it resolves to, at
connection time (see ``gpu_worker/webhooks.py``), so DNS rebinding cannot slip through.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from billing.errors import BadUserInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_LIKE = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)
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
        """(scheme, host, port) of an http(s) URL whose host is not refused by name or
        literal address. DNS names are left to :meth:`check_resolved`."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused("only absolute http(s) URLs are allowed")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise Refused("invalid port") from None
        host = parts.hostname
        if self.host_allowed(host):
            return parts.scheme, host, port
        if host.lower().rstrip(".") in _LOCAL_NAMES or host.lower().endswith(".localhost"):
            raise Refused(f"{host} is a local address")
        address = literal_address(host)
        if address is not None and not self.address_allowed(address):
            raise Refused(f"{address} is not a public address")
        return parts.scheme, host, port

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


def validate_webhook_url(url: str, policy: AddressPolicy, field_name: str) -> None:
    """Submit-time check: refuse what can be known to be refused without DNS."""
    try:
        policy.check_url(url)
    except Refused as exc:
        raise BadUserInput(field_name, f"{field_name} is not allowed: {exc}") from None
