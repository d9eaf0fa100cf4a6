"""Startup truths with the whole runtime and real child processes (issue 10 items 4-5).

* A child that dies 0.2 s after every spawn (code 1, a real traceback) is a failed start
  each time: ``restart_failed`` with the exit code, never ``restart_succeeded``, counted
  ``outcome="failed"``, the breaker opens after ``max_attempts``; the incident's headline
  is "exits during startup with code 1: <its exception>" and the next steps come from that
  traceback, not from the harmless warning it prints on every boot.
* A service that boots slowly (listens only after a few seconds) opens no incident and is
  not restarted: its startup phase covers the boot, and it is seen soon after it answers.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guardian.api.metrics import Metrics
from guardian.config.schema import Config
from guardian.core.events import Event, IncidentEvent, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.demo.stack import free_port
from guardian.runtime import Guardian

pytestmark = pytest.mark.timeout(120)

CRASHER = """\
import sys, time
print("WARNING: No module named 'xformers'; using the default attention", flush=True)
time.sleep(0.2)
def bind(port):
    raise OSError(98, f"error while attempting to bind on address ('127.0.0.1', {port}):"
                      " address already in use")
bind(int(sys.argv[1]))
"""


async def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def config(tmp: Path, command: list[str], port: int, **recovery: Any) -> Config:
    return Config.model_validate(
        {
            "guardian": {
                "log_dir": str(tmp / "logs"),
                "report_dir": str(tmp / "reports"),
                "state_dir": str(tmp / "state"),
                "jitter": 0,
            },
            "api": {"enabled": False},
            "escalation": {"failures": 3, "stable_period": 60},
            "targets": [
                {
                    "name": "comfyui",
                    "service": {
                        "backend": "process",
                        "command": command,
                        "log_file": str(tmp / "logs" / "comfyui.log"),
                        "stop_timeout": 2,
                    },
                    "recovery": {
                        "cooldown": 0.2,
                        "backoff_factor": 1.0,
                        "max_attempts": 3,
                        "window": 600,
                        **recovery,
                    },
                    "checks": [
                        {
                            "kind": "comfyui",
                            "url": f"http://127.0.0.1:{port}",
                            "interval": 5,
                            "timeout": 1,
                        }
                    ],
                }
            ],
        }
    )


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


@pytest.mark.slow
async def test_a_crash_at_startup_is_a_failed_start_that_opens_the_breaker(
    tmp_path: Path,
) -> None:
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    port = free_port()
    cfg = config(tmp_path, [sys.executable, str(script), str(port)], port, min_uptime=5)
    guardian = Guardian(cfg)
    watch = Watch(guardian)
    metrics = Metrics(guardian, process=False)  # type: ignore[arg-type]
    await guardian.start()
    try:
        assert await wait_for(lambda: bool(watch.recovery(RecoveryKind.BREAKER_OPEN)), 60)
        failed = watch.recovery(RecoveryKind.RESTART_FAILED)
        assert len(failed) == 3 and watch.recovery(RecoveryKind.RESTART_SUCCEEDED) == []
        headline = (
            "exits during startup with code 1: OSError: [Errno 98] error while attempting"
            f" to bind on address ('127.0.0.1', {port}): address already in use"
        )
        assert all(e.values["exit_code"] == 1 and e.detail == headline for e in failed)
        sample = metrics.registry.get_sample_value
        labels = {"target": "comfyui", "outcome": "failed"}
        assert sample("guardian_restarts_total", labels) == 3
        assert sample("guardian_restarts_total", {**labels, "outcome": "succeeded"}) == 0

        assert await wait_for(
            lambda: any(e.transition == "escalated" and e.report_path for e in watch.incidents()),
            30,
        )
        opened = next(e for e in watch.incidents() if e.transition == "opened")
        assert opened.summary == "process exits during startup with code 1"  # the first exit
        escalated = next(e for e in watch.incidents() if e.transition == "escalated")
        assert escalated.summary.startswith("recovery gave up after 3 attempts: exits during")
        assert {e.incident_id for e in watch.incidents()} == {opened.incident_id}
        report = Path(escalated.report_path or "").read_text(encoding="utf-8")
        assert "connection refused" not in escalated.summary
        # Markdown-escaped: target text never becomes a link or HTML in the report.
        assert "exits during startup with code 1: OSError: \\[Errno 98\\]" in report
        steps = report.split("## Suggested next steps")[1].split("## System snapshot")[0]
        assert "**Port already in use**" in steps
        assert "Missing Python module" not in steps  # the boot warning is not blamed
        assert "No module named 'xformers'" in report  # though the log tail shows it
    finally:
        await guardian.stop()
        metrics.close()


@pytest.mark.slow
async def test_a_slow_boot_opens_no_incident_and_is_not_restarted(tmp_path: Path) -> None:
    port = free_port()
    sim = [
        sys.executable, "-m", "guardian.demo.comfyui.server", "--device", "cpu",
        "--port", str(port), "--startup-delay", "3",
    ]
    guardian = Guardian(config(tmp_path, sim, port))
    watch = Watch(guardian)
    await guardian.start()
    try:
        assert await wait_for(
            lambda: any(r.status is Status.OK for r in watch.results()), 30
        ), watch.results()
        booting = [r for r in watch.results() if r.status is Status.FAILED]
        assert booting, "the check saw the boot"  # probed during it, at the short period
        assert all(r.startup for r in booting)
        assert len(booting) >= 2  # probes every second, not every 5 s interval
        await asyncio.sleep(1.5)
        assert watch.incidents() == []
        assert watch.recovery(RecoveryKind.RESTART_STARTED) == []
        assert guardian.incidents_store is not None
        assert guardian.incidents_store.incidents(include_resolved=True) == []
    finally:
        await guardian.stop()
