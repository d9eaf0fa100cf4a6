"""Parsers on real outputs pasted in public issues (sources: tests/data/recorded/SOURCES.md).

The reconstructed fixtures in tests/data/windows and tests/data/systemd cover every state
and error; these check the parsers against what real machines printed, localised ones
included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian.services.base import ServiceErrorKind, ServiceState
from guardian.services.subproc import decode_output
from guardian.services.systemd import classify_systemctl_error, parse_show, status_from_show
from guardian.services.windows.parse import parse_nssm_status, parse_sc_error, parse_sc_query

REC = Path(__file__).resolve().parent.parent / "data" / "recorded"
SOURCES = (REC / "SOURCES.md").read_text(encoding="utf-8")


def text(name: str) -> str:
    return decode_output((REC / name).read_bytes())


def test_every_recorded_file_names_its_source():
    files = [p.relative_to(REC).as_posix() for p in REC.rglob("*") if p.is_file()]
    listed = [f for f in files if f != "SOURCES.md"]
    assert len(listed) >= 20
    for name in listed:
        assert f"| {name} |" in SOURCES, f"{name} has no source line"


@pytest.mark.parametrize(
    ("name", "service", "state_name", "state", "pid"),
    [
        (
            "fluentbit_4300_queryex_stop_pending.txt",
            "google-cloud-ops-agent-fluent-bit",
            "STOP_PENDING",
            ServiceState.STOPPING,
            1428,
        ),
        (
            "pcapdnsproxy_24_queryex_start_pending.txt",
            "PcapDNSProxyService",
            "START_PENDING",
            ServiceState.STARTING,
            6308,
        ),
        ("goodbyedpi_440_queryex_running.txt", "GoodbyeDPI", "RUNNING", ServiceState.RUNNING, 2148),
        # sc stop / sc query print no PID line.
        (
            "dokany_1074_stop_stop_pending.txt",
            "dokan2",
            "STOP_PENDING",
            ServiceState.STOPPING,
            None,
        ),
        ("ksdumper_22_query_stopped_driver.txt", "Capcom", "STOPPED", ServiceState.STOPPED, None),
    ],
)
def test_sc_query_blocks(name, service, state_name, state, pid):
    parsed = parse_sc_query(text(f"windows/{name}"))
    assert parsed is not None
    assert (parsed.service_name, parsed.state_name, parsed.state, parsed.pid) == (
        service,
        state_name,
        state,
        pid,
    )
    assert parsed.win32_exit_code == 0 and parsed.service_exit_code == 0


def test_russian_block_with_translated_field_names():
    """ru-RU sc.exe translates the field names; the block is read by its fields' order
    (this returned None before, so the backend could not read any service there)."""
    parsed = parse_sc_query(text("windows/goodbyedpi_544_queryex_running_ru.txt"))
    assert parsed is not None
    assert (parsed.service_name, parsed.state_name, parsed.state, parsed.pid) == (
        "GoodbyeDPI",
        "RUNNING",
        ServiceState.RUNNING,
        13688,
    )
    assert parsed.controls == ("STOPPABLE", "NOT_PAUSABLE", "ACCEPTS_SHUTDOWN")
    assert parsed.fields["TYPE"] == "10  WIN32_OWN_PROCESS"
    assert parse_sc_error(text("windows/goodbyedpi_544_queryex_running_ru.txt")) is None


def test_russian_block_read_even_when_the_code_page_is_unknown():
    """Derived from the capture above: the console writes CP866; decoded without knowing
    that (as on a host whose OEM code page is not Russian), the names are garbage but
    the order and the English values still give state and PID."""
    raw = (REC / "windows/goodbyedpi_544_queryex_running_ru.txt").read_text(encoding="utf-8")
    garbled = decode_output(raw.replace("\n", "\r\n").encode("cp866"))
    parsed = parse_sc_query(garbled)
    assert parsed is not None
    assert (parsed.state_name, parsed.pid) == ("RUNNING", 13688)


def test_a_block_needs_its_shape_not_just_colons():
    # Lines with colons that are not a service block are not taken for one.
    assert parse_sc_query("Name: x\n        Foo : bar\n        Baz : qux\n") is None
    assert parse_sc_query(text("windows/oibus_380_sc_usage.txt")) is None


def test_stuck_stop_pending_block_gives_the_pid_to_kill():
    """The situation the unstick path acts on, as a real machine showed it: the PID the
    SCM reports for a service stuck in STOP_PENDING, with its controls."""
    parsed = parse_sc_query(text("windows/fluentbit_4300_queryex_stop_pending.txt"))
    assert parsed is not None
    assert parsed.pid == 1428
    assert parsed.controls == ("STOPPABLE", "NOT_PAUSABLE", "IGNORES_SHUTDOWN")
    assert parsed.fields["WAIT_HINT"] == "0x7530"
    assert parsed.fields["TYPE"] == "10  WIN32_OWN_PROCESS"


@pytest.mark.parametrize(
    ("name", "function", "code", "words"),
    [
        ("anydesk_3_1060.txt", "OpenService", 1060, "does not exist as an installed service"),
        # The function can contain a space (this one did not parse before).
        (
            "pssecdrv_3_start_1060.txt",
            "StartService: OpenService",
            1060,
            "does not exist as an installed service",
        ),
        (
            "openedr_2_query_1060_es.txt",
            "EnumQueryServicesStatus:OpenService",
            1060,
            "El servicio especificado no existe",
        ),
        ("pcapdnsproxy_24_1060_zh.txt", "OpenService", 1060, "指定的服务未安装"),
        ("goodbyedpi_544_1060_ru.txt", "OpenService:", 1060, "Указанная служба не установлена"),
        ("pcapdnsproxy_24_start_1056_zh.txt", "StartService", 1056, "服务的实例已在运行中"),
    ],
)
def test_sc_errors_by_code_whatever_the_language(name, function, code, words):
    err = parse_sc_error(text(f"windows/{name}"))
    assert err is not None
    assert (err.function, err.code) == (function, code)
    assert words in err.message
    assert parse_sc_query(text(f"windows/{name}")) is None


def test_sc_usage_text_is_neither_a_block_nor_an_error():
    usage = text("windows/oibus_380_sc_usage.txt")
    assert parse_sc_query(usage) is None
    assert parse_sc_error(usage) is None


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("nssm5_start_unexpected_stopped.txt", ServiceState.STOPPED),
        ("wgwatchdog_1_start_unexpected_paused.txt", ServiceState.PAUSED),
        # A localised message holds no SERVICE_* token: not mistaken for a state.
        ("wgwatchdog_1_start_already_running_zh.txt", None),
    ],
)
def test_nssm_state_tokens_in_real_messages(name, state):
    assert parse_nssm_status(text(f"windows/{name}")) is state


def test_systemctl_show_partial_answers():
    props = parse_show(text("systemd/systemd_1447_show_active_running.txt"))
    assert props == {"ActiveState": "active", "SubState": "running"}
    # Without LoadState (not asked for), the active state still decides.
    assert status_from_show(props).state is ServiceState.RUNNING
    assert parse_show(text("systemd/epiphany_1472_show_loadstate.txt")) == {"LoadState": "loaded"}


def test_systemctl_show_values_with_spaces_are_kept_whole():
    props = parse_show(text("systemd/hestiacp_3088_show_sshd_head.txt"))
    assert props["TimeoutStopUSec"] == "1min 30s"
    assert props["RuntimeMaxUSec"] == "infinity"
    assert len(props) == 8


def test_systemctl_kill_on_inactive_unit_reads_as_not_found():
    # systemd 252 says "not loaded" for an inactive unit; the backend therefore checks
    # the unit's state before treating a failed kill as an error.
    msg = text("systemd/systemd_30889_kill_not_loaded.txt")
    assert classify_systemctl_error(1, msg) is ServiceErrorKind.NOT_FOUND
