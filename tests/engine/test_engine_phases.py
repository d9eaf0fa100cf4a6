"""Phases: first runs spread over the interval, a fixed grid after, the same on every start."""

from __future__ import annotations

import math

import pytest

from guardian.checks.base import CheckConfigBase
from guardian.checks.http.check import HttpCheckConfig
from guardian.config.schema import Config, RecoveryConfig, TargetConfig
from guardian.core.clock import FakeClock
from guardian.core.result import Outcome, Status
from guardian.core.state import State
from guardian.engine.scheduler import FIRST_RUN_SPREAD, PHASE_SLOT, Engine, phase_offset
from guardian.engine.startup import StartupPhases


class Cfg(CheckConfigBase):
    kind: str = "fake"


class Timed:
    """Records the (fake) monotonic time of every run; fails while ``up_at`` is ahead."""

    def __init__(self, clock: FakeClock, name: str, interval: float, up_at: float = 0.0) -> None:
        self.config = Cfg(name=name, interval=interval, timeout=min(0.5, interval / 2))
        self.clock = clock
        self.up_at = up_at
        self.times: list[float] = []

    async def run(self) -> Outcome:
        self.times.append(self.clock.monotonic())
        if self.clock.monotonic() < self.up_at:
            return Outcome.failed("connect failed: connection refused")
        return Outcome.ok()

    async def aclose(self) -> None:
        pass


def rig(
    clock: FakeClock, n: int, interval: float, *, jitter: float = 0.1
) -> tuple[Engine, list[Timed]]:
    checks = [Timed(clock, "c", interval) for _ in range(n)]
    eng = Engine(State(Config()), [(f"t{i:04d}", c) for i, c in enumerate(checks)], clock,  # type: ignore[misc]
                 jitter=jitter)  # type: ignore[list-item]
    return eng, checks


def offset(t: float, interval: float) -> float:
    """Where in its interval a run started (0 <= x < interval)."""
    return math.fmod(t, interval)


@pytest.mark.slow
async def test_a_thousand_first_runs_spread_over_the_whole_interval_then_a_fixed_grid() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    eng, checks = rig(clock, 1000, 1.0)
    eng.start()
    await clock.advance(0.999999)
    first = [c.times[0] - t0 for c in checks if c.times]
    assert len(first) == 1000 and all(0 <= f < 1.0 for f in first)
    tenths = [sum(1 for f in first if k / 10 <= f < (k + 1) / 10) for k in range(10)]
    assert all(70 <= n <= 130 for n in tenths), tenths  # about 100 in each 100 ms
    per_10ms = [sum(1 for f in first if k / 100 <= f < (k + 1) / 100) for k in range(100)]
    assert max(per_10ms) <= 25, max(per_10ms)  # the old rule put all 1000 in 0.1 s
    await clock.advance(5.0)
    for i, c in enumerate(checks):
        assert len(c.times) == 6
        gaps = [b - a for a, b in zip(c.times, c.times[1:], strict=False)]
        assert all(abs(g - 1.0) < 1e-6 for g in gaps), gaps  # on its grid, no drift
        phase = phase_offset(f"t{i:04d}", "c", 1.0)
        assert all(abs(offset(t, 1.0) - phase) < 1e-6 for t in c.times)
    lateness = [x for sc in eng.scheduled for x in sc.lateness]
    assert len(lateness) == 6000 and max(lateness) == 0.0  # every run exactly when due
    await eng.stop()


async def test_checks_whose_phases_share_a_slot_run_at_the_same_instant() -> None:
    """300 checks at 1 s wake the loop at most 100 times a second (10 ms slots)."""
    clock = FakeClock()
    eng, checks = rig(clock, 300, 1.0)
    eng.start()
    await clock.advance(3.0)
    grid_runs = [t for c in checks for t in c.times[1:]]
    offsets = {round(offset(t, 1.0), 9) for t in grid_runs}
    assert len(offsets) <= round(1.0 / PHASE_SLOT)
    assert len(offsets) > 80  # yet spread over (nearly) every slot, not bunched
    assert all(abs(o / PHASE_SLOT - round(o / PHASE_SLOT)) < 1e-6 for o in offsets)
    instants = {round(t, 9) for t in grid_runs}
    assert len(instants) < len(grid_runs) / 2  # checks in one slot share their wakeup
    await eng.stop()


async def test_a_restarted_guardian_keeps_every_phase() -> None:
    places: list[list[float]] = []
    for start in (1000.0, 98765.4321):
        clock = FakeClock(start=start)
        eng, checks = rig(clock, 50, 10.0)
        eng.start()
        await clock.advance(25)
        places.append([offset(c.times[-1], 10.0) for c in checks])
        await eng.stop()
    assert all(abs(a - b) < 1e-6 for a, b in zip(*places, strict=True))
    # They differ between checks: 50 phases in 1000 slots of 10 ms share few slots.
    assert len({round(p, 3) for p in places[0]}) >= 45


async def test_a_long_interval_check_reports_within_the_first_run_window() -> None:
    """A 300 s disk check must not leave `guardian run` blank for 5 minutes."""
    clock = FakeClock()
    t0 = clock.monotonic()
    eng, checks = rig(clock, 200, 300.0)
    eng.start()
    await clock.advance(FIRST_RUN_SPREAD)
    assert all(len(c.times) == 1 for c in checks)
    first = sorted(c.times[0] - t0 for c in checks)
    assert first[0] < 1.0 < 9.0 < first[-1]  # spread over the window, not all at start
    await clock.advance(3 * 300)
    for i, c in enumerate(checks):
        phase = phase_offset(f"t{i:04d}", "c", 300.0)
        gap = c.times[1] - c.times[0]
        assert 150 - 1e-6 <= gap < 450, gap  # joins its grid, never two runs back to back
        assert all(abs(offset(t, 300.0) - phase) < 1e-6 for t in c.times[1:])
        assert [round(b - a, 6) for a, b in zip(c.times[1:], c.times[2:], strict=False)] == [
            300.0
        ] * (len(c.times) - 2)
    await eng.stop()


async def test_booting_targets_at_start_are_probed_within_the_probe_period_spread() -> None:
    """Startup probes (1 s) come at once in the sense a user means, not in one burst."""
    clock = FakeClock()
    t0 = clock.monotonic()
    names = [f"t{i:03d}" for i in range(100)]
    cfg = Config(
        targets=[
            TargetConfig(
                name=name,
                recovery=RecoveryConfig(startup_timeout=300, startup_probe_interval=1),
                checks=[HttpCheckConfig(url="http://127.0.0.1:1/", interval=30, timeout=0.5)],
            )
            for name in names
        ]
    )
    phases = StartupPhases(cfg, clock)
    phases.begin_all()
    checks = [Timed(clock, "http", 30.0, up_at=t0 + 3.5) for _ in names]
    eng = Engine(State(cfg), list(zip(names, checks, strict=True)), clock,  # type: ignore[arg-type]
                 startup=phases)
    eng.start()
    await clock.advance(0.999999)
    first = [c.times[0] - t0 for c in checks]
    assert len(first) == 100 and max(first) < 1.0
    assert sum(1 for f in first if f < 0.1) < 30  # spread over the second
    await clock.advance(5)
    for c in checks:  # probed every second until it answered (at 3.5 s)
        gaps = [b - a for a, b in zip(c.times, c.times[1:], strict=False)]
        assert all(abs(g - 1.0) < 1e-6 for g in gaps) and c.times[-1] - t0 >= 3.5
    assert not any(phases.in_startup(n) for n in names)
    runs = [len(c.times) for c in checks]
    await clock.advance(60)
    for name, c, before in zip(names, checks, runs, strict=True):
        later = c.times[before:]
        assert later and 15 - 1e-6 <= later[0] - c.times[before - 1] < 45
        phase = phase_offset(name, "http", 30.0)
        assert all(abs(offset(t, 30.0) - phase) < 1e-6 for t in later)  # back on its grid
    assert eng.state.latest(names[0], "http").status is Status.OK  # type: ignore[union-attr]
    await eng.stop()


async def test_jitter_zero_runs_everything_at_start_on_an_aligned_grid() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    eng, checks = rig(clock, 20, 5.0, jitter=0)
    eng.start()
    await clock.advance(0)
    assert all(c.times == [t0] for c in checks)
    await clock.advance(10)
    assert all(c.times == [t0, t0 + 5, t0 + 10] for c in checks)
    await eng.stop()


async def test_run_once_ignores_phases() -> None:
    clock = FakeClock()
    eng, checks = rig(clock, 5, 300.0)
    results = await eng.run_once()
    assert [r.status for r in results] == [Status.OK] * 5
    assert all(len(c.times) == 1 for c in checks)
