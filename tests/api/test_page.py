"""The status page in a real headless Chromium against a real uvicorn.

Skipped when Playwright or a Chromium binary is missing (CI installs both: the system
``chromium`` package and ``pip install playwright``; never ``playwright install``).
Layout is asserted, not only presence: no card grows tall from wrapping reasons, nothing
overflows horizontally at 360 px or 1920 px, reasons get a readable width.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardian.api.app import create_app, serve
from guardian.api.context import StaticView
from guardian.core.result import Condition, Status
from guardian.store.db import Database
from guardian.uptime.store import UptimeStore
from testkit.api import INCIDENTS, TOKEN, make_view, result

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
LONG_REASON = (
    "http: GET http://127.0.0.1:3000/api/health answered HTTP 502 Bad Gateway after 4012 ms: "
    "upstream connect error or disconnect/reset before headers. reset reason: connection "
    "termination; body: <html><head><title>502</title></head></html>"
)
TIMELINE = [
    {"time": "2025-01-01T11:00:00+00:00", "kind": "opened", "reason": "ComfyUI queue stuck"},
    {"time": "2025-01-01T11:00:05+00:00", "kind": "remediation_started",
     "reason": "stuck_running"},
    {"time": "2025-01-01T11:00:06+00:00", "kind": "interrupt_sent", "detail": "prompt 5d0c…"},
    {"time": "2025-01-01T11:01:00+00:00", "kind": "remediation_failed"},
    {"time": "2025-01-01T11:01:01+00:00", "kind": "restart_started", "attempt": 1},
    {"time": "2025-01-01T11:01:20+00:00", "kind": "restart_succeeded", "attempt": 1},
    {"time": "2025-01-01T11:02:00+00:00", "kind": "escalated", "reason": "critical"},
]


def seeded_uptime(db: Database, now: datetime) -> UptimeStore:
    """comfyui: 24 h with 12 of 288 results down, 7 d and 30 d older data all up;
    panel: half its results down in the last hour."""
    store = UptimeStore(db, now=lambda: now)
    for i in range(288):  # one result per 5 minutes for 24 h
        store.record("comfyui", now - timedelta(minutes=5 * i + 1), up=not 10 <= i < 22)
    for d in range(1, 30):  # one result per day before that, all up
        store.record("comfyui", now - timedelta(days=d, hours=1), up=True)
    store.record_restart("comfyui", now - timedelta(minutes=70))
    store.record_restart("comfyui", now - timedelta(minutes=80))
    for i in range(12):
        store.record("panel", now - timedelta(minutes=5 * i + 1), up=i % 2 == 0)
    store.flush()
    return store


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[StaticView, str]]:
    db = Database(tmp_path / "guardian.db")
    now = datetime.now(UTC)
    incidents = [dict(i) for i in INCIDENTS]
    incidents[1]["timeline"] = TIMELINE
    view = make_view(incident_list=incidents, uptime_counts=seeded_uptime(db, now))
    view.recovery["panel"]["breaker_open"] = True
    for i in range(30):
        view.state.record(result("panel", "http", duration=0.01 + 0.004 * (i % 7)))
        view.state.record(result("comfyui", "comfyui", duration=0.02 + 0.003 * (i % 5),
                                 values={"online": True}))
    view.state.record(result("panel", "http", Status.FAILED, LONG_REASON))
    view.state.record(result(
        "comfyui", "comfyui", Status.OK, "busy: prompt 5d0c1a2b running for 754 s",
        {"online": True, "busy": True, "running_prompt_id": "5d0c1a2b-77", "running_for_s": 754.0},
    ))
    server = await serve(create_app(view), "127.0.0.1", 0)
    try:
        yield view, server.url
    finally:
        await server.stop()
        db.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            yield b
        finally:
            await b.close()


LAYOUT_JS = """() => {
  const cards = [...document.querySelectorAll('article.card')].map(c => c.getBoundingClientRect());
  const whys = [...document.querySelectorAll('li.check .why, .card .reason')]
    .filter(w => w.textContent.length > 40).map(w => w.getBoundingClientRect().width);
  return {
    scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
    cardHeights: cards.map(r => r.height), cardRight: Math.max(...cards.map(r => r.right)),
    minReasonWidth: Math.min(...whys),
  };
}"""


@pytest.mark.slow
@pytest.mark.parametrize("width", [360, 1920])
async def test_layout_holds(served: tuple[StaticView, str], browser: Any, width: int,
                            tmp_path: Path) -> None:
    _, url = served
    page = await browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{url}/?refresh={REFRESH}")
    await page.locator('article[data-target="comfyui"] .window[data-window="24h"]').wait_for(
        timeout=5000)
    await page.locator('#incidents[data-state="loaded"]').wait_for(timeout=5000)
    m = await page.evaluate(LAYOUT_JS)
    assert m["scroll"] <= m["inner"], m  # no horizontal overflow
    assert m["cardRight"] <= m["inner"], m
    # A card with a 200-character reason and a 200-character check reason stays compact.
    assert max(m["cardHeights"]) < (560 if width == 360 else 420), m
    # Reasons get most of the card's width, never one character per line.
    assert m["minReasonWidth"] >= (240 if width == 360 else 300), m
    shot = tmp_path / f"status_{width}.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if width == 1920 and os.environ.get("GUARDIAN_SAVE_SCREENSHOT"):
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, README_SHOT)
    assert errors == []


@pytest.mark.slow
async def test_uptime_states_and_timeline(served: tuple[StaticView, str], browser: Any) -> None:
    _, url = served
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{url}/?refresh={REFRESH}")
    comfy = page.locator('article[data-target="comfyui"]')
    panel = page.locator('article[data-target="panel"]')
    await comfy.locator('.window[data-window="24h"]').wait_for(timeout=5000)
    # 276 of 288 up in 24 h; 7 d adds 6 up days, 30 d adds 29.
    assert "95.8%" in await comfy.locator('.window[data-window="24h"]').inner_text()
    week = await comfy.locator('.window[data-window="7d"]').inner_text()
    assert f"{100 * 282 / 294:.1f}%" in week
    assert f"{100 * 305 / 317:.1f}%" in await comfy.locator(
        '.window[data-window="30d"]').inner_text()
    assert "50.0%" in await panel.locator('.window[data-window="24h"]').inner_text()
    assert await comfy.locator(".bar .slot").count() == 48
    assert await comfy.locator(".bar .slot.down, .bar .slot.partial").count() >= 1
    # Restarts from the persisted counts, not the breaker's attempt counter (2 here too).
    assert "restarts 24h: 2" in await comfy.locator(".recovery").inner_text()
    # Busy and breaker states at a glance.
    assert "busy 5d0c1a2b" in await comfy.locator('.badge[data-badge="busy"]').inner_text()
    assert await panel.locator('.badge[data-badge="breaker"]').count() == 1
    assert "breaker OPEN" in await panel.locator(".recovery").inner_text()
    # The incident timeline: open incident expanded, every rung listed, report linked.
    inc = page.locator('details.incident[data-incident="2"]')
    await inc.wait_for(timeout=5000)
    kinds = await inc.locator("ol.timeline li").evaluate_all("ls => ls.map(l => l.dataset.kind)")
    assert kinds == [e["kind"] for e in TIMELINE]  # type: ignore[index]
    assert await inc.get_attribute("open") is not None
    assert await page.locator('details.incident[data-incident="1"]').get_attribute("open") is None
    href = await inc.locator("a.report").get_attribute("href")
    assert href == "/incidents/2/report"
    resp = await page.request.get(f"{url}{href}")
    assert resp.status == 200 and "queue stuck" in await resp.text()
    assert resp.headers["content-type"].startswith("text/plain")


@pytest.mark.slow
async def test_incidents_say_loading_not_none_before_data(
    served: tuple[StaticView, str], browser: Any
) -> None:
    _, url = served
    page = await browser.new_page()
    await page.route("**/api/incidents*", lambda route: None)  # never answered
    await page.goto(f"{url}/?refresh={REFRESH}")
    await page.locator('article[data-target="comfyui"]').wait_for(timeout=5000)
    text = await page.locator("#incidents").inner_text()
    assert "loading" in text and "none" not in text.lower()


@pytest.mark.slow
async def test_status_page_updates_and_restarts(
    served: tuple[StaticView, str], browser: Any
) -> None:
    view, url = served
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{url}/?refresh={REFRESH}")
    comfy = page.locator('article[data-target="comfyui"]')
    await comfy.and_(page.locator('[data-status="ok"]')).wait_for(timeout=5000)
    assert await page.locator("#overall").get_attribute("data-status") == "unhealthy"
    assert await comfy.locator("svg.spark polyline").count() >= 1

    # A target turns red: visible within one refresh (plus a fetch), no reload.
    stuck = "queue stuck: 3 pending, nothing running for 412s"
    view.state.record(result("comfyui", "comfyui", Status.FAILED, stuck,
                             {"online": True}, condition=Condition.STUCK_PENDING))
    began = time.monotonic()
    await page.locator('article[data-target="comfyui"][data-status="failed"]').wait_for(
        timeout=(REFRESH + 1.5) * 1000
    )
    assert time.monotonic() - began <= REFRESH + 1.5
    assert stuck in await comfy.locator(".reason").inner_text()
    assert "stuck pending" in await comfy.locator('.badge[data-badge="stuck"]').inner_text()

    # Startup phase shown as such.
    booting = result("comfyui", "comfyui", Status.FAILED, "connection refused", {"online": False})
    view.state.record(dataclasses.replace(booting, startup=True))
    await comfy.locator('.badge[data-badge="startup"]').wait_for(timeout=(REFRESH + 1.5) * 1000)

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
    await comfy.locator(".msg", has_text="restart #1 of comfyui queued").wait_for(timeout=5000)
    assert view.restarts == ["comfyui"]
    assert await page.evaluate("sessionStorage.getItem('guardian.token')") == TOKEN
    assert await page.locator('article[data-target="disk"] button.restart').is_hidden()

    assert errors == []
