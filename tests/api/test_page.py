"""The status page in a real headless Chromium against a real uvicorn.

Skipped when Playwright or a Chromium binary is missing (CI installs both: the system
``chromium`` package and ``pip install playwright``; never ``playwright install``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import INCIDENTS, TOKEN, make_view, result  # type: ignore[import-not-found]

from guardian.api.app import create_app, serve
from guardian.api.context import StaticView
from guardian.result import Status

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = os.environ.get("GUARDIAN_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser"
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REFRESH = 0.5
README_SHOT = Path(__file__).resolve().parents[2] / "bench" / "results" / "status_page.png"


@pytest.fixture
async def served() -> AsyncIterator[tuple[StaticView, str]]:
    view = make_view(incident_list=INCIDENTS)
    for i in range(30):
        view.state.record(result("panel", "http", duration=0.01 + 0.004 * (i % 7)))
        view.state.record(result("comfyui", "comfyui", duration=0.02 + 0.003 * (i % 5),
                                 values={"online": True}))
    server = await serve(create_app(view), "127.0.0.1", 0)
    try:
        yield view, server.url
    finally:
        await server.stop()


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            yield await browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            await browser.close()


async def test_status_page_updates_and_restarts(
    served: tuple[StaticView, str], page: Any, tmp_path: Path
) -> None:
    view, url = served
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{url}/?refresh={REFRESH}")
    comfy = page.locator('article[data-target="comfyui"]')
    await comfy.and_(page.locator('[data-status="ok"]')).wait_for(timeout=5000)
    assert await page.locator("#overall").get_attribute("data-status") == "healthy"
    assert await comfy.locator("svg.spark polyline").count() >= 1
    assert "ComfyUI queue stuck" in await page.locator("#incidents").inner_text()

    # A target turns red: visible within one refresh (plus a fetch), no reload.
    stuck = "queue stuck: 3 pending, nothing running for 412s"
    view.state.record(result("comfyui", "comfyui", Status.FAILED, stuck, {"online": True}))
    began = time.monotonic()
    await page.locator('article[data-target="comfyui"][data-status="failed"]').wait_for(
        timeout=(REFRESH + 1.5) * 1000
    )
    assert time.monotonic() - began <= REFRESH + 1.5
    assert await page.locator("#overall").get_attribute("data-status") == "unhealthy"
    assert stuck in await comfy.locator(".reason").inner_text()
    shot = tmp_path / "status_page.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("GUARDIAN_SAVE_SCREENSHOT"):
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, README_SHOT)

    # A hostile reason is shown as text, never as markup.
    hostile = 'queue stuck: <img src=x onerror="window.pwned=1">'
    view.state.record(result("comfyui", "comfyui", Status.FAILED, hostile, {"online": True}))
    await comfy.locator(".reason", has_text="onerror").wait_for(timeout=(REFRESH + 1.5) * 1000)
    assert await page.evaluate("window.pwned === undefined")
    assert await comfy.locator(".reason img").count() == 0

    # Restart without a token is refused and says why; with the token it goes through.
    await comfy.locator("button.restart").click()
    await comfy.locator(".msg.error").wait_for(timeout=5000)
    assert "401" in await comfy.locator(".msg").inner_text() or "bearer" in (
        await comfy.locator(".msg").inner_text()
    )
    assert view.restarts == []
    await page.fill("#token", TOKEN)
    await comfy.locator("button.restart").click()
    await comfy.locator(".msg", has_text="restart of comfyui requested").wait_for(timeout=5000)
    assert view.restarts == ["comfyui"]
    assert await page.evaluate("sessionStorage.getItem('guardian.token')") == TOKEN
    assert await page.locator('article[data-target="disk"] button.restart').is_hidden()

    assert errors == []
