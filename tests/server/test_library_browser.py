"""The dashboard's image library in a real browser (headless Chromium driven by
Playwright) against the real app, worker, database and storage: thumbnails grid,
search, filters, favourite, rename, delete and pages. Screenshots go to the test's
temporary directory."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runtime.settings import Settings
from runtime.storage import storage_from_settings
from server.library_pages import PER_PAGE
from tests.conftest import ThreadedWorker
from tests.factories import create_account, gql, wait_for_final
from tests.server.test_dashboard_browser import CHROMIUM
from tests.server.test_library import make_image

LOADED_WIDTH = """async img => {
    if (!(img.complete && img.naturalWidth)) {
        await new Promise(done => {
            img.addEventListener("load", done, {once: true});
            img.addEventListener("error", done, {once: true});
        });
    }
    return img.naturalWidth;
}"""


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


async def shot(page: Page, directory: Path, name: str) -> None:
    await page.screenshot(path=str(directory / f"library-{name}.png"), full_page=True)
    assert (directory / f"library-{name}.png").stat().st_size > 0


async def test_library_page_end_to_end(
    api: str,
    worker: ThreadedWorker,
    browser: Browser,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    tmp_path: Path,
) -> None:
    owner = await create_account(sessions, settings, credits=1000)
    storage = storage_from_settings(settings)
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        body = await gql(
            client,
            "mutation G($i: ImageGenerationInput!) { generateImage(input: $i) { id } }",
            {"i": {"service": "flux-schnell", "prompt": "a lighthouse at dusk", "width": 512,
                   "height": 512}},
            key=owner.api_key,
        )  # fmt: skip
        job_id = body["data"]["generateImage"]["id"]
        assert (await wait_for_final(client, owner.api_key, job_id))["status"] == "completed"
    await make_image(sessions, storage, owner, prompt="an upscaled harbour", kind="upscale")
    for n in range(PER_PAGE):
        await make_image(sessions, storage, owner, prompt=f"filler picture number {n}")
    total = PER_PAGE + 2

    context = await browser.new_context(base_url=api)
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", owner.api_key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await page.click("nav >> text=Library")
    await expect(page).to_have_url(re.compile(r"/dashboard/library$"))
    await expect(page.locator("#total")).to_have_text(f"{total} images")
    figures = page.locator("#images figure")
    await expect(figures).to_have_count(PER_PAGE)
    await shot(page, tmp_path, "1-grid")

    # Pages: the rest on the next one, and back.
    await page.click("#next-page")
    await expect(figures).to_have_count(total - PER_PAGE)
    await expect(page.locator("#next-page")).to_have_count(0)
    await page.click("#first-page")
    await expect(figures).to_have_count(PER_PAGE)

    # Search by a prompt word: the worker's image, shown by its WebP thumbnail.
    await page.fill("input[name=q]", "lighthouse")
    await page.click("#filters button[type=submit]")
    await expect(figures).to_have_count(1)
    lighthouse = figures.first
    thumb = lighthouse.locator("img")
    await expect(thumb).to_have_attribute("src", re.compile(r"\.thumb\.webp$"))
    assert await thumb.evaluate(LOADED_WIDTH) == 256
    await shot(page, tmp_path, "2-search")

    # Favourite, then rename: both kept, and the page stays on the same search.
    await lighthouse.locator("button.star").click()
    await expect(page).to_have_url(re.compile(r"q=lighthouse"))
    await expect(figures.first.locator("button.star")).to_have_class(re.compile(r"\bon\b"))
    await figures.first.locator("input[name=name]").fill("Evening Beacon")
    await figures.first.locator("form.rename button").click()
    await expect(figures.first.locator(".name")).to_have_text("Evening Beacon")
    await page.goto("/dashboard/library?q=beac&by=name")
    await expect(figures).to_have_count(1)
    await page.goto("/dashboard/library?favorite=yes")
    await expect(figures).to_have_count(1)
    await expect(figures.first).to_have_attribute("data-name", "Evening Beacon")
    await page.goto("/dashboard/library?upscaled=yes")
    await expect(figures).to_have_count(1)
    await expect(figures.first.locator(".prompt")).to_have_text("an upscaled harbour")
    await page.goto("/dashboard/library?sort=name&dir=asc")
    await expect(figures.first).to_have_attribute("data-name", "")
    await shot(page, tmp_path, "3-filters")

    # A bad parameter is refused with a message, not a crash.
    response = await page.goto("/dashboard/library?sort=colour")
    assert response is not None and response.status == 400
    await expect(page.locator("#error")).to_contain_text("sort")

    # Delete: gone from the grid, its file and thumbnail gone from storage.
    await page.goto("/dashboard/library?q=beacon")
    image_url = await figures.first.locator("a").get_attribute("href")
    thumb_url = await figures.first.locator("img").get_attribute("src")
    assert image_url and thumb_url
    await figures.first.locator("button.delete").click()
    await expect(page.locator(".flash")).to_have_text("Image deleted.")
    await expect(figures).to_have_count(0)
    await expect(page.locator("#total")).to_have_text("0 images")
    await page.goto("/dashboard/library")
    await expect(page.locator("#total")).to_have_text(f"{total - 1} images")
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(image_url)).status_code == 404
        assert (await http.get(thumb_url)).status_code == 404
    await shot(page, tmp_path, "4-after-delete")
    assert not [m for m in console if "Content Security Policy" in m], console
    await context.close()
