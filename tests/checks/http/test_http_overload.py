"""The http check's own deadline follows the overload rule: Guardian's stall is not the target's.

A real silent server, a real loop-lag monitor, and a real stall (the loop blocked by
``time.sleep``): the timeout that passes during the stall is SKIPPED, the same timeout
without a stall is FAILED.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from guardian.checks.base import CheckContext
from guardian.checks.http.check import HttpCheckConfig, create
from guardian.config.load import load_config
from guardian.core.clock import SystemClock
from guardian.core.result import Status
from guardian.engine.overload import LoopLagMonitor
from guardian.runtime import CheckStall, Guardian


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def run_with(url: str, *, stall_for: float, closer: Any) -> Any:
    monitor = LoopLagMonitor(tick=0.01)
    monitor.start()
    ctx = CheckContext("t", SystemClock(), stall=CheckStall(monitor))
    check = closer(create(HttpCheckConfig(url=url, timeout=0.6, interval=5), ctx))
    try:
        task = asyncio.ensure_future(check.run())
        await asyncio.sleep(0.05)
        if stall_for:
            time.sleep(stall_for)  # noqa: ASYNC251 - the point: a blocked event loop
        return await task
    finally:
        await monitor.stop()


async def test_timeout_during_guardian_stall_is_skipped(raw_server: Any, closer: Any) -> None:
    async with raw_server(silent) as srv:
        out = await run_with(srv.url + "/", stall_for=0.5, closer=closer)
    assert out.status is Status.SKIPPED, out
    assert out.reason.startswith("guardian overloaded: event loop lag"), out.reason


async def test_timeout_without_stall_still_fails(raw_server: Any, closer: Any) -> None:
    async with raw_server(silent) as srv:
        out = await run_with(srv.url + "/", stall_for=0.0, closer=closer)
    assert (out.status, out.reason) == (Status.FAILED, "timed out after 0.6s")


async def test_stall_does_not_hide_a_real_answer(http_server: Any, closer: Any) -> None:
    out = await run_with(http_server.url("/"), stall_for=0.5, closer=closer)
    assert out.status is Status.OK, out


def test_runtime_gives_every_check_the_stall_probe(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f"""
[guardian]
state_dir = "{tmp_path / 's'}"
log_dir = "{tmp_path / 'l'}"
report_dir = "{tmp_path / 'r'}"
[api]
enabled = false
[[targets]]
name = "a"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:9/"
""")
    g = Guardian(load_config(cfg))
    (sc,) = g.engine.scheduled
    assert isinstance(sc.check._ctx.stall, CheckStall)  # type: ignore[attr-defined]
