"""The scheduler: every check on its own interval, under its own hard timeout.

Each check gets one asyncio task that sleeps until its next due time, runs the check,
records the result and computes the next due time on a fixed grid (so a slow run never
drifts the cadence). Timeouts are enforced here, not trusted to the check: an overrunning
check is cancelled and recorded as failed with reason ``timeout``; an exception becomes a
failed result with the exception's text. One check can therefore never delay or kill
another.

Phases: a check's grid is ``phase + n x interval`` on the monotonic clock, its phase a
stable hash of ``target/check`` spread over the whole interval (as Prometheus spreads
scrapes) on 10 ms slots (:func:`phase_offset`). 1000 checks at 1 s therefore start about
ten per slot, each slot one wakeup of the loop, instead of all in the same instant; and a
restarted Guardian keeps every check's phase (the monotonic clock is the machine's, not
the process's). So that ``guardian run`` shows every check promptly
even with a 300 s disk check, the *first* run comes within ``min(interval,
first_run_spread)`` (10 s): on the grid when its slot falls in that window, else at the
check's own place in the window; the check then joins its grid at the first slot at least
half an interval later. A check in its startup phase at Guardian's start spreads its
first probe over the probe period (1 s) instead: prompt, yet 1000 booting targets are not
probed in one burst. ``jitter = 0`` turns phases off: every check runs at once at start
and on a grid from there (tests, demos).

While a target is in its startup phase (:mod:`guardian.engine.startup`) its results carry
``startup=True`` and its service-facing checks run every ``startup_probe_interval``; a
phase that begins (a restart) wakes a check sleeping through a long interval. Every
result carries the monotonic time it began (``started_mono``) for decisions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from guardian.checks.base import Check
from guardian.core.clock import Clock
from guardian.core.result import CheckResult, Outcome, Status
from guardian.core.state import State
from guardian.engine.lateness import LatenessWindow
from guardian.engine.overload import LagProbe, overloaded_reason
from guardian.engine.startup import StartupPhases
from guardian.support.redact import redact, redact_value

log = logging.getLogger("guardian.engine.scheduler")

MAX_REASON = 500
FIRST_RUN_SPREAD = 10.0  # seconds: every check's first result within this of the start
PHASE_SLOT = 0.01  # seconds: checks whose phases share a slot wake the loop once, together


def phase_of(target: str, check: str) -> float:
    """The check's stable place in its interval, in [0, 1): the same on every start."""
    digest = hashlib.blake2b(f"{target}/{check}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def phase_offset(target: str, check: str, interval: float) -> float:
    """Where the check's grid sits in its interval: its phase, rounded down to a
    :data:`PHASE_SLOT` boundary. Checks in one slot then share a loop wakeup (at 300
    checks a second ~3 per wakeup instead of one each), while 100 slots a second still
    spread the load as evenly as Guardian's clock can tell apart."""
    slots = max(1, round(interval / PHASE_SLOT))
    return int(phase_of(target, check) * slots) % slots * (interval / slots)


@dataclass(eq=False)
class Scheduled:
    """A check bound to its target, with its scheduling bookkeeping."""

    target: str
    check: Check
    lateness: LatenessWindow = field(default_factory=LatenessWindow)
    running: bool = False
    runs: int = 0

    @property
    def name(self) -> str:
        return self.check.config.check_name

    @property
    def kind(self) -> str:
        return self.check.config.kind


class Engine:
    def __init__(
        self,
        state: State,
        checks: Iterable[tuple[str, Check]],
        clock: Clock,
        *,
        jitter: float = 0.1,
        first_run_spread: float = FIRST_RUN_SPREAD,
        startup: StartupPhases | None = None,
    ) -> None:
        self.state = state
        self.clock = clock
        self.spread = jitter > 0  # 0: no phases, every check at start (see the docstring)
        self.first_run_spread = max(0.0, first_run_spread)
        self.scheduled = [Scheduled(t, c) for t, c in checks if c.config.enabled]
        self._tasks: dict[Scheduled, asyncio.Task[None]] = {}
        self._stopping = False
        self._stray: set[asyncio.Task[Outcome]] = set()
        self.startup = startup
        self._wake: dict[Scheduled, asyncio.Event] = {}
        self._sleeping: dict[Scheduled, asyncio.Future[None]] = {}  # woken early by _wake
        if startup is not None:
            startup.add_waker(self._wake_target)
        # Set by the runtime: a timeout while Guardian itself stalled is SKIPPED, not FAILED.
        self.lag_probe: LagProbe | None = None

    # ------------------------------------------------------------------ one run

    async def execute(self, sc: Scheduled) -> CheckResult:
        """Run one check once under its timeout; always returns a result."""
        cfg = sc.check.config
        started = self.clock.now()
        t0 = self.clock.monotonic()
        startup = self.startup is not None and self.startup.active(sc.target, sc.name)
        outcome = await self._run_with_timeout(sc.check, cfg.timeout)
        duration = self.clock.monotonic() - t0
        # Redacted here, once (before cutting, so no half secret survives): the API, the
        # store, logs and reports all carry this text.
        text = redact(outcome.reason)
        reason = text if len(text) <= MAX_REASON else text[:MAX_REASON] + "…"
        values = {
            k: redact_value(k, v) if isinstance(v, str) else v for k, v in outcome.values.items()
        }
        if outcome.status is Status.FAILED and not startup and self.startup is not None:
            ran_out = self.startup.timed_out(sc.target, sc.name)
            if ran_out is not None:
                values["startup_timeout_s"] = ran_out  # "did not become healthy within"
        return CheckResult(
            target=sc.target,
            check=sc.name,
            kind=sc.kind,
            status=outcome.status,
            reason=reason,
            values=values,
            started=started,
            finished=self.clock.now(),
            duration=duration,
            startup=startup,
            started_mono=t0,
            condition=outcome.condition,
            reason_class=outcome.reason_class,
        )

    async def _run_with_timeout(self, check: Check, timeout: float) -> Outcome:
        probe = self.lag_probe
        mark = probe.begin() if probe is not None else 0.0
        try:
            return await self._run_marked(check, timeout, mark)
        finally:
            if probe is not None:
                probe.release(mark)  # the lag probe ticks only while checks run

    async def _run_marked(self, check: Check, timeout: float, mark: float) -> Outcome:
        # One task for the check and a plain timer for its deadline (not a second task and
        # an asyncio.wait): at 1000 checks a second that is a fair share of Guardian's CPU.
        loop = asyncio.get_running_loop()
        task: asyncio.Task[Outcome] = loop.create_task(check.run())
        over: asyncio.Future[None] = loop.create_future()

        def finish(*_: object) -> None:
            if not over.done():
                over.set_result(None)

        task.add_done_callback(finish)
        timer = self.clock.call_later(timeout, finish)
        try:
            await over
        except asyncio.CancelledError:
            task.cancel()
            timer.cancel()
            raise
        if not task.done():
            task.cancel()
            self._stray.add(task)
            task.add_done_callback(self._reap)
            if self.lag_probe is not None:
                stalled = self.lag_probe.stalled_since(mark)
                own_fault = overloaded_reason(stalled, timeout)
                if own_fault is not None:
                    return Outcome.skipped(own_fault, timeout_s=timeout, guardian_lag_s=stalled)
            return Outcome.failed("timeout", timeout_s=timeout).tagged(reason_class="timeout")
        timer.cancel()
        if task.cancelled():
            return Outcome.failed("check was cancelled").tagged(reason_class="other")
        exc = task.exception()
        if exc is not None:
            log.debug("check raised", exc_info=exc)
            return Outcome.failed(f"check error: {type(exc).__name__}: {exc}").tagged(
                reason_class="other"
            )
        result = task.result()
        if not isinstance(result, Outcome):
            return Outcome.failed(
                f"check returned {type(result).__name__}, not an Outcome"
            ).tagged(reason_class="other")
        return result

    def _reap(self, task: asyncio.Task[Outcome]) -> None:
        self._stray.discard(task)
        if not task.cancelled():
            task.exception()  # retrieve so asyncio doesn't warn; the timeout was recorded

    # ------------------------------------------------------------------ scheduling

    def _record(self, result: CheckResult) -> None:
        if self.startup is not None:
            self.startup.observe(result)
        prev = self.state.latest(result.target, result.check)
        self.state.record(result)
        changed = prev is None or prev.status is not result.status
        fields = {
            "target": result.target,
            "check": result.check,
            "kind": result.kind,
            "event": "check",
            "status": result.status.value,
            "reason": result.reason,
            "duration_ms": round(result.duration * 1000, 2),
        }
        if changed and prev is not None:
            fields["previous"] = prev.status.value
            level = logging.WARNING if result.status is Status.FAILED else logging.INFO
            log.log(
                level,
                "%s/%s %s -> %s %s",
                result.target,
                result.check,
                prev.status.value,
                result.status.value,
                result.reason,
                extra=fields,
            )
        elif changed:
            level = logging.WARNING if result.status is Status.FAILED else logging.INFO
            log.log(
                level,
                "%s/%s %s %s",
                result.target,
                result.check,
                result.status.value,
                result.reason,
                extra=fields,
            )
        else:
            log.debug("%s/%s %s", result.target, result.check, result.status.value, extra=fields)

    def _wake_target(self, target: str) -> None:
        for sc, event in self._wake.items():
            if sc.target == target:
                event.set()
                sleeping = self._sleeping.get(sc)
                if sleeping is not None and not sleeping.done():
                    sleeping.set_result(None)

    async def _sleep(self, sc: Scheduled, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if a startup phase of the target began meanwhile."""
        wake = self._wake.get(sc)
        if wake is None:
            await self.clock.sleep(delay)
            return False
        if wake.is_set():
            wake.clear()
            return True
        # A timer and a future the waker resolves: no sleeper and waiter tasks per run.
        over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleeping[sc] = over
        timer = self.clock.call_later(delay, lambda: None if over.done() else over.set_result(None))
        try:
            await over
        finally:
            timer.cancel()
            if self._sleeping.get(sc) is over:
                del self._sleeping[sc]
        if wake.is_set():
            wake.clear()
            return True
        return False

    def _probe_period(self, sc: Scheduled) -> float | None:
        """The startup probe period when it is shorter than the check's own interval."""
        if self.startup is None:
            return None
        period = self.startup.probe_interval(sc.target, sc.name)
        if period is None or period >= sc.check.config.interval:
            return None
        return period

    def _first(self, sc: Scheduled, start: float) -> tuple[float, int, float | None]:
        """(grid anchor, index of the first grid slot at or after ``start``, an earlier
        first run or None): see the module docstring."""
        interval = sc.check.config.interval
        if not self.spread:
            return start, 0, None
        frac = phase_of(sc.target, sc.name)
        anchor = phase_offset(sc.target, sc.name, interval)
        n = math.ceil((start - anchor) / interval)
        window = min(interval, self.first_run_spread)
        period = self._probe_period(sc)
        if period is not None:
            window = min(window, period)
        if anchor + n * interval - start <= window:
            return anchor, n, None
        return anchor, n, start + frac * window

    async def _loop(self, sc: Scheduled) -> None:
        interval = sc.check.config.interval
        if self.startup is not None:
            self._wake[sc] = asyncio.Event()
        anchor, n, first = self._first(sc, self.clock.monotonic())
        probe_from: float | None = None  # end of the last run (or a phase's start)
        while not self._stopping:
            grid = anchor + n * interval
            due = grid if first is None else min(grid, first)
            # In a startup phase, probe at the short period; afterwards back to the grid.
            period = self._probe_period(sc) if probe_from is not None else None
            if period is not None and probe_from is not None:
                due = min(due, probe_from + period)
            delay = due - self.clock.monotonic()
            if delay > 0 and await self._sleep(sc, delay):
                probe_from = self.clock.monotonic()  # a restart began: probe from now
                continue
            if self._stopping:
                return
            began = self.clock.monotonic()
            sc.lateness.append(max(0.0, began - due))
            sc.running = True
            try:
                result = await self.execute(sc)
            finally:
                sc.running = False
            sc.runs += 1
            self._record(result)
            now = self.clock.monotonic()
            probe_from = now
            first = None
            if due == grid:
                n += 1  # this slot is used
            else:  # a first run or a probe: the grid resumes at least half an interval on
                while anchor + n * interval < began + interval * 0.5:
                    n += 1
            # Skip slots a slow run overlapped.
            while anchor + n * interval < now - interval * 0.5:
                n += 1

    def start(self) -> None:
        """Start one scheduling task per enabled check."""
        self._stopping = False
        for sc in self.scheduled:
            if sc not in self._tasks or self._tasks[sc].done():
                self._tasks[sc] = asyncio.create_task(
                    self._loop(sc), name=f"check:{sc.target}/{sc.name}"
                )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop scheduling; running checks get ``grace`` seconds, then are cancelled."""
        self._stopping = True
        running = [t for sc, t in self._tasks.items() if sc.running and not t.done()]
        strays: list[asyncio.Task[Outcome]] = list(self._stray)
        for sc, task in self._tasks.items():
            if not sc.running:
                task.cancel()
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        for stray in strays:
            stray.cancel()

    async def run_once(self, target: str | None = None) -> list[CheckResult]:
        """Run every (matching) check once, concurrently, and record the results."""
        chosen = [sc for sc in self.scheduled if target is None or sc.target == target]
        results = await asyncio.gather(*(self.execute(sc) for sc in chosen))
        for r in results:
            self._record(r)
        return list(results)

    async def aclose(self) -> None:
        await self.stop(grace=0.1)
        for sc in self.scheduled:
            try:
                await sc.check.aclose()
            except Exception:
                log.exception("closing check %s/%s failed", sc.target, sc.name)
