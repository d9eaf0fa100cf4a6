"""A stuck service from the check failure to the incident: fake sc.exe/taskkill and fake
systemctl, the real RecoveryManager, IncidentTracker and SQLite store. The steps the
backend had to take (kill by PID / systemctl kill, start again) must be in the incident's
recorded restart event, not only in Guardian's log."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from guardian.config.schema import Config
from guardian.core.clock import SystemClock
from guardian.core.events import EventBus, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.core.state import State
from guardian.incidents.store import Store
from guardian.incidents.tracker import IncidentTracker
from guardian.recovery.manager import RecoveryManager
from guardian.services.systemd import SystemdBackend
from guardian.services.windows.backend import WindowsServiceBackend

pytestmark = pytest.mark.timeout(30)


def config(tmp: Path, service: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "guardian": {
                "log_dir": str(tmp / "logs"),
                "report_dir": str(tmp / "reports"),
                "state_dir": str(tmp / "state"),
            },
            "targets": [
                {
                    "name": "comfyui",
                    "service": service,
                    "checks": [{"kind": "http", "url": "http://127.0.0.1:8188/system_stats"}],
                }
            ],
        }
    )


async def restart_through_incident(cfg: Config, backend: Any) -> list[Any]:
    clock = SystemClock()
    bus = EventBus()
    state = State(cfg, bus)
    store = Store.from_config(cfg)
    tracker = IncidentTracker(cfg, store, bus, clock)
    mgr = RecoveryManager(cfg, bus, {"comfyui": backend}, clock)
    try:
        now = datetime.now(UTC)
        state.record(
            CheckResult("comfyui", "http", "http", Status.FAILED, "refused", {}, now, now, 0.01)
        )
        incident = tracker.open_incident_for("comfyui")
        assert incident is not None
        outcome = await mgr.restart("comfyui")
        assert outcome.startswith("restarted comfyui"), outcome
        await tracker.idle()
        return store.recovery_events(incident_id=incident.id)
    finally:
        await mgr.aclose()
        await tracker.aclose()
        store.close()


async def test_windows_stop_pending_kill_and_start_are_in_the_incident(fake_tools, tmp_path):
    st = fake_tools.state()
    st["windows"]["OrchestratorComfyUI"] = {
        "state": "RUNNING",
        "pid": 5724,
        "stuck": ["STOP_PENDING"],
    }
    fake_tools.write(st)
    cfg = config(tmp_path, {"backend": "windows", "name": "OrchestratorComfyUI"})
    backend = WindowsServiceBackend(
        "comfyui", "OrchestratorComfyUI", use_nssm=False, stop_timeout=0.2, poll_interval=0.01
    )
    events = await restart_through_incident(cfg, backend)
    assert fake_tools.calls("taskkill") == [["/T", "/F", "/PID", "5724"]]
    (ok,) = [e for e in events if e.kind == str(RecoveryKind.RESTART_SUCCEEDED)]
    assert "STOP_PENDING for 0.2s: killing pid 5724 and its tree (taskkill /T /F)" in ok.detail
    assert "killed pid 5724" in ok.detail
    assert ok.values["pid"] == 5725


@pytest.mark.slow
async def test_systemd_deactivating_kill_and_start_are_in_the_incident(fake_tools, tmp_path):
    st = fake_tools.state()
    st["units"]["comfyui.service"] = {
        "load": "loaded",
        "active": "active",
        "sub": "running",
        "pid": 4242,
        "stuck_stop": True,
    }
    fake_tools.write(st)
    cfg = config(tmp_path, {"backend": "systemd", "name": "comfyui.service"})
    backend = SystemdBackend("comfyui", "comfyui.service", stop_timeout=0.2, poll_interval=0.01)
    events = await restart_through_incident(cfg, backend)
    kills = [c for c in fake_tools.calls("systemctl") if "kill" in c]
    assert kills == [
        [
            "--no-ask-password",
            "kill",
            "--kill-whom=all",
            "--signal=SIGKILL",
            "--",
            "comfyui.service",
        ]
    ]
    (ok,) = [e for e in events if e.kind == str(RecoveryKind.RESTART_SUCCEEDED)]
    assert "still deactivating after 0.2s: systemctl kill --kill-whom=all" in ok.detail
    assert "started it again" in ok.detail
    assert ok.values["pid"] == 4243
