"""A real browser for the dashboard tests: Playwright for Python driving Debian's Chromium
(``/usr/bin/chromium``, installed by ``scripts/setup-browser.sh``; Playwright never downloads one).

Neither being there fails the run, it never skips: a dashboard nobody could test is a broken build.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartController
from tests.harness import Controller

CHROMIUM = os.environ.get("PARALLAX_CHROMIUM", "/usr/bin/chromium")
TOKEN = "ui-test-token-7c1f4e9a2b"

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # reported by the fixture, as a failure
    async_playwright = None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        pytest.fail("Playwright is not installed: pip install -e '.[test]' (scripts/setup.sh)", pytrace=False)
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-browser.sh (apt-get install chromium)", pytrace=False)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()


@pytest.fixture
async def ui_controller(start_controller: StartController) -> Controller:
    """A controller with a token (so the page must log in) sampling stats every second."""
    return await start_controller(api_token=TOKEN, stats_seconds=1.0)


async def call(controller: Controller, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The API as a client with the token would call it."""
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.request(method, controller.base_url + path, json=body) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def login(page: Page, controller: Controller, token: str = TOKEN, where: str = "") -> None:
    await page.goto(f"{controller.base_url}/ui/{where}")
    await page.fill("#token", token)
    await page.click("#login-form button")


def screenshot_path(name: str) -> Path | None:
    """Where to save a view's screenshot: ``PARALLAX_UI_SCREENSHOTS`` (docs/ when making them), else nowhere."""
    folder = os.environ.get("PARALLAX_UI_SCREENSHOTS")
    return Path(folder) / f"ui-{name}.png" if folder else None
