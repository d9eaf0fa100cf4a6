"""Recovery that tells the truth (issue 22), with the whole runtime and real processes:
the ComfyUI simulator (or a small script) as a supervised child, real SIGKILLs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guardian.api.views import stack_health
from guardian.config.schema import Config
from guardian.core.events import Event, IncidentEvent, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult
from guardian.demo.stack import free_port
from guardian.runtime import Guardian

# A whole runtime around real supervised processes: seconds each.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def config(
    tmp: Path, command: list[str], port: int, *, interval: float = 600,
    check: dict[str, Any] | None = None, remediation: dict[str, Any] | None = None,
    escalation: dict[str, Any] | None = None, **recovery: Any,
) -> Config:
    return Config.model_validate(
        {
            "guardian": {
                "log_dir": str(tmp / "logs"),
                "report_dir": str(tmp / "reports"),
                "state_dir": str(tmp / "state"),
                "jitter": 0,
            },
            "api": {"enabled": False},
            "escalation": {"failures": 3, "stable_period": 60, **(escalation or {})},
            "targets": [
                {
                    "name": "comfyui",
                    "service": {
                        "backend": "process",
                        "command": command,
                        "log_file": str(tmp / "logs" / "comfyui.log"),
                        "stop_timeout": 2,
                    },
                    "recovery": {"cooldown": 0.2, "backoff_factor": 1.0, **recovery},
                    "remediation": remediation or {},
                    "checks": [
                        {
                            "kind": "comfyui",
                            "url": f"http://127.0.0.1:{port}",
                            "interval": interval,
                            "timeout": 1,
                            **(check or {}),
                        }
                    ],
                }
            ],
        }
    )


def simulator(port: int, boot: float) -> list[str]:
    return [sys.executable, "-m", "guardian.demo.comfyui.server", "--device", "cpu",
            "--port", str(port), "--startup-delay", str(boot)]


class Watch:
    def __init__(self, guardian: Guardian) -> None:
        self.events: list[Event] = []
        guardian.bus.subscribe(self.events.append)

    def recovery(self, kind: RecoveryKind) -> list[RecoveryEvent]:
        return [e for e in self.events if isinstance(e, RecoveryEvent) and e.kind is kind]

    def incidents(self) -> list[IncidentEvent]:
        return [e for e in self.events if isinstance(e, IncidentEvent)]

    def results(self) -> list[CheckResult]:
        return [e for e in self.events if isinstance(e, CheckResult)]


def healthy(guardian: Guardian) -> bool:
    return stack_health(guardian)[0] == "healthy"  # what /api/health, /readyz, the page use


async def test_healthy_on_the_probe_that_proves_the_new_process_up(tmp_path: Path) -> None:
    """Bullet 1: the passing probe that proved the restart (it began after the spawn,
    before the restart's bookkeeping ended) counts for the new process. With a 600 s
    interval the next regular run never comes in this test: health must not wait for it."""
    port = free_port()
    guardian = Guardian(config(tmp_path, simulator(port, 1.0), port))
    watch = Watch(guardian)
    await guardian.start()
    try:
        assert await wait_for(lambda: healthy(guardian), 60)
        backend = guardian.backends["comfyui"]
        old = (await backend.status()).pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        assert await wait_for(lambda: bool(watch.recovery(RecoveryKind.RESTART_SUCCEEDED)), 60)
        assert await wait_for(lambda: healthy(guardian), 30)
        (ok,) = watch.recovery(RecoveryKind.RESTART_SUCCEEDED)
        assert ok.values["proven_by"] == "passed"  # a check proved it, not min_uptime
        new = (await backend.status()).pid
        assert new is not None and new != old
    finally:
        await guardian.stop()


SLOW_CRASH = """\
import sys, time
print("Loading custom nodes...", flush=True)
time.sleep(1.5)  # longer than min_uptime: surviving it proves nothing
print("RuntimeError: custom node failed while importing", flush=True)
sys.exit(1)
"""


async def test_a_crash_after_min_uptime_but_before_any_passing_check_is_a_failed_start(
    tmp_path: Path,
) -> None:
    """Bullet 2: with a check of the service, a start succeeds on its first passing check,
    never on surviving ``min_uptime``; an exit before it is a failed start."""
    script = tmp_path / "slow_crash.py"
    script.write_text(SLOW_CRASH)
    port = free_port()
    cfg = config(
        tmp_path, [sys.executable, str(script)], port, interval=5, min_uptime=0.5,
        max_attempts=2, window=600,
    )
    guardian = Guardian(cfg)
    watch = Watch(guardian)
    await guardian.start()
    try:
        assert await wait_for(lambda: bool(watch.recovery(RecoveryKind.BREAKER_OPEN)), 60)
        failed = watch.recovery(RecoveryKind.RESTART_FAILED)
        assert watch.recovery(RecoveryKind.RESTART_SUCCEEDED) == []
        assert len(failed) == 2 and all(e.values.get("startup_exit") for e in failed)
        assert failed[0].detail.startswith("exits during startup with code 1")
        exits = watch.recovery(RecoveryKind.EXITED)
        assert exits and all(e.values["during_startup"] for e in exits[1:])
    finally:
        await guardian.stop()


async def test_memory_pressure_a_restart_cannot_fix_is_restarted_once_and_said(
    tmp_path: Path,
) -> None:
    """Bullet 3 end to end: RAM below the threshold whatever ComfyUI does (the threshold is
    above this machine's RAM): /free does not help, one restart does not either, so
    recovery stops restarting for it and the incident says why; the ladder backs off."""
    port = free_port()
    cfg = config(
        tmp_path, simulator(port, 0.0), port, interval=1.5,
        check={"ram_free_min_mb": 1e9, "vram_free_min_mb": None, "vram_critical_mb": None},
        remediation={"free_wait": 0.1},
    )
    guardian = Guardian(cfg)
    watch = Watch(guardian)
    await guardian.start()
    try:
        assert await wait_for(lambda: bool(watch.recovery(RecoveryKind.CONDITION_PERSISTS)), 60)
        checks = len(watch.results())
        assert await wait_for(lambda: len(watch.results()) >= checks + 10, 30)
        assert len(watch.recovery(RecoveryKind.RESTART_STARTED)) == 1
        assert len(watch.recovery(RecoveryKind.FREE_SENT)) == 1  # backed off, not every check
        failed = watch.recovery(RecoveryKind.REMEDIATION_FAILED)
        assert failed and "ram " in failed[0].detail  # what is still low, never "()"
        incident = guardian.incidents_store.open_incidents()[0]  # type: ignore[union-attr]
        assert incident.summary.startswith(
            "memory pressure persists after restart: not ComfyUI's own memory"
        )
    finally:
        await guardian.stop()


SILENT_FAIL = """\
import sys, time
print("Import times for custom nodes:", flush=True)
print("   0.1 seconds (IMPORT FAILED): /ComfyUI/custom_nodes/broken-node", flush=True)
print("   0.0 seconds: /ComfyUI/custom_nodes/websocket_image_save.py", flush=True)
time.sleep(0.3)
sys.exit(3)
"""


async def test_a_failed_start_is_blamed_on_its_own_output_only(tmp_path: Path) -> None:
    """Bullet 4: an OOM a run long ago left in the log, and ComfyUI's import-times table
    (a node that failed to import, booted past), are not why this start failed."""
    script = tmp_path / "silent.py"
    script.write_text(SILENT_FAIL)
    log_file = tmp_path / "logs" / "comfyui.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text(
        "Traceback (most recent call last):\n"
        '  File "main.py", line 1, in <module>\n'
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    )
    port = free_port()
    cfg = config(tmp_path, [sys.executable, str(script)], port, interval=5, max_attempts=1,
                 window=600)
    guardian = Guardian(cfg)
    watch = Watch(guardian)
    await guardian.start()
    try:
        assert await wait_for(lambda: bool(watch.recovery(RecoveryKind.RESTART_FAILED)), 60)
        (failed,) = watch.recovery(RecoveryKind.RESTART_FAILED)[:1]
        assert failed.detail == "exits during startup with code 3"
        assert failed.values["last_error"] == ""
    finally:
        await guardian.stop()


async def test_a_resolved_incident_is_reported_from_what_was_recorded_while_open(
    tmp_path: Path,
) -> None:
    """Bullet 4: rendered later (the CLI reads the live log), a resolved incident's report
    takes nothing from the present: not a later incident's log line, not a new snapshot."""
    from guardian.core.clock import FakeClock
    from guardian.incidents.report import Reporter
    from guardian.incidents.store import Store

    clock = FakeClock()
    store = Store(tmp_path / "g.db")
    cfg = config(tmp_path, ["x"], 1)
    live = ["Starting server"]

    async def tail(_target: str, n: int) -> list[str]:
        return live[-n:]

    snaps = iter(["at escalation", "the present"])
    reporter = Reporter(cfg, store, log_tail=tail, snapshot=lambda: {"Now": [next(snaps)]},
                        clock=clock)
    inc = store.open_incident("comfyui", clock.now(), "major", "stuck: prompt p1")
    await reporter.capture(inc.id)  # at escalation: the log said nothing wrong
    store.update_incident(inc.id, status="resolved", resolved_at=clock.now())
    live += ["Traceback (most recent call last):", '  File "x.py", line 1',
             "torch.OutOfMemoryError: CUDA out of memory"]  # a later incident's line
    text = await reporter.render(inc.id, live_log=True, live_snapshot=True)
    assert "CUDA out of memory" not in text and "the present" not in text
    assert "Starting server" in text and "at escalation" in text
    store.close()


async def test_custom_nodes_that_failed_to_import_degrade_and_open_an_incident(
    tmp_path: Path,
) -> None:
    """Bullet 5: ComfyUI logs IMPORT FAILED and runs without the node; Guardian said
    healthy. Now: DEGRADED with the names (health, page, report read the reason) and an
    incident, since the node was not failing before."""
    port = free_port()
    command = [*simulator(port, 0.0), "--failed-import", "ComfyUI-Broken-Pack"]
    guardian = Guardian(config(tmp_path, command, port, interval=1.0, check={"timeout": 0.5}))
    watch = Watch(guardian)
    await guardian.start()
    try:
        def flagged() -> list[CheckResult]:
            return [r for r in watch.results() if r.values.get("failed_imports")]

        assert await wait_for(lambda: bool(flagged()), 30)
        first = flagged()[0]
        assert first.status.value == "degraded"
        assert first.values["failed_imports"] == "ComfyUI-Broken-Pack"
        assert "custom nodes failed to import: ComfyUI-Broken-Pack" in first.reason
        assert stack_health(guardian)[0] == "degraded"
        (incident,) = guardian.incidents_store.open_incidents()  # type: ignore[union-attr]
        assert incident.summary == "custom nodes failed to import: ComfyUI-Broken-Pack"
        assert await wait_for(lambda: len(flagged()) >= 3, 30)
        assert len(guardian.incidents_store.incidents()) == 1  # type: ignore[union-attr]
    finally:
        await guardian.stop()


async def test_a_leak_free_keeps_hiding_becomes_an_incident(tmp_path: Path) -> None:
    """Bullet 3: the simulator leaks VRAM on every /system_stats; each /free heals it, so
    nothing ever failed and the leak went unnoticed forever. Needed 3 times within the
    window (configured), it opens an incident."""
    port = free_port()
    # 23228 MiB free at start, 1000 MiB leaked per read: below 21728 every second read.
    command = [sys.executable, "-m", "guardian.demo.comfyui.server", "--device", "cuda",
               "--port", str(port), "--fault", "vram_leak", "--leak-mb", "1000"]
    cfg = config(
        tmp_path, command, port, interval=1.0,
        check={"timeout": 0.5, "vram_free_min_mb": 21728, "vram_critical_mb": None},
        remediation={"free_wait": 0.1},
        escalation={"remediation_repeats": 3, "remediation_window": 600},
    )
    guardian = Guardian(cfg)
    watch = Watch(guardian)
    await guardian.start()
    try:
        assert await wait_for(lambda: bool(watch.incidents()), 60)
        fixes = watch.recovery(RecoveryKind.REMEDIATION_SUCCEEDED)
        assert len(fixes) == 3 and watch.recovery(RecoveryKind.RESTART_STARTED) == []
        (opened,) = watch.incidents()
        assert opened.transition.value == "opened"  # announced: notified like any opening
        assert opened.summary == "recurring memory pressure: /free needed 3 times in 10 min"
    finally:
        await guardian.stop()
