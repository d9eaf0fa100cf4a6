"""Adoption, PID reuse, SIGSTOP and tree stops against real processes and real signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from guardian.services.base import ServiceState
from guardian.services.process.backend import ProcessBackend
from guardian.services.process.identity import identify

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.timeout(30),
]
PY = sys.executable
SLEEPER = [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"]


async def until(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.005)
    return bool(pred())


def reap(pid: int) -> None:
    """The "left" process is this test process's child (a real Guardian would have exited
    and init reaped it): collect its zombie so later tests see none."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, 0)


async def test_leave_then_next_backend_adopts_and_sees_its_exit(tmp_path: Path) -> None:
    rec, logf = tmp_path / "rec.json", tmp_path / "svc.log"
    first = ProcessBackend("svc", SLEEPER, log_file=logf, record=rec, on_guardian_stop="leave")
    await first.start()
    pid = first.pid
    assert pid is not None and first.start_outcome == "started"
    await first.aclose()
    assert psutil.pid_exists(pid)  # left running
    second = ProcessBackend("svc", SLEEPER, log_file=logf, record=rec)
    exits: list[int | None] = []
    second.add_exit_listener(exits.append)
    try:
        await second.start()
        st = await second.status()
        assert (st.pid, st.adopted, second.start_outcome) == (pid, True, "adopted")
        assert second.starts == 1  # nothing new was spawned
        os.kill(pid, signal.SIGKILL)
        assert await until(lambda: bool(exits))
        assert exits == [None]
        assert (await second.status()).state is ServiceState.STOPPED
        tail = await second.log_tail(10)
        assert any(f"adopted pid {pid}" in x for x in tail)
        assert any(f"pid {pid} exited" in x for x in tail)
    finally:
        await second.aclose()
        reap(pid)


async def test_pid_reuse_a_stranger_with_the_recorded_pid_is_never_signalled(
    tmp_path: Path,
) -> None:
    # A record naming a live unrelated process (its own group) with a different start
    # time: what a reused pid looks like. It must be neither adopted nor signalled.
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)  # noqa: ASYNC220
    try:
        ident = identify(stranger.pid)
        assert ident is not None
        rec = tmp_path / "rec.json"
        rec.write_text(
            json.dumps(
                {
                    "token": "svc:x",
                    "intent_time": time.time() - 100,
                    "argv": SLEEPER,
                    "pid": stranger.pid,
                    "create_time": ident.create_time - 50,
                    "pgid": stranger.pid,
                    "start_ticks": (ident.start_ticks or 0) - 5000,
                }
            )
        )
        b = ProcessBackend("svc", SLEEPER, log_file=tmp_path / "l.log", record=rec, stop_timeout=1)
        await b.start()
        assert b.start_outcome == "started" and b.pid != stranger.pid
        await b.stop()
        b.tree.kill_leftovers(
            ident.__class__(
                stranger.pid, ident.create_time - 50, stranger.pid, (ident.start_ticks or 0) - 5000
            )
        )
        await b.aclose()
        assert stranger.poll() is None, "the unrelated process was signalled"
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.slow
async def test_execing_orphan_is_found_by_token_not_argv(tmp_path: Path) -> None:
    # sh -c "exec python ..." changes the argv; a record with only the intent (Guardian
    # killed before it learnt the pid) still finds it through the token in its env. The
    # orphan is started by a short-lived helper, so it is nobody's child here, like a
    # process whose Guardian was SIGKILLed.
    argv = ["sh", "-c", f"exec {PY} -c 'import time; time.sleep(60)'"]
    token, pidfile = "svc:feedc0de", tmp_path / "orphan.pid"
    spawner = (
        "import os, subprocess, sys; "
        f"p = subprocess.Popen({argv!r}, start_new_session=True, "
        f"env={{**os.environ, 'GUARDIAN_SUPERVISOR_TOKEN': {token!r}}}); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))"
    )
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"token": token, "intent_time": time.time(), "argv": argv}))
    subprocess.run([PY, "-c", spawner], check=True, timeout=10)  # noqa: ASYNC221
    pid = int(pidfile.read_text())
    assert await until(lambda: "sleep" in " ".join(psutil.Process(pid).cmdline()))
    second = ProcessBackend("svc", argv, log_file=tmp_path / "l.log", record=rec, stop_timeout=2)
    try:
        await second.start()
        assert (second.pid, second.adopted) == (pid, True)
        await second.stop()
        assert await until(lambda: not psutil.pid_exists(pid))
    finally:
        await second.aclose()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_sigstopped_child_stops_quickly_thanks_to_sigcont(tmp_path: Path) -> None:
    b = ProcessBackend("svc", SLEEPER, log_file=tmp_path / "l.log", stop_timeout=20)
    await b.start()
    pid = b.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    await b.stop()
    await b.aclose()
    # SIGTERM took effect (SIGCONT let it run), so no SIGKILL after stop_timeout was needed.
    assert b.last_exit_code == -signal.SIGTERM
