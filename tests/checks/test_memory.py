"""Memory check: real system numbers, a real child process tree for the RSS part."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from guardian.checks.base import CheckContext
from guardian.checks.memory import MB, MemoryCheckConfig, create, process_tree_rss
from guardian.core.clock import SystemClock
from guardian.core.result import Outcome, Status
from guardian.services.base import ServiceError, ServiceErrorKind
from guardian.services.memory import MemoryBackend

# A child holding ~60 MB that starts a grandchild holding ~30 MB (both really touched).
TREE = """
import subprocess, sys, time
hold = b"x" * (60 * 1024 * 1024)
kid = subprocess.Popen([sys.executable, "-c",
    "import sys, time; h = b'y' * (30 * 1024 * 1024); print('ok', flush=True); time.sleep(60)"],
    stdout=subprocess.PIPE)
kid.stdout.readline()
print("ready", flush=True)
try:
    time.sleep(60)
finally:
    kid.kill()
"""


def failing(error: ServiceError) -> MemoryBackend:
    backend = MemoryBackend("t", running=True)
    backend.error = error
    return backend


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        yield proc
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait(timeout=10)


async def run_memory(service: MemoryBackend | None = None, **fields: Any) -> Outcome:
    ctx = CheckContext(target="t", clock=SystemClock(), service=service)
    check = create(MemoryCheckConfig(**fields), ctx)
    try:
        return await check.run()
    finally:
        await check.aclose()


async def test_system_thresholds() -> None:
    available = psutil.virtual_memory().available / MB
    ok = await run_memory(warn_available_mb=0, critical_available_mb=0)
    assert ok.status is Status.OK
    assert abs(float(ok.values["available_mb"]) - available) < available / 2  # type: ignore[arg-type]
    assert float(ok.values["total_mb"]) >= float(ok.values["available_mb"])  # type: ignore[arg-type]
    huge = available * 10
    degraded = await run_memory(warn_available_mb=huge, critical_available_mb=0)
    assert degraded.status is Status.DEGRADED
    assert f"below warning {huge:g} MB" in degraded.reason
    failed = await run_memory(warn_available_mb=huge, critical_available_mb=huge)
    assert failed.status is Status.FAILED
    assert f"below critical {huge:g} MB" in failed.reason


async def test_process_tree_rss(tree: subprocess.Popen[bytes]) -> None:
    measured = process_tree_rss(tree.pid)
    assert measured is not None
    rss, count = measured
    assert count == 2
    assert rss > 85 * MB

    service = MemoryBackend("t", running=True, pid=tree.pid)
    quiet: dict[str, Any] = {"warn_available_mb": 0, "critical_available_mb": 0}
    high = await run_memory(service, process_rss_warn_mb=50, **quiet)
    assert high.status is Status.DEGRADED
    assert high.reason.startswith(f"service process tree (pid {tree.pid}, 2 processes) uses ")
    assert high.values["process_count"] == 2
    assert float(high.values["process_rss_mb"]) > 85  # type: ignore[arg-type]
    fine = await run_memory(service, process_rss_warn_mb=2000, **quiet)
    assert fine.status is Status.OK
    # without a threshold the service is not even asked
    assert "process_rss_mb" not in (await run_memory(service, **quiet)).values


@pytest.fixture
def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=10)
    return dead.pid


async def test_gone_or_unknown_pid_is_not_a_failure(dead_pid: int) -> None:
    quiet: dict[str, Any] = {"warn_available_mb": 0, "critical_available_mb": 0}
    for service in (
        MemoryBackend("t", running=True, pid=dead_pid),
        MemoryBackend("t"),  # not running: no pid to measure
        failing(ServiceError(ServiceErrorKind.NOT_FOUND, "no such service")),
    ):
        out = await run_memory(service, process_rss_warn_mb=1, **quiet)
        assert out.status is Status.OK
        assert "process_rss_mb" not in out.values
