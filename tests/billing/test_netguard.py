"""The SSRF address policy, unit by unit (the end-to-end check is in
tests/gpu_worker/test_webhooks.py)."""

from __future__ import annotations

import pytest

from billing.netguard import AddressPolicy, Refused

REFUSED = [
    "127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0.0.0.0", "10.0.0.1",
    "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "224.0.0.1",
    "255.255.255.255", "localhost", "LOCALHOST.", "api.localhost", "[::1]", "[::]",
    "[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]", "[fe80::1]", "[fc00::1]", "[fd00:ec2::254]",
    "[ff02::1]", "[64:ff9b::a00:1]", "[64:ff9b:1::a00:1]", "[2002:a00:1::]",
    "[::10.0.0.1]", "[::ffff:0:a00:1]", "[fec0::1]",
]  # fmt: skip
ALLOWED = ["8.8.8.8", "1.1.1.1", "example.com", "[2606:4700:4700::1111]"]


@pytest.mark.parametrize("host", REFUSED)
def test_private_and_special_addresses_are_refused(host: str) -> None:
    with pytest.raises(Refused):
        AddressPolicy().check_url(f"http://{host}:8080/hook")


@pytest.mark.parametrize("host", ALLOWED)
def test_public_addresses_and_names_pass(host: str) -> None:
    scheme, _, port = AddressPolicy().check_url(f"https://{host}/hook")
    assert (scheme, port) == ("https", 443)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "//x/", "http:///"])
def test_only_absolute_http_urls(url: str) -> None:
    with pytest.raises(Refused):
        AddressPolicy().check_url(url)


def test_allowance_by_name_and_range() -> None:
    policy = AddressPolicy.parse("127.0.0.0/8, hooks.internal, [::1]")
    assert policy.check_url("http://127.0.0.5:9/")[1] == "127.0.0.5"
    assert policy.check_url("http://[::ffff:127.0.0.1]/")[1] == "::ffff:127.0.0.1"
    assert policy.check_url("http://hooks.internal/")[1] == "hooks.internal"
    assert policy.check_url("http://[::1]/")[1] == "::1"
    with pytest.raises(Refused):
        policy.check_url("http://10.0.0.1/")


def test_resolved_addresses_are_checked_without_saying_which() -> None:
    from ipaddress import ip_address

    policy = AddressPolicy()
    with pytest.raises(Refused) as refused:
        policy.check_resolved("intranet.example", [ip_address("93.184.216.34"),
                                                   ip_address("10.1.2.3")])  # fmt: skip
    assert "10.1.2.3" not in str(refused.value)
    policy.check_resolved("example.com", [ip_address("93.184.216.34")])
