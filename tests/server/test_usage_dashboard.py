"""The dashboard's usage and quotas page and the low-credit notice, in headless Chromium
(Playwright) against the real app and database; screenshots under the test's tmp dir."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.plans import default_plan_book
from billing.service import accounts
from runtime.settings import Settings
from tests.conftest import ThreadedServer, own_queue
from tests.factories import balance, create_account, gql
from tests.server.test_dashboard_browser import CHROMIUM

SUBMIT = """mutation S($input: ImageGenerationInput!) { generateImage(input: $input) { id } }"""
SMALL = {"service": "flux-dev", "prompt": "a lighthouse", "width": 256, "height": 256}


@pytest.fixture(scope="module")
def usage_settings(settings: Settings) -> Settings:
    return own_queue(settings, "usage-dashboard")


@pytest.fixture(scope="module")
def site(usage_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(usage_settings) as server:
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


async def shot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"usage-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0


async def test_usage_page_shows_quotas_and_the_low_credit_notice(
    site: str,
    browser: Browser,
    usage_settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    owner = await create_account(sessions, usage_settings, credits=100)
    async with sessions() as s:
        await accounts.set_plan(
            s, owner.id, plan=None,
            overrides={"daily": {"text_to_image": 3}, "storage_quota_mb": 10, "retention_days": 30},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    async with httpx.AsyncClient(base_url=site, timeout=60) as http:
        for _ in range(2):
            body = await gql(http, SUBMIT, {"input": SMALL}, key=owner.api_key)
            assert body["data"]["generateImage"]["id"], body
    available = (await balance(sessions, owner.id)).available

    context = await browser.new_context(base_url=site)
    page = await context.new_page()
    # Nothing the pages use is refused (CSP) or missing; browsers ask for a favicon anyway.
    errors: list[str] = []
    page.on(
        "response",
        lambda r: errors.append(r.url) if r.status >= 400 and "favicon" not in r.url else None,
    )
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", owner.api_key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.locator("#low-credit")).to_have_count(0)

    await page.click("nav >> text=Usage")
    await expect(page).to_have_url(re.compile(r"/dashboard/usage$"))
    await expect(page.locator("#jobs-today")).to_have_text("2")
    row = page.locator("#kinds tr[data-kind=text_to_image]")
    await expect(row.locator("td").nth(2)).to_have_text("2")
    await expect(row.locator("td").nth(3)).to_have_text("3")
    await expect(row.locator(".remaining")).to_have_text("1")
    await expect(page.locator("#storage-used")).to_contain_text("/ 10 MB")
    await expect(page.locator("main")).to_contain_text("Images are kept 30 days")
    await expect(page.locator("#reset-at")).to_contain_text("00:00 UTC")
    await expect(page.locator("#available")).to_have_text(str(available))
    await shot(page, tmp_path, "quotas")

    # A threshold above the balance: the notice shows on every page while below it.
    await page.fill("input[name=threshold]", str(available + 1))
    await page.click("form[action='/dashboard/usage/threshold'] button")
    await expect(page.get_by_role("status")).to_contain_text(f"below {available + 1} credits")
    await expect(page.locator("#low-credit")).to_contain_text(f"{available} available")
    await shot(page, tmp_path, "low-credit")
    await page.goto("/dashboard")
    await expect(page.locator("#low-credit")).to_be_visible()
    async with httpx.AsyncClient(base_url=site, timeout=60) as http:
        usage = await gql(http, "{ usage { lowCredit lowCreditThreshold } }", key=owner.api_key)
    assert usage["data"]["usage"] == {"lowCredit": True, "lowCreditThreshold": available + 1}

    # Bad input is refused on the page; empty turns the alert off, and the notice goes.
    await page.goto("/dashboard/usage")
    await page.fill("input[name=threshold]", "ten")
    await page.click("form[action='/dashboard/usage/threshold'] button")
    await expect(page.get_by_role("status")).to_contain_text("whole number")
    await page.fill("input[name=threshold]", "")
    await page.click("form[action='/dashboard/usage/threshold'] button")
    await expect(page.get_by_role("status")).to_contain_text("alert off")
    await expect(page.locator("#low-credit")).to_have_count(0)
    await shot(page, tmp_path, "off")
    assert errors == []
    await context.close()
