"""Dashboard sessions live on the server (issue 9, items 13, 19 and 9): signing out ends
every copy of the cookie, revoking the sign-in key ends the session, pages forbid framing
and carry a CSP, the last key cannot be revoked, and hostile query parameters are never
a 500. Real uvicorn, Postgres and plain HTTP clients."""

from __future__ import annotations

import re

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runtime.settings import Settings
from tests.factories import create_account, gql

CREATE = """mutation C($name: String!) { createApiKey(name: $name) {
  secret key { id name } } }"""
REVOKE = """mutation R($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"""


def csrf(html: str) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None, html
    return token[1]


def sign_in(client: httpx.Client, api_key: str) -> str:
    """Signs ``client`` in; the CSRF token of its session."""
    login = client.get("/dashboard/login")
    signed_in = client.post(
        "/dashboard/login", data={"csrf_token": csrf(login.text), "api_key": api_key}
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard"
    overview = client.get("/dashboard")
    assert overview.status_code == 200 and 'id="credits-available"' in overview.text
    return csrf(overview.text)


def signed_out(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"] == "/dashboard/login"


async def test_sign_out_ends_every_copy_of_the_cookie(
    api: str, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=7)
    with httpx.Client(base_url=api) as browser:
        token = sign_in(browser, owner.api_key)
        cookie = browser.cookies["fluxgate_dashboard"]
        assert owner.api_key not in cookie
        with httpx.Client(base_url=api, cookies={"fluxgate_dashboard": cookie}) as thief:
            assert thief.get("/dashboard").status_code == 200  # the copy works while signed in
            out = browser.post("/dashboard/logout", data={"csrf_token": token})
            assert signed_out(out)
            # The copied cookie no longer works, on pages and forms alike.
            assert signed_out(thief.get("/dashboard"))
            assert signed_out(thief.get("/dashboard/keys"))
            posted = thief.post("/dashboard/keys", data={"csrf_token": token, "name": "x"})
            assert signed_out(posted)
    async with httpx.AsyncClient(base_url=api) as client:
        keys = await gql(client, "{ apiKeys { name } }", key=owner.api_key)
    assert [k["name"] for k in keys["data"]["apiKeys"]] == ["default"]


async def test_revoking_the_sign_in_key_ends_its_sessions(
    api: str, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=7)
    async with httpx.AsyncClient(base_url=api) as client:
        new = (await gql(client, CREATE, {"name": "dashboard"}, key=owner.api_key))["data"]
        secret, key_id = new["createApiKey"]["secret"], new["createApiKey"]["key"]["id"]
        with httpx.Client(base_url=api) as browser, httpx.Client(base_url=api) as other:
            sign_in(browser, secret)
            sign_in(other, owner.api_key)  # a session opened with another key
            revoked = await gql(client, REVOKE, {"id": key_id}, key=owner.api_key)
            assert revoked["data"]["revokeApiKey"]["revokedAt"] is not None
            assert signed_out(browser.get("/dashboard"))
            assert other.get("/dashboard").status_code == 200


async def test_dashboard_pages_forbid_framing_and_carry_a_csp(
    api: str, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=7)
    with httpx.Client(base_url=api) as browser:
        responses = [browser.get("/dashboard/login"), browser.get("/dashboard")]
        token = sign_in(browser, owner.api_key)
        for path in ("/dashboard", "/dashboard/ledger", "/dashboard/keys", "/dashboard/billing",
                     "/dashboard/webhooks", "/dashboard/jobs/nope"):  # fmt: skip
            responses.append(browser.get(path))
        responses.append(browser.post("/dashboard/keys", data={"csrf_token": "wrong"}))
        for response in responses:
            headers = response.headers
            assert headers["x-frame-options"] == "DENY", response.url
            csp = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
            assert "script-src 'none'" in csp and "unsafe-inline" not in csp
            assert headers["cache-control"] == "no-store"
        page = browser.get("/dashboard")
        nonce = re.search(r"style-src 'nonce-([^']+)'", page.headers["content-security-policy"])
        assert nonce is not None and f'<style nonce="{nonce[1]}">' in page.text
        assert " style=" not in page.text and "<script" not in page.text
        assert responses[-1].status_code == 403
        assert responses[-1].json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        missing = browser.get("/dashboard/jobs/nope")
        assert missing.status_code == 404
        assert missing.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        assert browser.post("/dashboard/logout", data={"csrf_token": token}).status_code == 303


async def test_hostile_query_parameters_are_never_a_500(
    api: str, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=7)  # one ledger page
    with httpx.Client(base_url=api) as browser:
        sign_in(browser, owner.api_key)
        for page in ("99999999999999999999", "9" * 5000, "1000000000", "2", "-1", "0", "abc",
                     "1e3", "²", "%00", "1%00", " 3 ", ""):  # fmt: skip
            response = browser.get(f"/dashboard/ledger?page={page}")
            assert response.status_code == 200, page
            assert "page 1 of 1" in response.text, page
        token = csrf(browser.get("/dashboard/keys").text)
        for name in ("a\x00b", "\x01", "x" * 5000):
            created = browser.post("/dashboard/keys", data={"csrf_token": token, "name": name})
            assert created.status_code in (200, 303), created.text
        for path in ("/dashboard/jobs/a%00b", "/dashboard/payments/a%00b",
                     "/dashboard/jobs/" + "x" * 3000, "/dashboard/payments/%ED%A0%80"):  # fmt: skip
            response = browser.get(path)
            assert response.status_code == 404, path
            assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_the_last_key_cannot_be_revoked(
    api: str, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=7)
    async with httpx.AsyncClient(base_url=api) as client:
        refused = await gql(client, REVOKE, {"id": str(owner.api_key_id)}, key=owner.api_key)
        [error] = refused["errors"]
        assert error["extensions"]["code"] == "CONFLICT"
        assert "create another key first" in error["message"]
        assert "errors" not in await gql(client, "{ me { id } }", key=owner.api_key)

        # The dashboard says the same, and the key and the session keep working.
        with httpx.Client(base_url=api) as browser:
            token = sign_in(browser, owner.api_key)
            revoke = browser.post(
                f"/dashboard/keys/{owner.api_key_id}/revoke", data={"csrf_token": token}
            )
            assert revoke.status_code == 303
            keys = browser.get("/dashboard/keys")
            assert keys.status_code == 200 and "create another key first" in keys.text
            assert "errors" not in await gql(client, "{ me { id } }", key=owner.api_key)

            # With a second key, the first can go (and with it this session).
            new = (await gql(client, CREATE, {"name": "next"}, key=owner.api_key))["data"]
            secret = new["createApiKey"]["secret"]
            revoke = browser.post(
                f"/dashboard/keys/{owner.api_key_id}/revoke", data={"csrf_token": token}
            )
            assert signed_out(browser.get("/dashboard"))
        gone = await gql(client, "{ me { id } }", key=owner.api_key)
        assert gone["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        # The new key is now the last one: refused too.
        key_id = new["createApiKey"]["key"]["id"]
        refused = await gql(client, REVOKE, {"id": key_id}, key=secret)
        assert refused["errors"][0]["extensions"]["code"] == "CONFLICT"
