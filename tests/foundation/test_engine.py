"""The scheduler: cadence, hard timeouts, isolation of failing checks, shutdown."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest

from guardian.checks.base import CheckConfigBase
from guardian.clock import FakeClock, SystemClock
from guardian.config import Config
from guardian.engine import Engine
from guardian.result import Outcome, Status
from guardian.state import State


class Cfg(CheckConfigBase):
    kind: str = "fake"


@dataclass
class FakeCheck:
    config: Cfg
    behaviour: str = "ok"  # ok | hang | raise | slow | bad
    runs: int = 0
    delay: float = 0.0
    clock: object = None

    async def run(self) -> Outcome:
        self.runs += 1
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        if self.behaviour == "raise":
            raise RuntimeError("boom")
        if self.behaviour == "slow":
            await self.clock.sleep(self.delay)  # type: ignore[attr-defined]
        if self.behaviour == "bad":
            return "not an outcome"  # type: ignore[return-value]
        return Outcome.ok(runs=self.runs)

    async def aclose(self) -> None:
        pass


def make(
    name: str, interval: float, timeout: float, behaviour: str = "ok", **kw: object
) -> FakeCheck:
    return FakeCheck(Cfg(name=name, interval=interval, timeout=timeout), behaviour, **kw)  # type: ignore[arg-type]


def engine(checks: list[FakeCheck], clock: object, jitter: float = 0.0) -> Engine:
    state = State(Config())
    return Engine(
        state,
        [("t", c) for c in checks],
        clock,
        jitter=jitter,  # type: ignore[arg-type]
        rng=random.Random(1),
    )


async def test_hung_check_times_out_while_fast_check_keeps_cadence_real_time() -> None:
    """A check that hangs forever never delays a 100 ms check; it is recorded as timeout."""
    fast = make("fast", interval=0.1, timeout=0.05)
    hung = make("hung", interval=0.5, timeout=0.2, behaviour="hang")
    eng = engine([fast, hung], SystemClock())
    eng.start()
    await asyncio.sleep(1.25)
    await eng.stop(grace=0.1)
    # ~12 runs in 1.25 s at a 100 ms cadence; allow scheduling noise but not stalls.
    assert 10 <= fast.runs <= 14, fast.runs
    fast_sc = next(s for s in eng.scheduled if s.name == "fast")
    assert max(fast_sc.lateness) < 0.05
    res = eng.state.latest("t", "hung")
    assert res is not None and res.status is Status.FAILED and res.reason == "timeout"
    assert 0.15 <= res.duration < 0.4
    assert hung.runs >= 2


async def test_cadence_on_fake_clock_is_exact() -> None:
    clock = FakeClock()
    check = make("c", interval=30, timeout=10)
    eng = engine([check], clock)
    eng.start()
    await clock.advance(0)
    assert check.runs == 1
    for expected in range(2, 12):
        await clock.advance(30)
        assert check.runs == expected
    await eng.stop()


async def test_timeout_on_fake_clock_and_slow_run_skips_missed_slots() -> None:
    clock = FakeClock()
    slow = make("slow", interval=10, timeout=5, behaviour="slow", delay=100, clock=clock)
    eng = engine([slow], clock)
    eng.start()
    await clock.advance(0)
    await clock.advance(5)
    res = eng.state.latest("t", "slow")
    assert res is not None and res.reason == "timeout" and res.duration == pytest.approx(5)
    await clock.advance(5)
    assert slow.runs == 2
    await eng.stop(grace=0.05)


async def test_exceptions_and_wrong_return_types_become_failed_results() -> None:
    clock = FakeClock()
    boom = make("boom", 10, 5, behaviour="raise")
    bad = make("bad", 10, 5, behaviour="bad")
    good = make("good", 10, 5)
    eng = engine([boom, bad, good], clock)
    results = {r.check: r for r in await eng.run_once()}
    assert results["boom"].status is Status.FAILED
    assert results["boom"].reason == "check error: RuntimeError: boom"
    assert results["bad"].status is Status.FAILED and "not an Outcome" in results["bad"].reason
    assert results["good"].status is Status.OK
    assert eng.state.overall() == "unhealthy"


async def test_jitter_spreads_first_runs_but_keeps_mean_cadence() -> None:
    clock = FakeClock()
    checks = [make(f"c{i}", interval=10, timeout=5) for i in range(20)]
    eng = engine(checks, clock, jitter=0.1)
    eng.start()
    await clock.advance(0)
    assert sum(c.runs for c in checks) < 20  # not all at once
    await clock.advance(1.0)
    assert all(c.runs == 1 for c in checks)
    await clock.advance(100)
    assert all(10 <= c.runs <= 12 for c in checks)
    await eng.stop()


async def test_stop_lets_running_check_finish_within_grace_then_cancels() -> None:
    hung = make("hung", interval=10, timeout=5, behaviour="hang")
    eng = engine([hung], SystemClock())
    eng.start()
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await eng.stop(grace=0.2)
    assert loop.time() - t0 < 1.0
    assert not eng._tasks
