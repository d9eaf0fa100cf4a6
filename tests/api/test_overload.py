"""Guardian's own lag: measured on the real loop, reported, and never held against a target.

The engine tests run real checks on the real loop: a check whose target never answers,
with the loop blocked (``time.sleep`` in another task, as a flood or a stuck callback
would) for longer than the check's timeout. Blocked: SKIPPED "guardian overloaded".
Not blocked: the same check FAILS with "timeout", so the hook cannot hide real hangs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time

import pytest

from guardian.checks.base import CheckConfigBase
from guardian.config.load import parse_config
from guardian.core.clock import SystemClock
from guardian.core.result import Outcome, Status
from guardian.core.state import State
from guardian.engine.lateness import LatenessWindow, nearest_rank
from guardian.engine.overload import MARK_LEASE, LoopLagMonitor, overloaded_reason
from guardian.engine.scheduler import Engine

CONFIG = """
[[targets]]
name = "victim"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:9/"
interval = 60
timeout = 0.3
"""


class NeverAnswers:
    """A target that accepted the request and will never reply."""

    def __init__(self, config: CheckConfigBase) -> None:
        self.config = config

    async def aclose(self) -> None:
        return None

    async def run(self) -> Outcome:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _engine(state: State, monitor: LoopLagMonitor | None) -> Engine:
    cfg = state.config.targets[0].checks[0]
    assert isinstance(cfg, CheckConfigBase)
    engine = Engine(state, [("victim", NeverAnswers(cfg))], SystemClock())
    engine.lag_probe = monitor
    return engine


async def _block_loop(after: float, seconds: float) -> None:
    await asyncio.sleep(after)
    time.sleep(seconds)  # noqa: ASYNC251 - the point: the whole loop stalls, as under overload


async def test_timeout_while_guardian_stalled_is_skipped_not_failed() -> None:
    state = State(parse_config(CONFIG))
    monitor = LoopLagMonitor(state, tick=0.02, threshold=0.1)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        engine = _engine(state, monitor)
        blocker = asyncio.create_task(_block_loop(0.02, 0.4))
        result = await engine.execute(engine.scheduled[0])
        await blocker
    finally:
        await monitor.stop()
    assert result.status is Status.SKIPPED
    assert result.reason.startswith("guardian overloaded: event loop lag ")
    assert float(result.values["guardian_lag_s"]) >= 0.15  # type: ignore[arg-type]
    assert monitor.overloaded and "overload" in state.problems


async def test_timeout_while_guardian_keeps_up_still_fails() -> None:
    state = State(parse_config(CONFIG))
    monitor = LoopLagMonitor(state, tick=0.02, threshold=0.1)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        engine = _engine(state, monitor)
        result = await engine.execute(engine.scheduled[0])
    finally:
        await monitor.stop()
    assert result.status is Status.FAILED and result.reason == "timeout"
    assert "overload" not in state.problems


async def test_without_a_probe_a_stalled_timeout_fails_as_before() -> None:
    state = State(parse_config(CONFIG))
    engine = _engine(state, None)
    blocker = asyncio.create_task(_block_loop(0.02, 0.4))
    result = await engine.execute(engine.scheduled[0])
    await blocker
    assert result.status is Status.FAILED


def test_overload_is_logged_once_and_cleared(caplog: pytest.LogCaptureFixture) -> None:
    state = State(parse_config(CONFIG))
    monitor = LoopLagMonitor(state, threshold=0.2, recover_after=5.0)
    with caplog.at_level(logging.INFO, logger="guardian.engine.overload"):
        monitor.observe(0.01, 0.0)
        for t in (1.0, 1.5, 2.0):
            monitor.observe(0.5, t)
        assert state.problems["overload"].startswith("Guardian is falling behind: event loop lag")
        monitor.observe(0.01, 4.0)  # not yet kept up for 5 s
        assert monitor.overloaded
        monitor.observe(0.01, 7.5)
    assert not monitor.overloaded and "overload" not in state.problems
    messages = [r.getMessage() for r in caplog.records]
    assert sum("falling behind" in m for m in messages) == 1
    assert sum("keeps up again" in m for m in messages) == 1


def test_stall_is_counted_only_inside_the_window() -> None:
    now = [10.0]
    monitor = LoopLagMonitor(now=lambda: now[0])
    monitor.observe(1.0, 9.0)  # before the window
    mark = monitor.mark()
    monitor.observe(0.3, 10.1)  # stall began before the mark: only 0.1 s of it counts
    monitor.observe(0.2, 10.5)
    assert monitor.stalled_since(mark) == pytest.approx(0.3)


def test_histogram_and_reason_helpers() -> None:
    monitor = LoopLagMonitor()
    for lag in (0.0005, 0.003, 0.2, 20.0):
        monitor.observe(lag, 0.0)
    h = monitor.histogram()
    assert h.count == 4 and h.buckets[-1] == (float("inf"), 4)
    assert dict(h.buckets)[0.001] == 1 and dict(h.buckets)[0.25] == 3
    assert overloaded_reason(0.1, 0.5) is None
    assert overloaded_reason(0.3, 0.5) == "guardian overloaded: event loop lag 300 ms"
    assert nearest_rank(5) == 4 and nearest_rank(2, 0.5) == 0 and nearest_rank(1000) == 989


async def test_the_tick_runs_only_while_a_check_runs() -> None:
    """Idle Guardian: no tick at all; a check's window is covered from its start."""
    monitor = LoopLagMonitor(tick=0.01)
    monitor.start()
    try:
        assert not monitor.ticking
        mark = monitor.begin()
        assert monitor.ticking
        await asyncio.sleep(0.05)
        assert monitor.histogram().count >= 1  # ticks measured while the window was open
        inner = monitor.begin()
        monitor.release(inner)
        assert monitor.ticking  # the outer window is still open
        monitor.release(mark)
        assert not monitor.ticking
        count = monitor.histogram().count
        await asyncio.sleep(0.05)
        assert monitor.histogram().count == count
    finally:
        await monitor.stop()


async def test_engine_releases_every_window() -> None:
    state = State(parse_config(CONFIG))
    monitor = LoopLagMonitor(state, tick=0.02, threshold=0.1)
    monitor.start()
    try:
        engine = _engine(state, monitor)
        result = await engine.execute(engine.scheduled[0])  # times out
        assert result.status is Status.FAILED
        assert not monitor.ticking
    finally:
        await monitor.stop()


async def test_a_stall_seen_only_at_release_is_recorded() -> None:
    """The loop stalled past the pending tick and the check ended first: the stall still
    counts (and sets the overload flag), though no tick ran."""
    state = State(parse_config(CONFIG))
    monitor = LoopLagMonitor(state, tick=0.05, threshold=0.1)
    monitor.start()
    try:
        mark = monitor.begin()
        time.sleep(0.3)  # noqa: ASYNC251 - the loop itself is blocked
        monitor.release(mark)
        assert monitor.histogram().count == 1
        assert monitor.overloaded and "overload" in state.problems
    finally:
        await monitor.stop()


async def test_overload_keeps_the_tick_until_guardian_keeps_up() -> None:
    state = State(parse_config(CONFIG))
    monitor = LoopLagMonitor(state, tick=0.01, threshold=0.1, recover_after=0.1)
    monitor.start()
    try:
        mark = monitor.begin()
        await _block_loop(0.0, 0.2)
        await asyncio.sleep(0.02)
        monitor.release(mark)
        assert monitor.overloaded and monitor.ticking  # nothing runs, yet it must clear
        for _ in range(200):
            if not monitor.overloaded:
                break
            await asyncio.sleep(0.01)
        assert not monitor.overloaded and "overload" not in state.problems
        assert not monitor.ticking
    finally:
        await monitor.stop()


def test_lateness_p99_is_the_current_p99_of_each_check_that_ran() -> None:
    window = LatenessWindow()
    for _ in range(100):
        window.append(0.001)
    monitor = LoopLagMonitor()
    monitor.watch_lateness(lambda: [("panel", "http", window.p99()), ("idle", "http", None)])
    assert monitor.lateness_p99() == [("panel", "http", 0.001)]
    for _ in range(100):
        window.append(0.5)
    assert monitor.lateness_p99() == [("panel", "http", 0.5)]  # no stale value kept


@pytest.mark.parametrize("size", [1, 2, 7, 100, 1000])
def test_a_lateness_window_keeps_the_exact_p99_of_its_last_samples(size: int) -> None:
    """Against sorting the window after every sample: ties, zeros (a fake clock is never
    late), spikes leaving the window, a cleared window."""
    rng = random.Random(size)
    window, ref = LatenessWindow(size), collections.deque[float](maxlen=size)
    assert window.p99() is None
    for i in range(3 * size + 50):
        if i == 2 * size:
            window.clear()
            ref.clear()
        x = rng.choice([0.0, 0.0, rng.random(), round(rng.random(), 1), 5.0 * (i % 97 == 0)])
        window.append(x)
        ref.append(x)
        ordered = sorted(ref)
        assert window.p99() == ordered[nearest_rank(len(ordered))], i
        assert list(window) == list(ref) and len(window) == len(ref) and window[0] == ref[0]


async def test_a_mark_inside_a_window_opens_nothing_one_outside_keeps_the_tick() -> None:
    """A check's own deadline (its mark) under the engine's window costs no tick of its
    own; a check run on its own, with nobody to release, still gets its stall measured."""
    now = [0.0]
    monitor = LoopLagMonitor(tick=0.01, threshold=1e9, now=lambda: now[0])  # the jump: no lag
    monitor.start()
    try:
        window = monitor.begin()
        monitor.mark()
        monitor.release(window)
        assert not monitor.ticking
        monitor.mark()
        assert monitor.ticking
        now[0] = MARK_LEASE + 1
        await asyncio.sleep(0.05)  # the next tick sees the lease over and stops
        assert not monitor.ticking
    finally:
        await monitor.stop()


async def test_checks_shorter_than_the_tick_still_fill_the_histogram() -> None:
    """Checks every second that finish in a few ms (most do) used to close every window
    before its first tick: guardian_event_loop_lag_seconds stayed at 0 observations."""
    monitor = LoopLagMonitor(tick=0.1)
    monitor.start()
    try:
        for _ in range(5):
            mark = monitor.begin()
            await asyncio.sleep(0.005)  # a quick check
            monitor.release(mark)
            await asyncio.sleep(0.01)  # idle until the next one
        h = monitor.histogram()
        assert h.count == 5, h  # one measured tick per check window
        assert not monitor.ticking
    finally:
        await monitor.stop()
