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
from guardian.services.process.backend import ProcessBackend

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
        assert await wait_for(lambda: "ready" in b._sink.tail(5))
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


async def test_memory_log_when_no_file() -> None:
    b = ProcessBackend("svc", [PY, "-c", "for i in range(1500): print(i)"])
    done: list[int | None] = []
    b.add_exit_listener(done.append)
    try:
        await b.start()
        assert await wait_for(lambda: bool(done), 5)
        assert await wait_for(lambda: "1499" in b._sink.tail(3))
        tail = [x for x in await b.log_tail(4) if not x.startswith("---")]
        assert tail[-3:] == ["1497", "1498", "1499"]
    finally:
        await b.aclose()


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
        def output() -> list[str]:
            return [x for x in b._sink.tail(5) if not x.startswith("---")]

        assert await wait_for(lambda: len(output()) == 2)
        assert output() == [str(tmp_path), "42"]
        assert done == [0]
    finally:
        await b.aclose()


def our_zombies() -> list[int]:
    """PIDs of this process's children that exited but were never reaped."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            out.append(int(entry))
    return out


async def test_no_leaked_fds_tasks_or_zombies_after_50_cycles() -> None:
    b = ProcessBackend("svc", SLEEPER, stop_timeout=2)
    await b.start()
    await b.stop()
    await asyncio.sleep(0.05)
    fds_before = len(os.listdir("/proc/self/fd"))
    tasks_before = len(asyncio.all_tasks())
    pids = []
    for _ in range(50):
        await b.start()
        pids.append(b.pid)
        await b.stop()
    await b.aclose()
    await asyncio.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    assert len(asyncio.all_tasks()) <= tasks_before
    assert len(set(pids)) == 50
    assert b.starts == 51
    assert not any(alive(p) for p in pids if p is not None)
    assert await wait_for(lambda: not our_zombies(), 2), our_zombies()


async def test_crashed_child_is_reaped_and_counted() -> None:
    b = ProcessBackend("svc", [PY, "-c", "raise SystemExit(7)"])
    got: list[int | None] = []
    b.add_exit_listener(got.append)
    try:
        for n in (1, 2, 3):
            await b.start() if n == 1 else await b.restart()
            assert await wait_for(lambda n=n: len(got) == n)  # type: ignore[misc]
        assert got == [7, 7, 7]
        assert b.starts == 3 and (await b.status()).restarts == 2
        assert await wait_for(lambda: not our_zombies(), 2), our_zombies()
    finally:
        await b.aclose()
