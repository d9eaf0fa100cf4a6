"""End to end: a real crash-looping child process -> incident -> report -> real webhook.

The supervisor here is a tiny loop in the test (run the child, see it exit, publish what
recovery would publish); the incident machinery, store, report writer, apprise and the
HTTP receiver are all real, and the report's log lines come from the child's real log.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import deque
from pathlib import Path

from guardian.core.clock import FakeClock
from guardian.core.events import EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.core.state import State
from guardian.incidents.notify import Notifier
from guardian.incidents.report import Reporter
from guardian.incidents.snapshot import state_snapshot
from guardian.incidents.store import Store
from guardian.incidents.tracker import IncidentTracker
from testkit.incidents import Webhook, make_config

CRASH = (
    "import sys; n = sys.argv[1]; "
    "print(f'run {n}: ComfyUI starting', flush=True); "
    "print(f'run {n}: loading custom nodes', flush=True); "
    "print('using API_KEY=sk-supersecret-42', flush=True); "
    "print(\"ModuleNotFoundError: No module named 'cv2'\", flush=True); "
    "print(f'run {n}: IMPORT FAILED, exiting', flush=True); "
    "sys.exit(1)"
)
HEALTHY = "import time; print('run 4: ComfyUI ready on 127.0.0.1:8188', flush=True); time.sleep(60)"


async def test_crash_loop_opens_escalates_reports_notifies_and_resolves(
    tmp_path: Path, webhook: Webhook
) -> None:
    log_file = tmp_path / "comfyui.log"
    config = make_config(
        tmp_path,
        escalation={"failures": 3, "stable_period": 30, "report_log_lines": 8},
        notify={"urls": [webhook.url("guardian")]},
        targets=[
            {
                "name": "comfyui",
                "description": "ComfyUI generation server",
                "service": {
                    "backend": "process",
                    "command": [sys.executable, "-c", CRASH],
                    "log_file": str(log_file),
                },
                "checks": [{"kind": "service"}],
            }
        ],
    )
    clock = FakeClock()
    bus = EventBus()
    state = State(config, bus)
    store = Store.from_config(config, now=clock.now)

    async def log_tail(target: str, n: int) -> list[str]:
        with log_file.open(encoding="utf-8") as f:
            return list(deque((line.rstrip("\n") for line in f), maxlen=n))

    reporter = Reporter(
        config, store, log_tail=log_tail, snapshot=state_snapshot(state), clock=clock
    )
    notifier = Notifier(config, store, clock)
    tracker = IncidentTracker(config, store, bus, clock, reporter, notifier)

    def publish(kind: RecoveryKind, attempt: int = 0, reason: str = "", **values: object) -> None:
        bus.publish(RecoveryEvent("comfyui", kind, clock.now(), attempt, reason, values=values))

    def record(status: Status, reason: str, **values: object) -> None:
        now = clock.now()
        state.record(
            CheckResult("comfyui", "service", "service", status, reason, values, now, now, 0.02)  # type: ignore[arg-type]
        )

    async def run(argv_code: str, n: int) -> asyncio.subprocess.Process:
        with log_file.open("ab") as out:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-c", argv_code, str(n), stdout=out, stderr=subprocess.STDOUT
            )

    record(Status.OK, "running", pid=1)
    # three real crashes, with the restarts a recovery manager would make
    for n in (1, 2, 3):
        if n > 1:
            publish(RecoveryKind.RESTART_STARTED, n - 1, "process exited")
        proc = await run(CRASH, n)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
        assert code == 1
        publish(RecoveryKind.EXITED, n - 1, f"exit code {code}", exit_code=code)
        await clock.advance(2)
        record(Status.FAILED, f"process exited with code {code}", exit_code=code, pid=proc.pid)
        await clock.advance(5)
    # Each restart began a fresh streak: recovery escalates by giving up, as it would here.
    assert store.incidents()[0].status == "open"
    publish(RecoveryKind.BREAKER_OPEN, 3, "exited with code 1")

    await tracker.idle()
    await asyncio.wait_for(notifier.idle(), timeout=30)
    (incident,) = store.incidents()
    assert incident.status == "escalated" and incident.failure_count == 3
    assert incident.report_path is not None
    report = Path(incident.report_path)
    assert report.parent == config.guardian.report_dir
    md = await asyncio.to_thread(report.read_text, encoding="utf-8")

    timeline = md.split("## Timeline (UTC)")[1].split("## Failed checks")[0]
    assert timeline.count("check service failed") == 3
    assert timeline.count("recovery exited") == 3  # the first one, seen before the check, too
    assert "recovery restart_started (attempt 2) | process exited" in timeline
    assert "process exited with code 1 (exit_code=1" in timeline
    assert "### service (service): 3 failure(s)" in md
    log_section = md.split("## Service log")[1]
    assert "last 8 line(s) of comfyui" in log_section
    assert "run 3: IMPORT FAILED, exiting" in log_section  # the child's real last lines
    assert "run 2: IMPORT FAILED, exiting" in log_section
    assert "run 1:" not in log_section  # only the last N lines
    assert "sk-supersecret-42" not in md and "API_KEY=[REDACTED]" in md
    assert "Missing module(s): `cv2`" in md
    assert "## System snapshot" in md and "### Memory" in md

    # it comes back: a healthy child, then stable for the stable period
    publish(RecoveryKind.RESTART_STARTED, 3, "process exited")
    healthy = await run(HEALTHY, 4)
    try:
        publish(RecoveryKind.RESTART_SUCCEEDED, 3, pid=healthy.pid)
        record(Status.OK, "running", pid=healthy.pid)
        await clock.advance(30)
        record(Status.OK, "running", pid=healthy.pid)
    finally:
        healthy.kill()
        await healthy.wait()
    await asyncio.wait_for(notifier.idle(), timeout=30)
    resolved = store.incident(incident.id)
    assert resolved is not None and resolved.status == "resolved"

    titles = webhook.titles()
    assert titles == [
        f"[Guardian] comfyui: incident #{incident.id} opened",
        f"[Guardian] comfyui: incident #{incident.id} escalated",
        f"[Guardian] comfyui: incident #{incident.id} resolved",
    ]
    assert webhook.paths == ["/guardian"] * 3
    escalated_body = webhook.bodies[1]["message"]
    assert f"Report: {report}" in escalated_body and "Severity: critical" in escalated_body
    attempts = store.notifications(incident.id)
    assert [(a.transition, a.ok) for a in attempts] == [
        ("opened", True),
        ("escalated", True),
        ("resolved", True),
    ]
    # the store has the whole story linked to the incident
    kinds = [e.kind for e in store.recovery_events(incident_id=incident.id)]
    assert kinds.count("restart_started") == 3 and kinds[-1] == "restart_succeeded"

    await tracker.aclose()
    await notifier.aclose()
    store.close()
