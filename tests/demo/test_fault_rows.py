"""The demo's fault table against the running demo stack (issue 22, bullet 6): the demo's
own config, its real simulators as supervised children, the whole runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from guardian.core.events import Event, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.demo.stack import prepare_demo
from guardian.runtime import Guardian

# The demo stack's real processes for each fault row: seconds to minutes each.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.1)
    return pred()


async def test_comfyui_slow_by_one_second_is_ok_but_slower_and_not_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row said "below the check timeout: OK", yet 1 s restarted: the comfyui check's
    three requests added up past its 3 s timeout."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg, _ = prepare_demo(tmp_path / "demo", api_port=0)
    comfyui = cfg.target("comfyui")
    url = next(c.url for c in comfyui.checks if c.kind == "comfyui")  # type: ignore[attr-defined]
    guardian = Guardian(cfg)
    events: list[Event] = []
    guardian.bus.subscribe(events.append)

    def comfy_results() -> list[CheckResult]:
        return [e for e in events if isinstance(e, CheckResult)
                and e.target == "comfyui" and e.kind == "comfyui" and not e.startup]

    await guardian.start()
    try:
        assert await wait_for(lambda: any(r.status is Status.OK for r in comfy_results()), 60)
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            r = await client.post(f"{url}/__sim/fault", json={"mode": "slow", "delay": 1})
            assert r.status_code == 200
        seen = len(comfy_results())
        assert await wait_for(lambda: len(comfy_results()) >= seen + 3, 60)
        slow = comfy_results()[seen + 1 :]  # after the fault, every run of it
        assert all(r.status is Status.OK for r in slow), [(r.status, r.reason) for r in slow]
        assert all(r.duration >= 3.0 for r in slow)  # slower: three 1 s responses
        restarts = [e for e in events if isinstance(e, RecoveryEvent)
                    and e.kind is RecoveryKind.RESTART_STARTED and e.target == "comfyui"]
        assert restarts == []
    finally:
        await guardian.stop()


@pytest.mark.timeout(240)
async def test_comfyui_canary_fail_escalates_an_incident_and_restarts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row promised a restart after failure_threshold; the canary is no liveness check
    (a failing workflow is not fixed by a restart): an incident that escalates, no restart."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg, _ = prepare_demo(tmp_path / "demo", api_port=0)
    url = next(c.url for c in cfg.target("comfyui").checks if c.kind == "comfyui")  # type: ignore[attr-defined]
    guardian = Guardian(cfg)
    events: list[Event] = []
    guardian.bus.subscribe(events.append)
    await guardian.start()
    try:
        assert await wait_for(lambda: any(
            isinstance(e, CheckResult) and e.kind == "comfyui" and e.status is Status.OK
            for e in events), 60)
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            r = await client.post(f"{url}/__sim/fault", json={"mode": "canary_fail"})
            assert r.status_code == 200
        store = guardian.incidents_store
        assert store is not None

        def escalated() -> bool:
            return any(i.status == "escalated" and i.target == "comfyui"
                       for i in store.incidents())

        assert await wait_for(escalated, 150)
        restarts = [e for e in events if isinstance(e, RecoveryEvent)
                    and e.kind is RecoveryKind.RESTART_STARTED and e.target == "comfyui"]
        assert restarts == []
    finally:
        await guardian.stop()


@pytest.mark.timeout(300)
async def test_comfyui_stuck_running_busy_then_interrupt_then_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row said "busy (OK)", yet an incident opened: with no job submitted, the prompt
    that never ends is the canary's own, and the canary times out first."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg, _ = prepare_demo(tmp_path / "demo", api_port=0)
    url = next(c.url for c in cfg.target("comfyui").checks if c.kind == "comfyui")  # type: ignore[attr-defined]
    guardian = Guardian(cfg)
    events: list[Event] = []
    guardian.bus.subscribe(events.append)

    def recovery(kind: RecoveryKind) -> list[RecoveryEvent]:
        return [e for e in events if isinstance(e, RecoveryEvent) and e.kind is kind]

    await guardian.start()
    try:
        assert await wait_for(lambda: any(
            isinstance(e, CheckResult) and e.kind == "comfyui" and e.status is Status.OK
            for e in events), 60)
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            r = await client.post(f"{url}/__sim/fault", json={"mode": "stuck_running"})
            assert r.status_code == 200
        mark = len(events)
        assert await wait_for(lambda: bool(recovery(RecoveryKind.RESTART_STARTED)), 240)
        after = [e for e in events[mark:] if isinstance(e, CheckResult) and e.kind == "comfyui"]
        busy = [e for e in after if e.values.get("busy") is True]
        assert busy and busy[0].status is Status.OK  # busy is OK until judged stuck
        assert any(e.values.get("condition") == "stuck_running" for e in after)
        interrupt = recovery(RecoveryKind.INTERRUPT_SENT)
        assert interrupt and interrupt[0].time <= recovery(RecoveryKind.RESTART_STARTED)[0].time
        canary = [e for e in events[mark:] if isinstance(e, CheckResult)
                  and e.kind == "comfyui_canary" and e.status is Status.FAILED]
        opened = guardian.incidents_store.incidents()  # type: ignore[union-attr]
        assert canary and opened  # the canary's own prompt got stuck: it failed first
    finally:
        await guardian.stop()


ROWS = [  # (sim, mode, params, restarted): what the table promises for the quick rows
    ("comfyui", "crash", {"crash_after": 0.1}, True),
    ("comfyui", "hang", {}, True),
    ("comfyui", "error500", {}, True),
    ("panel", "crash", {"crash_after": 0.1}, True),
    ("panel", "hang", {}, True),
    ("panel", "slow", {"delay": 5}, True),  # above the panel check's 3 s timeout
    ("panel", "error500", {}, True),
    ("panel", "unhealthy", {}, True),
    ("panel", "degraded", {}, False),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("sim", "mode", "params", "restarted"), ROWS,
                         ids=[f"{r[0]}-{r[1]}" for r in ROWS])
async def test_quick_fault_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: str, mode: str,
    params: dict[str, float], restarted: bool,
) -> None:
    from urllib.parse import urlsplit

    from guardian.demo.faults import FAULT_GUIDE

    (row,) = [g for g in FAULT_GUIDE if (g.sim, g.mode) == (sim, mode)]
    assert ("restart" in row.expected and "no restart" not in row.expected) == restarted
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg, _ = prepare_demo(tmp_path / "demo", api_port=0)
    parts = urlsplit(next(c.url for c in cfg.target(sim).checks  # type: ignore[attr-defined]
                          if c.kind in ("comfyui", "http")))
    control = f"{parts.scheme}://{parts.netloc}/__sim/fault"
    guardian = Guardian(cfg)
    events: list[Event] = []
    guardian.bus.subscribe(events.append)

    def results() -> list[CheckResult]:
        return [e for e in events if isinstance(e, CheckResult) and e.target == sim
                and e.kind in ("comfyui", "http") and not e.startup]

    def restarts() -> list[RecoveryEvent]:
        return [e for e in events if isinstance(e, RecoveryEvent) and e.target == sim
                and e.kind is RecoveryKind.RESTART_STARTED]

    await guardian.start()
    try:
        assert await wait_for(lambda: any(r.status is Status.OK for r in results()), 60)
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            r = await client.post(control, json={"mode": mode, **params})
            assert r.status_code == 200
        seen = len(results())
        if restarted:
            assert await wait_for(lambda: bool(restarts()), 90)
        else:
            assert await wait_for(lambda: len(results()) >= seen + 3, 60)
            assert restarts() == []
            assert all(r.status is Status.DEGRADED for r in results()[seen + 1 :])
    finally:
        await guardian.stop()


class Demo:
    """The running demo stack with every event it published."""

    def __init__(self, tmp_path: Path) -> None:
        self.cfg, _ = prepare_demo(tmp_path / "demo", api_port=0)
        self.url = next(c.url for c in self.cfg.target("comfyui").checks  # type: ignore[attr-defined]
                        if c.kind == "comfyui")
        self.guardian = Guardian(self.cfg)
        self.events: list[Event] = []
        self.guardian.bus.subscribe(self.events.append)

    def recovery(self, kind: RecoveryKind) -> list[RecoveryEvent]:
        return [e for e in self.events if isinstance(e, RecoveryEvent) and e.kind is kind]

    async def start(self, mode: str, **params: float) -> None:
        await self.guardian.start()
        assert await wait_for(lambda: any(
            isinstance(e, CheckResult) and e.kind == "comfyui" and e.status is Status.OK
            for e in self.events), 60)
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            r = await client.post(f"{self.url}/__sim/fault", json={"mode": mode, **params})
            assert r.status_code == 200


@pytest.mark.timeout(180)
async def test_comfyui_vram_leak_is_freed_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    demo = Demo(tmp_path)
    try:
        await demo.start("vram_leak", leak_mb=8000)  # below 1024 MB free within 3 reads
        assert await wait_for(lambda: bool(demo.recovery(RecoveryKind.REMEDIATION_SUCCEEDED)),
                              90)
        assert demo.recovery(RecoveryKind.FREE_SENT)
        assert demo.recovery(RecoveryKind.RESTART_STARTED) == []
    finally:
        await demo.guardian.stop()


@pytest.mark.timeout(240)
async def test_comfyui_pending_idle_is_interrupted_then_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    demo = Demo(tmp_path)
    try:
        await demo.start("pending_idle")
        assert await wait_for(lambda: bool(demo.recovery(RecoveryKind.RESTART_STARTED)), 180)
        started = [e for e in demo.recovery(RecoveryKind.REMEDIATION_STARTED)
                   if e.reason == "stuck_pending"]
        assert started and demo.recovery(RecoveryKind.INTERRUPT_SENT)
    finally:
        await demo.guardian.stop()


@pytest.mark.timeout(240)
async def test_comfyui_oom_fails_the_canary_and_the_report_names_cuda_oom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    demo = Demo(tmp_path)
    try:
        await demo.start("oom")
        store = demo.guardian.incidents_store
        assert store is not None

        def reported() -> list[str]:
            return [i.report_path for i in store.incidents()
                    if i.target == "comfyui" and i.report_path]

        assert await wait_for(lambda: bool(reported()), 180)
        text = Path(reported()[0]).read_text(encoding="utf-8")
        steps = text.split("## Suggested next steps", 1)[1].split("## System snapshot", 1)[0]
        assert "CUDA out of memory" in steps
    finally:
        await demo.guardian.stop()
