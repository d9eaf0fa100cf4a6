"""RecoveryManager with a FakeClock and the in-memory backend (timing rules), and SQLite."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardian.checks.disk import DiskCheckConfig
from guardian.checks.http.check import HttpCheckConfig
from guardian.config.schema import Config, RecoveryConfig, ServiceConfig, TargetConfig
from guardian.core.clock import FakeClock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Condition, Status
from guardian.recovery.breakers import MemoryBreakerStore, SqliteBreakerStore
from guardian.recovery.manager import RecoveryManager
from guardian.services.lifecycle import ServiceLifecycle
from guardian.services.memory import MemoryBackend

pytestmark = pytest.mark.timeout(20)


def target(name: str, **rec: Any) -> TargetConfig:
    return TargetConfig(
        name=name,
        service=ServiceConfig(backend="process", command=["x"]),
        # model_copy skips validation: recovery must survive numbers past the config's bounds.
        # startup_timeout 0: a start is judged by min_uptime (0: at once), not by a check.
        recovery=RecoveryConfig(grace_period=0, min_uptime=0, startup_timeout=0).model_copy(
            update=rec
        ),
        checks=[
            HttpCheckConfig(url="http://127.0.0.1:1/", liveness=True, interval=1, timeout=0.5),
            DiskCheckConfig(paths=["/"], interval=1, timeout=0.5),
        ],
    )


class Rig:
    def __init__(
        self,
        *targets: TargetConfig,
        dry_run: bool = False,
        store: Any = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.bus = EventBus()
        self.events: list[RecoveryEvent] = []
        self.bus.subscribe(self._collect)
        self.order: list[str] = []
        self.backends = {t.name: MemoryBackend(t.name, actions=self.order) for t in targets}
        self.config = Config(targets=list(targets))
        self.mgr = RecoveryManager(
            self.config,
            self.bus,
            dict(self.backends),
            self.clock,
            dry_run=dry_run,
            store=store,
        )
        self.lifecycle = ServiceLifecycle(
            self.config, self.mgr.backends, self.clock, observer=self.mgr
        )

    def _collect(self, e: Event) -> None:
        if isinstance(e, RecoveryEvent):
            self.events.append(e)

    def kinds(self, kind: RecoveryKind) -> list[RecoveryEvent]:
        return [e for e in self.events if e.kind == kind]

    def check(self, tgt: str, status: Status, check: str = "http", kind: str = "http") -> None:
        now = self.clock.now()
        self.bus.publish(CheckResult(tgt, check, kind, status, "", {}, now, now, 0.01))


async def test_cooldown_and_breaker_with_fake_clock() -> None:
    r = Rig(target("api", cooldown=30, backoff_factor=2, backoff_max=100, max_attempts=3))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    await r.clock.settle()
    assert b.restarts == 1
    b.die()
    await r.clock.advance(29)
    assert b.restarts == 1  # cooldown not over
    await r.clock.advance(1.5)
    assert b.restarts == 2
    b.die()
    await r.clock.advance(59)
    assert b.restarts == 2  # backoff: 60 s after the 2nd attempt
    await r.clock.advance(1.5)
    assert b.restarts == 3
    b.die()
    await r.clock.advance(1000)
    assert b.restarts == 3
    assert len(r.kinds(RecoveryKind.BREAKER_OPEN)) == 1
    assert len(r.kinds(RecoveryKind.RESTART_SUCCEEDED)) == 3
    assert len(r.kinds(RecoveryKind.EXITED)) == 4
    snap = r.mgr.snapshot()["api"]
    assert snap["breaker_open"] and snap["attempts"] == 3 and snap["next_allowed_at"] is None
    await r.mgr.aclose()


async def test_failure_threshold_via_bus() -> None:
    r = Rig(target("api", failure_threshold=3))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    for _ in range(2):
        r.check("api", Status.FAILED)
    r.check("disk", Status.FAILED, check="disk", kind="disk")  # other target: ignored
    r.check("api", Status.FAILED, check="disk", kind="disk")  # not liveness
    await r.clock.settle()
    assert b.restarts == 0
    assert r.mgr.snapshot()["api"]["consecutive_failures"] == 2
    r.check("api", Status.FAILED)
    await r.clock.settle()
    assert b.restarts == 1
    started = r.kinds(RecoveryKind.RESTART_STARTED)
    assert started[0].attempt == 1 and "3 times" in started[0].reason
    await r.mgr.aclose()


async def test_grace_period_after_restart() -> None:
    r = Rig(target("api", failure_threshold=1, grace_period=10, cooldown=0))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    r.check("api", Status.FAILED)  # within the start grace
    await r.clock.settle()
    assert b.restarts == 0
    await r.clock.advance(11)
    r.check("api", Status.FAILED)
    await r.clock.settle()
    assert b.restarts == 1
    await r.clock.advance(5)
    r.check("api", Status.FAILED)
    await r.clock.settle()
    assert b.restarts == 1
    await r.clock.advance(6)
    r.check("api", Status.FAILED)
    await r.clock.settle()
    assert b.restarts == 2
    await r.mgr.aclose()


async def test_stable_period_resets_attempts() -> None:
    r = Rig(target("api", cooldown=1, backoff_factor=1, max_attempts=2, stable_period=60))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    await r.clock.advance(2)
    b.die()
    await r.clock.advance(2)
    assert b.restarts == 2
    for _ in range(7):
        r.check("api", Status.OK)
        await r.clock.advance(10)
    r.check("api", Status.OK)
    assert len(r.kinds(RecoveryKind.BREAKER_RESET)) == 1
    assert r.mgr.snapshot()["api"]["attempts"] == 0
    b.die()
    await r.clock.advance(2)
    assert b.restarts == 3 and not r.kinds(RecoveryKind.BREAKER_OPEN)
    await r.mgr.aclose()


async def test_dry_run_executes_nothing() -> None:
    r = Rig(target("api", cooldown=5, max_attempts=2), dry_run=True)
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    await r.clock.settle()
    b.die()
    await r.clock.advance(6)
    b.die()
    await r.clock.advance(60)
    assert b.restarts == 0
    assert len(r.kinds(RecoveryKind.DRY_RUN)) == 2
    assert len(r.kinds(RecoveryKind.BREAKER_OPEN)) == 1
    assert not r.kinds(RecoveryKind.RESTART_STARTED)
    assert await r.mgr.restart("api") == "dry run: would restart api"
    assert b.restarts == 0
    await r.mgr.aclose()


async def test_manual_restart_resets_breaker() -> None:
    r = Rig(target("api", cooldown=1, backoff_factor=1, max_attempts=1))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    await r.clock.advance(2)
    b.die()
    await r.clock.advance(2)
    assert r.mgr.snapshot()["api"]["breaker_open"] and b.restarts == 1
    before = r.clock.now()
    msg = await r.mgr.restart("api")
    assert msg == "restarted api (pid 102)"
    assert b.restarts == 2
    snap = r.mgr.snapshot()["api"]
    assert not snap["breaker_open"] and snap["attempts"] == 0
    # "last restart" (/api/health, the page) counts the manual one too.
    assert datetime.fromisoformat(snap["last_restart"]) >= before
    assert len(r.kinds(RecoveryKind.BREAKER_RESET)) == 1
    with pytest.raises(KeyError):
        await r.mgr.restart("nope")
    # after the manual restart, automatic recovery works again
    b.die()
    await r.clock.advance(2)
    assert b.restarts == 3
    await r.mgr.aclose()


async def test_disabled_and_serviceless_targets_never_restart() -> None:
    plain = TargetConfig(name="web", checks=[])
    r = Rig(target("api", enabled=False, failure_threshold=1))
    r.config.targets.append(plain)
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    r.check("api", Status.FAILED)
    r.check("web", Status.FAILED, check="service", kind="service")
    await r.clock.advance(100)
    assert b.restarts == 0
    assert r.kinds(RecoveryKind.EXITED)  # still reported
    assert r.mgr.snapshot()["api"]["enabled"] is False
    await r.mgr.aclose()


async def test_depends_on_start_and_stop_order() -> None:
    db = target("db")
    api = target("api", depends_on=["db"])
    ui = target("ui", depends_on=["api"])
    r = Rig(ui, api, db)
    assert r.lifecycle.start_order() == ["db", "api", "ui"]
    await r.lifecycle.start_all()
    assert r.order == ["start db", "start api", "start ui"]
    await r.lifecycle.stop_all()
    assert r.order[3:] == ["stop ui", "stop api", "stop db"]
    await r.mgr.aclose()


async def test_start_all_waits_for_dependency_running_bounded() -> None:
    db = target("db")
    api = target("api", depends_on=["db"])
    r = Rig(api, db)
    r.lifecycle.start_wait = 5

    async def never_up() -> None:
        r.order.append("start db")

    r.backends["db"].start = never_up  # type: ignore[method-assign]
    import asyncio

    task = asyncio.create_task(r.lifecycle.start_all())
    await r.clock.advance(4)
    assert r.order == ["start db"]
    await r.clock.advance(2)
    await task
    assert r.order == ["start db", "start api"]
    await r.mgr.aclose()


async def test_breaker_survives_guardian_restart_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "guardian.db"
    cfg = target("api", cooldown=1, backoff_factor=1, max_attempts=2, window=3600)
    r = Rig(cfg, store=SqliteBreakerStore(db))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    for _ in range(3):
        b.die()
        await r.clock.advance(2)
    assert b.restarts == 2 and r.mgr.snapshot()["api"]["breaker_open"]
    await r.mgr.aclose()

    # A new Guardian process: new clock origin, same file.
    store2 = SqliteBreakerStore(db)
    rec = store2.load()["api"]
    assert rec.breaker_open and rec.attempts == 2 and len(rec.attempt_times) == 2
    r2 = Rig(cfg, store=store2)
    assert r2.mgr.snapshot()["api"]["breaker_open"]
    r2.backends["api"].die()
    await r2.clock.advance(10)
    assert r2.backends["api"].restarts == 0
    await r2.mgr.restart("api")
    assert not SqliteBreakerStore(db).load()["api"].breaker_open
    await r2.mgr.aclose()


async def test_memory_store_round_trip() -> None:
    store = MemoryBreakerStore()
    cfg = target("api", cooldown=100)
    r = Rig(cfg, store=store)
    await r.lifecycle.start_all()
    r.backends["api"].die()
    await r.clock.settle()
    await r.mgr.aclose()
    r2 = Rig(cfg, store=store)
    snap = r2.mgr.snapshot()["api"]
    assert snap["attempts"] == 1 and snap["last_restart"] is not None
    r2.backends["api"].die()
    await r2.clock.advance(50)
    assert r2.backends["api"].restarts == 0  # cooldown carried over
    await r2.clock.advance(51)
    assert r2.backends["api"].restarts == 1
    await r2.mgr.aclose()


async def test_restarts_of_one_target_never_overlap() -> None:
    import asyncio

    r = Rig(target("api", cooldown=0, max_attempts=10))
    slow = MemoryBackend("api", actions=r.order, clock=r.clock, restart_seconds=5)
    r.backends["api"] = slow
    r.mgr = RecoveryManager(r.config, r.bus, {"api": slow}, r.clock)
    await r.lifecycle.start_all()
    slow.die()  # automatic restart begins
    await r.clock.settle()
    manual = [asyncio.create_task(r.mgr.restart("api")) for _ in range(3)]
    slow.die()  # a crash reported mid-restart is queued, not run alongside
    for _ in range(10):
        await r.clock.advance(5)
    results = await asyncio.gather(*manual)
    assert all(m.startswith("restarted api") for m in results)
    assert slow.most_in_flight == 1
    assert slow.restarts == 5  # the automatic one, its queued follow-up, three manual
    await r.mgr.aclose()


async def test_exit_only_target_attempts_clear_after_a_stable_run() -> None:
    # No liveness checks: the exit event is all recovery hears about this service.
    cfg = TargetConfig(
        name="api",
        service=ServiceConfig(backend="process", command=["x"]),
        recovery=RecoveryConfig(
            cooldown=1, backoff_factor=1, max_attempts=2, window=3600, stable_period=60
        ),
    )
    r = Rig(cfg)
    b = r.backends["api"]
    await r.lifecycle.start_all()
    for _ in range(5):  # a crash every 100 s, each after a stable run: never gives up
        await r.clock.advance(100)
        b.die()
        await r.clock.settle()
    assert b.restarts == 5 and not r.kinds(RecoveryKind.BREAKER_OPEN)
    assert [e.attempt for e in r.kinds(RecoveryKind.RESTART_STARTED)] == [1] * 5
    for _ in range(3):  # crashes closer together than stable_period still count
        await r.clock.advance(10)
        b.die()
        await r.clock.settle()
    assert b.restarts == 6 and len(r.kinds(RecoveryKind.BREAKER_OPEN)) == 1
    await r.mgr.aclose()


def test_breaker_store_shares_the_file_with_the_incident_store(tmp_path: Path) -> None:
    import sqlite3

    from guardian.incidents.store import SCHEMA_VERSION, Store
    from guardian.recovery.breakers import BREAKER_SCHEMA_VERSION, BreakerRecord

    for first in ("breakers", "incidents"):
        db = tmp_path / f"{first}-first.db"
        if first == "breakers":
            SqliteBreakerStore(db).save("api", BreakerRecord(attempts=1, attempt_times=["x"]))
        store = Store(db)  # its migrations must not be skipped or disturbed
        assert store.schema_version == SCHEMA_VERSION
        store.close()
        breakers = SqliteBreakerStore(db)
        assert breakers.schema_version == BREAKER_SCHEMA_VERSION
        breakers.save("web", BreakerRecord(breaker_open=True))
        breakers.close()
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        reopened = Store(db)
        assert reopened.schema_version == SCHEMA_VERSION
        reopened.close()
        assert SqliteBreakerStore(db).load()["web"].breaker_open


def test_breaker_store_upgrades_old_files_and_refuses_newer_ones(tmp_path: Path) -> None:
    import sqlite3

    from guardian.recovery.breakers import BREAKER_MIGRATIONS
    from guardian.store.db import StoreNewer

    old = tmp_path / "old.db"  # written before the schema row existed
    with sqlite3.connect(old) as con:
        con.execute(BREAKER_MIGRATIONS[0])
        con.execute(
            "INSERT INTO breakers (target, attempts, attempt_times, breaker_open)"
            " VALUES ('api', 2, '[]', 1)"
        )
    con.close()
    store = SqliteBreakerStore(old)
    assert store.load()["api"].breaker_open and store.schema_version == len(BREAKER_MIGRATIONS)
    store.close()

    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as con:
        con.execute("CREATE TABLE guardian_schema (component TEXT PRIMARY KEY, version INTEGER)")
        con.execute("INSERT INTO guardian_schema VALUES ('breakers', 99)")
    con.close()
    with pytest.raises(StoreNewer, match="v99, newer than this Guardian"):
        SqliteBreakerStore(newer)


async def test_failure_observed_before_a_restart_finished_is_stale() -> None:
    r = Rig(target("api", cooldown=0, max_attempts=10))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    began, began_mono = r.clock.now(), r.clock.monotonic()  # starts on the old instance
    await r.clock.advance(0.5)
    b.die()
    await r.clock.settle()
    assert b.restarts == 1
    late = CheckResult(
        "api", "service", "service", Status.FAILED, "", {}, began, r.clock.now(), 1,
        started_mono=began_mono,
    )
    r.bus.publish(late)  # ...and reports after the restart: about the old instance
    await r.clock.settle()
    assert b.restarts == 1
    await r.clock.advance(1)
    now = r.clock.now()
    r.bus.publish(CheckResult(
        "api", "service", "service", Status.FAILED, "", {}, now, now, 0,
        started_mono=r.clock.monotonic(),
    ))
    await r.clock.settle()
    assert b.restarts == 2
    await r.mgr.aclose()


class SteppingClock(FakeClock):
    """A FakeClock whose wall clock can be stepped (NTP, a user) while monotonic runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.step = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.step


async def test_wall_clock_stepping_back_does_not_hide_liveness_failures() -> None:
    """Issue 11.7: after a restart the wall clock steps back 600 s; a hung child must still
    be restarted, because staleness is judged on the monotonic clock."""
    clock = SteppingClock()
    r = Rig(target("api", failure_threshold=2, cooldown=0, max_attempts=10), clock=clock)
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    await r.clock.settle()
    assert b.restarts == 1
    clock.step = timedelta(seconds=-600)
    for _ in range(2):
        await r.clock.advance(1)
        now = r.clock.now()  # 600 s "before" the restart finished, on the wall clock
        r.bus.publish(CheckResult(
            "api", "http", "http", Status.FAILED, "timeout", {}, now, now, 0.5,
            started_mono=r.clock.monotonic(),
        ))
    await r.clock.settle()
    assert b.restarts == 2
    await r.mgr.aclose()


async def test_condition_failures_belong_to_the_ladder_not_the_streak() -> None:
    """A stuck prompt is the remediation ladder's: no restart until it asks for one."""
    r = Rig(target("api", failure_threshold=1, cooldown=0))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    now = r.clock.now()
    for _ in range(5):
        r.bus.publish(CheckResult(
            "api", "http", "http", Status.FAILED, "queue stuck",
            {}, now, now, 0.01, condition=Condition.STUCK_RUNNING,
        ))
    await r.clock.settle()
    assert b.restarts == 0
    assert r.mgr.snapshot()["api"]["consecutive_failures"] == 0
    r.mgr.request_restart("api", "stuck prompt did not move after interrupt")
    await r.clock.settle()
    assert b.restarts == 1
    started = r.kinds(RecoveryKind.RESTART_STARTED)
    assert started[0].reason == "stuck prompt did not move after interrupt"
    r.mgr.request_restart("api", "again at once")  # the policy still rules: cooldown 0 ok
    await r.clock.settle()
    assert b.restarts == 2
    with pytest.raises(KeyError):
        r.mgr.request_restart("nope", "x")
    await r.mgr.aclose()


# --------------------------------------------------------------------------- min_uptime

BOOT_LOG = [
    "WARNING: No module named 'xformers' (harmless, printed on every boot)",
    "Traceback (most recent call last):",
    '  File "main.py", line 3, in <module>',
    "    raise RuntimeError('CUDA driver too old')",
    "RuntimeError: CUDA driver too old",
]


def ok_result(r: Rig, tgt: str, check: str = "http", kind: str = "http") -> CheckResult:
    now = r.clock.now()
    return CheckResult(
        tgt, check, kind, Status.OK, "", {}, now, now, 0.01, started_mono=r.clock.monotonic()
    )


async def test_a_child_dying_within_min_uptime_is_a_failed_start_and_opens_the_breaker() -> None:
    r = Rig(target("api", min_uptime=10, cooldown=0, backoff_factor=1, max_attempts=3))
    b = r.backends["api"]
    b.log_lines = list(BOOT_LOG)
    await r.lifecycle.start_all()
    b.die()  # the first crash: each restart then dies 0.2 s after spawn
    for _ in range(3):
        await r.clock.settle()
        await r.clock.advance(0.2)
        b.die(1)
    await r.clock.settle()
    assert b.restarts == 3
    assert r.kinds(RecoveryKind.RESTART_SUCCEEDED) == []
    failed = r.kinds(RecoveryKind.RESTART_FAILED)
    assert len(failed) == 3
    for e in failed:
        assert e.values["exit_code"] == 1 and e.values["startup_exit"] is True
        assert e.detail == "exits during startup with code 1: RuntimeError: CUDA driver too old"
    # the next attempt says why, and the breaker names it
    assert r.kinds(RecoveryKind.RESTART_STARTED)[1].reason.startswith("exits during startup")
    (opened,) = r.kinds(RecoveryKind.BREAKER_OPEN)
    assert opened.reason.startswith("exits during startup with code 1")
    assert r.mgr.snapshot()["api"]["breaker_open"]
    await r.mgr.aclose()


async def test_a_passing_check_proves_a_start_before_min_uptime() -> None:
    r = Rig(target("api", min_uptime=60, cooldown=0))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    await r.clock.advance(2)
    assert r.kinds(RecoveryKind.RESTART_SUCCEEDED) == []  # still being judged
    r.bus.publish(ok_result(r, "api", "disk", "disk"))  # a host check proves nothing
    await r.clock.settle()
    assert r.kinds(RecoveryKind.RESTART_SUCCEEDED) == []
    r.bus.publish(ok_result(r, "api"))
    await r.clock.settle()
    (ok,) = r.kinds(RecoveryKind.RESTART_SUCCEEDED)
    assert ok.values["proven_by"] == "passed"
    assert r.kinds(RecoveryKind.RESTART_FAILED) == []
    await r.mgr.aclose()


async def test_a_child_up_for_min_uptime_succeeded_and_a_later_exit_is_a_plain_exit() -> None:
    r = Rig(target("api", min_uptime=10, cooldown=0, max_attempts=10))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    await r.clock.advance(10.5)
    (ok,) = r.kinds(RecoveryKind.RESTART_SUCCEEDED)
    assert ok.values["proven_by"] == "min_uptime"
    b.die(3)  # long after min_uptime: a crash, not a failed start
    await r.clock.settle()
    assert r.kinds(RecoveryKind.RESTART_FAILED) == []
    assert r.kinds(RecoveryKind.RESTART_STARTED)[-1].reason == "exited with code 3"
    await r.mgr.aclose()


async def test_min_uptime_does_not_fail_a_healthy_restart() -> None:
    r = Rig(target("api", min_uptime=10, cooldown=0))
    await r.lifecycle.start_all()
    task = asyncio.ensure_future(r.mgr.restart("api"))
    await r.clock.advance(10.5)
    assert await task == "restarted api (pid 101)"
    assert r.kinds(RecoveryKind.RESTART_FAILED) == []
    assert len(r.kinds(RecoveryKind.RESTART_SUCCEEDED)) == 1
    await r.mgr.aclose()


async def test_startup_results_trigger_no_restart() -> None:
    r = Rig(target("api", failure_threshold=1, cooldown=0))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    now = r.clock.now()
    for _ in range(5):
        r.bus.publish(CheckResult(
            "api", "http", "http", Status.FAILED, "connection refused", {}, now, now, 0.01,
            startup=True, started_mono=r.clock.monotonic(),
        ))
    await r.clock.settle()
    assert b.restarts == 0
    await r.mgr.aclose()


async def test_snapshot_survives_extreme_backoff_numbers() -> None:
    r = Rig(target("api", cooldown=1e300, backoff_factor=1e200, backoff_max=1e308))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    b.die()
    await r.clock.settle()
    b.die()
    await r.clock.settle()
    snap = r.mgr.snapshot()["api"]  # renders next_allowed_at as wall time
    assert snap["attempts"] == 1 and snap["next_allowed_at"] is not None
    await r.mgr.aclose()


async def test_a_full_disk_never_restarts_the_service_by_default() -> None:
    """Resource checks are evidence about the machine: liveness is opt-in for them."""
    r = Rig(target("api", failure_threshold=1, cooldown=0))
    b = r.backends["api"]
    await r.lifecycle.start_all()
    for _ in range(5):
        r.check("api", Status.FAILED, check="disk", kind="disk")
    await r.clock.settle()
    assert b.restarts == 0 and r.kinds(RecoveryKind.RESTART_STARTED) == []
    await r.mgr.aclose()


async def test_recovery_publishes_which_streaks_it_owns_and_when_it_acts() -> None:
    from guardian.checks.service import ServiceCheckConfig
    from guardian.core.events import RecoveryPlan

    bus = EventBus()
    plans: list[Event] = []
    bus.subscribe(lambda e: plans.append(e) if isinstance(e, RecoveryPlan) else None)
    t = target("api", failure_threshold=4)
    t = t.model_copy(update={"checks": [*t.checks, ServiceCheckConfig(interval=1, timeout=0.5)]})
    off = target("off", enabled=False)
    backends = {n: MemoryBackend(n) for n in ("api", "off")}
    mgr = RecoveryManager(Config(targets=[t, off]), bus, dict(backends), FakeClock())
    assert plans == [RecoveryPlan("api", "http", 4), RecoveryPlan("api", "service", 1)]
    assert set(mgr.targets) == {"api", "off"} and mgr.targets["off"].policy is None
    await mgr.aclose()


def pressure(r: Rig, status: Status = Status.DEGRADED, *, clear: bool = False) -> None:
    """A comfyui result naming memory pressure (or, ``clear``, an OK one), begun now."""
    now = r.clock.now()
    r.bus.publish(CheckResult(
        "api", "comfyui", "comfyui", Status.OK if clear else status,
        "ok" if clear else "memory pressure: ram 900 MB free < 2048 MB", {"online": True},
        now, now, 0.01, started_mono=r.clock.monotonic(),
        condition=None if clear else Condition.MEMORY_PRESSURE,
    ))


def comfyui_target(**rec: Any) -> TargetConfig:
    from guardian.checks.comfyui.health import ComfyUICheckConfig

    t = target("api", **rec)
    check = ComfyUICheckConfig(url="http://127.0.0.1:1", interval=30, timeout=10)
    return t.model_copy(update={"checks": [check]})


async def test_a_condition_that_outlives_a_restart_is_not_restarted_for_again() -> None:
    """Issue 22: memory pressure /free cannot fix and a restart does not either (RAM taken
    by something else): one restart, then `condition_persists` and no restart loop."""
    r = Rig(comfyui_target(cooldown=30, stable_period=120, max_attempts=3))
    await r.lifecycle.start_all()
    reason = "memory pressure not relieved by /free"
    for _ in range(20):  # 10 minutes of it, the ladder asking after each check
        pressure(r)
        r.mgr.request_restart("api", reason, condition="memory_pressure")
        await r.clock.advance(30)
    assert len(r.kinds(RecoveryKind.RESTART_STARTED)) == 1
    (persists,) = r.kinds(RecoveryKind.CONDITION_PERSISTS)
    assert persists.detail == "memory pressure persists after restart: not ComfyUI's own memory"
    assert r.kinds(RecoveryKind.BREAKER_RESET) == []
    assert r.mgr.request_restart("api", reason, condition="memory_pressure") is False
    # Other reasons still restart: an exit is not the condition.
    assert r.mgr.request_restart("api", "exited", condition=None) is True
    await r.clock.advance(60)
    assert len(r.kinds(RecoveryKind.RESTART_STARTED)) == 2
    # Gone for stable_period: a restart may be tried for it again.
    for _ in range(6):
        pressure(r, clear=True)
        await r.clock.advance(30)
    assert r.mgr.request_restart("api", reason, condition="memory_pressure") is True
    await r.mgr.aclose()


async def test_a_restart_that_fixed_the_condition_leaves_it_restartable() -> None:
    r = Rig(comfyui_target(cooldown=0))
    await r.lifecycle.start_all()
    pressure(r)
    assert r.mgr.request_restart("api", "pressure", condition="memory_pressure")
    await r.clock.advance(1)
    pressure(r, clear=True)  # the new process is fine
    await r.clock.advance(1)
    assert r.kinds(RecoveryKind.CONDITION_PERSISTS) == []
    pressure(r)
    assert r.mgr.request_restart("api", "pressure", condition="memory_pressure")
    await r.clock.advance(1)
    assert len(r.kinds(RecoveryKind.RESTART_STARTED)) == 2
    await r.mgr.aclose()


async def test_a_manual_restart_does_not_wait_for_a_start_being_judged() -> None:
    """A start is judged until a check proves it (up to startup_timeout): a person asking
    for a restart meanwhile is served at once, the judged attempt ends as superseded."""
    r = Rig(comfyui_target(startup_timeout=300, cooldown=0))
    await r.lifecycle.start_all()
    r.backends["api"].die()
    await r.clock.settle()
    assert len(r.kinds(RecoveryKind.RESTART_STARTED)) == 1  # judging: no check passed yet
    manual = asyncio.create_task(r.mgr.restart("api"))
    await r.clock.settle()
    (superseded,) = r.kinds(RecoveryKind.RESTART_FAILED)
    assert superseded.values["superseded"] is True
    pressure(r, clear=True)  # the manual restart's process passes its first check
    assert (await manual).startswith("restarted api")
    assert len(r.kinds(RecoveryKind.RESTART_SUCCEEDED)) == 1
    await r.mgr.aclose()


async def test_a_manual_restart_answers_before_a_long_boot_is_proven() -> None:
    r = Rig(comfyui_target(startup_timeout=300, cooldown=0))
    await r.lifecycle.start_all()
    manual = asyncio.create_task(r.mgr.restart("api"))
    await r.clock.advance(61)  # MANUAL_WAIT: the caller gets an answer, judging goes on
    assert (await manual) == "restarting api (pid 101): no check has proven it up yet"
    assert r.mgr.snapshot()["api"]["restarting"] is True
    pressure(r, clear=True)
    await r.clock.settle()
    assert len(r.kinds(RecoveryKind.RESTART_SUCCEEDED)) == 1
    assert r.mgr.snapshot()["api"]["restarting"] is False
    await r.mgr.aclose()
