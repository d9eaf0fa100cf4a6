"""WindowsServiceBackend end to end through the fake sc.exe / nssm.exe."""

import time

import pytest

from guardian.services.base import ServiceError, ServiceErrorKind, ServiceState
from guardian.services.windows.backend import WindowsServiceBackend

SVC = "OrchestratorComfyUI"


def backend(**kw):
    kw.setdefault("use_nssm", False)
    kw.setdefault("poll_interval", 0.01)
    return WindowsServiceBackend("comfyui", kw.pop("name", SVC), **kw)


def install(fake_tools, state="RUNNING", **extra):
    st = fake_tools.state()
    st["windows"][SVC] = {"state": state, "pid": 5724, **extra}
    fake_tools.write(st)


async def test_status_running(fake_tools):
    install(fake_tools)
    status = await backend().status()
    assert status.state is ServiceState.RUNNING
    assert status.pid == 5724
    assert status.detail == "RUNNING"
    assert fake_tools.calls("sc.exe") == [["queryex", SVC]]


async def test_status_not_installed(fake_tools):
    status = await backend().status()
    assert status.state is ServiceState.NOT_FOUND
    assert "1060" in status.detail


async def test_status_access_denied(fake_tools):
    install(fake_tools, deny=["queryex"])
    with pytest.raises(ServiceError) as e:
        await backend().status()
    assert e.value.kind is ServiceErrorKind.ACCESS_DENIED
    assert "error 5" in str(e.value)


async def test_start_goes_pending_then_running(fake_tools):
    install(fake_tools, state="STOPPED")
    b = backend()
    await b.start()
    assert (await b.status()).state is ServiceState.STARTING
    status = await b.status()
    assert status.state is ServiceState.RUNNING
    assert status.pid == 5725
    assert fake_tools.calls("sc.exe") == [["start", SVC], ["queryex", SVC], ["queryex", SVC]]


async def test_start_and_stop_are_idempotent(fake_tools):
    install(fake_tools, state="RUNNING")
    b = backend()
    await b.start()  # 1056: already running -> fine
    install(fake_tools, state="STOPPED")
    await b.stop()  # 1062: not started -> fine
    assert fake_tools.calls("sc.exe") == [["start", SVC], ["stop", SVC]]


async def test_start_disabled_fails_with_code(fake_tools):
    install(fake_tools, state="STOPPED", start_error=1058)
    with pytest.raises(ServiceError) as e:
        await backend().start()
    assert e.value.kind is ServiceErrorKind.FAILED
    assert "1058" in str(e.value) and "disabled" in str(e.value)


async def test_start_access_denied_and_not_found(fake_tools):
    install(fake_tools, state="STOPPED", deny=["start"])
    with pytest.raises(ServiceError) as e:
        await backend().start()
    assert e.value.kind is ServiceErrorKind.ACCESS_DENIED
    with pytest.raises(ServiceError) as e:
        await backend(name="Missing").stop()
    assert e.value.kind is ServiceErrorKind.NOT_FOUND


@pytest.mark.slow
async def test_restart_waits_for_stopped_before_starting(fake_tools):
    install(fake_tools, state="RUNNING")
    fake_tools.update(pending_polls=2)
    b = backend()
    await b.restart()
    calls = fake_tools.calls("sc.exe")
    # is it pending already? stop, poll through STOP_PENDING (2 polls) until STOPPED,
    # start, poll through START_PENDING until RUNNING
    assert calls == [
        ["queryex", SVC],
        ["stop", SVC],
        ["queryex", SVC],
        ["queryex", SVC],
        ["queryex", SVC],
        ["start", SVC],
        ["queryex", SVC],
        ["queryex", SVC],
        ["queryex", SVC],
    ]
    assert fake_tools.state()["windows"][SVC]["state"] == "RUNNING"
    assert "taskkill" not in {c[0] for c in fake_tools.calls()}


async def test_restart_of_stopped_service_just_starts(fake_tools):
    install(fake_tools, state="STOPPED")
    await backend().restart()
    assert fake_tools.calls("sc.exe")[:4] == [
        ["queryex", SVC],
        ["stop", SVC],
        ["queryex", SVC],
        ["start", SVC],
    ]


async def test_restart_gives_up_when_stop_hangs(fake_tools):
    install(fake_tools, state="RUNNING")
    fake_tools.update(pending_polls=10_000)
    started = time.monotonic()
    with pytest.raises(ServiceError) as e:
        await backend(stop_timeout=0.3, kill_stuck=False).restart()
    assert e.value.kind is ServiceErrorKind.TIMEOUT
    assert "STOP_PENDING" in str(e.value)
    assert time.monotonic() - started < 10
    assert ["start", SVC] not in fake_tools.calls("sc.exe")
    assert fake_tools.calls("taskkill") == []


async def test_hanging_sc_is_killed_and_times_out(fake_tools):
    install(fake_tools)
    fake_tools.update(sleep={"sc.exe": 30})
    started = time.monotonic()
    with pytest.raises(ServiceError) as e:
        await backend(timeout=0.5).status()
    assert e.value.kind is ServiceErrorKind.TIMEOUT
    assert time.monotonic() - started < 5


async def test_missing_sc_is_unavailable(empty_path):
    with pytest.raises(ServiceError) as e:
        await backend().status()
    assert e.value.kind is ServiceErrorKind.UNAVAILABLE


async def test_nssm_restart(fake_tools):
    install(fake_tools, state="RUNNING")
    fake_tools.update(nssm_utf16=True)
    await backend(use_nssm=True).restart()
    # One look whether it is stuck pending, then nssm does the restart.
    assert fake_tools.calls() == [["queryex", SVC], ["restart", SVC]]
    assert fake_tools.calls("nssm.exe") == [["restart", SVC]]
    assert fake_tools.state()["windows"][SVC]["pid"] == 5725


async def test_nssm_restart_not_found_and_denied(fake_tools):
    with pytest.raises(ServiceError) as e:
        await backend(use_nssm=True).restart()
    assert e.value.kind is ServiceErrorKind.NOT_FOUND
    install(fake_tools, deny=["restart"])
    with pytest.raises(ServiceError) as e:
        await backend(use_nssm=True).restart()
    assert e.value.kind is ServiceErrorKind.ACCESS_DENIED


async def test_nssm_status_is_fallback_without_sc(fake_tools):
    install(fake_tools, state="PAUSED")
    fake_tools.update(nssm_utf16=True)
    (fake_tools.bin / "sc.exe").unlink()
    status = await backend(use_nssm=True).status()
    assert status.state is ServiceState.PAUSED
    assert fake_tools.calls("nssm.exe") == [["status", SVC]]
    assert (await backend(use_nssm=True, name="Missing").status()).state is ServiceState.NOT_FOUND


async def test_log_tail_from_nssm_appstdout(fake_tools, tmp_path):
    log = tmp_path / "comfyui.log"
    log.write_text("".join(f"step {i}\n" for i in range(500)))
    install(fake_tools, params={"AppStdout": str(log), "AppStderr": str(log)})
    fake_tools.update(nssm_utf16=True)
    lines = await backend(use_nssm=True).log_tail(3)
    assert lines == ["step 497", "step 498", "step 499"]
    assert fake_tools.calls("nssm.exe") == [
        ["get", SVC, "AppStdout"],
        ["get", SVC, "AppStderr"],
    ]


async def test_log_tail_separate_stderr_file(fake_tools, tmp_path):
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    out.write_text("o1\no2\no3\n")
    err.write_text("e1\ne2\n")
    install(fake_tools, params={"AppStdout": str(out), "AppStderr": str(err)})
    assert await backend(use_nssm=True).log_tail(4) == ["o2", "o3", "[stderr] e1", "[stderr] e2"]


async def test_log_tail_from_config_file_needs_no_tool(empty_path, tmp_path):
    log = tmp_path / "svc.log"
    log.write_text("a\nb\nc\n")
    assert await backend(log_file=log).log_tail(2) == ["b", "c"]
    assert await backend().log_tail(2) == []  # plain SCM service: no known log


@pytest.mark.parametrize(
    "hostile",
    ["foo & del C:\\*", "a;rm -rf /", "$(id)", "-H evil", "my service", "a\nb", "", "x" * 201],
)
async def test_hostile_names_never_reach_a_tool(fake_tools, hostile):
    with pytest.raises(ValueError):
        WindowsServiceBackend("t", hostile, use_nssm=True)
    assert fake_tools.calls() == []


async def test_unrecognised_sc_output_is_a_clear_failure(fake_tools):
    (fake_tools.bin / "sc.exe").write_text("#!/bin/sh\necho 'something else entirely'\n")
    with pytest.raises(ServiceError) as e:
        await backend().status()
    assert e.value.kind is ServiceErrorKind.FAILED
    assert "unrecognised output" in str(e.value)


# ------------------------------------------------------------- services that will not stop


@pytest.mark.slow
async def test_stuck_stop_pending_is_killed_by_pid_then_started(fake_tools):
    install(fake_tools, state="RUNNING", stuck=["STOP_PENDING"])
    b = backend(stop_timeout=0.2)
    await b.restart()
    # The PID sc queryex reported was killed with its tree, then the service started.
    assert fake_tools.calls("taskkill") == [["/T", "/F", "/PID", "5724"]]
    sc = fake_tools.calls("sc.exe")
    kill_at = [c[0] for c in fake_tools.calls()].index("/T")
    assert ["start", SVC] in sc and sc.index(["start", SVC]) > kill_at - 1
    status = await b.status()
    assert status.state is ServiceState.RUNNING and status.pid == 5725
    # Each step is in the status the recovery event records, once.
    assert "STOP_PENDING for 0.2s: killing pid 5724" in status.detail
    assert "killed pid 5724" in status.detail
    assert "after:" not in (await b.status()).detail


async def test_already_stuck_start_pending_is_killed_and_started_again(fake_tools):
    install(fake_tools, state="START_PENDING", stuck=["START_PENDING"])
    b = backend(pending_timeout=0.2)
    await b.restart()
    assert fake_tools.calls("taskkill") == [["/T", "/F", "/PID", "5724"]]
    status = await b.status()
    assert status.state is ServiceState.RUNNING
    assert "found START_PENDING" in status.detail


@pytest.mark.slow
async def test_stuck_start_after_start_is_killed_and_retried(fake_tools):
    install(fake_tools, state="STOPPED", pid=6000)
    b = backend(pending_timeout=0.2)

    st = fake_tools.state()
    st["windows"][SVC]["stuck"] = ["START_PENDING"]
    fake_tools.write(st)
    await b.restart()
    assert fake_tools.calls("taskkill") == [["/T", "/F", "/PID", "6001"]]
    assert fake_tools.calls("sc.exe").count(["start", SVC]) == 2
    assert (await b.status()).state is ServiceState.RUNNING


async def test_healthy_pending_that_settles_in_time_is_never_killed(fake_tools):
    # A slow but progressing stop (3 polls) inside the budget: no taskkill.
    install(fake_tools, state="RUNNING")
    fake_tools.update(pending_polls=3)
    await backend(stop_timeout=5, pending_timeout=5).restart()
    assert fake_tools.calls("taskkill") == []
    assert fake_tools.state().get("killed") is None


@pytest.mark.slow
async def test_nssm_restart_timeout_on_stuck_stop_kills_by_pid(fake_tools):
    install(fake_tools, state="STOP_PENDING", stuck=["STOP_PENDING"])
    b = backend(use_nssm=True, pending_timeout=0.2, stop_timeout=0.2)
    await b.restart()
    assert fake_tools.calls("nssm.exe") == []  # stuck already: nssm would only wait
    assert fake_tools.calls("taskkill") == [["/T", "/F", "/PID", "5724"]]
    assert (await b.status()).state is ServiceState.RUNNING


async def test_stuck_without_pid_is_a_clear_error(fake_tools):
    install(fake_tools, state="RUNNING", stuck=["STOP_PENDING"], pid=0)
    with pytest.raises(ServiceError) as e:
        await backend(stop_timeout=0.2).restart()
    assert "no PID" in str(e.value)
    assert fake_tools.calls("taskkill") == []
