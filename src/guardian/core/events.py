"""Events that flow between the engine, recovery, incidents, metrics and the API.

One in-process bus, synchronous fan-out: a listener must return quickly (schedule a task
for slow work). A failing listener is logged and never breaks the publisher, so a bug in
metrics cannot stop recovery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from guardian.core.result import CheckResult

log = logging.getLogger("guardian.core.events")


class RecoveryKind(StrEnum):
    RESTART_STARTED = "restart_started"
    RESTART_SUCCEEDED = "restart_succeeded"
    RESTART_FAILED = "restart_failed"
    DRY_RUN = "dry_run"  # a restart that would have happened
    BREAKER_OPEN = "breaker_open"  # attempts exhausted: stop restarting, escalate
    BREAKER_RESET = "breaker_reset"  # manual reset or stable again
    EXITED = "exited"  # a supervised process exited (seen from the exit event)
    # The remediation ladder: gentler actions than a restart, each verified.
    REMEDIATION_STARTED = "remediation_started"
    INTERRUPT_SENT = "interrupt_sent"  # POST /interrupt for a stuck prompt
    FREE_SENT = "free_sent"  # POST /free under memory pressure
    REMEDIATION_SUCCEEDED = "remediation_succeeded"  # the condition cleared after a rung
    REMEDIATION_FAILED = "remediation_failed"  # every gentle rung tried: restart is next
    # The condition a restart was for showed again on the new process: restarting cannot
    # fix it, so recovery stops restarting for it (until it clears for stable_period).
    CONDITION_PERSISTS = "condition_persists"
    # The ComfyUI queue journal: what was queued, put back after a restart.
    QUEUE_RESTORED = "queue_restored"  # "restored 4 of 4 prompts"
    PROMPT_QUARANTINED = "prompt_quarantined"  # running at two deaths: not re-run


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    target: str
    kind: RecoveryKind
    time: datetime
    attempt: int = 0
    reason: str = ""
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """Recovery's standing decision on one check: it owns the check's failure streak and
    restarts the target at the ``acts_at``-th consecutive failure (a service check: 1).

    Published when recovery starts watching, before any result, so whoever follows it
    (the incident tracker escalates one failure after recovery acts) hears the decision
    instead of copying recovery's thresholds.
    """

    target: str
    check: str
    acts_at: int


class IncidentTransition(StrEnum):
    OPENED = "opened"
    ESCALATED = "escalated"
    # Recovery gave up (breaker open) on an incident that had already escalated: the report
    # is rewritten and people are told again, because the situation changed.
    GAVE_UP = "gave_up"
    RESOLVED = "resolved"
    # The queue journal quarantined a prompt that was running at repeated deaths: people
    # decide whether it runs again (``guardian queue release ID``), so they are told.
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    incident_id: int
    target: str
    transition: IncidentTransition
    time: datetime
    severity: str
    summary: str
    report_path: str | None = None


Event = CheckResult | RecoveryEvent | RecoveryPlan | IncidentEvent
Listener = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed", listener)
