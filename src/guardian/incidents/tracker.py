"""Turns the stream of check results and recovery actions into incidents.

An incident opens on a target's first FAILED result, collects every later result and
recovery action of that target, escalates once (``escalation.failures`` consecutive
failures of one check, or recovery giving up with ``breaker_open``) and resolves after the
target has been fully healthy for ``escalation.stable_period``. A failure inside that
stable period is a flap of the same incident, not a new one, so a crash-looping service
yields one incident with a flap count instead of a page per crash.

What is not an incident, and what changes one:

* Failed results marked ``startup`` (the service is booting, see :mod:`guardian.engine.startup`)
  open nothing and count toward nothing; a check whose startup phase ran out says so ("did
  not become healthy within startup_timeout").
* Where recovery owns a check's failure streak (it says so on the bus: a
  :class:`~guardian.core.events.RecoveryPlan` with the failure it restarts at), that
  streak escalates only one failure after recovery acts, and every restart begins a fresh
  streak: recovery gets its chance before anyone is paged, and a restart that worked never
  escalates anything.
* A supervised process's crash (its exit event) opens an incident even when the restart
  heals it at once. A restarted process that dies during startup opens (or re-heads) the
  incident with its own cause: "exits during startup with code N: <last error of its
  log>". A new cause in an open incident heads its summary, the older one kept after it.
* The breaker opening on an already escalated incident rewrites its report and notifies
  again (``gave_up``): giving up changes what people must do.
* A prompt the queue journal quarantined heads the incident and notifies: ``quarantined``.

Everything is persisted as it happens (an open incident's running failure count at most
every ``COUNT_EVERY`` seconds and with every transition: 1000 failing targets must not
cost 1000 row updates a second), and on startup open incidents are reloaded with
their per-check failure streaks, so a Guardian restart (or SIGKILL) continues the same
incident instead of opening a duplicate.

Reports and announcements go through a bounded queue (:mod:`guardian.incidents.announce`:
why, and what it guarantees). Problems no failed result shows (a fix needed again and
again, custom nodes that failed to import) open incidents too
(:mod:`guardian.incidents.hidden`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from guardian.config.schema import Config
from guardian.core.clock import Clock
from guardian.core.events import (
    Event,
    EventBus,
    IncidentEvent,
    IncidentTransition,
    RecoveryEvent,
    RecoveryKind,
    RecoveryPlan,
)
from guardian.core.result import CheckResult, Status
from guardian.incidents.announce import ReportQueue
from guardian.incidents.hidden import ImportFailures, RecurringFixes
from guardian.incidents.quarantine import quarantine_news
from guardian.incidents.records import ESCALATED_ARTIFACT, Incident, IncidentStatus
from guardian.incidents.store import Store

log = logging.getLogger("guardian.incidents")


class ReportWriter(Protocol):
    async def write(self, incident_id: int, *, capture: bool = True) -> Path: ...


class IncidentSink(Protocol):
    def submit(self, event: IncidentEvent) -> object: ...


@dataclass
class _Live:
    """An open incident and what the tracker needs to continue it.

    The incident itself is read from the store each time: the store holds the one
    in-memory copy of the open incidents (it must, to keep them through a store that
    cannot write), so the tracker keeps none that could disagree with it.
    """

    store: Store
    id: int
    streaks: dict[str, int] = field(default_factory=dict)  # check -> consecutive failures
    healthy_since: float | None = None  # monotonic; None while anything is failing
    cause: str = ""  # what the summary is about now (a new one re-heads the summary)
    gave_up: bool = False  # the breaker opened on it (until the breaker is reset)
    strong: bool = False  # its cause is recovery's conclusion, not a check's symptom
    failures: int = 0  # the true count; the store's lags by COUNT_EVERY at most
    counted_at: float | None = None  # monotonic: failure_count last written

    @property
    def incident(self) -> Incident:
        found = self.store.incident(self.id)
        if found is None:  # never: the store holds every open incident in memory
            raise KeyError(self.id)
        return found


# Recovery events this close before an incident opens belong to it (an exit seen before
# the failing check).
ADOPT_WINDOW = timedelta(minutes=5)
# Recovery events whose cause is a conclusion, not a symptom (see _new_cause).
_CONCLUSIONS = frozenset({RecoveryKind.BREAKER_OPEN, RecoveryKind.CONDITION_PERSISTS})
# Summaries that are recovery's conclusion (after a Guardian restart, from the store).
_STRONG_HEADS = ("recovery gave up", "exits during startup", "recurring ")
COUNT_EVERY = 5.0  # seconds: an open incident's failure_count is written at most this often
_OK_STATUSES = {Status.OK.value, Status.SKIPPED.value}


class IncidentTracker:
    def __init__(
        self,
        config: Config,
        store: Store,
        bus: EventBus,
        clock: Clock,
        reporter: ReportWriter | None = None,
        notifier: IncidentSink | None = None,
        *,
        report_timeout: float = 60.0,
    ) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.clock = clock
        self.reporter = reporter
        self.notifier = notifier
        self.report_timeout = report_timeout
        self._threshold = config.escalation.failures
        self._stable = config.escalation.stable_period
        self._checks = {t.name: {c.check_name for c in t.checks} for t in config.targets}
        self._critical = {t.name: t.critical for t in config.targets}
        # Checks whose failure streak recovery owns, and the failure it restarts at: heard
        # from recovery's decisions (RecoveryPlan), never copied from its config.
        self._recovered: dict[str, dict[str, int]] = {}
        self._recurring = RecurringFixes(config.escalation, clock)
        self._healthy_at: dict[str, datetime] = {}  # wall time a target was last all-OK
        self._tasks: set[asyncio.Task[None]] = set()
        self._reports = ReportQueue(
            clock, report_timeout, self._write_report, self._announce_id, self._spawn
        )
        try:
            self.store.prune_soon(self.clock.now())
        except Exception:
            log.exception("pruning the incident store failed", extra={"event": "prune_failed"})
        # Change detection and health resume from what the store last saw.
        self._last = self.store.last_statuses()
        self._latest: dict[str, dict[str, str]] = {}
        for (target, check), status in self._last.items():
            if check in self._checks.get(target, ()):
                self._latest.setdefault(target, {})[check] = status
        self._imports = ImportFailures({
            (stored.target, stored.check): str(stored.values.get("failed_imports") or "")
            for stored in self.store.latest_results(["comfyui"])
        })
        self._open: dict[str, _Live] = {}
        self._reload()
        self._unsubscribe: Callable[[], None] | None = bus.subscribe(self._on_event)
        self._finish_interrupted_escalations()

    # ------------------------------------------------------------------ public

    def open_incident_for(self, target: str) -> Incident | None:
        live = self._open.get(target)
        return None if live is None else live.incident

    @property
    def open_incidents(self) -> list[Incident]:
        return [live.incident for live in self._open.values()]

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop listening and give in-flight report/notify work ``timeout`` to finish."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._write_counts()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until background work (reports, escalation events) is done (for tests)."""
        while self._tasks:
            await asyncio.gather(*set(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ startup

    def _reload(self) -> None:
        for incident in sorted(self.store.open_incidents(), key=lambda i: i.id):
            if incident.target not in self._checks:
                # The target was removed from the config: nothing will ever resolve it.
                self.store.update_incident(
                    incident.id,
                    status="resolved",
                    resolved_at=self.clock.now(),
                    summary=f"{incident.summary} (target no longer configured)",
                )
                continue
            previous = self._open.get(incident.target)
            if previous is not None:  # never expected; keep the newest, close the other
                self.store.update_incident(
                    previous.id, status="resolved", resolved_at=self.clock.now()
                )
            streaks: dict[str, int] = {}
            failed = 0
            for r in self.store.results(incident_id=incident.id):
                streaks[r.check] = streaks.get(r.check, 0) + 1 if r.status == "failed" else 0
                failed += r.status == "failed"
            self._open[incident.target] = _Live(
                self.store,
                incident.id,
                streaks,
                cause=incident.summary,
                gave_up=incident.summary.startswith("recovery gave up"),
                strong=incident.summary.startswith(_STRONG_HEADS),
                # Every failure is a row; the count may lag them (COUNT_EVERY) after a kill.
                failures=max(incident.failure_count, failed),
            )
            log.info(
                "continuing incident %d of %s",
                incident.id,
                incident.target,
                extra={
                    "event": "incident_reloaded",
                    "target": incident.target,
                    "incident": incident.id,
                },
            )

    def _finish_interrupted_escalations(self) -> None:
        """An escalation whose report was never written (Guardian died in between) gets
        its report and announcement now; the notifier's store check keeps it to one
        message."""
        if self.reporter is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # built outside a loop (a tool reading the store): nothing to finish
        for live in self._open.values():
            if live.incident.status == "escalated" and live.incident.report_path is None:
                self._queue(live.id, IncidentTransition.ESCALATED, report=True)

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        if isinstance(event, CheckResult):
            self._on_result(event)
        elif isinstance(event, RecoveryEvent):
            self._on_recovery(event)
        elif isinstance(event, RecoveryPlan):
            self._recovered.setdefault(event.target, {})[event.check] = event.acts_at

    def _on_result(self, r: CheckResult) -> None:
        key = (r.target, r.check)
        status = str(r.status)
        changed = self._last.get(key) != status
        self._last[key] = status
        self._latest.setdefault(r.target, {})[r.check] = status
        live = self._open.get(r.target)
        failed = r.status is Status.FAILED
        if failed and r.startup:
            # Booting: not healthy (nothing resolves meanwhile), but no failure either.
            if live is not None:
                live.healthy_since = None
                if changed:
                    self.store.add_result(r, live.id)
            elif changed:
                self.store.add_result(r)
            return
        if self._healthy(r.target):
            self._healthy_at[r.target] = r.finished

        cause = self._cause(r) if failed else ""
        if failed and live is None:
            live = self._open_new(r.target, r.finished, cause)
        broken = self._imports.observe(r)
        if broken is not None:
            if live is None:
                live = self._open_new(r.target, r.finished, broken)
            else:
                self._new_cause(live, broken)
        if live is None:
            if changed:
                self.store.add_result(r)
            return

        incident_id = live.id
        if failed or changed:
            self.store.add_result(r, incident_id)
        if failed:
            if live.healthy_since is not None:
                live.healthy_since = None
                self._update(live, flap_count=live.incident.flap_count + 1)
                self._new_cause(live, cause)
                log.warning(
                    "%s failed again within the stable period (flap %d)",
                    r.target,
                    live.incident.flap_count,
                    extra={"event": "incident_flap", "target": r.target, "incident": incident_id},
                )
            streak = live.streaks[r.check] = live.streaks.get(r.check, 0) + 1
            live.failures += 1
            escalates = live.incident.status == "open" and streak >= self._escalate_at(r)
            if escalates:
                self._escalate(live, f"{r.check} failed {streak} times in a row: {r.reason}")
            elif live.counted_at is None or self.clock.monotonic() - live.counted_at >= COUNT_EVERY:
                self._update(live)
            return

        live.streaks[r.check] = 0
        if not self._healthy(r.target):
            live.healthy_since = None
            return
        now = self.clock.monotonic()
        if live.healthy_since is None:
            live.healthy_since = now
        if now - live.healthy_since >= self._stable:
            self._resolve(live)

    def _cause(self, r: CheckResult) -> str:
        ran_out = r.values.get("startup_timeout_s")
        if isinstance(ran_out, int | float) and not isinstance(ran_out, bool):
            return (
                f"did not become healthy within startup_timeout ({ran_out:g} s):"
                f" {r.check}: {r.reason}"
            )
        return f"{r.check}: {r.reason}"

    def _escalate_at(self, r: CheckResult) -> int:
        """Consecutive failures of this check that escalate (see the module docstring)."""
        acts_at = self._recovered.get(r.target, {}).get(r.check)
        if acts_at is None or r.condition is not None:
            return self._threshold  # recovery does not restart on it (the ladder's own)
        return max(self._threshold, acts_at + 1)

    def _new_cause(self, live: _Live, cause: str, *, strong: bool = False) -> None:
        """A different cause heads the summary; the earlier one stays after it.

        ``strong``: what recovery concluded (a start that died, a condition a restart did
        not fix, the breaker giving up). A check's later symptom ("connection refused")
        never displaces such a cause as the headline.
        """
        if not cause or cause == live.cause:
            return
        if live.strong and not strong:
            return
        live.strong = live.strong or strong
        old = live.incident.summary
        # The same cause told in more detail (the exit, then its exception) replaces it.
        same = old == live.cause and cause.startswith(live.cause.removeprefix("process "))
        live.cause = cause
        summary = cause if same else f"{cause} (earlier: {old})"
        self._update(live, summary=summary[:500])

    def _on_recovery(self, e: RecoveryEvent) -> None:
        live = self._open.get(e.target)
        recurring = self._recurring.observe(e)
        if recurring is not None:
            if live is None:
                live = self._open_new(e.target, e.time, recurring)
            else:
                self._new_cause(live, recurring, strong=True)
        if e.kind is RecoveryKind.CONDITION_PERSISTS:
            if live is None:
                live = self._open_new(e.target, e.time, e.detail)
            else:
                self._new_cause(live, e.detail, strong=True)
        startup_exit = e.kind is RecoveryKind.RESTART_FAILED and bool(e.values.get("startup_exit"))
        if e.kind is RecoveryKind.BREAKER_OPEN and live is None:
            live = self._open_new(e.target, e.time, f"recovery gave up: {e.reason}")
        elif startup_exit and live is None:
            live = self._open_new(e.target, e.time, e.detail)
        elif e.kind is RecoveryKind.EXITED and live is None:
            # A crash is an incident even when a restart heals it; the boot after it is not.
            code = e.values.get("exit_code")
            what = "exits during startup" if e.values.get("during_startup") else "exited"
            live = self._open_new(e.target, e.time, f"process {what} with code {code}")
        elif startup_exit and live is not None:
            self._new_cause(live, e.detail, strong=True)
        if e.kind is RecoveryKind.PROMPT_QUARANTINED:  # a poison prompt: the cause found
            live = self._open_new(e.target, e.time, e.reason) if live is None else live
            self._new_cause(live, e.reason)
            self._publish(quarantine_news(live.incident, e))  # and news of its own
        self.store.add_recovery(e, None if live is None else live.id)
        if live is None:
            return
        if e.kind in _CONCLUSIONS or startup_exit or recurring is not None:
            live.strong = True  # recovery's conclusion heads it from now on
        if e.kind is RecoveryKind.RESTART_STARTED:
            live.streaks.clear()  # the restarted instance gets a fresh count
        if e.kind is RecoveryKind.BREAKER_RESET:
            live.gave_up = False
        if e.kind is RecoveryKind.BREAKER_OPEN and not live.gave_up:
            live.gave_up = True
            why = f"recovery gave up after {e.attempt} attempts: {e.reason}"
            live.cause = why
            if live.incident.status == "open":
                self._escalate(live, why)
            else:
                self._give_up(live, why)

    # ------------------------------------------------------------------ transitions

    def _update(
        self,
        live: _Live,
        *,
        status: IncidentStatus | None = None,
        escalated_at: datetime | None = None,
        resolved_at: datetime | None = None,
        severity: str | None = None,
        summary: str | None = None,
        flap_count: int | None = None,
    ) -> Incident:
        """Write what is given of the live incident, and its failure count with it."""
        live.counted_at = self.clock.monotonic()
        return self.store.update_incident(
            live.id,
            failure_count=live.failures,
            status=status,
            escalated_at=escalated_at,
            resolved_at=resolved_at,
            severity=severity,
            summary=summary,
            flap_count=flap_count,
        )

    def _write_counts(self) -> None:
        """Bring every open incident's stored failure count up to date (before a report,
        on shutdown)."""
        for live in self._open.values():
            if live.incident.failure_count != live.failures:
                try:
                    self._update(live)
                except Exception:
                    log.exception(
                        "saving the failure count of incident %d failed", live.id
                    )

    def _healthy(self, target: str) -> bool:
        return all(s in _OK_STATUSES for s in self._latest.get(target, {}).values())

    def _severity(self, target: str, escalated: bool) -> str:
        critical = self._critical.get(target, True)
        if escalated:
            return "critical" if critical else "major"
        return "major" if critical else "minor"

    def _open_new(self, target: str, opened_at: datetime, summary: str) -> _Live:
        incident = self.store.open_incident(
            target, opened_at, self._severity(target, False), summary[:500]
        )
        # Adopt the exit seen just before the failing check, not the actions of an
        # earlier trouble the target had recovered from (it was healthy since).
        since = opened_at - ADOPT_WINDOW
        healthy_at = self._healthy_at.get(target)
        if healthy_at is not None and since < healthy_at <= opened_at:
            since = healthy_at
        self.store.adopt_recovery(target, incident.id, since)
        live = self._open[target] = _Live(self.store, incident.id, cause=summary)
        log.warning(
            "incident %d opened for %s: %s",
            incident.id,
            target,
            summary,
            extra={"event": "incident_opened", "target": target, "incident": incident.id},
        )
        self._announce(incident, IncidentTransition.OPENED)
        return live

    def _escalate(self, live: _Live, why: str) -> None:
        inc = live.incident
        # Frozen: the report's escalation row says why it escalated then, whatever the
        # summary says later (the store drops it, counted, when it cannot write).
        self.store.put_artifact(inc.id, ESCALATED_ARTIFACT, why[:500], self.clock.now())
        self._update(
            live,
            status="escalated",
            escalated_at=self.clock.now(),
            severity=self._severity(inc.target, True),
            summary=why[:500],
        )
        log.error(
            "incident %d of %s escalated: %s",
            inc.id,
            inc.target,
            why,
            extra={"event": "incident_escalated", "target": inc.target, "incident": inc.id},
        )
        self._queue(inc.id, IncidentTransition.ESCALATED, report=True)

    def _give_up(self, live: _Live, why: str) -> None:
        """The breaker opened on an already escalated incident: new summary, report, news."""
        inc = live.incident
        live.cause = why
        self._update(
            live, severity=self._severity(inc.target, True), summary=why[:500]
        )
        log.error(
            "incident %d of %s: %s",
            inc.id,
            inc.target,
            why,
            extra={"event": "incident_gave_up", "target": inc.target, "incident": inc.id},
        )
        self._queue(inc.id, IncidentTransition.GAVE_UP, report=True)

    # ------------------------------------------------------------------ the report queue

    @property
    def queued_reports(self) -> int:
        """Incidents whose report (or announcement behind one) is still to come."""
        return len(self._reports)

    def _queue(self, incident_id: int, transition: IncidentTransition, *, report: bool) -> None:
        """Announce ``transition`` after the incident's queued work (and a report first)."""
        self._reports.put(incident_id, transition, report=report)

    def _announce_id(self, incident_id: int, transition: IncidentTransition) -> None:
        incident = self.store.incident(incident_id)
        if incident is not None:
            self._announce(incident, transition)

    async def _write_report(self, incident_id: int) -> None:
        """Write the report (bounded); its path goes into the store."""
        if self.reporter is None:
            return
        incident = self.store.incident(incident_id)
        live = None if incident is None else self._open.get(incident.target)
        if (
            live is not None
            and live.id == incident_id
            and live.incident.failure_count != live.failures
        ):
            self._update(live)  # the report shows the true count
        try:
            path = await asyncio.wait_for(
                self.reporter.write(incident_id), timeout=self.report_timeout
            )
            self.store.update_incident(incident_id, report_path=str(path))
        except Exception:
            log.exception(
                "writing the report of incident %d failed",
                incident_id,
                extra={"event": "report_failed", "incident": incident_id},
            )

    def _resolve(self, live: _Live) -> None:
        inc = live.incident
        resolved = self._update(live, status="resolved", resolved_at=self.clock.now())
        del self._open[inc.target]
        log.info(
            "incident %d of %s resolved after %d failures, %d flaps",
            inc.id,
            inc.target,
            live.failures,
            inc.flap_count,
            extra={"event": "incident_resolved", "target": inc.target, "incident": inc.id},
        )
        if inc.id in self._reports:  # its escalation is still being reported: after it
            self._queue(inc.id, IncidentTransition.RESOLVED, report=False)
        else:
            self._announce(resolved, IncidentTransition.RESOLVED)

    def _announce(self, incident: Incident, transition: IncidentTransition) -> None:
        when = {
            IncidentTransition.OPENED: incident.opened_at,
            IncidentTransition.ESCALATED: incident.escalated_at,
            IncidentTransition.GAVE_UP: None,
            IncidentTransition.RESOLVED: incident.resolved_at,
        }[transition] or self.clock.now()
        self._publish(IncidentEvent(incident.id, incident.target, transition, when,
                                    incident.severity, incident.summary, incident.report_path))

    def _publish(self, event: IncidentEvent) -> None:
        self.bus.publish(event)
        if self.notifier is not None:
            try:
                self.notifier.submit(event)
            except Exception:
                log.exception("submitting a notification failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

