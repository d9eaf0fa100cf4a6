"""Guardian's own lateness: an event-loop lag monitor, and the evidence it gives the engine.

A check that times out because Guardian itself could not run (a flood, a blocked loop,
a starved CPU) says nothing about its target. While any check runs, the monitor ticks
every ``tick`` seconds on the loop that runs the checks and records how late each tick
woke up: the sum of those delays over a check's window is how long Guardian was stalled
while the check ran. The engine opens a check's window with :meth:`LoopLagMonitor.begin`
when the check starts, asks :meth:`LoopLagMonitor.stalled_since` when it times out (when
Guardian was stalled for a good part of the timeout, the result is SKIPPED instead of
FAILED, so no restart can ever follow from Guardian's own load) and closes it with
:meth:`LoopLagMonitor.release`. A check's own deadline inside that window takes a plain
:meth:`LoopLagMonitor.mark`.

Why only while checks run: a stall when nothing runs cannot fail a check, and an idle
Guardian should not wake ten times a second to look (that tick was most of its idle CPU).
Every window is covered from its start, so the guarantee is the same as a permanent tick.
While Guardian is overloaded the tick goes on until it has kept up, so the flag clears
even if nothing else runs.

Lag is measured on the real monotonic clock (``time.monotonic``), not the injectable
:class:`~guardian.core.clock.Clock`: it is a property of the event loop itself.

While the worst recent lag is above ``threshold`` Guardian is *overloaded*: it logs one
warning, sets the ``"overload"`` problem in :class:`~guardian.core.state.State` (shown in
``/api/health``), and clears both once it has kept up for ``recover_after`` seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from guardian.core.state import State

log = logging.getLogger("guardian.engine.overload")

LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A timed-out check is not evidence against its target when Guardian was stalled for at
# least this share of the check's timeout during the check.
STALL_SHARE: Final = 0.5
MARK_LEASE: Final = 120.0  # seconds a mark() outside any check window keeps the tick


class LagProbe(Protocol):
    """What the engine needs: a check's window opened at its start (a mark), the stall
    since that mark, and the window closed at its end (every ``begin()`` released once)."""

    def begin(self) -> float: ...

    def stalled_since(self, mark: float) -> float: ...

    def release(self, mark: float) -> None: ...


def overloaded_reason(stalled: float, timeout: float) -> str | None:
    """The SKIPPED reason for a timed-out check, or None when Guardian kept up."""
    if stalled >= STALL_SHARE * timeout:
        return f"guardian overloaded: event loop lag {stalled * 1000:.0f} ms"
    return None


@dataclass(frozen=True, slots=True)
class LagHistogram:
    """A cumulative histogram snapshot (Prometheus ``le`` buckets), safe to hand across threads."""

    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count), +Inf last
    total: float
    count: int


class LoopLagMonitor:
    """Measures the running loop's lag; start() on the loop that runs the checks."""

    def __init__(
        self,
        state: State | None = None,
        *,
        tick: float = 0.1,
        threshold: float = 0.25,
        recover_after: float = 5.0,
        horizon: float = 600.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.tick = tick
        self.threshold = threshold
        self.recover_after = recover_after
        self._now = now
        # (woke_at, lag) per tick, for the stall over a window; bounded to ``horizon``.
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(16, int(horizon / tick)))
        self._counts = [0] * (len(LAG_BUCKETS) + 1)
        self._sum = 0.0
        self._n = 0
        self._expected: float | None = None  # when the pending tick should wake
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._timer: asyncio.TimerHandle | None = None
        self._open = 0  # check windows open (begin() not yet released)
        self._lease_until = -math.inf  # a mark() outside any window keeps the tick till then
        self.overloaded = False
        self.max_lag = 0.0  # worst lag since overload began (or the last recovery)
        self._last_slow = 0.0
        self._events = 0  # times Guardian fell behind, for the log
        self._lateness: Callable[[], Iterable[tuple[str, str, float | None]]] = tuple

    # ------------------------------------------------------------------ measuring

    def start(self) -> None:
        """Measure on the running loop from now on (ticking only while it matters)."""
        self._loop = asyncio.get_running_loop()
        self._reschedule()

    async def stop(self) -> None:
        self._cancel()
        self._loop = None

    @property
    def ticking(self) -> bool:
        """Whether a tick is pending (idle: never)."""
        return self._timer is not None

    def _wanted(self) -> bool:
        return self._open > 0 or self.overloaded or self._now() < self._lease_until

    def _reschedule(self, delay: float | None = None) -> None:
        loop = self._loop
        if loop is None or self._timer is not None or not self._wanted():
            return
        wait = self.tick if delay is None else delay
        self._expected = self._now() + wait
        self._timer = loop.call_later(wait, self._on_tick)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._expected = None

    def _on_tick(self) -> None:
        self._timer = None
        expected, self._expected = self._expected, None
        woke = self._now()
        if expected is not None:
            self.observe(max(0.0, woke - expected), woke)
        self._reschedule()

    def observe(self, lag: float, at: float) -> None:
        """Record one tick's lag (public so a test can feed known lags)."""
        self._samples.append((at, lag))
        self._counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self._sum += lag
        self._n += 1
        if lag >= self.threshold:
            self._last_slow = at
            self.max_lag = max(self.max_lag, lag)
            if not self.overloaded:
                self.overloaded = True
                self._events += 1
                message = (
                    f"Guardian is falling behind: event loop lag {lag * 1000:.0f} ms "
                    f"(threshold {self.threshold * 1000:.0f} ms); timeouts during it are "
                    "not counted against targets"
                )
                log.warning(message, extra={"event": "overload", "lag_ms": round(lag * 1000)})
                if self.state is not None:
                    self.state.set_problem("overload", message)
        elif self.overloaded and at - self._last_slow >= self.recover_after:
            log.info(
                "Guardian keeps up again (worst lag %.0f ms)",
                self.max_lag * 1000,
                extra={"event": "overload_cleared", "lag_ms": round(self.max_lag * 1000)},
            )
            self.overloaded = False
            self.max_lag = 0.0
            if self.state is not None:
                self.state.clear_problem("overload")

    # ------------------------------------------------------------------ LagProbe

    def mark(self) -> float:
        """A point to measure a stall from. Inside a window :meth:`begin` opened (code a
        check runs under the engine) it opens nothing; outside any (a check run on its
        own) it keeps the tick for :data:`MARK_LEASE` seconds, as nobody releases it."""
        now = self._now()
        if self._open == 0:
            self._lease_until = max(self._lease_until, now + MARK_LEASE)
            self._reschedule()
        return now

    def begin(self) -> float:
        """Open a check's window, a mark: the tick runs (at most ``tick`` away) until the
        window is released.

        The first window's first tick is due at once: checks that finish within ``tick``
        (most do) would otherwise close every window before any tick ran, leaving the lag
        histogram empty while checks run every second. That tick measures how long a ready
        callback waits for the loop, the lag at the moment a check starts.
        """
        first = self._open == 0 and self._timer is None
        self._open += 1
        self._reschedule(0.0 if first else None)
        return self._now()

    def release(self, mark: float) -> None:
        """Close a window. The last one stops the tick, recording a tick overdue right now
        first (the stall it would have measured is real even if nothing waits for it)."""
        self._open = max(0, self._open - 1)
        if self._wanted() or self._timer is None:
            return
        expected = self._expected
        self._cancel()
        now = self._now()
        if expected is not None and now > expected:
            self.observe(now - expected, now)
            self._reschedule()  # that may have made Guardian overloaded

    def stalled_since(self, mark: float) -> float:
        """Seconds the loop was stalled since ``mark``, including a tick overdue right now.

        The overdue part matters: after a stall the check's timeout and this monitor's
        tick become ready together, and the timeout may be handled first.
        """
        total = 0.0
        for at, lag in reversed(self._samples):
            if at < mark:
                break
            total += min(lag, at - mark)  # only the part of a stall inside the window
        expected = self._expected
        if expected is not None:
            now = self._now()
            total += max(0.0, now - max(expected, mark))
        return total

    # ------------------------------------------------------------------ readers

    def watch_lateness(self, source: Callable[[], Iterable[tuple[str, str, float | None]]]) -> None:
        """Where check start lateness comes from: ``(target, check, p99 or None)`` per check
        (the engine's :class:`~guardian.engine.lateness.LatenessWindow` keeps each p99 exact)."""
        self._lateness = source

    def lateness_p99(self) -> list[tuple[str, str, float]]:
        """``(target, check, p99)`` per check that has run."""
        return [(t, c, p99) for t, c, p99 in self._lateness() if p99 is not None]

    def histogram(self) -> LagHistogram:
        counts = list(self._counts)  # one C-level copy: consistent across threads
        cumulative, running = [], 0
        for bound, n in zip((*LAG_BUCKETS, float("inf")), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return LagHistogram(tuple(cumulative), self._sum, running)
