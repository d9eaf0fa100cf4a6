"""The `service` check on top of a real backend (fake tools) and on plain statuses."""

import pytest

from guardian.checks.base import CheckContext
from guardian.checks.service import ServiceCheckConfig, create, outcome_for
from guardian.core.clock import FakeClock
from guardian.core.result import Status
from guardian.services.base import ServiceError, ServiceErrorKind, ServiceState, ServiceStatus
from guardian.services.memory import MemoryBackend
from guardian.services.systemd import SystemdBackend
from guardian.services.windows.backend import WindowsServiceBackend


def check(service):
    return create(ServiceCheckConfig(), CheckContext("comfyui", FakeClock(), service))


@pytest.mark.parametrize(
    ("state", "status", "reason"),
    [
        (ServiceState.RUNNING, Status.OK, "service running"),
        (ServiceState.STARTING, Status.DEGRADED, "service starting"),
        (ServiceState.STOPPING, Status.DEGRADED, "service stopping"),
        (ServiceState.UNKNOWN, Status.DEGRADED, "service state unknown"),
        (ServiceState.STOPPED, Status.FAILED, "service stopped"),
        (ServiceState.FAILED, Status.FAILED, "service failed"),
        (ServiceState.PAUSED, Status.FAILED, "service paused"),
        (ServiceState.NOT_FOUND, Status.FAILED, "service not installed"),
    ],
)
def test_outcome_for_every_state(state, status, reason):
    outcome = outcome_for(ServiceStatus(state, pid=7, restarts=1))
    assert outcome.status is status
    assert outcome.reason == reason
    assert outcome.values == {"state": state.value, "pid": 7, "restarts": 1}


async def test_running_windows_service(fake_tools):
    st = fake_tools.state()
    st["windows"]["OrchestratorPanel"] = {"state": "RUNNING", "pid": 880}
    fake_tools.write(st)
    c = check(WindowsServiceBackend("panel", "OrchestratorPanel", use_nssm=True))
    outcome = await c.run()
    assert outcome.status is Status.OK
    assert outcome.reason == "service running (RUNNING)"
    assert outcome.values["pid"] == 880
    await c.aclose()


async def test_not_installed_windows_service(fake_tools):
    outcome = await check(WindowsServiceBackend("p", "OrchestratorPanel", use_nssm=False)).run()
    assert outcome.status is Status.FAILED
    assert outcome.reason.startswith("service not installed")


async def test_failed_systemd_unit(fake_tools):
    st = fake_tools.state()
    st["units"]["panel.service"] = {
        "active": "failed", "sub": "failed", "result": "exit-code", "exec_status": 1, "restarts": 5
    }
    fake_tools.write(st)
    outcome = await check(SystemdBackend("panel", "panel.service")).run()
    assert outcome.status is Status.FAILED
    assert outcome.reason.startswith("service failed")
    assert outcome.values["restarts"] == 5


async def test_backend_error_becomes_failed_outcome(fake_tools):
    st = fake_tools.state()
    st["windows"]["Svc"] = {"state": "RUNNING", "deny": ["queryex"]}
    fake_tools.write(st)
    outcome = await check(WindowsServiceBackend("t", "Svc", use_nssm=False)).run()
    assert outcome.status is Status.FAILED
    assert outcome.reason.startswith("access_denied: ")
    assert outcome.values["error"] == "access_denied"


async def test_unavailable_tool(empty_path):
    outcome = await check(SystemdBackend("t", "x.service")).run()
    assert outcome.status is Status.FAILED
    assert outcome.values["error"] == ServiceErrorKind.UNAVAILABLE.value


async def test_no_service_configured():
    outcome = await check(None).run()
    assert outcome.status is Status.FAILED
    assert outcome.reason == "no service configured"


async def test_error_kind_from_any_backend():
    broken = MemoryBackend("t", running=True)
    broken.error = ServiceError(ServiceErrorKind.TIMEOUT, "sc.exe queryex: no answer in 30s")
    outcome = await check(broken).run()
    assert outcome.reason == "timeout: sc.exe queryex: no answer in 30s"
