"""The page people keep open, in a real headless Chromium against a real uvicorn:
ComfyUI's queue and VRAM/RAM bars, resource figures, "since" on uptime, last run per
check, a header that reflects open incidents and breakers, resolved incidents grouped by
cause and paged, times in the viewer's zone with the zone shown; at 390 and 1280 px.

Screenshots for the README: ``GUARDIAN_SAVE_SCREENSHOT=1`` writes docs/status_page_*.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardian.api.app import create_app, serve
from guardian.api.context import StaticView
from guardian.core.result import Status
from guardian.journal.keeper import QueueView
from guardian.store.db import Database
from guardian.uptime.store import UptimeStore
from testkit.api import (
    COMFY_VALUES,
    DISK_VALUES,
    GPU_VALUES,
    MEMORY_VALUES,
    make_view,
    result,
)

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = os.environ.get("GUARDIAN_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
pytestmark = [pytest.mark.slow,  # a real headless Chromium per test
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS = Path(__file__).resolve().parents[2] / "docs"
ZONE = "America/Sao_Paulo"  # UTC-3 all year, no DST: a shifted time shows whose zone is used


def _incidents(now: datetime) -> list[dict[str, Any]]:
    """One open incident, and 23 resolved ones from 10 causes (one cause 14 times)."""
    out: list[dict[str, Any]] = [{
        "id": 100, "target": "comfyui", "status": "open", "severity": "critical",
        "summary": "ComfyUI queue stuck: 3 pending, nothing running for 412 s",
        "opened_at": (now - timedelta(minutes=3)).isoformat(), "escalated_at": None,
        "resolved_at": None, "failure_count": 3, "flap_count": 0, "report_path": None}]
    n = 99
    for k in range(14):  # the same cause, different numbers
        opened = now - timedelta(hours=2 + k)
        out.append({"id": n, "target": "panel", "status": "resolved", "severity": "critical",
                    "summary": f"panel: HTTP 502 after {400 + k} ms",
                    "opened_at": opened.isoformat(), "escalated_at": None,
                    "resolved_at": (opened + timedelta(minutes=4)).isoformat(),
                    "failure_count": 3, "flap_count": 0, "report_path": None})
        n -= 1
    for k in range(9):  # nine other causes
        opened = now - timedelta(days=1, hours=k)
        out.append({"id": n, "target": "disk", "status": "resolved", "severity": "warning",
                    "summary": f"disk: cause {'abcdefghi'[k]} on /data",
                    "opened_at": opened.isoformat(), "escalated_at": None,
                    "resolved_at": (opened + timedelta(minutes=1)).isoformat(),
                    "failure_count": 1, "flap_count": 0, "report_path": None})
        n -= 1
    return out


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[StaticView, str, datetime]]:
    db = Database(tmp_path / "guardian.db")
    now = datetime.now(UTC)
    uptime = UptimeStore(db, now=lambda: now)
    first = now - timedelta(hours=30)  # data since 30 h ago: 24h is full, 7d/30d are not
    for i in range(0, 30 * 12):
        uptime.record("comfyui", first + timedelta(minutes=5 * i), up=i % 40 != 0)
        uptime.record("panel", first + timedelta(minutes=5 * i), up=True)
    uptime.flush()
    comfy = {**COMFY_VALUES, "busy": True, "running_prompt_id": "5d0c1a2b-77",
             "running_for_s": 754.0, "ram_total_mb": 65536.0, "ram_free_mb": 20000.0}
    at = now - timedelta(seconds=7)
    results = [
        result("panel", "http", values={"status_code": 200}, at=at),
        result("panel", "service", values={"state": "running", "pid": 4242}, at=at),
        result("comfyui", "comfyui", Status.OK, "busy: prompt 5d0c1a2b running for 754 s",
               comfy, at=at),
        result("comfyui", "service", values={"state": "running", "pid": 777}, at=at),
        result("comfyui", "comfyui_canary", Status.SKIPPED, "busy", {
            "busy": True, "running_prompt_id": "5d0c1a2b-77", "running_for_s": 3.0}, at=at),
        result("disk", "disk", reason="lowest free 120.5 GB", values=DISK_VALUES, at=at),
        result("system", "memory", values=MEMORY_VALUES, at=at),
        result("system", "gpu", values=GPU_VALUES, at=at),
    ]
    view = make_view(results=results, incident_list=_incidents(now), uptime_counts=uptime)
    view.recovery["panel"]["breaker_open"] = True
    # The queue journal, as /api/status's target.queue carries it (a restore done, one
    # poison prompt kept back).
    journal = QueueView(target="comfyui", online=True, running=1, pending=2, journaled=3,
                        restore_due=False, restored=3, restore_total=3,
                        restored_at=(now - timedelta(minutes=20)).isoformat(), quarantined=1,
                        error=None, journal=[])
    setattr(view, "queue_views", lambda: {"comfyui": journal})  # noqa: B010
    server = await serve(create_app(view), "127.0.0.1", 0)
    try:
        yield view, server.url, now
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


async def _open(browser: Any, url: str, width: int) -> tuple[Any, list[str]]:
    ctx = await browser.new_context(viewport={"width": width, "height": 900}, timezone_id=ZONE,
                                    locale="en-GB")
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{url}/?refresh=0.5")
    await page.locator('article[data-target="comfyui"] .window[data-window="30d"]').wait_for(
        timeout=5000)
    await page.locator('#incidents[data-state="loaded"]').wait_for(timeout=5000)
    return page, errors


@pytest.mark.parametrize("width", [390, 1280])
async def test_the_page_people_keep_open(served: tuple[StaticView, str, datetime],
                                         browser: Any, width: int) -> None:
    _, url, now = served
    page, errors = await _open(browser, url, width)
    comfy = page.locator('article[data-target="comfyui"]')
    # Queue with the running prompt's age; VRAM and RAM as bars with their figures.
    queue = await comfy.locator("div.queue").inner_text()
    assert queue == "1 running · 2 pending · running 13 min", queue
    # The journal beside it: what a restart would restore, the last restore, quarantine;
    # one busy badge for the prompt both checks saw, with the longer time.
    badges = await comfy.locator(".badges > *").all_inner_texts()
    assert "queue 1 running · 2 pending · 3 journaled · restored 3 of 3" in badges, badges
    assert "1 quarantined" in badges, badges
    assert [b for b in badges if b.startswith("busy")] == ["busy 5d0c1a2b · 13 min"], badges
    vram = comfy.locator('.meter[data-meter="VRAM"]')
    assert "4.5 GB of 24.0 GB" in await vram.inner_text()
    assert await vram.locator(".track").get_attribute("aria-valuenow") == str(24563.5 - 20000)
    assert "44.5 GB of 64.0 GB" in await comfy.locator('.meter[data-meter="RAM"]').inner_text()
    # Resource checks show their figures.
    disk = page.locator('article[data-target="disk"]')
    assert "120.5 GB free of 300 GB" in await disk.locator('.meter[data-meter="/"]').inner_text()
    assert await disk.locator(".meter").count() == 2
    system = page.locator('article[data-target="system"]')
    assert "8.0 GB free of 32.0 GB" in await system.locator(
        '.meter[data-meter="memory"]').inner_text()
    assert "37% busy" in await system.locator('.meter[data-meter="GPU 0"]').inner_text()
    # Uptime: 24h is covered by the data; 7d and 30d reach further back and say since when.
    assert await comfy.locator('.window[data-window="24h"] .since').count() == 0
    since = comfy.locator('.window[data-window="7d"] .since')
    assert await since.count() == 1
    first = datetime.fromisoformat(await since.get_attribute("data-since"))
    assert first <= now - timedelta(hours=30) + timedelta(minutes=5)
    assert await comfy.locator('.window[data-window="30d"] .since').count() == 1
    note = await comfy.locator(".uptime .since-note").all_inner_texts()  # said once
    assert len(note) == 1 and note[0].startswith("* since "), note
    # Last run of every check, as a relative time.
    lasts = await page.locator("li.check .last").all_inner_texts()
    assert len(lasts) == 8 and all(t.endswith(" s ago") for t in lasts), lasts
    # The header never says HEALTHY when an incident or a breaker is open, though every
    # check passes: the pill says what is open, the note beside it which.
    attention = await page.locator("#attention").inner_text()
    assert attention == "1 open incident · breaker open: panel", attention
    overall = page.locator("#overall.attention")
    assert await overall.count() == 1
    stack = await page.evaluate(
        "() => fetch('/api/status').then(r => r.json()).then(b => b.status)")
    assert stack == "healthy" and await overall.get_attribute("data-status") == stack
    assert (await overall.inner_text()).lower() == "breaker open"
    fg, bg = await overall.evaluate(
        "e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    assert fg != bg  # the status word stays readable on its pill
    # Times in the viewer's zone, and the zone named.
    assert ZONE in await page.locator("#zone").inner_text()
    # Resolved incidents: 14 of one cause are one group; 10 causes over 2 pages of 8.
    head = await page.locator("h3.resolved-head").inner_text()
    assert "Resolved: 23 incidents, 10 causes" in head
    group = page.locator('details.group[data-group="14"]')
    assert await group.count() == 1
    assert await page.locator("#incidents > details").count() == 1 + 8  # open + one page
    await page.locator("nav.pager button", has_text="older").click()
    assert "page 2 of 2" in await page.locator("nav.pager").inner_text()
    assert await page.locator("#incidents > details").count() == 1 + 2
    # Nothing overflows sideways; no script error.
    scroll, inner = await page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, (scroll, inner)
    assert errors == []
    await page.locator("nav.pager button", has_text="newer").click()
    if os.environ.get("GUARDIAN_SAVE_SCREENSHOT"):
        DOCS.mkdir(exist_ok=True)
        await page.screenshot(path=str(DOCS / f"status_page_{width}.png"), full_page=True)


async def test_times_are_shown_in_the_viewers_zone(served: tuple[StaticView, str, datetime],
                                                   browser: Any) -> None:
    from zoneinfo import ZoneInfo

    view, url, _ = served
    page, _ = await _open(browser, url, 1280)
    summary = await page.locator('details.incident[data-incident="100"] summary').inner_text()
    opened = datetime.fromisoformat(view.incident_list[0]["opened_at"])
    local = opened.astimezone(ZoneInfo(ZONE)).strftime("%H:%M")
    utc = opened.astimezone(UTC).strftime("%H:%M")
    assert local != utc and local in summary and utc not in summary, summary
