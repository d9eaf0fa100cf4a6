"""The supervised process backend against real child processes and real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from guardian.services.base import ServiceError, ServiceState
from guardian.services.logfile import MemoryLog, RotatingLog, tail_file
from guardian.services.process import ProcessBackend

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.timeout(30),
]

PY = sys.executable
SLEEPER = [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_for(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return bool(pred())


async def test_start_status_pid_and_start_twice_is_noop() -> None:
    b = ProcessBackend("svc", SLEEPER, stop_timeout=2)
    try:
        assert (await b.status()).state == ServiceState.STOPPED
        await b.start()
        st = await b.status()
        assert st.state == ServiceState.RUNNING and st.pid is not None and alive(st.pid)
        await b.start()
        assert (await b.status()).pid == st.pid
        await b.stop()
        st2 = await b.status()
        assert st2.state == ServiceState.STOPPED and "exited with code" in st2.detail
        assert not alive(st.pid)
        await b.stop()  # idempotent
    finally:
        await b.aclose()


async def test_external_sigkill_fires_listener_fast_with_minus_9() -> None:
    b = ProcessBackend("svc", SLEEPER, stop_timeout=2)
    got: list[tuple[int | None, float]] = []
    b.add_exit_listener(lambda code: got.append((code, time.monotonic())))
    try:
        await b.start()
        pid = b.pid
        assert pid is not None
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert await wait_for(lambda: bool(got), 2.0)
        code, when = got[0]
        assert code == -9
        assert when - t0 < 0.1
        assert b.last_exit_code == -9
        assert (await b.status()).state == ServiceState.STOPPED
    finally:
        await b.aclose()


async def test_own_stop_and_restart_do_not_notify() -> None:
    b = ProcessBackend("svc", SLEEPER, stop_timeout=2)
    got: list[int | None] = []
    b.add_exit_listener(got.append)
    try:
        await b.start()
        old = b.pid
        await b.restart()
        new = b.pid
        assert old is not None and new is not None and new != old
        assert old is not None and not alive(old)
        assert (await b.status()).restarts == 1
        await b.stop()
        await asyncio.sleep(0.05)
        assert got == []
    finally:
        await b.aclose()


async def test_stop_escalates_to_sigkill_for_sigterm_ignorer() -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    b = ProcessBackend("svc", [PY, "-c", script], stop_timeout=0.3)
    try:
        await b.start()
        assert await wait_for(lambda: b._sink is not None and "ready" in b._sink.tail(5))
        pid = b.pid
        assert pid is not None
        t0 = time.monotonic()
        await b.stop()
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 3
        assert b.last_exit_code == -9
        assert not alive(pid)
    finally:
        await b.aclose()


async def test_grandchild_dies_with_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "gc.pid"
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen(['sleep', '60']); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); "
        "time.sleep(60)"
    )
    b = ProcessBackend("svc", [PY, "-c", script], stop_timeout=2)
    try:
        await b.start()
        assert await wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        gc = int(pidfile.read_text())
        assert alive(gc)
        await b.stop()
        assert await wait_for(lambda: not alive(gc), 3)
    finally:
        await b.aclose()


async def test_grandchild_holding_stdout_does_not_delay_exit_notice(tmp_path: Path) -> None:
    # The grandchild inherits the stdout pipe; the leader's exit must still be seen at once.
    script = "import subprocess; subprocess.Popen(['sleep', '60']); import sys; sys.exit(4)"
    b = ProcessBackend("svc", [PY, "-c", script], stop_timeout=2)
    got: list[int | None] = []
    b.add_exit_listener(got.append)
    try:
        await b.start()
        assert await wait_for(lambda: bool(got), 5)
        assert got == [4]
    finally:
        await b.aclose()


async def test_log_capture_rotation_and_tail(tmp_path: Path) -> None:
    logf = tmp_path / "logs" / "svc.log"
    script = (
        "import sys\n"
        "for i in range(2000):\n"
        "    print(f'line {i:05d} ' + 'x' * 40)\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    b = ProcessBackend("svc", [PY, "-c", script], log_file=logf, log_max_bytes=8192, log_backups=2)
    done: list[int | None] = []
    b.add_exit_listener(done.append)
    try:
        await b.start()
        assert await wait_for(lambda: bool(done), 10)
        # Output may still be draining from the pipe after the exit notice.
        assert await wait_for(lambda: "to stderr" in "".join(tail_file(logf, 3)), 5)
        assert logf.stat().st_size <= 8192
        assert (tmp_path / "logs" / "svc.log.1").exists()
        assert (tmp_path / "logs" / "svc.log.2").exists()
        assert not (tmp_path / "logs" / "svc.log.3").exists()
        tail = await b.log_tail(5)
        assert tail[-1] == "to stderr"
        assert tail[-2].startswith("line 01999")
        # More than the current file holds: continues into the rotated one, in order.
        current = len(tail_file(logf, 100000))
        long_tail = await b.log_tail(current + 10)
        assert len(long_tail) == current + 10
        nums = [int(x.split()[1]) for x in long_tail if x.startswith("line")]
        assert nums == sorted(nums) and nums[-1] == 1999
        assert nums == list(range(nums[0], 2000))
    finally:
        await b.aclose()


async def test_memory_log_when_no_file() -> None:
    b = ProcessBackend("svc", [PY, "-c", "for i in range(1500): print(i)"])
    done: list[int | None] = []
    b.add_exit_listener(done.append)
    try:
        await b.start()
        assert await wait_for(lambda: bool(done), 5)
        assert await wait_for(lambda: b._sink is not None and b._sink.tail(1) == ["1499"])
        tail = await b.log_tail(3)
        assert tail == ["1497", "1498", "1499"]
    finally:
        await b.aclose()


def test_memory_log_partial_lines() -> None:
    m = MemoryLog(capacity=3)
    m.write(b"a\nb")
    m.write(b"c\nd\ne\n")
    assert m.tail(10) == ["bc", "d", "e"]
    m.write(b"tail-no-newline")
    assert m.tail(2) == ["e", "tail-no-newline"]
    assert m.tail(0) == []


def test_rotating_log_without_backups_truncates(tmp_path: Path) -> None:
    r = RotatingLog(tmp_path / "a.log", max_bytes=4096, backups=0)
    for i in range(200):
        r.write(f"{i:04d} {'y' * 60}\n".encode())
    r.close()
    assert (tmp_path / "a.log").stat().st_size <= 4096
    assert not (tmp_path / "a.log.1").exists()
    assert tail_file(tmp_path / "a.log", 1)[0].startswith("0199")
    assert tail_file(tmp_path / "missing.log", 5) == []


async def test_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    b = ProcessBackend("svc", [str(tmp_path / "nope")])
    with pytest.raises(ServiceError) as ei:
        await b.start()
    assert "nope" in str(ei.value)
    assert (await b.status()).state == ServiceState.STOPPED
    await b.aclose()


async def test_env_and_cwd(tmp_path: Path) -> None:
    script = "import os; print(os.getcwd()); print(os.environ['GUARD_X'])"
    b = ProcessBackend("svc", [PY, "-c", script], cwd=tmp_path, env={"GUARD_X": "42"})
    done: list[int | None] = []
    b.add_exit_listener(done.append)
    try:
        await b.start()
        assert await wait_for(lambda: bool(done))
        assert await wait_for(lambda: b._sink is not None and len(b._sink.tail(5)) == 2)
        assert await b.log_tail(5) == [str(tmp_path), "42"]
        assert done == [0]
    finally:
        await b.aclose()


async def test_no_leaked_fds_after_30_cycles() -> None:
    b = ProcessBackend("svc", SLEEPER, stop_timeout=2)
    await b.start()
    await b.stop()
    await asyncio.sleep(0.05)
    before = len(os.listdir("/proc/self/fd"))
    pids = []
    for _ in range(30):
        await b.start()
        pids.append(b.pid)
        await b.stop()
    await b.aclose()
    await asyncio.sleep(0.1)
    after = len(os.listdir("/proc/self/fd"))
    assert after <= before
    assert len(set(pids)) == 30
    assert not any(alive(p) for p in pids if p is not None)


def test_rotating_log_never_exceeds_its_limit_even_for_huge_chunks(tmp_path: Path) -> None:
    from guardian.services.logfile import RotatingLog

    log = RotatingLog(tmp_path / "x.log", max_bytes=1000, backups=3)
    log.write(b"".join(b"line %05d\n" % i for i in range(2000)))  # one 20 KB chunk
    log.write(b"y" * 2500)  # no line break at all
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["x.log", "x.log.1", "x.log.2", "x.log.3"]
    assert all(f.stat().st_size <= 1000 for f in files)
    assert (tmp_path / "x.log").read_bytes().endswith(b"y" * 500)
