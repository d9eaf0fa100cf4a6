import asyncio
import sys
import time

import pytest

from guardian.services.subproc import decode_output, run_command

PY = sys.executable


async def test_captures_rc_stdout_stderr():
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = await run_command([PY, "-c", code], timeout=10)
    assert result == (3, "out\n", "err\n")


async def test_argv_is_not_interpreted_by_a_shell(tmp_path):
    hostile = "x; touch " + str(tmp_path / "pwned") + " $(id) & del C:\\*"
    result = await run_command([PY, "-c", "import sys; print(sys.argv[1])", hostile], timeout=10)
    assert result.stdout == hostile + "\n"
    assert not (tmp_path / "pwned").exists()


async def test_timeout_kills_process_quickly():
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await run_command([PY, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert time.monotonic() - started < 5


async def test_cancellation_kills_process(tmp_path):
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    task = asyncio.create_task(run_command([PY, "-c", code], timeout=60))
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    import psutil

    pid = int(pidfile.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_output_is_capped_but_drained():
    code = "import sys; sys.stdout.write('x' * 3_000_000); print('done', file=sys.stderr)"
    result = await run_command([PY, "-c", code], timeout=20, max_output=1000)
    assert result.rc == 0
    assert result.stdout == "x" * 1000
    assert result.stderr == "done\n"


async def test_missing_executable_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        await run_command([str(tmp_path / "nope.exe")], timeout=5)


def test_decode_utf16le_without_bom():
    assert decode_output("SERVICE_RUNNING\r\n".encode("utf-16-le")) == "SERVICE_RUNNING\n"


def test_decode_utf16_with_bom():
    assert decode_output(b"\xff\xfe" + "Dienst läuft\r\n".encode("utf-16-le")) == "Dienst läuft\n"


def test_decode_utf8_and_crlf_and_double_cr():
    assert decode_output("a\r\r\nb\r\nü".encode()) == "a\nb\nü"


def test_decode_oem_bytes_never_fail():
    raw = "Accès refusé.".encode("cp850")
    text = decode_output(raw)
    assert text.startswith("Acc") and "refus" in text


def test_decode_strips_nuls_and_empty():
    assert decode_output(b"") == ""
    assert decode_output(b"ab\x00c") == "abc"
