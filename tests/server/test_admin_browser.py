"""The dashboard's admin pages in a real browser (headless Chromium driven by Playwright,
like tests/server/test_dashboard_browser.py), against the real app, Postgres and Redis:
search, grant and deduct, plan, ban (the banned account's dashboard session ends and its
sign-in is refused; its queued job is cancelled and released), statistics, audit log;
403 for non-admins; CSRF on every form. Screenshots go to var/artifacts/."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Generation
from runtime.settings import ROOT, Settings
from tests.conftest import ThreadedServer, own_queue
from tests.factories import TestAccount, audit, create_account, gql
from tests.server.test_admin import JOB, SUBMIT, audit_entries, create_admin

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "var" / "artifacts"


@pytest.fixture(scope="module")
def site(settings: Settings, database: str) -> Iterator[str]:
    """No worker takes this queue: jobs stay queued until the ban cancels them."""
    with ThreadedServer.of(own_queue(settings, "admin-browser")) as server:
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


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)


async def sign_in(page: Page, who: TestAccount) -> None:
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", who.api_key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/dashboard$"))


async def test_admin_pages_end_to_end(
    site: str, browser: Browser, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    admin = await create_admin(sessions, settings)
    user = await create_account(sessions, settings, credits=1000, plan="starter")
    async with httpx.AsyncClient(base_url=site, timeout=30) as api:
        job_id = (await gql(api, SUBMIT, {"input": JOB}, key=user.api_key))["data"][
            "generateImage"
        ]["id"]

    # The user is signed in too, in a browser of their own.
    user_context = await browser.new_context(base_url=site)
    user_page = await user_context.new_page()
    await sign_in(user_page, user)
    await expect(user_page.locator("text=Admin")).to_have_count(0)
    # Not an admin: every admin page is a 403.
    for path in ("/dashboard/admin", f"/dashboard/admin/accounts/{user.id}",
                 "/dashboard/admin/statistics", "/dashboard/admin/audit"):  # fmt: skip
        response = await user_page.goto(path)
        assert response is not None and response.status == 403, path
        assert "FORBIDDEN" in await user_page.content()

    context = await browser.new_context(base_url=site)
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    await sign_in(page, admin)
    await page.click("nav >> text=Admin")
    await expect(page).to_have_url(re.compile(r"/dashboard/admin$"))
    await page.fill("input[name=q]", user.email)
    await page.click("#search button[type=submit]")
    await expect(page.locator("#total")).to_have_text("1 account(s)")
    row = page.locator(f"tr[data-email='{user.email}']")
    await expect(row).to_contain_text("starter")
    await shot(page, "1-accounts")
    await row.locator("a").click()
    await expect(page).to_have_url(re.compile(rf"/dashboard/admin/accounts/{user.id}$"))
    held = int(await page.locator("#available").inner_text())
    assert 0 < held < 1000  # the queued job holds the rest

    # Grant, then a deduct that would go below zero (refused), then one that fits.
    await page.fill("#credits input[name=amount]", "250")
    await page.fill("#credits input[name=reason]", "welcome back")
    await page.click("#credits button[type=submit]")
    await expect(page.locator(".flash")).to_contain_text("Granted 250 credits")
    await expect(page.locator("#available")).to_have_text(str(held + 250))
    await page.select_option("#credits select[name=action]", "deduct")
    await page.fill("#credits input[name=amount]", str(held + 251))
    await page.fill("#credits input[name=reason]", "too much")
    await page.click("#credits button[type=submit]")
    await expect(page.locator(".flash")).to_contain_text("never takes the balance below 0")
    await expect(page.locator("#available")).to_have_text(str(held + 250))
    await page.select_option("#credits select[name=action]", "deduct")
    await page.fill("#credits input[name=amount]", "50")
    await page.fill("#credits input[name=reason]", "correction")
    await page.click("#credits button[type=submit]")
    await expect(page.locator("#available")).to_have_text(str(held + 200))

    # Plan and overrides.
    await page.select_option("#plan-form select[name=plan]", "pro")
    await page.fill("#plan-form input[name=overrides]", '{"jobs_per_day": 9}')
    await page.click("#plan-form button[type=submit]")
    await expect(page.locator("#plan")).to_have_text("pro")
    await expect(page.locator("#limits")).to_contain_text("jobs_per_day = 9")
    await shot(page, "2-account")

    # Ban: the user's job is cancelled and released, their session ends.
    await page.fill("#ban-form input[name=reason]", "terms of service")
    await page.click("#ban-form button[type=submit]")
    await expect(page.locator(".flash")).to_contain_text("1 job(s) cancelled")
    await expect(page.locator("#state")).to_have_text("banned")
    await expect(page.locator("#available")).to_have_text("1200")
    await expect(page.locator("table.audit tbody tr")).to_have_count(4)
    await shot(page, "3-banned")
    async with sessions() as session:
        job = await session.get(Generation, job_id)
        assert job is not None and job.status == "cancelled"
    cached, summed = await audit(sessions, user.id)
    assert cached == summed and cached.available == 1200 and cached.reserved == 0

    await user_page.goto("/dashboard")
    await expect(user_page).to_have_url(re.compile(r"/dashboard/login$"))
    await user_page.fill("input[name=api_key]", user.api_key)
    await user_page.click("button[type=submit]")
    await expect(user_page.get_by_role("alert")).to_contain_text("This account is banned")
    await shot(user_page, "4-banned-sign-in")

    # Statistics and the audit log.
    await page.click("#admin-nav >> text=Statistics")
    await expect(page.locator("#accounts")).not_to_have_text("0")
    await expect(page.locator("#queues tr[data-pool=default]")).to_be_visible()
    await shot(page, "5-statistics")
    await page.click("#admin-nav >> text=Audit log")
    first = page.locator("table.audit tbody tr").first
    await expect(first).to_have_attribute("data-action", "ban")
    await expect(first).to_contain_text(admin.email)
    await shot(page, "6-audit")

    # Forms without the CSRF token are refused, even with the admin's session cookie.
    jar = {c["name"]: c["value"] for c in await context.cookies()}
    async with httpx.AsyncClient(base_url=site, cookies=jar) as raw:
        for data in ({"action": "unban", "reason": "x"},
                     {"action": "unban", "reason": "x", "csrf_token": "guess"}):  # fmt: skip
            forged = await raw.post(f"/dashboard/admin/accounts/{user.id}/ban", data=data)
            assert forged.status_code == 403
    assert [e.action for e in await audit_entries(sessions, user.id)] == [
        "grant", "deduct", "set_plan", "ban",
    ]  # fmt: skip

    # Unban from the page: the user signs in again.
    await page.goto(f"/dashboard/admin/accounts/{user.id}")
    await page.fill("#ban-form input[name=reason]", "appeal")
    await page.click("#ban-form button[type=submit]")
    await expect(page.locator("#state")).to_have_text("active")
    await sign_in(user_page, user)
    assert not [m for m in console if "Content Security Policy" in m], console
    await context.close()
    await user_context.close()
