"""The billing dashboard in a real browser: headless Chromium (Debian's, installed by
`make test`) driven by Playwright, against the real app, worker and database.
Screenshots go to var/artifacts/ (kept by the test run)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Generation, is_final
from runtime.settings import ROOT, Settings
from tests.conftest import ThreadedServer, ThreadedWorker, free_port
from tests.factories import create_account, gql
from tests.server.test_stripe import LocalStripe

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "var" / "artifacts"


@pytest.fixture(scope="module")
def stripe_stub() -> Iterator[LocalStripe]:
    stub = LocalStripe()
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def site(
    settings: Settings, stripe_stub: LocalStripe, worker: ThreadedWorker, database: str
) -> Iterator[str]:
    """The app with Stripe configured (a local stand-in), on the session worker's queue."""
    port = free_port()
    own = settings.model_copy(
        update={
            "public_url": f"http://127.0.0.1:{port}",
            "stripe_api_key": SecretStr("sk_test_dashboard"),
            "stripe_api_base": stripe_stub.url,
            "stripe_webhook_secret": SecretStr("whsec_test_dashboard"),
        }
    )
    with ThreadedServer(own, port) as server:
        yield server.url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield b
        await b.close()


async def final_status(sessions: async_sessionmaker[AsyncSession], job_id: str) -> str:
    deadline = time.monotonic() + 120
    while True:
        async with sessions() as s:
            job = await s.get(Generation, job_id)
        if job is not None and is_final(job.status):
            return job.status
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


async def test_dashboard_end_to_end(
    site: str, browser: Browser, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=1000, plan="starter")
    context = await browser.new_context(base_url=site)
    page = await context.new_page()
    # The pages' CSP refuses nothing the pages themselves use (no inline style or script).
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    # Signed out: the dashboard sends you to sign in.
    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/dashboard/login$"))
    await page.fill("input[name=api_key]", "fgk_wrong")
    await page.click("button[type=submit]")
    await expect(page.get_by_role("alert")).to_contain_text("not valid")
    await page.fill("input[name=api_key]", owner.api_key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.locator("#credits-available")).to_have_text("1000")
    await expect(page.locator("#plan")).to_have_text("starter")
    cookie = next(c for c in await context.cookies() if c["name"] == "fluxgate_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert owner.api_key not in cookie["value"]
    await shot(page, "1-overview-empty")

    # A generation through the API shows up with its cost, in the ledger and the chart.
    async with httpx.AsyncClient(base_url=site, timeout=60) as api:
        body = await gql(
            api,
            "mutation G($i: ImageGenerationInput!) { generateImage(input: $i) { id creditCost } }",
            {"i": {"service": "flux-dev", "prompt": "a lighthouse at dusk", "width": 256,
                   "height": 256}},
            key=owner.api_key,
        )  # fmt: skip
        job = body["data"]["generateImage"]
        # Polled in the database: the starter plan's 30 requests a minute would run out
        # polling the API on a busy machine.
        assert await final_status(sessions, job["id"]) == "completed"
    cost = job["creditCost"]
    await page.reload()
    await expect(page.locator("#credits-available")).to_have_text(str(1000 - cost))
    figure = page.locator(f"#generations figure[data-id='{job['id']}']")
    await expect(figure).to_contain_text("completed")
    await expect(figure).to_contain_text(f"{cost} credits")
    # The thumbnail loads lazily: wait for its load (or error) event, not a fixed time.
    width = await figure.locator("img").evaluate(
        """async img => {
            if (!(img.complete && img.naturalWidth)) {
                await new Promise(done => {
                    img.addEventListener("load", done, {once: true});
                    img.addEventListener("error", done, {once: true});
                });
            }
            return img.naturalWidth;
        }"""
    )
    assert width == 256
    today = time.strftime("%Y-%m-%d", time.gmtime())
    bar = page.locator(f"#usage-chart rect.credits[data-day='{today}']")
    assert await bar.get_attribute("data-credits") == str(cost)
    assert float(await bar.get_attribute("height") or 0) > 0
    await shot(page, "2-overview-with-job")

    await page.click("text=Ledger")
    capture = page.locator("#ledger tr[data-kind=capture]").first
    await expect(capture).to_contain_text(f"job {job['id']}")
    await expect(capture).to_contain_text("+0")
    await expect(page.locator("#ledger tr[data-kind=reserve]").first).to_contain_text(f"-{cost}")
    await shot(page, "3-ledger")
    await capture.locator("a").click()  # each entry links to its job
    await expect(page.locator("#job")).to_contain_text("a lighthouse at dusk")
    await expect(page.locator("#job")).to_contain_text(f"{cost} credits")
    stranger = await create_account(sessions, settings, credits=100)
    async with httpx.AsyncClient(base_url=site) as api:
        other = await gql(
            api,
            "mutation G($i: ImageGenerationInput!) { generateImage(input: $i) { id } }",
            {"i": {"service": "flux-dev", "prompt": "not yours", "width": 256, "height": 256}},
            key=stranger.api_key,
        )  # fmt: skip
    foreign_id = other["data"]["generateImage"]["id"]
    foreign = await page.goto(f"{site}/dashboard/jobs/{foreign_id}")
    assert foreign is not None and foreign.status == 404
    assert "not yours" not in await page.content()
    await page.goto(f"{site}/dashboard")

    # Keys: create (shown once), then revoke.
    await page.click("text=API keys")
    await page.fill("input[name=name]", "browser")
    await page.click("form[action='/dashboard/keys'] button")
    secret = (await page.locator("#new-key code").inner_text()).strip()
    assert secret.startswith("fgk_")
    await shot(page, "4-key-created")
    await page.goto(f"{site}/dashboard/keys")
    await expect(page.locator("#new-key")).to_have_count(0)  # once only
    row = page.locator("#keys tr[data-name=browser]")
    await row.locator("text=Revoke").click()
    await expect(page.locator("#keys tr[data-name=browser]")).to_contain_text("revoked")
    async with httpx.AsyncClient(base_url=site) as api:
        assert (await gql(api, "{ me { id } }", key=secret))["errors"][0]["extensions"][
            "code"
        ] == "UNAUTHENTICATED"

    # Webhook secret: reveal, rotate.
    await page.click("text=Webhooks")
    await page.click("#secret summary")
    before = (await page.locator("#secret-value").inner_text()).strip()
    assert before.startswith("whsec_")
    await page.click("text=Rotate secret")
    await expect(page.get_by_role("status")).to_contain_text("Secret rotated")
    await page.click("#secret summary")
    after = (await page.locator("#secret-value").inner_text()).strip()
    assert after.startswith("whsec_") and after != before
    await shot(page, "5-webhooks")

    # Buy credits: a pack's button goes to Stripe Checkout (a local stand-in: no network).
    async def checkout_page(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html", body="<h1>Stripe Checkout</h1>")

    await page.route("https://checkout.stripe.test/**", checkout_page)
    await page.click("text=Buy credits")
    await shot(page, "6-billing")
    await page.locator("tr", has_text="500 credits").locator("button").click()
    await expect(page).to_have_url(re.compile(r"^https://checkout\.stripe\.test/c/pay/cs_test_"))

    # A form post without the CSRF token is refused, even with the session cookie.
    await page.goto(f"{site}/dashboard")
    jar = {c["name"]: c["value"] for c in await context.cookies()}
    async with httpx.AsyncClient(base_url=site, cookies=jar) as raw:
        for data in ({"name": "forged"}, {"name": "forged", "csrf_token": "guess"}):
            forged = await raw.post("/dashboard/keys", data=data)
            assert forged.status_code == 403
        listed = await raw.get("/dashboard/keys")
        assert "forged" not in listed.text and "browser" in listed.text

    # Sign out.
    await page.click("text=Sign out")
    await expect(page).to_have_url(re.compile(r"/dashboard/login$"))
    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/dashboard/login$"))
    await shot(page, "7-signed-out")
    assert not [m for m in console if "Content Security Policy" in m], console
    await context.close()


async def test_revoking_the_sign_in_key_ends_the_session(
    site: str, browser: Browser, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=10)
    context = await browser.new_context(base_url=site)
    page = await context.new_page()
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", owner.api_key)
    await page.click("button[type=submit]")
    await expect(page.locator("#credits-available")).to_have_text("10")
    async with httpx.AsyncClient(base_url=site) as api:
        # An account's last key cannot be revoked: another one first.
        other = await gql(api, 'mutation { createApiKey(name: "next") { secret } }',
                          key=owner.api_key)  # fmt: skip
        revoked = await gql(
            api, "mutation R($id: ID!) { revokeApiKey(id: $id) { id } }",
            {"id": str(owner.api_key_id)}, key=other["data"]["createApiKey"]["secret"],
        )  # fmt: skip
        assert "errors" not in revoked
    await page.reload()
    await expect(page).to_have_url(re.compile(r"/dashboard/login$"))
    await context.close()


async def test_purchases_off_without_stripe(
    api: str, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = await create_account(sessions, settings, credits=5)
    with httpx.Client(base_url=api, follow_redirects=True) as c:
        login = c.get("/dashboard/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
        assert token is not None
        signed_in = c.post(
            "/dashboard/login", data={"csrf_token": token[1], "api_key": owner.api_key}
        )
        assert signed_in.url.path == "/dashboard" and 'id="credits-available">5<' in signed_in.text
        billing = c.get("/dashboard/billing")
        assert 'id="purchases-off"' in billing.text and "Buy</button>" not in billing.text
