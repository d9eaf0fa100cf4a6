"""File-descriptor headroom: raise ``RLIMIT_NOFILE`` at start and size the API's share.

systemd's default soft limit is 1024; a watchdog that runs out of descriptors cannot
check (connect fails) or restart (pipes fail) anything. At start Guardian raises its soft
limit toward the hard limit (capped at :data:`TARGET_SOFT`), logs the headroom, and gives
the API at most a quarter of whatever it got, so idle API clients can never take the
descriptors checks and restarts need. Where the ``resource`` module is missing (Windows,
whose CRT limit does not apply to sockets) nothing is changed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("guardian.support.fdlimit")

TARGET_SOFT: Final = 65536
API_SHARE: Final = 4  # the API may hold at most 1/API_SHARE of the descriptors
MIN_API_CONNECTIONS: Final = 8


@dataclass(frozen=True, slots=True)
class FdLimits:
    soft: int | None  # None: unlimited or unknown
    hard: int | None
    raised_from: int | None = None
    open_now: int | None = None


def _count_open() -> int | None:
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path))
        except OSError:
            continue
    return None


def raise_nofile(target: int = TARGET_SOFT) -> FdLimits:
    """Raise the soft ``RLIMIT_NOFILE`` toward the hard limit (at most ``target``); log it."""
    try:
        import resource
    except ImportError:
        return FdLimits(None, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    raised_from = None
    want = target if hard == inf else min(hard, target)
    if soft != inf and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            raised_from, soft = soft, want
        except (OSError, ValueError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, want, e)
    limits = FdLimits(
        None if soft == inf else soft, None if hard == inf else hard, raised_from, _count_open()
    )
    log.info(
        "open files: %s in use, soft limit %s (hard %s)%s",
        "?" if limits.open_now is None else limits.open_now,
        limits.soft or "unlimited",
        limits.hard or "unlimited",
        f", raised from {raised_from}" if raised_from is not None else "",
        extra={
            "event": "fd_limit",
            "soft": limits.soft,
            "hard": limits.hard,
            "raised_from": raised_from,
            "open": limits.open_now,
        },
    )
    return limits


def api_connection_cap(configured: int, limits: FdLimits) -> int:
    """``api.max_connections``, lowered so the API holds at most a quarter of the fds."""
    if limits.soft is None:
        return configured
    return max(MIN_API_CONNECTIONS, min(configured, limits.soft // API_SHARE))
