"""The hooks every restart awaits before it stops the process (the queue journal's last
read): bounded, and their trouble never stops the restart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guardian.core.clock import SystemClock
from guardian.core.events import RecoveryKind
from guardian.recovery.restart import BEFORE_RESTART_TIMEOUT, RestartRunner


def emit(target: str, kind: RecoveryKind, **_: Any) -> None:
    raise AssertionError("look_before publishes nothing")


async def test_a_hung_hook_is_cut_at_the_bound_and_a_failing_one_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    cancelled = asyncio.Event()

    async def hangs(target: str) -> None:
        seen.append(target)
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def fails(target: str) -> None:
        raise RuntimeError(f"{target}: store unavailable")

    runner = RestartRunner(SystemClock(), emit, [hangs])
    await runner.look_before("comfyui")  # returns: the bound, not the hook, decides
    assert seen == ["comfyui"] and cancelled.is_set()  # the hung read was cancelled
    cut = [r for r in caplog.records if getattr(r, "event", None) == "before_restart_timeout"]
    assert len(cut) == 1 and f"over {BEFORE_RESTART_TIMEOUT:g} s" in cut[0].getMessage()
    await RestartRunner(SystemClock(), emit, [fails]).look_before("comfyui")
    failed = [r for r in caplog.records if getattr(r, "event", None) == "before_restart_failed"]
    assert len(failed) == 1 and "store unavailable" in failed[0].getMessage()


async def test_hooks_added_after_the_runner_was_built_are_awaited() -> None:
    """The runtime fills the manager's list after recovery is built: the runner reads it
    at each restart, not once."""
    hooks: list[Any] = []
    runner = RestartRunner(SystemClock(), emit, hooks)
    seen: list[str] = []

    async def look(target: str) -> None:
        seen.append(target)
    hooks.append(look)
    await runner.look_before("panel")
    assert seen == ["panel"]
