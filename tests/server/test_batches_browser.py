"""The dashboard's batch pages in headless Chromium (Playwright), against the real app, an
arq worker on the tiny model and the database: the list, one batch with its items'
thumbnails and progress, and cancelling a batch from its page. Screenshots go to the
test's tmp dir."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Batch
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, balance, create_account, gql
from tests.server.test_dashboard_browser import CHROMIUM

CREATE = """mutation B($input: CreateBatchInput!) {
  createBatch(input: $input) { id creditCost items { id } } }"""


def items(*prompts: str) -> list[dict[str, Any]]:
    return [
        {"kind": "text_to_image",
         "input": {"service": "flux-dev", "prompt": p, "width": 256, "height": 256, "steps": 2}}
        for p in prompts
    ]  # fmt: skip


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


async def sign_in(page: Page, account: TestAccount) -> None:
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", account.api_key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/dashboard$"))


async def completed(sessions: async_sessionmaker[AsyncSession], batch_id: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        async with sessions() as s:
            batch = await s.get(Batch, batch_id)
        if batch is not None and batch.completed_at is not None:
            return
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_batch_pages(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], database: str,
    browser: Browser, tmp_path: Path,
) -> None:  # fmt: skip
    own = own_queue(settings, "batch-pages")
    owner = await create_account(sessions, own, credits=1000)
    stranger = await create_account(sessions, own, credits=10)

    async def shot(page: Page, name: str) -> None:
        await page.screenshot(path=str(tmp_path / f"batches-{name}.png"), full_page=True)
        assert (tmp_path / f"batches-{name}.png").stat().st_size > 0

    with ThreadedServer.of(own) as server:
        context = await browser.new_context(base_url=server.url)
        page = await context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await sign_in(page, owner)
        await page.click("nav a[href='/dashboard/batches']")
        await expect(page.locator("#no-batches")).to_be_visible()

        async with httpx.AsyncClient(base_url=server.url, timeout=60) as api:
            # No worker yet: this batch waits, and is cancelled from its page.
            body = await gql(api, CREATE, {"input": {"items": items("a", "b"), "priority": "LOW",
                                                     "clientBatchId": "waiting"}},
                             key=owner.api_key)  # fmt: skip
            waiting = body["data"]["createBatch"]
            await page.goto(f"/dashboard/batches/{waiting['id']}")
            await expect(page.locator("#batch-status")).to_have_text("queued")
            await expect(page.locator("#items figure")).to_have_count(2)
            await shot(page, "1-queued")
            await page.click("#cancel-batch")
            await expect(page.locator("#batch-status")).to_have_text("cancelled")
            await expect(page.locator("#cancel-batch")).to_have_count(0)
            assert (await balance(sessions, owner.id)).reserved == 0

            with ThreadedWorker(own):
                body = await gql(api, CREATE, {"input": {"items": items("red", "green", "blue"),
                                                         "priority": "HIGH"}},
                                 key=owner.api_key)  # fmt: skip
                done = body["data"]["createBatch"]
                await completed(sessions, done["id"])

        await page.goto(f"/dashboard/batches/{done['id']}")
        await expect(page.locator("#batch-status")).to_have_text("completed")
        thumbs = page.locator("#items figure img")
        await expect(thumbs).to_have_count(3)
        for n in range(3):
            loaded = await thumbs.nth(n).evaluate(
                """async img => {
                    if (!img.complete) await new Promise(r => { img.onload = img.onerror = r; });
                    return img.naturalWidth;
                }"""
            )
            assert loaded > 0
        await expect(page.locator("#items")).to_contain_text("completed")
        await shot(page, "2-completed")

        await page.goto("/dashboard/batches")
        rows = page.locator("#batches tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.nth(0)).to_have_attribute("data-status", "completed")
        await expect(rows.nth(1)).to_have_attribute("data-status", "cancelled")
        await expect(rows.nth(1)).to_contain_text("waiting")
        await expect(rows.nth(0).locator(".thumbs img")).to_have_count(3)
        await shot(page, "3-list")
        # The pages' CSP refuses nothing they use (no inline style or script).
        assert not [m for m in errors if "Content Security Policy" in m], errors

        # Another account sees none of it.
        other = await browser.new_context(base_url=server.url)
        their = await other.new_page()
        await sign_in(their, stranger)
        response = await their.goto(f"/dashboard/batches/{done['id']}")
        assert response is not None and response.status == 404
        await their.goto("/dashboard/batches")
        await expect(their.locator("#no-batches")).to_be_visible()
        await other.close()
        await context.close()
