"""Windows tree stop (``taskkill /T /F /PID``) against real process trees, fake taskkill.

The fake taskkill on PATH does what ``/T /F`` does (kills the tree, leaves first), so the
Windows path of :mod:`guardian.services.process.treekill` runs here for real: which argv it sends,
that a grandchild in its own session dies too, that a stale identity is never signalled,
and the psutil fallback when taskkill fails or is missing.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from guardian.services.base import ServiceState
from guardian.services.process.backend import ProcessBackend
from guardian.services.process.identity import ProcessIdentity, identify
from guardian.services.process.treekill import WindowsTree

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="the fake taskkill is POSIX"),
    pytest.mark.timeout(30),
]

# A leader that starts a grandchild in a session of its own (as a detached worker would)
# and prints the grandchild's pid.
TREE = (
    "import subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
    " start_new_session=True)\n"
    "print('grandchild', g.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_for(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return bool(pred())


def grandchild_of(log: Path) -> int | None:
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if line.startswith("grandchild "):
            return int(line.split()[1])
    return None


@pytest.fixture
def tree_proc(tmp_path):  # type: ignore[no-untyped-def]
    log = tmp_path / "tree.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=out)
    yield proc, log
    for p in [proc.pid, grandchild_of(log)]:
        if p is not None and not gone(p):
            psutil.Process(p).kill()
    proc.wait()


async def _started(proc: subprocess.Popen[bytes], log: Path) -> tuple[ProcessIdentity, int]:
    assert await wait_for(lambda: grandchild_of(log) is not None)
    ident = identify(proc.pid)
    assert ident is not None
    grandchild = grandchild_of(log)
    assert grandchild is not None
    return ident, grandchild


async def test_kill_sends_taskkill_tree_force_and_the_tree_dies(fake_tools, tree_proc):
    proc, log = tree_proc
    ident, grandchild = await _started(proc, log)
    await WindowsTree().kill(ident)
    assert fake_tools.calls("taskkill") == [["/T", "/F", "/PID", str(proc.pid)]]
    assert await wait_for(lambda: proc.poll() is not None)
    assert await wait_for(lambda: gone(grandchild))


async def test_stale_identity_is_never_killed(fake_tools, tree_proc):
    proc, log = tree_proc
    ident, grandchild = await _started(proc, log)
    reused = ProcessIdentity(ident.pid, ident.create_time - 100.0, None)  # pid reused
    await WindowsTree().kill(reused)
    assert fake_tools.calls("taskkill") == []
    assert proc.poll() is None and not gone(grandchild)


async def test_failing_taskkill_falls_back_to_psutil_and_says_so(fake_tools, tree_proc, caplog):
    failing = fake_tools.bin / "taskkill"
    failing.write_text("#!/bin/sh\necho 'ERROR: Access is denied.' >&2\nexit 1\n")
    proc, log = tree_proc
    ident, grandchild = await _started(proc, log)
    with caplog.at_level(logging.WARNING, logger="guardian.services.process.treekill"):
        await WindowsTree().kill(ident)
    assert any(getattr(r, "event", None) == "taskkill_failed" for r in caplog.records)
    assert "Access is denied" in caplog.text
    assert await wait_for(lambda: proc.poll() is not None)
    assert await wait_for(lambda: gone(grandchild))


async def test_without_taskkill_the_tree_is_killed_through_psutil(empty_path, tree_proc):
    proc, log = tree_proc
    ident, grandchild = await _started(proc, log)
    await WindowsTree().kill(ident)
    assert await wait_for(lambda: proc.poll() is not None)
    assert await wait_for(lambda: gone(grandchild))


async def test_supervised_stop_reaches_the_grandchild_through_taskkill(fake_tools, tmp_path):
    """A supervised process on the Windows tree stopper: no CTRL_BREAK can reach it here
    (as for a child that ignores it), so after stop_timeout the tree is taskkilled."""
    log = tmp_path / "svc.log"
    b = ProcessBackend(
        "svc", [sys.executable, "-c", TREE], log_file=log, stop_timeout=0.3, tree=WindowsTree()
    )
    try:
        await b.start()
        pid = (await b.status()).pid
        assert pid is not None
        assert await wait_for(lambda: grandchild_of(log) is not None)
        grandchild = grandchild_of(log)
        assert grandchild is not None
        await b.stop()
        assert fake_tools.calls("taskkill") == [["/T", "/F", "/PID", str(pid)]]
        assert (await b.status()).state is ServiceState.STOPPED
        assert await wait_for(lambda: gone(grandchild))
    finally:
        await b.aclose()
        g = grandchild_of(log)
        if g is not None and not gone(g):
            psutil.Process(g).kill()
