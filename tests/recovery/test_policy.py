"""RestartPolicy: the pure rules, driven by explicit times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardian.config.schema import RecoveryConfig
from guardian.core.result import Status
from guardian.recovery.breakers import BreakerRecord
from guardian.recovery.policy import MAX_DELAY, Action, RestartPolicy


def policy(**kw: object) -> RestartPolicy:
    # model_copy skips validation: the policy must survive numbers past the config's bounds.
    cfg = RecoveryConfig(grace_period=0).model_copy(update=kw)
    return RestartPolicy(cfg, liveness={"http"})


def do_restart(p: RestartPolicy, now: float) -> int:
    d = p.decide(now, "x")
    assert d.action == Action.RESTART, d
    p.begin(now)
    p.finished(now)
    return d.attempt


def test_first_restart_immediate_then_cooldown() -> None:
    p = policy(cooldown=30, backoff_factor=1.0)
    assert do_restart(p, 0) == 1
    d = p.decide(10, "again")
    assert d.action == Action.WAIT and d.at == 30
    assert do_restart(p, 30) == 2


def test_backoff_grows_and_caps() -> None:
    p = policy(cooldown=10, backoff_factor=2, backoff_max=35, max_attempts=10)
    assert [p.gap_after(n) for n in (1, 2, 3, 4, 5)] == [10, 20, 35, 35, 35]
    now = 0.0
    gaps = []
    do_restart(p, now)
    for _ in range(4):
        d = p.decide(now, "x")
        assert d.action == Action.WAIT and d.at is not None
        gaps.append(d.at - now)
        now = d.at
        do_restart(p, now)
    assert gaps == [10, 20, 35, 35]


def test_backoff_never_below_cooldown() -> None:
    p = policy(cooldown=30, backoff_factor=2, backoff_max=5)
    assert p.gap_after(3) == 30


def test_breaker_opens_after_max_attempts_once() -> None:
    p = policy(cooldown=1, backoff_factor=1, max_attempts=3, window=100)
    for t in (0, 1, 2):
        do_restart(p, t)
    d = p.decide(3, "x")
    assert d.action == Action.BREAKER_OPEN and d.attempt == 3
    assert p.breaker_open
    assert p.decide(4, "x").action == Action.NONE
    assert p.decide(500, "x").action == Action.NONE  # stays open until a reset
    p.reset()
    assert p.decide(500, "x").action == Action.RESTART


def test_attempts_outside_window_do_not_count() -> None:
    p = policy(cooldown=1, backoff_factor=1, max_attempts=2, window=10)
    do_restart(p, 0)
    do_restart(p, 1)
    d = p.decide(20, "x")
    assert d.action == Action.RESTART and d.attempt == 1


def test_failure_threshold_streak() -> None:
    p = policy(failure_threshold=3)
    assert p.observe_check("http", "http", Status.FAILED, 1) is None
    assert p.observe_check("http", "http", Status.FAILED, 2) is None
    assert p.consecutive_failures == 2
    # a success in between resets the streak
    assert p.observe_check("http", "http", Status.OK, 3) is None
    assert p.observe_check("http", "http", Status.FAILED, 4) is None
    assert p.observe_check("http", "http", Status.FAILED, 5) is None
    reason = p.observe_check("http", "http", Status.FAILED, 6)
    assert reason is not None and "3 times" in reason


def test_non_liveness_checks_never_trigger() -> None:
    p = policy(failure_threshold=1)
    assert p.observe_check("disk", "disk", Status.FAILED, 1) is None
    assert p.observe_check("other", "http", Status.FAILED, 1) is None
    assert p.observe_check("http", "http", Status.SKIPPED, 1) is None


def test_service_check_failure_triggers_immediately_even_in_grace() -> None:
    p = policy(grace_period=60)
    p.started(0)
    assert p.observe_check("service", "service", Status.FAILED, 1) is not None


def test_grace_period_ignores_liveness_failures() -> None:
    p = policy(grace_period=30, failure_threshold=2)
    p.started(100)
    assert p.in_grace(110)
    for t in (101, 110, 120, 129):
        assert p.observe_check("http", "http", Status.FAILED, t) is None
    assert p.consecutive_failures == 0
    assert p.observe_check("http", "http", Status.FAILED, 131) is None
    assert p.observe_check("http", "http", Status.FAILED, 132) is not None


def test_failures_during_restart_are_ignored() -> None:
    p = policy(failure_threshold=1)
    p.begin(0)
    assert p.observe_check("http", "http", Status.FAILED, 0.5) is None
    assert p.decide(0.5, "x").action == Action.NONE


def test_stable_period_resets_counter() -> None:
    p = policy(cooldown=1, backoff_factor=1, stable_period=120, max_attempts=3)
    do_restart(p, 0)
    do_restart(p, 1)
    p.observe_check("http", "http", Status.OK, 10)
    assert not p.stable_reset_due(100)
    p.observe_check("http", "http", Status.FAILED, 100)  # breaks the healthy run
    p.observe_check("http", "http", Status.OK, 101)
    assert not p.stable_reset_due(200)
    assert p.stable_reset_due(221)
    p.reset()
    assert not p.stable_reset_due(230)
    assert p.decide(300, "x").attempt == 1


def test_record_round_trip_across_clocks() -> None:
    p = policy(cooldown=1, backoff_factor=1, max_attempts=2, window=1000)
    do_restart(p, 100)
    do_restart(p, 150)
    p.decide(160, "x")  # opens the breaker
    wall = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    rec = p.to_record(200, wall)
    assert rec.attempts == 2 and rec.breaker_open
    assert rec.attempt_times[0] == "2026-03-01T11:58:20+00:00"
    q = policy(cooldown=1, backoff_factor=1, max_attempts=2, window=1000)
    q.restore(BreakerRecord(**vars(rec)), 5.0, wall)  # new process, other monotonic origin
    assert q.breaker_open and len(q.attempt_times) == 2
    assert q.attempt_times == [-95.0, -45.0]


@given(
    factor=st.floats(1, 5),
    cooldown=st.floats(0, 100),
    cap=st.floats(0, 1000),
    n=st.integers(1, 30),
)
def test_gap_is_monotonic_and_bounded(factor: float, cooldown: float, cap: float, n: int) -> None:
    p = policy(cooldown=cooldown, backoff_factor=factor, backoff_max=cap)
    g, g2 = p.gap_after(n), p.gap_after(n + 1)
    assert g2 >= g
    assert cooldown <= g <= max(cooldown, cap)


def test_huge_backoff_factor_saturates_instead_of_overflowing() -> None:
    """Issue 11.8: backoff_factor = 1e200 raised OverflowError after the 3rd attempt."""
    p = policy(cooldown=30, backoff_factor=1e200, backoff_max=300, max_attempts=50, window=1e9)
    assert p.gap_after(1) == 30
    assert p.gap_after(3) == 300 and p.gap_after(10_000) == 300
    now = 0.0
    for _ in range(5):
        d = p.decide(now, "x")
        assert d.action in (Action.RESTART, Action.WAIT)
        if d.action == Action.WAIT:
            assert d.at is not None
            now = d.at
            continue
        p.begin(now)
        p.finished(now)
    rec = p.to_record(now, datetime(2026, 1, 1, tzinfo=UTC))  # renders as wall time
    assert rec.attempts >= 3


def test_extreme_but_valid_numbers_keep_every_deadline_finite() -> None:
    p = policy(cooldown=1e300, backoff_factor=1e300, backoff_max=1e308, window=1e308)
    p.begin(0)
    p.finished(0)
    gap = p.gap_after(5)
    assert gap == MAX_DELAY  # a year: finite, and inside datetime's range
    allowed = p.next_allowed_at(1.0)
    assert allowed is not None and allowed == MAX_DELAY
    zero = policy(cooldown=0, backoff_factor=1e300, backoff_max=1e308)
    assert zero.gap_after(7) == 0  # 0 * inf is not nan here


def test_startup_failures_feed_no_streak() -> None:
    p = policy(failure_threshold=1)
    for _ in range(10):
        assert p.observe_check("http", "http", Status.FAILED, 0, startup=True) is None
    assert p.consecutive_failures == 0
    assert p.observe_check("http", "http", Status.FAILED, 1) is not None  # after it: counts


def test_every_phase_is_a_named_state_reached_through_the_transition_table() -> None:
    from guardian.recovery.policy import RecoveryState

    p = policy(cooldown=10, backoff_factor=1, max_attempts=2, window=100, failure_threshold=1)
    assert p.state is RecoveryState.UNKNOWN
    p.started(0)
    assert p.state is RecoveryState.STARTING
    p.observe_check("http", "http", Status.OK, 1)
    assert p.state is RecoveryState.HEALTHY
    reason = p.observe_check("http", "http", Status.FAILED, 2)
    assert reason is not None and p.state is RecoveryState.FAILING
    do_restart(p, 2)
    assert p.state is RecoveryState.STARTING  # finished, not yet proven
    assert p.decide(3, "x").action == Action.WAIT and p.state is RecoveryState.BACKOFF
    p.observe_check("http", "http", Status.OK, 4)  # recovered on its own while waiting
    assert p.state is RecoveryState.HEALTHY
    do_restart(p, 12)
    p.begin(12)
    assert p.state is RecoveryState.RESTARTING and p.in_progress
    p.finished(13)
    assert p.decide(30, "x").action == Action.BREAKER_OPEN
    assert p.state is RecoveryState.BREAKER_OPEN and p.breaker_open
    p.reset()
    assert p.state is not RecoveryState.BREAKER_OPEN and not p.breaker_open


def test_an_unexpected_transition_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from guardian.recovery.policy import RecoveryState

    p = policy()
    p.begin(0)
    with caplog.at_level("ERROR", logger="guardian.recovery.policy"):
        p._to(RecoveryState.BACKOFF, "a bug")
    assert "unexpected recovery transition restarting -> backoff" in caplog.text
