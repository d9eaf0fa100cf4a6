"""Log rotation checks back off while a supervised child is quiet, and keep up while it writes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from guardian.services.process.backend import ProcessBackend

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX child"),
    pytest.mark.timeout(30),
]

PY = sys.executable


def _counting(b: ProcessBackend) -> list[int]:
    calls: list[int] = []
    rotate = b.log.rotate_and_size

    def counted() -> tuple[int, int]:
        calls.append(b.log.size())
        return rotate()

    b.log.rotate_and_size = counted  # type: ignore[method-assign]
    return calls


@pytest.mark.slow
async def test_quiet_child_is_checked_less_and_less(tmp_path: Path) -> None:
    quiet = [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    b = ProcessBackend("svc", quiet, log_file=tmp_path / "svc.log", stop_timeout=2,
                       rotate_interval=0.05)
    calls = _counting(b)
    await b.start()
    try:
        await asyncio.sleep(2.0)
    finally:
        await b.stop()
        await b.aclose()
    # Every 0.05 s would be ~40 checks; doubling waits (0.05, 0.1, 0.2, ...) make ~6.
    assert 3 <= len(calls) <= 10, calls


@pytest.mark.slow
async def test_writing_child_is_rotated_at_the_fast_pace(tmp_path: Path) -> None:
    chatty = [PY, "-c", "import time\nwhile True:\n    print('x' * 200, flush=True)\n"
              "    time.sleep(0.01)"]
    b = ProcessBackend("svc", chatty, log_file=tmp_path / "svc.log", log_max_bytes=4096,
                       log_backups=1, stop_timeout=2, rotate_interval=0.05)
    calls = _counting(b)
    await b.start()
    try:
        await asyncio.sleep(1.5)
    finally:
        await b.stop()
        await b.aclose()
    assert len(calls) >= 15, calls  # no backoff while it grows
    assert b.log.rotations >= 2
