"""The whole runtime, for real: a supervised ComfyUI simulator that keeps crashing.

Guardian restarts it ``max_attempts`` times, opens the breaker, escalates one incident with
a Markdown report holding the simulator's real last log lines, and notifies a real local
webhook exactly once per transition; after a manual restart of a fixed simulator the
incident resolves and that is notified once too.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from guardian.config.schema import Config
from guardian.core.events import Event, IncidentEvent, RecoveryEvent, RecoveryKind
from guardian.demo.stack import free_port
from guardian.runtime import Guardian
from testkit.incidents import Webhook

LAUNCHER = """\
import os, sys
mode = open(sys.argv[1]).read().strip()
args = [sys.executable, "-m", "guardian.demo.comfyui.server", "--device", "cpu",
        "--port", sys.argv[2]]
if mode == "crash":
    args += ["--fault", "crash", "--crash-after", "0.6"]
os.execv(sys.executable, args)
"""


async def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def stack_config(tmp: Path, port: int, hook: str) -> Config:
    launcher = tmp / "launcher.py"
    launcher.write_text(LAUNCHER)
    return Config.model_validate(
        {
            "guardian": {
                "log_dir": str(tmp / "logs"),
                "report_dir": str(tmp / "reports"),
                "state_dir": str(tmp / "state"),
                "jitter": 0,
            },
            "api": {"enabled": False},
            "escalation": {"failures": 3, "stable_period": 3.0},  # > one crash cycle
            "notify": {"urls": [hook], "retries": 0, "timeout": 5},
            "targets": [
                {
                    "name": "comfyui",
                    "service": {
                        "backend": "process",
                        "command": [sys.executable, str(launcher), str(tmp / "mode"), str(port)],
                        "log_file": str(tmp / "logs" / "comfyui.log"),
                        "stop_timeout": 2,
                    },
                    "recovery": {
                        "cooldown": 0.2,
                        "backoff_factor": 1.0,
                        "max_attempts": 3,
                        "window": 120,
                        "grace_period": 0,
                        "stable_period": 60,
                    },
                    "checks": [
                        {
                            "kind": "comfyui",
                            "url": f"http://127.0.0.1:{port}",
                            "interval": 0.3,
                            "timeout": 0.25,
                        }
                    ],
                }
            ],
        }
    )


@pytest.mark.slow
async def test_crash_loop_escalates_once_with_report_and_resolves(tmp_path: Path) -> None:
    hook = Webhook()
    (tmp_path / "mode").write_text("crash")
    cfg = stack_config(tmp_path, free_port(), hook.url())
    guardian = Guardian(cfg)
    events: list[Event] = []
    guardian.bus.subscribe(events.append)

    def recoveries(kind: RecoveryKind) -> list[RecoveryEvent]:
        return [e for e in events if isinstance(e, RecoveryEvent) and e.kind is kind]

    def incidents() -> list[IncidentEvent]:
        return [e for e in events if isinstance(e, IncidentEvent)]

    await guardian.start()
    try:
        assert await wait_for(lambda: bool(recoveries(RecoveryKind.BREAKER_OPEN)), 40), events
        assert len(recoveries(RecoveryKind.RESTART_STARTED)) == 3
        assert await wait_for(
            lambda: any(e.transition == "escalated" and e.report_path for e in incidents()), 20
        )
        escalated = next(e for e in incidents() if e.transition == "escalated")
        assert {e.incident_id for e in incidents()} == {escalated.incident_id}  # one incident
        report = Path(escalated.report_path or "").read_text()
        assert "comfyui" in report and "Timeline" in report
        assert "Starting server" in report  # the simulator's own log lines
        assert "restart" in report.lower()

        # No storm: the breaker holds while the service stays dead.
        await asyncio.sleep(1.5)
        assert len(recoveries(RecoveryKind.RESTART_STARTED)) == 3

        # Fixed; a manual restart closes the breaker and the incident resolves.
        (tmp_path / "mode").write_text("ok")
        await guardian.recovery.restart("comfyui")  # type: ignore[union-attr]
        assert await wait_for(lambda: any(e.transition == "resolved" for e in incidents()), 20)
        assert await wait_for(lambda: len(hook.bodies) >= 3, 10)
        await asyncio.sleep(0.5)
        titles = " | ".join(hook.titles()).lower()
        assert len(hook.bodies) == 3, titles
        for word in ("opened", "escalated", "resolved"):
            assert titles.count(word) == 1, titles
    finally:
        await guardian.stop()
        hook.close()
    log_lines = (tmp_path / "logs" / "comfyui.log").read_text()
    assert "Starting server" in log_lines
    json.dumps([str(e) for e in events])  # events are printable for debugging
