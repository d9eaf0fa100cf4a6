"""SystemdBackend: parsers on recorded output, then end to end through fake systemctl."""

import time
from pathlib import Path

import pytest

from guardian.services.base import ServiceError, ServiceErrorKind, ServiceState
from guardian.services.systemd import (
    SystemdBackend,
    classify_systemctl_error,
    parse_show,
    status_from_show,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "systemd"
UNIT = "comfyui.service"


def show(name):
    return status_from_show(parse_show((DATA / name).read_text()))


def test_parse_show_active():
    status = show("show_active.txt")
    assert status.state is ServiceState.RUNNING
    assert status.pid == 48213
    assert status.restarts == 0
    assert status.detail == "loaded/active/running"


def test_parse_show_failed():
    status = show("show_failed.txt")
    assert status.state is ServiceState.FAILED
    assert status.pid is None
    assert status.restarts == 3
    assert status.detail == "loaded/failed/failed (result exit-code, exit status 1)"


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("show_inactive.txt", ServiceState.STOPPED),
        ("show_not_found.txt", ServiceState.NOT_FOUND),
        ("show_activating.txt", ServiceState.STARTING),
    ],
)
def test_parse_show_states(name, state):
    assert show(name).state is state


def test_parse_show_is_order_independent_and_tolerates_junk():
    props = parse_show(
        "SubState=running\nweird line\nActiveState=active\nLoadState=loaded\nX=a=b\n"
    )
    assert props["X"] == "a=b"
    assert status_from_show(props).state is ServiceState.RUNNING
    assert status_from_show({"LoadState": "loaded", "ActiveState": "maintenance"}).state is (
        ServiceState.UNKNOWN
    )
    assert status_from_show({"ActiveState": "deactivating"}).state is ServiceState.STOPPING
    assert status_from_show({"ActiveState": "reloading"}).state is ServiceState.STARTING


def test_classify_errors_on_recorded_messages():
    not_found = (DATA / "restart_not_found.txt").read_text()
    denied = (DATA / "restart_access_denied.txt").read_text()
    assert classify_systemctl_error(5, not_found) is ServiceErrorKind.NOT_FOUND
    assert classify_systemctl_error(1, denied) is ServiceErrorKind.ACCESS_DENIED
    assert classify_systemctl_error(4, "") is ServiceErrorKind.ACCESS_DENIED
    assert classify_systemctl_error(5, "") is ServiceErrorKind.NOT_FOUND
    assert classify_systemctl_error(1, "Job failed") is ServiceErrorKind.FAILED


# --------------------------------------------------------------------------- end to end


def add_unit(fake_tools, name=UNIT, user=False, **unit):
    st = fake_tools.state()
    st["user_units" if user else "units"][name] = {
        "load": "loaded",
        "active": "active",
        "sub": "running",
        "pid": 4242,
        **unit,
    }
    fake_tools.write(st)


SHOW = ["show", "-p", "LoadState,ActiveState,SubState,MainPID,NRestarts,ExecMainStatus,Result"]


async def test_status_through_fake(fake_tools):
    add_unit(fake_tools, restarts=2)
    status = await SystemdBackend("comfyui", UNIT).status()
    assert status.state is ServiceState.RUNNING
    assert (status.pid, status.restarts) == (4242, 2)
    assert fake_tools.calls("systemctl") == [["--no-ask-password", *SHOW, "--", UNIT]]


async def test_status_not_found_and_user_manager(fake_tools):
    assert (await SystemdBackend("x", "nosuch.service").status()).state is ServiceState.NOT_FOUND
    add_unit(fake_tools, user=True)
    status = await SystemdBackend("x", UNIT, user=True).status()
    assert status.state is ServiceState.RUNNING
    assert fake_tools.calls("systemctl")[-1] == ["--user", "--no-ask-password", *SHOW, "--", UNIT]


async def test_stop_start_restart(fake_tools):
    add_unit(fake_tools)
    b = SystemdBackend("comfyui", UNIT)
    await b.stop()
    assert (await b.status()).state is ServiceState.STOPPED
    await b.start()
    status = await b.status()
    assert status.state is ServiceState.RUNNING and status.pid == 4243
    await b.restart()
    assert (await b.status()).pid == 4244
    verbs = [c for c in fake_tools.calls("systemctl") if c[1] != "show"]
    assert verbs == [
        ["--no-ask-password", "stop", "--", UNIT],
        ["--no-ask-password", "start", "--", UNIT],
        ["--no-ask-password", "restart", "--", UNIT],
    ]


async def test_restart_errors(fake_tools):
    with pytest.raises(ServiceError) as e:
        await SystemdBackend("x", "nosuch.service").restart()
    assert e.value.kind is ServiceErrorKind.NOT_FOUND
    add_unit(fake_tools, deny=["restart"])
    with pytest.raises(ServiceError) as e:
        await SystemdBackend("x", UNIT).restart()
    assert e.value.kind is ServiceErrorKind.ACCESS_DENIED
    assert "Interactive authentication required" in str(e.value)
    add_unit(fake_tools, start_fails=True)
    with pytest.raises(ServiceError) as e:
        await SystemdBackend("x", UNIT).restart()
    assert e.value.kind is ServiceErrorKind.FAILED
    assert (await SystemdBackend("x", UNIT).status()).state is ServiceState.FAILED


@pytest.mark.slow
async def test_hanging_systemctl_times_out(fake_tools):
    add_unit(fake_tools)
    fake_tools.update(sleep={"systemctl": 30})
    started = time.monotonic()
    with pytest.raises(ServiceError) as e:
        await SystemdBackend("x", UNIT, timeout=0.5, stop_timeout=0.1).restart()
    assert e.value.kind is ServiceErrorKind.TIMEOUT
    assert time.monotonic() - started < 5


async def test_log_tail_via_journalctl(fake_tools):
    add_unit(fake_tools, journal=[f"msg {i}" for i in range(10)])
    assert await SystemdBackend("x", UNIT).log_tail(3) == ["msg 7", "msg 8", "msg 9"]
    assert fake_tools.calls("journalctl") == [["-u", UNIT, "-n", "3", "--no-pager", "-o", "cat"]]
    assert await SystemdBackend("x", "empty.service", user=True).log_tail(5) == []
    assert fake_tools.calls("journalctl")[-1][:3] == ["--user", "-u", "empty.service"]


async def test_missing_systemctl_is_unavailable(empty_path):
    with pytest.raises(ServiceError) as e:
        await SystemdBackend("x", UNIT).status()
    assert e.value.kind is ServiceErrorKind.UNAVAILABLE


@pytest.mark.parametrize(
    "hostile", ["a;rm -rf /", "$(id)", "-H evil", "--user", "name with space", "a\nb", "x/../y"]
)
async def test_hostile_unit_names_never_reach_systemctl(fake_tools, hostile):
    with pytest.raises(ValueError):
        SystemdBackend("t", hostile)
    assert fake_tools.calls() == []


# --------------------------------------------------------------------------- stuck units

KILL_PROPS = ["show", "-p", "KillMode,FinalKillSignal", "--", UNIT]


def fast(**kw):
    kw.setdefault("poll_interval", 0.01)
    return SystemdBackend("comfyui", UNIT, **kw)


def verbs(fake_tools):
    """systemctl calls other than the status polls."""
    return [c[1:] for c in fake_tools.calls("systemctl") if c[1:3] != SHOW[:2] or c[3] != SHOW[2]]


async def test_restart_left_deactivating_is_killed_then_started(fake_tools, caplog):
    add_unit(fake_tools, stuck_stop=True)
    b = fast(stop_timeout=0.2)
    with caplog.at_level("WARNING", logger="guardian.services.systemd"):
        await b.restart()
    assert verbs(fake_tools) == [
        ["restart", "--", UNIT],
        KILL_PROPS,
        ["kill", "--kill-whom=all", "--signal=SIGKILL", "--", UNIT],
        ["start", "--", UNIT],
    ]
    status = await b.status()
    assert status.state is ServiceState.RUNNING and status.pid == 4243
    # The steps travel with the first status after the restart (the recovery event's
    # detail, so the incident), once; each was also logged as a service_unstick event.
    assert "restart: still deactivating after 0.2s: systemctl kill --kill-whom=all" in (
        status.detail
    )
    assert "started it again" in status.detail
    assert "after:" not in (await b.status()).detail
    steps = [r.step for r in caplog.records if getattr(r, "event", "") == "service_unstick"]
    assert len(steps) == 3 and steps[-1] == "started it again"


async def test_kill_follows_the_units_killmode_and_final_signal(fake_tools):
    # KillMode=process keeps the unit's other processes on stop: only the main one is
    # killed, with the unit's FinalKillSignal (SIGQUIT=3 here), not Guardian's choice.
    add_unit(fake_tools, stuck_stop=True, kill_mode="process", final_kill_signal=3)
    await fast(stop_timeout=0.1).restart()
    assert ["kill", "--kill-whom=main", "--signal=SIGQUIT", "--", UNIT] in verbs(fake_tools)


async def test_stop_job_that_never_returns_is_killed(fake_tools):
    # systemctl stop blocks on the job (a hung ExecStop / TimeoutStopSec=infinity).
    add_unit(fake_tools, stuck_stop=True, hang_stop=30)
    b = fast(timeout=0.5, stop_timeout=0.2)
    started = time.monotonic()
    await b.stop()
    assert time.monotonic() - started < 10
    assert ["kill", "--kill-whom=all", "--signal=SIGKILL", "--", UNIT] in verbs(fake_tools)
    assert ["start", "--", UNIT] not in verbs(fake_tools)  # a stop stays stopped
    assert (await b.status()).state is ServiceState.FAILED


async def test_older_systemctl_gets_kill_who(fake_tools):
    add_unit(fake_tools, stuck_stop=True)
    fake_tools.update(systemd_version=249)  # Ubuntu 22.04
    b = fast(stop_timeout=0.1)
    await b.restart()
    kills = [v for v in verbs(fake_tools) if v[0] == "kill"]
    assert kills == [
        ["kill", "--kill-whom=all", "--signal=SIGKILL", "--", UNIT],
        ["kill", "--kill-who=all", "--signal=SIGKILL", "--", UNIT],
    ]
    assert (await b.status()).state is ServiceState.RUNNING


async def test_unit_that_survives_kill_is_a_timeout_with_the_steps(fake_tools):
    add_unit(fake_tools, stuck_stop=True, unkillable=True)
    with pytest.raises(ServiceError) as e:
        await fast(timeout=0.3, stop_timeout=0.1).restart()
    assert e.value.kind is ServiceErrorKind.TIMEOUT
    assert "still running 0.3s after systemctl kill" in str(e.value)
    assert ["start", "--", UNIT] not in verbs(fake_tools)


async def test_without_kill_stuck_a_stuck_unit_is_reported_not_killed(fake_tools):
    add_unit(fake_tools, stuck_stop=True)
    with pytest.raises(ServiceError) as e:
        await fast(stop_timeout=0.1, kill_after_stop_timeout=False).restart()
    assert e.value.kind is ServiceErrorKind.TIMEOUT
    assert "still deactivating after 0.1s" in str(e.value)
    assert not [v for v in verbs(fake_tools) if v[0] == "kill"]


async def test_restart_that_gets_through_is_never_killed(fake_tools):
    add_unit(fake_tools)
    await fast(stop_timeout=5).restart()
    assert [v[0] for v in verbs(fake_tools)] == ["restart"]


async def test_unit_that_ends_just_before_the_kill_is_not_an_error(fake_tools):
    # The kill fails (systemd 252 says "not loaded" for an inactive unit) because the
    # unit finished stopping on its own: that is success, the start follows.
    add_unit(fake_tools, stuck_stop=True)
    fail_kill = fake_tools.bin / "systemctl"
    real = fail_kill.read_text()
    fail_kill.write_text(
        real.replace(
            '    if verb == "kill":\n',
            '    if verb == "kill":\n'
            '        unit.update(active="inactive", sub="dead", stuck_stop=False)\n'
            '        out(f"Failed to kill unit {name}: Unit {name} not loaded.\\n", "stderr")\n'
            "        return 1\n",
        )
    )
    b = fast(stop_timeout=0.1)
    await b.restart()
    status = await b.status()
    assert status.state is ServiceState.RUNNING
    assert "had ended before the kill" in status.detail
