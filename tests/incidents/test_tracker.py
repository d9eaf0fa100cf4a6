"""Incident lifecycle: open, escalate, flap, resolve, and continuity across restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

from incidents_helpers import SRC, make_config, recovery, result

from guardian.config.schema import Config
from guardian.core.clock import FakeClock
from guardian.core.events import EventBus, IncidentEvent, IncidentTransition, RecoveryKind
from guardian.core.result import Status
from guardian.core.state import State
from guardian.incidents.store import Store
from guardian.incidents.tracker import IncidentTracker

FAILED, OK, DEGRADED = Status.FAILED, Status.OK, Status.DEGRADED


class Harness:
    def __init__(self, tmp: Path, config: Config | None = None, **kw: object) -> None:
        self.config = config or make_config(tmp, escalation={"stable_period": 60})
        self.clock = FakeClock()
        self.bus = EventBus()
        self.state = State(self.config, self.bus)
        self.store = Store.from_config(self.config, now=self.clock.now)
        self.events: list[IncidentEvent] = []
        self.bus.subscribe(
            lambda e: self.events.append(e) if isinstance(e, IncidentEvent) else None
        )
        self.tracker = IncidentTracker(self.config, self.store, self.bus, self.clock, **kw)  # type: ignore[arg-type]

    def record(
        self, status: Status, check: str = "http", target: str = "comfyui", **kw: object
    ) -> None:
        self.state.record(result(self.clock, status, check=check, target=target, **kw))  # type: ignore[arg-type]

    def transitions(self) -> list[tuple[int, str]]:
        return [(e.incident_id, str(e.transition)) for e in self.events]


async def test_opens_on_first_failure_escalates_after_three_resolves_after_stable(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.record(OK)
    h.record(OK, check="disk")
    assert h.store.incidents() == []

    h.record(FAILED)
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None and inc.status == "open" and inc.severity == "major"
    assert inc.summary == "http: connection refused"
    h.record(FAILED)
    assert h.store.incident(inc.id).status == "open"  # type: ignore[union-attr]
    h.record(FAILED)
    await h.tracker.idle()
    got = h.store.incident(inc.id)
    assert got is not None and got.status == "escalated" and got.severity == "critical"
    assert got.failure_count == 3 and "failed 3 times in a row" in got.summary

    h.record(OK)  # healthy: every latest check ok -> stable period starts
    await h.clock.advance(59)
    h.record(OK)
    assert h.store.incident(inc.id).status == "escalated"  # type: ignore[union-attr]
    await h.clock.advance(1)
    h.record(OK)
    got = h.store.incident(inc.id)
    assert got is not None and got.status == "resolved" and got.resolved_at == h.clock.now()
    assert h.transitions() == [(inc.id, "opened"), (inc.id, "escalated"), (inc.id, "resolved")]
    assert h.tracker.open_incident_for("comfyui") is None

    # everything relevant is linked to the incident; the first oks are state changes only
    linked = h.store.results(incident_id=inc.id)
    assert [r.status for r in linked] == ["failed", "failed", "failed", "ok"]
    assert len(h.store.results()) == 2 + 4


async def test_a_failure_within_the_stable_period_is_a_flap_of_the_same_incident(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.record(OK, check="disk")
    h.record(FAILED)
    first = h.tracker.open_incident_for("comfyui")
    assert first is not None
    for _ in range(3):
        h.record(OK)
        await h.clock.advance(30)
        h.record(FAILED)
    inc = h.store.incident(first.id)
    assert inc is not None and inc.flap_count == 3 and inc.status == "open"
    assert len(h.store.incidents()) == 1  # no new incident per crash
    # streaks were broken by the oks, so no escalation by failures
    assert h.transitions() == [(first.id, "opened")]
    h.record(OK)
    await h.clock.advance(60)
    h.record(OK)
    assert h.store.incident(first.id).status == "resolved"  # type: ignore[union-attr]
    h.record(FAILED)  # after resolution a failure is a new incident
    again = h.tracker.open_incident_for("comfyui")
    assert again is not None and again.id != first.id


async def test_a_target_with_one_check_still_failing_is_not_healthy(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.record(FAILED)
    h.record(FAILED, check="disk", kind="disk")
    h.record(OK)
    await h.clock.advance(600)
    h.record(OK)
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None and inc.status == "open"  # disk still failing
    h.record(DEGRADED, check="disk", kind="disk")
    await h.clock.advance(600)
    h.record(OK)
    assert h.tracker.open_incident_for("comfyui") is not None  # degraded is not healthy
    h.record(OK, check="disk", kind="disk")
    await h.clock.advance(60)
    h.record(OK)
    assert h.tracker.open_incident_for("comfyui") is None


async def test_breaker_open_escalates_once_and_reports(tmp_path: Path) -> None:
    reports: list[int] = []

    class Reporter:
        async def write(self, incident_id: int, *, capture: bool = True) -> Path:
            reports.append(incident_id)
            return tmp_path / f"r{incident_id}.md"

    h = Harness(tmp_path, reporter=Reporter())
    h.record(FAILED)
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None
    for attempt in (1, 2, 3):
        h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_STARTED, attempt=attempt))
        h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_FAILED, attempt=attempt))
    h.bus.publish(recovery(h.clock, RecoveryKind.BREAKER_OPEN, attempt=3, reason="3 attempts"))
    h.record(FAILED)
    h.record(FAILED)  # would be the 3rd failure: already escalated, no second report
    h.bus.publish(recovery(h.clock, RecoveryKind.BREAKER_OPEN, attempt=3))
    await h.tracker.idle()
    assert reports == [inc.id]
    got = h.store.incident(inc.id)
    assert got is not None and got.status == "escalated"
    assert got.report_path == str(tmp_path / f"r{inc.id}.md")
    escalated = [e for e in h.events if e.transition is IncidentTransition.ESCALATED]
    assert len(escalated) == 1 and escalated[0].report_path == got.report_path
    assert "recovery gave up after 3 attempts" in escalated[0].summary
    assert len(h.store.recovery_events(incident_id=inc.id)) == 8


async def test_breaker_open_without_an_incident_opens_and_escalates(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.bus.publish(recovery(h.clock, RecoveryKind.BREAKER_OPEN, attempt=3, reason="exhausted"))
    await h.tracker.idle()
    (inc,) = h.store.incidents()
    assert inc.status == "escalated" and inc.target == "comfyui"
    assert [t for _, t in h.transitions()] == ["opened", "escalated"]


async def test_a_failing_reporter_still_escalates(tmp_path: Path) -> None:
    class Broken:
        async def write(self, incident_id: int, *, capture: bool = True) -> Path:
            raise OSError("disk full")

    h = Harness(tmp_path, reporter=Broken())
    for _ in range(3):
        h.record(FAILED)
    await h.tracker.idle()
    (inc,) = h.store.incidents()
    assert inc.status == "escalated" and inc.report_path is None
    assert [t for _, t in h.transitions()] == ["opened", "escalated"]


async def test_noncritical_target_gets_lower_severity_and_targets_are_independent(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.record(FAILED, target="panel")
    h.record(FAILED)
    panel = h.tracker.open_incident_for("panel")
    comfy = h.tracker.open_incident_for("comfyui")
    assert panel is not None and comfy is not None and panel.id != comfy.id
    assert panel.severity == "minor" and comfy.severity == "major"


async def test_restart_continues_the_same_incident(tmp_path: Path) -> None:
    """Drop a tracker mid-incident without closing anything; a new one continues it."""
    config = make_config(tmp_path, escalation={"stable_period": 60})
    h1 = Harness(tmp_path, config)
    h1.record(OK, check="disk")
    h1.record(FAILED)
    h1.record(FAILED)
    first = h1.tracker.open_incident_for("comfyui")
    assert first is not None
    del h1  # no aclose, no store.close: as if the process died

    h2 = Harness(tmp_path, config)
    assert h2.tracker.open_incident_for("comfyui") == h2.store.incident(first.id)
    h2.record(FAILED)  # third consecutive failure overall -> escalates the SAME incident
    await h2.tracker.idle()
    (inc,) = h2.store.incidents()
    assert inc.id == first.id and inc.status == "escalated" and inc.failure_count == 3
    assert h2.transitions() == [(first.id, "escalated")]  # no second "opened"


async def test_restart_resumes_healthy_tracking_from_the_stored_statuses(tmp_path: Path) -> None:
    config = make_config(tmp_path, escalation={"stable_period": 60})
    h1 = Harness(tmp_path, config)
    h1.record(FAILED, check="disk", kind="disk")
    h1.record(FAILED)
    h1.store.close()
    h2 = Harness(tmp_path, config)
    h2.record(OK)  # http ok, but the stored disk status is still failed
    await h2.clock.advance(120)
    h2.record(OK)
    assert h2.tracker.open_incident_for("comfyui") is not None


async def test_incident_of_a_removed_target_is_closed_on_startup(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = Store.from_config(config)
    clock = FakeClock()
    gone = store.open_incident("old-target", clock.now(), "major", "x")
    store.close()
    h = Harness(tmp_path, config)
    got = h.store.incident(gone.id)
    assert got is not None and got.status == "resolved"
    assert "no longer configured" in got.summary


_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path.insert(0, sys.argv[2])
    from datetime import UTC, datetime
    from guardian.core.clock import SystemClock
    from guardian.config.schema import Config
    from guardian.core.events import EventBus
    from guardian.incidents.store import Store
    from guardian.incidents.tracker import IncidentTracker
    from guardian.core.result import CheckResult, Status
    from guardian.core.state import State

    async def main():
        config = Config.model_validate(json.loads(open(sys.argv[1]).read()))
        bus = EventBus()
        state = State(config, bus)
        store = Store.from_config(config)
        tracker = IncidentTracker(config, store, bus, SystemClock())
        for _ in range(2):
            now = datetime.now(UTC)
            state.record(CheckResult("comfyui", "http", "http", Status.FAILED, "refused",
                                     {}, now, now, 0.01))
        print(tracker.open_incident_for("comfyui").id, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_sigkilled_guardian_mid_incident_is_continued_not_duplicated(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(config.model_dump(mode="json")))
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(cfg_file), str(SRC), stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        incident_id = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    h = Harness(tmp_path, config)
    assert h.store.integrity_check() == "ok"
    h.record(FAILED)
    await h.tracker.idle()
    (inc,) = h.store.incidents()
    assert inc.id == incident_id and inc.status == "escalated" and inc.failure_count == 3


async def test_aclose_unsubscribes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.tracker.aclose()
    h.record(FAILED)
    assert h.store.incidents() == []
    await asyncio.sleep(0)


async def test_an_escalation_interrupted_before_its_report_is_finished_on_restart(
    tmp_path: Path,
) -> None:
    written: list[int] = []

    class Reporter:
        async def write(self, incident_id: int, *, capture: bool = True) -> Path:
            written.append(incident_id)
            return tmp_path / "r.md"

    config = make_config(tmp_path)
    h1 = Harness(tmp_path, config)  # no reporter: as if killed before the report
    for _ in range(3):
        h1.record(FAILED)
    (inc,) = h1.store.incidents()
    await h1.tracker.idle()
    assert inc.status == "escalated" and inc.report_path is None
    h1.store.close()

    h2 = Harness(tmp_path, config, reporter=Reporter())
    await h2.tracker.idle()
    assert written == [inc.id]
    assert h2.store.incident(inc.id).report_path == str(tmp_path / "r.md")  # type: ignore[union-attr]
    assert h2.transitions() == [(inc.id, "escalated")]
    h3 = Harness(tmp_path, config, reporter=Reporter())  # report exists now: nothing to redo
    await h3.tracker.idle()
    assert written == [inc.id] and h3.transitions() == []


# --------------------------------------------------------------------------- startup, causes


def supervised_config(tmp: Path, **escalation: object) -> Config:
    """comfyui supervised by Guardian, restarted on its http check (threshold 3)."""
    cfg = make_config(tmp, escalation={"stable_period": 60, **escalation})
    data = cfg.model_dump(mode="json")
    data["targets"][0]["service"] = {"backend": "process", "command": ["comfyui"]}
    data["targets"][0]["recovery"] = {"failure_threshold": 3}
    return Config.model_validate(data)


def startup_result(h: Harness, status: Status = FAILED) -> None:
    from dataclasses import replace

    h.state.record(replace(result(h.clock, status), startup=True))


async def test_a_booting_service_opens_no_incident(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for _ in range(20):  # a slow boot: connection refused, marked startup by the engine
        startup_result(h)
        await h.clock.advance(1)
    assert h.store.incidents() == [] and h.events == []
    h.record(OK)
    assert h.store.incidents() == []


async def test_startup_results_keep_an_open_incident_from_resolving_or_escalating(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.record(FAILED)
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None
    h.record(OK)
    for _ in range(70):  # a restart boots for 70 s: not healthy, not failing
        startup_result(h)
        await h.clock.advance(1)
    got = h.store.incident(inc.id)
    assert got is not None and got.status == "open" and got.failure_count == 1


async def test_a_startup_that_timed_out_says_so(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.record(FAILED, startup_timeout_s=300)
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None
    assert inc.summary == (
        "did not become healthy within startup_timeout (300 s): http: connection refused"
    )


async def test_no_escalation_at_the_moment_recovery_restarts(tmp_path: Path) -> None:
    """Issue 13: the 3rd failure made recovery restart *and* the incident escalate."""
    from guardian.core.events import RecoveryPlan

    h = Harness(tmp_path, supervised_config(tmp_path, failures=3))
    h.bus.publish(RecoveryPlan("comfyui", "http", 3))  # as RecoveryManager says on start
    for _ in range(3):
        h.record(FAILED)
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None and inc.status == "open"  # recovery acts now, not a page
    h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_STARTED, attempt=1))
    h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_SUCCEEDED, attempt=1))
    startup_result(h)
    h.record(FAILED)  # a fresh streak for the restarted instance
    h.record(FAILED)
    await h.tracker.idle()
    assert h.store.incident(inc.id).status == "open"  # type: ignore[union-attr]
    h.record(FAILED)
    h.record(FAILED)  # one past the restart threshold: recovery did not fix it
    await h.tracker.idle()
    assert h.store.incident(inc.id).status == "escalated"  # type: ignore[union-attr]


async def test_unsupervised_targets_still_escalate_at_the_threshold(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for _ in range(3):
        h.record(FAILED)
    await h.tracker.idle()
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None and inc.status == "escalated"


def startup_exit(h: Harness, attempt: int) -> None:
    from guardian.core.events import RecoveryEvent

    h.bus.publish(RecoveryEvent(
        "comfyui", RecoveryKind.RESTART_FAILED, h.clock.now(), attempt, "exited with code 1",
        "exits during startup with code 1: RuntimeError: CUDA driver too old",
        {"exit_code": 1, "startup_exit": True},
    ))


async def test_a_failed_start_opens_the_incident_with_its_own_headline(tmp_path: Path) -> None:
    h = Harness(tmp_path, supervised_config(tmp_path))
    h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_STARTED, attempt=1))
    startup_exit(h, 1)
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None
    assert inc.summary == "exits during startup with code 1: RuntimeError: CUDA driver too old"
    h.tracker._resolve(h.tracker._open["comfyui"])
    from guardian.core.events import RecoveryEvent

    h.bus.publish(RecoveryEvent(  # first the bare exit, then the failed start's detail
        "comfyui", RecoveryKind.EXITED, h.clock.now(), 0, "exit code 1",
        values={"exit_code": 1, "during_startup": True},
    ))
    again = h.tracker.open_incident_for("comfyui")
    assert again is not None and again.summary == "process exits during startup with code 1"
    startup_exit(h, 2)
    again = h.tracker.open_incident_for("comfyui")
    assert again is not None  # the same cause in more detail replaces, not "(earlier: ...)"
    assert again.summary == "exits during startup with code 1: RuntimeError: CUDA driver too old"
    inc = again
    h.record(FAILED)  # the check's "connection refused" does not replace it
    assert h.tracker.open_incident_for("comfyui").summary == inc.summary  # type: ignore[union-attr]


async def test_a_crash_loop_after_a_stuck_job_heads_the_summary_and_re_reports(
    tmp_path: Path,
) -> None:
    """Issue 10.5: the crash loop folded into the older stuck-job incident, and the breaker
    opening on the already escalated incident was neither written nor notified."""
    reports: list[int] = []

    class Reporter:
        async def write(self, incident_id: int, *, capture: bool = True) -> Path:
            reports.append(incident_id)
            return tmp_path / f"r{incident_id}-{len(reports)}.md"

    h = Harness(tmp_path, supervised_config(tmp_path), reporter=Reporter())
    for _ in range(3):  # a stuck job (the ladder's): escalates at the threshold
        h.record(FAILED, reason="stuck: prompt p1 no progress for 300 s", condition="stuck_running")
    await h.tracker.idle()
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None and inc.status == "escalated" and reports == [inc.id]
    for attempt in (1, 2, 3):
        h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_STARTED, attempt=attempt))
        startup_exit(h, attempt)
    got = h.tracker.open_incident_for("comfyui")
    assert got is not None
    assert got.summary.startswith("exits during startup with code 1: RuntimeError")
    assert "(earlier: http failed 3 times in a row: stuck" in got.summary
    h.bus.publish(recovery(
        h.clock, RecoveryKind.BREAKER_OPEN, attempt=3,
        reason="exits during startup with code 1: RuntimeError: CUDA driver too old",
    ))
    await h.tracker.idle()
    final = h.store.incident(inc.id)
    assert final is not None and final.summary.startswith("recovery gave up after 3 attempts")
    assert reports == [inc.id, inc.id]  # the report was rewritten
    assert (inc.id, "gave_up") in h.transitions()  # and people are told (notify: escalate)
    assert final.report_path is not None and final.report_path.endswith("-2.md")


async def test_an_incident_adopts_no_actions_from_before_the_target_was_healthy(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, supervised_config(tmp_path))
    h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_STARTED))  # an earlier manual restart
    h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_SUCCEEDED))
    await h.clock.advance(10)
    h.record(OK)
    h.record(OK, check="disk")
    await h.clock.advance(30)
    h.bus.publish(recovery(h.clock, RecoveryKind.FREE_SENT))  # this incident's own action
    await h.clock.advance(1)
    h.record(FAILED)
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None
    linked = h.store.recovery_events(incident_id=inc.id)
    assert [e.kind for e in linked] == ["free_sent"]
    assert linked[0].time == inc.opened_at - timedelta(seconds=1)


async def test_a_crash_opens_an_incident_but_the_boot_after_it_does_not_escalate(
    tmp_path: Path,
) -> None:
    from guardian.core.events import RecoveryEvent

    h = Harness(tmp_path, supervised_config(tmp_path, failures=3))
    h.bus.publish(RecoveryEvent(
        "comfyui", RecoveryKind.EXITED, h.clock.now(), 0, "exit code -9", values={"exit_code": -9}
    ))
    inc = h.tracker.open_incident_for("comfyui")
    assert inc is not None and inc.summary == "process exited with code -9"
    h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_STARTED, attempt=1))
    h.bus.publish(recovery(h.clock, RecoveryKind.RESTART_SUCCEEDED, attempt=1))
    for _ in range(12):  # its boot
        startup_result(h)
        await h.clock.advance(1)
    h.record(OK)
    h.record(OK, check="disk")
    await h.tracker.idle()
    assert h.store.incident(inc.id).status == "open"  # type: ignore[union-attr]
    await h.clock.advance(60)
    h.record(OK)
    assert h.store.incident(inc.id).status == "resolved"  # type: ignore[union-attr]
    assert h.transitions() == [(inc.id, "opened"), (inc.id, "resolved")]
