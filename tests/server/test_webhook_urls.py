"""Webhook URLs are parsed strictly at submit (issue 9, item 17): a space in the host,
``user:pass@``, a bad port or a malformed host name is a BAD_USER_INPUT naming the field,
on GraphQL and REST, and costs nothing; a URL stored before this check is refused at
its first delivery attempt instead of being retried for 27 hours. Real uvicorn and
Postgres; the delivery check runs the real sender."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.netguard import AddressPolicy, Refused, parse_http_url
from gpu_worker.webhooks import send
from runtime.settings import Settings
from tests.factories import audit, create_account, gql

MALFORMED = [
    "http://exa mple.com/hook", "http://example.com /hook", "http://example .com/hook",
    "http://user:pass@example.com/hook", "https://user@example.com/hook",
    "http://@example.com/hook", "http://example.com:99999/hook", "http://example.com:0/",
    "http://example.com:80a/", "http://ex_ample.com/hook", "http://-bad-.example.com/",
    "http://a..b.example.com/", "http://%65xample.com/", "http://[not-an-ip]/",
    "http://example.com/a b", "http://example.com/\thook", "http://exa\u00a0mple.com/",
    "http://example.com\\@evil.example/", "http://" + "a" * 64 + ".example.com/",
]  # fmt: skip
WELL_FORMED = [
    "https://example.com/hook", "http://example.com:8080/a?b=c", "https://EXAMPLE.com./x",
    "https://exämple.com/hook", "https://[2606:4700:4700::1111]/hook", "https://8.8.8.8/",
]  # fmt: skip

SUBMIT = """mutation G($i: ImageGenerationInput!) { generateImage(input: $i) { id } }"""


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_are_refused_by_the_parser(url: str) -> None:
    with pytest.raises(Refused):
        parse_http_url(url)


@pytest.mark.parametrize("url", WELL_FORMED)
def test_well_formed_urls_pass(url: str) -> None:
    scheme, host, _ = AddressPolicy().check_url(url)
    assert scheme in ("http", "https") and host.isascii()


def test_international_names_come_back_in_ascii() -> None:
    assert parse_http_url("https://exämple.com/hook") == ("https", "xn--exmple-cua.com", 443)


async def test_malformed_webhook_urls_are_refused_at_submit_for_free(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=1000)
    for url in MALFORMED:
        body = await gql(client, SUBMIT, {"i": {"service": "flux-dev", "prompt": "p",
                                                "width": 256, "height": 256,
                                                "webhookUrl": url}},
                         key=owner.api_key)  # fmt: skip
        [error] = body["errors"]
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "webhookUrl"}, url
        assert "webhookUrl" in error["message"]
        rest = await client.post(
            "/v1/text_to_image",
            json={"service": "flux-dev", "prompt": "p", "width": 256, "height": 256,
                  "webhookUrl": url},
            headers=owner.bearer,
        )  # fmt: skip
        assert rest.status_code == 400, (url, rest.text)
        assert rest.json()["errors"][0]["extensions"]["field"] == "webhookUrl"
    cached, summed = await audit(sessions, owner.id)
    assert cached == summed and (cached.available, cached.reserved) == (1000, 0)


@pytest.mark.parametrize("url", ["http://exa mple.com/hook", "http://user:pass@example.com/"])
async def test_a_stored_malformed_url_is_refused_at_delivery_not_retried(url: str) -> None:
    outcome = await send(url, "{}", {}, AddressPolicy(), timeout_s=5)
    assert not outcome.success and not outcome.retryable
    assert outcome.error is not None and outcome.error.startswith("refused")
