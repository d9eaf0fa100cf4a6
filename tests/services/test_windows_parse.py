"""Parsers on recorded sc.exe / nssm.exe output (bytes as the tools write them)."""

from pathlib import Path

import pytest

from guardian.services.base import ServiceErrorKind, ServiceState
from guardian.services.subproc import decode_output
from guardian.services.windows.backend import read_tail
from guardian.services.windows.parse import (
    classify_nssm_error,
    parse_nssm_status,
    parse_sc_error,
    parse_sc_query,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "windows"


def text(name: str) -> str:
    return decode_output((DATA / name).read_bytes())


@pytest.mark.parametrize(
    ("name", "code", "state_name", "state", "pid"),
    [
        ("sc_queryex_running.txt", 4, "RUNNING", ServiceState.RUNNING, 5724),
        ("sc_queryex_stopped.txt", 1, "STOPPED", ServiceState.STOPPED, None),
        ("sc_queryex_start_pending.txt", 2, "START_PENDING", ServiceState.STARTING, 6012),
        ("sc_queryex_stop_pending.txt", 3, "STOP_PENDING", ServiceState.STOPPING, 5724),
        ("sc_queryex_paused.txt", 7, "PAUSED", ServiceState.PAUSED, 5724),
        ("sc_query_running.txt", 4, "RUNNING", ServiceState.RUNNING, None),
        ("sc_start_ok.txt", 2, "START_PENDING", ServiceState.STARTING, 6012),
        ("sc_stop_ok.txt", 3, "STOP_PENDING", ServiceState.STOPPING, None),
    ],
)
def test_parse_sc_query(name, code, state_name, state, pid):
    q = parse_sc_query(text(name))
    assert q is not None
    assert q.state_code == code
    assert q.state_name == state_name
    assert q.state is state
    assert q.pid == pid
    assert q.service_name in ("OrchestratorComfyUI", "OrchestratorPanel")
    assert parse_sc_error(text(name)) is None


def test_parse_sc_query_controls_and_exit_codes():
    q = parse_sc_query(text("sc_queryex_running.txt"))
    assert q is not None
    assert q.controls == ("STOPPABLE", "NOT_PAUSABLE", "ACCEPTS_SHUTDOWN")
    assert q.win32_exit_code == 0 and q.service_exit_code == 0
    assert q.fields["TYPE"] == "10  WIN32_OWN_PROCESS"


def test_stopped_with_error_exit_is_failed():
    q = parse_sc_query(text("sc_queryex_stopped_error.txt"))
    assert q is not None
    assert q.state is ServiceState.FAILED
    status = q.to_status()
    assert status.detail == "STOPPED (WIN32_EXIT_CODE 1066, SERVICE_EXIT_CODE 3)"


@pytest.mark.parametrize(
    ("name", "function", "code", "message"),
    [
        (
            "sc_queryex_1060.txt",
            "EnumQueryServicesStatus:OpenService",
            1060,
            "The specified service does not exist as an installed service.",
        ),
        ("sc_queryex_5.txt", "OpenService", 5, "Access is denied."),
        (
            "sc_start_1056.txt",
            "StartService",
            1056,
            "An instance of the service is already running.",
        ),
        ("sc_stop_1062.txt", "ControlService", 1062, "The service has not been started."),
        ("sc_queryex_1060_de_cp850.txt", "EnumQueryServicesStatus:OpenService", 1060, None),
        ("sc_start_5_fr_cp850.txt", "OpenService", 5, None),
    ],
)
def test_parse_sc_error(name, function, code, message):
    err = parse_sc_error(text(name))
    assert err is not None
    assert (err.function, err.code) == (function, code)
    if message is not None:
        assert err.message == message
    else:
        assert err.message  # localised words, kept for the detail
    assert parse_sc_query(text(name)) is None


def test_parse_garbage_is_none():
    assert parse_sc_query("") is None
    assert parse_sc_query("SERVICE_NAME: x\n  STATE : banana\n") is None
    assert parse_sc_error("all good") is None


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("nssm_status_running.txt", ServiceState.RUNNING),
        ("nssm_status_stopped.txt", ServiceState.STOPPED),
        ("nssm_status_running_utf16le.txt", ServiceState.RUNNING),
        ("nssm_status_paused_utf16le.txt", ServiceState.PAUSED),
    ],
)
def test_parse_nssm_status(name, state):
    assert parse_nssm_status(text(name)) is state


def test_nssm_utf16_would_not_parse_naively():
    raw = (DATA / "nssm_status_running_utf16le.txt").read_bytes()
    assert parse_nssm_status(raw.decode("latin-1")) is None  # why decode_output exists


def test_nssm_errors():
    notfound = text("nssm_status_notfound.txt")
    assert parse_nssm_status(notfound) is None
    assert classify_nssm_error(notfound) is ServiceErrorKind.NOT_FOUND
    denied = classify_nssm_error("OpenService(): Access is denied.")
    assert denied is ServiceErrorKind.ACCESS_DENIED
    assert classify_nssm_error("something else") is ServiceErrorKind.FAILED


def test_read_tail_reads_backwards(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(f"line {i}\r\n".encode() for i in range(100_000)))
    assert read_tail(log, 3) == ["line 99997", "line 99998", "line 99999"]
    assert read_tail(log, 0) == []


def test_read_tail_small_and_missing_and_no_trailing_newline(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntwo\nthr\xffee")
    assert read_tail(log, 10) == ["one", "two", "thr\ufffdee"]
    assert read_tail(tmp_path / "missing.log", 5) == []
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert read_tail(empty, 5) == []


def test_read_tail_is_bounded_for_huge_lines(tmp_path):
    log = tmp_path / "big.log"
    with log.open("wb") as f:
        f.write(b"x" * (20 * 1024 * 1024))  # one 20 MB line, then two short ones
        f.write(b"\nlast-1\nlast\n")
    lines = read_tail(log, 5)
    assert lines[-2:] == ["last-1", "last"]
    assert all(len(line) <= 8 * 1024 * 1024 for line in lines)
