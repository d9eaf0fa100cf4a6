"""How often a supervised log's size is looked at: sooner while it grows fast."""

from __future__ import annotations

import os
from pathlib import Path

from guardian.services.process.backend import ROTATE_MIN_INTERVAL, next_rotate_check
from guardian.services.process.logfile import SupervisedLog


def test_idle_or_unknown_growth_waits_the_whole_interval() -> None:
    assert next_rotate_check(100, None, 1.0, 10_000, 1.0) == 1.0  # first look
    assert next_rotate_check(100, 0, 1.0, 10_000, 1.0) == 1.0  # not growing
    assert next_rotate_check(100, -50, 1.0, 10_000, 1.0) == 1.0  # truncated by someone
    assert next_rotate_check(100, 50, 0.0, 10_000, 1.0) == 1.0  # no time passed


def test_fast_growth_checks_at_half_the_time_to_the_limit() -> None:
    # 20 kB/s, 8 kB left: the limit is 0.4 s away, look again in 0.2 s.
    assert next_rotate_check(2_000, 20_000, 1.0, 10_000, 1.0) == 0.2
    # slow growth: the limit is far, the interval caps it
    assert next_rotate_check(2_000, 100, 1.0, 10_000, 1.0) == 1.0


def test_never_faster_than_the_floor() -> None:
    assert next_rotate_check(9_999, 10**9, 0.05, 10_000, 1.0) == ROTATE_MIN_INTERVAL
    assert next_rotate_check(20_000, 10**6, 0.1, 10_000, 1.0) == ROTATE_MIN_INTERVAL  # past it


def test_rotate_and_size_reports_seen_and_left(tmp_path: Path) -> None:
    log = SupervisedLog(tmp_path / "x.log", max_bytes=4096, backups=1)
    fd = log.open_for_child()
    try:
        os.write(fd, b"a" * 1000)
        assert log.rotate_and_size() == (1000, 1000)  # below the limit: untouched
        os.write(fd, b"b" * 4000)
        seen, left = log.rotate_and_size()  # rotated: what was not copied is left
        assert seen == 5000 and left == 5000 - (tmp_path / "x.log.1").stat().st_size
        assert left < 4096  # all of it (copy-truncate) or the last partial block
    finally:
        os.close(fd)
