"""The scheduler: cadence, hard timeouts, isolation of failing checks, shutdown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from guardian.checks.base import CheckConfigBase
from guardian.checks.http.check import HttpCheckConfig
from guardian.config.schema import Config
from guardian.core.clock import FakeClock, SystemClock
from guardian.core.events import EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Outcome, Status
from guardian.core.state import State
from guardian.engine.scheduler import Engine
from guardian.engine.startup import StartupPhases, guards_startup


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
        [("t", c) for c in checks],  # type: ignore[misc]
        clock,  # type: ignore[arg-type]
        jitter=jitter,  # type: ignore[arg-type]
    )


@pytest.mark.slow
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


async def test_phases_spread_first_runs_over_the_interval_and_keep_the_cadence() -> None:
    clock = FakeClock()
    checks = [make(f"c{i}", interval=10, timeout=5) for i in range(20)]
    eng = engine(checks, clock, jitter=0.1)
    eng.start()
    await clock.advance(0)
    assert sum(c.runs for c in checks) < 20  # not all at once
    await clock.advance(9.99)
    assert all(c.runs == 1 for c in checks)  # every one within its interval
    await clock.advance(100)
    assert all(c.runs == 11 for c in checks)  # and exactly on its grid since
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


# --------------------------------------------------------------------------- startup phase


class Booting:
    """A check of a service that answers only from ``up_at`` (monotonic) on."""

    def __init__(self, clock: FakeClock, up_at: float, interval: float = 30.0) -> None:
        self.config = Cfg(name="http", interval=interval, timeout=0.5)
        self.clock = clock
        self.up_at = up_at
        self.times: list[float] = []

    async def run(self) -> Outcome:
        self.times.append(self.clock.monotonic())
        if self.clock.monotonic() >= self.up_at:
            return Outcome.ok("answering")
        return Outcome.failed("connect failed: connection refused")

    async def aclose(self) -> None:
        pass


def startup_rig(
    up_at: float, *, timeout: float = 300.0, interval: float = 30.0
) -> tuple[FakeClock, Booting, Engine, StartupPhases, list[CheckResult], EventBus]:
    from guardian.config.schema import RecoveryConfig, TargetConfig

    clock = FakeClock()
    check = Booting(clock, clock.monotonic() + up_at, interval)
    cfg = Config(
        targets=[
            TargetConfig(
                name="t",
                recovery=RecoveryConfig(startup_timeout=timeout, startup_probe_interval=1),
                checks=[HttpCheckConfig(url="http://127.0.0.1:1/", interval=interval, timeout=0.5)],
            )
        ]
    )
    bus = EventBus()
    phases = StartupPhases(cfg, clock)
    phases.attach(bus)
    results: list[CheckResult] = []
    bus.subscribe(lambda e: results.append(e) if isinstance(e, CheckResult) else None)
    eng = Engine(
        State(cfg, bus), [("t", check)], clock, jitter=0.0, first_run_spread=0.0,  # type: ignore[list-item]
        startup=phases,
    )
    return clock, check, eng, phases, results, bus


async def test_a_booting_service_is_probed_every_second_and_marked_startup() -> None:
    clock, check, eng, phases, results, _ = startup_rig(up_at=11.5)
    phases.begin_all()
    t0 = clock.monotonic()
    eng.start()
    await clock.advance(20)
    failed = [r for r in results if r.status is Status.FAILED]
    assert failed and all(r.startup for r in failed)  # booting: no failure counts
    first_ok = next(r for r in results if r.status is Status.OK)
    # Seen at most one probe period after it answers (boot + 1 s), not a 30 s interval later.
    assert first_ok.started_mono is not None and first_ok.started_mono - t0 <= 11.5 + 1
    assert not phases.in_startup("t")  # the first success ended the phase
    runs_after = [t for t in check.times if t > first_ok.started_mono]
    assert runs_after == []  # back on the check's own 30 s grid
    await clock.advance(30)
    assert check.times[-1] - t0 == pytest.approx(30.0)  # the grid slot, not a probe
    await eng.stop()


async def test_a_restart_begins_a_new_phase_and_wakes_a_long_sleep() -> None:
    clock, check, eng, phases, results, bus = startup_rig(up_at=0)
    phases.begin_all()
    eng.start()
    await clock.advance(1)
    assert results[-1].status is Status.OK and not phases.in_startup("t")
    check.up_at = clock.monotonic() + 5.2  # it is restarted and boots for 5.2 s
    bus.publish(RecoveryEvent("t", RecoveryKind.RESTART_STARTED, clock.now(), 1))
    assert phases.in_startup("t")
    await clock.advance(7)
    assert [r.status for r in results[1:]] == [Status.FAILED] * 5 + [Status.OK]
    assert all(r.startup for r in results[1:])  # the success that ends it is its last
    assert not phases.in_startup("t")
    assert len(check.times) == 7  # woken from the 30 s sleep: probes at 1 s
    await eng.stop()


async def test_startup_timeout_ends_the_phase_and_failures_say_so() -> None:
    clock, _, eng, phases, results, _ = startup_rig(up_at=1e9, timeout=5, interval=2)
    phases.begin_all()
    eng.start()
    await clock.advance(9)
    early = [r for r in results if r.started_mono is not None and r.started_mono < 1005]
    late = [r for r in results if r.started_mono is not None and r.started_mono >= 1005]
    assert early and all(r.startup for r in early)
    assert late and not any(r.startup for r in late)
    assert all(r.values["startup_timeout_s"] == 5 for r in late)
    await eng.stop()


async def test_a_failed_start_ends_the_phase_at_once() -> None:
    clock, _, eng, phases, results, bus = startup_rig(up_at=1e9, interval=2)
    phases.begin_all()
    eng.start()
    await clock.advance(1.5)
    assert results and results[-1].startup
    bus.publish(RecoveryEvent("t", RecoveryKind.RESTART_FAILED, clock.now(), 1))
    await clock.advance(2)
    assert not results[-1].startup and "startup_timeout_s" not in results[-1].values
    await eng.stop()


async def test_host_checks_have_no_startup_phase() -> None:
    """A full disk at Guardian's start is not 'booting': it counts at once."""
    from guardian.checks.disk import DiskCheckConfig
    from guardian.config.schema import TargetConfig

    clock = FakeClock()
    cfg = Config(targets=[TargetConfig(name="t", checks=[DiskCheckConfig(paths=["/"])])])
    phases = StartupPhases(cfg, clock)
    phases.begin_all()
    assert not phases.active("t", "disk") and not phases.in_startup("t")
    assert guards_startup("http") and guards_startup("comfyui") and not guards_startup("service")


async def test_one_success_ends_the_phase_for_every_check_of_the_target() -> None:
    """Like a startupProbe: once the service answers, a failing canary counts at once."""
    from guardian.config.schema import TargetConfig

    clock = FakeClock()
    cfg = Config(targets=[TargetConfig(name="t", checks=[
        HttpCheckConfig(name="api", url="http://127.0.0.1:1/"),
        HttpCheckConfig(name="canary", url="http://127.0.0.1:1/"),
    ])])
    phases = StartupPhases(cfg, clock)
    phases.begin_all()
    assert phases.active("t", "api") and phases.active("t", "canary")
    now = clock.now()
    phases.observe(CheckResult("t", "api", "http", Status.OK, "", {}, now, now, 0.1))
    assert not phases.active("t", "canary") and not phases.in_startup("t")
    assert phases.timed_out("t", "canary") is None  # it became healthy: no such note


def test_a_tiny_probe_interval_never_hammers_a_booting_service() -> None:
    from guardian.config.schema import RecoveryConfig, TargetConfig
    from guardian.engine.startup import MIN_PROBE_INTERVAL

    clock = FakeClock()
    cfg = Config(targets=[TargetConfig(
        name="t",
        # Past the config's bounds on purpose (model_copy skips validation).
        recovery=RecoveryConfig().model_copy(
            update={"startup_probe_interval": 1e-300, "startup_timeout": 1e308}
        ),
        checks=[HttpCheckConfig(url="http://127.0.0.1:1/")],
    )])
    phases = StartupPhases(cfg, clock)
    phases.begin_all()
    assert phases.probe_interval("t", "http") == MIN_PROBE_INTERVAL
    assert phases.active("t", "http")  # a huge timeout is just a long phase


async def test_an_adopted_process_long_up_has_no_startup_phase_and_a_young_one_a_shorter_one(
) -> None:
    from guardian.config.schema import RecoveryConfig, TargetConfig

    clock = FakeClock()
    cfg = Config(targets=[
        TargetConfig(name=n, recovery=RecoveryConfig(startup_timeout=300),
                     checks=[HttpCheckConfig(url="http://127.0.0.1:1/", interval=30, timeout=1)])
        for n in ("old", "young", "fresh")
    ])
    phases = StartupPhases(cfg, clock)
    phases.begin_all()
    phases.already_up("old", 3600)  # up an hour when Guardian found it: past booting
    phases.already_up("young", 200)  # found 200 s into its boot: 100 s of the phase left
    assert not phases.in_startup("old")
    assert phases.in_startup("young") and phases.in_startup("fresh")
    await clock.advance(101)
    assert not phases.in_startup("young")
    assert phases.in_startup("fresh")  # started by this Guardian: the whole 300 s
