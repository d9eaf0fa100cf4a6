"""The contract of one remediation rung: what it treats, the gentle action, how success shows.

The ladder (:mod:`guardian.remediation.ladder`) knows no condition by name: it asks each of
its rungs whether it :meth:`Rung.applies` to a result, publishes the start, lets the rung
:meth:`Rung.act`, waits the rung's settle time, and lets it :meth:`Rung.verify`. A failed
verification may carry a restart reason, which the ladder hands to recovery (cooldown, backoff
and breaker still apply). A new rung is one class implementing this protocol plus one entry in
the ladder's rung list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from guardian.checks.comfyui.client import ComfyUIClient, QueueItem
from guardian.config.schema import RemediationConfig
from guardian.core.events import RecoveryKind
from guardian.core.result import CheckResult, Condition, Value


@dataclass(frozen=True)
class Treatment:
    """A rung's decision to treat a result now.

    ``key`` names what is treated (a prompt id, or None for the queue as a whole): when the
    gentle action already failed for the same condition and key, the ladder goes straight to
    ``retry_reason``'s restart instead of repeating an action that did not help (None: the
    action is worth repeating every time).
    """

    key: str | None
    retry_reason: str | None
    values: dict[str, Value] = field(default_factory=dict)  # published with the start


@dataclass(frozen=True)
class Action:
    """The gentle action taken: the event it is published as and how long it needs."""

    kind: RecoveryKind
    detail: str
    wait: float
    values: dict[str, Value] = field(default_factory=dict)
    queue_before: tuple[list[QueueItem], list[QueueItem]] | None = None


@dataclass(frozen=True)
class Verdict:
    """How the action ended: ``ok``, or not and maybe asking for a restart."""

    ok: bool
    action: str
    detail: str
    restart_reason: str | None = None
    values: dict[str, Value] = field(default_factory=dict)


Cleared = Callable[[], bool]  # a newer result of the same check says the condition is gone


class Rung(Protocol):
    """One remediation rung for one condition a check names."""

    condition: Condition

    async def applies(
        self, result: CheckResult, client: ComfyUIClient
    ) -> Treatment | None:
        """Whether to treat ``result`` now (None: not this rung's, or nothing to do now)."""
        ...

    async def act(
        self, result: CheckResult, treatment: Treatment, client: ComfyUIClient,
        settings: RemediationConfig,
    ) -> Action:
        """Take the gentle action."""
        ...

    async def verify(
        self, result: CheckResult, treatment: Treatment, action: Action,
        client: ComfyUIClient, cleared: Cleared,
    ) -> Verdict:
        """Read the target again after ``action.wait``: did the action help?"""
        ...
