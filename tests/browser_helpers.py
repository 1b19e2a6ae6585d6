"""Headless Chromium (Debian's package) driven by Playwright, for the dashboard's tests:
launching it, signing in, screenshots and layout checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_fleet import TOKENS, Fleet

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
HAVE_CHROMIUM = CHROMIUM.exists()

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -e '.[dev]')"
)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A browser, or a skip saying why there is none."""
    if not HAVE_CHROMIUM:
        pytest.skip(f"{CHROMIUM} is missing (scripts/install installs Debian's chromium)")
    async with playwright_api.async_playwright() as p:
        try:
            b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except playwright_api.Error as e:
            pytest.skip(f"chromium cannot start here: {str(e).splitlines()[0]}")
        try:
            yield b
        finally:
            await b.close()


class Shots:
    """Numbered screenshots in tmp_path (and $DASHBOARD_SCREENSHOT_DIR)."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = folder
        self.prefix = prefix
        self.folder.mkdir(exist_ok=True)
        self.taken: list[Path] = []
        extra = os.environ.get("DASHBOARD_SCREENSHOT_DIR")
        self.extra = Path(extra) if extra else None
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)

    async def take(self, page: Any, name: str, *, full_page: bool = False) -> Path:
        path = self.folder / f"{self.prefix}-{len(self.taken) + 1:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=full_page)
        self.taken.append(path)
        if self.extra is not None:
            await asyncio.to_thread(shutil.copy, path, self.extra / path.name)
        return path


async def sign_in(browser: Any, fleet: Fleet, role: str, viewport: dict[str, int]) -> Any:
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(fleet.url + "/ui/")
    await page.fill("#token", TOKENS[role])
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_selector(f"#who:has-text('({role})')")
    await page.wait_for_selector("#live.live")  # the event stream said hello
    page.js_errors = errors
    # A marker that a reload or a navigation to another document would wipe out.
    await page.evaluate("window.__sameDocument = 'yes'")
    return page


async def same_document(page: Any) -> bool:
    return bool(await page.evaluate("window.__sameDocument === 'yes'"))


async def no_horizontal_scroll(page: Any) -> bool:
    return bool(
        await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    )


async def fully_visible(page: Any, selector: str) -> bool:
    """Every shown element matching ``selector`` (at least one) lies inside the
    viewport's width and is not cut off by a scrolling container around it (a table in
    its card)."""
    return bool(
        await page.evaluate(
            """sel => {
                const els = [...document.querySelectorAll(sel)]
                    .filter((el) => el.getClientRects().length);  // hidden on purpose
                if (!els.length) return false;
                return els.every((el) => {
                    const r = el.getBoundingClientRect();
                    if (r.left < 0 || r.right > window.innerWidth + 1) return false;
                    const wrap = el.closest('.table-wrap');
                    if (!wrap) return true;
                    const w = wrap.getBoundingClientRect();
                    return r.left >= w.left - 1 && r.right <= w.right + 1;
                });
            }""",
            selector,
        )
    )


async def text(page: Any, selector: str) -> str:
    return str(await page.locator(selector).inner_text())


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium for one test (import it into the test module as a fixture)."""
    async with chromium() as b:
        yield b
