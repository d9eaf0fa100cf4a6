"""What recovery holds for one supervised target: one object, not a dict per field.

Its policy (the rules, :mod:`guardian.recovery.policy`), its backend, the one restart or
backoff wait running for it, and the facts a restart is judged by (when the running child
was spawned, whether a check has proven it since).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from guardian.recovery.policy import RestartPolicy
from guardian.services.base import ServiceBackend

# What judges a restart (min_uptime): ("exit", code) or ("passed", 0).
StartVerdict = tuple[str, int | None]


@dataclass(eq=False)
class TargetRecovery:
    """Everything recovery holds for one supervised target."""

    name: str
    backend: ServiceBackend
    policy: RestartPolicy | None  # None: recovery disabled for it (it is only started)
    task: asyncio.Task[None] | None = None  # the one restart or backoff wait running
    retrigger: str | None = None  # a restart wanted while one ran: after it, why
    retrigger_condition: str | None = None  # ... and the condition it was for
    pending_condition: str | None = None  # the condition of a restart in backoff
    manual_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one manual at a time
    restart_done: float | None = None  # monotonic end of the last restart
    start_waiter: asyncio.Future[StartVerdict] | None = None  # a restart being judged
    spawned: float | None = None  # monotonic time the running child was spawned
    proven_by_checks: bool = False  # a start succeeds on a passing check, not min_uptime
    proven: bool = False  # a check of the service passed since the last spawn
    verify: str | None = None  # the condition a restart was for, until a result judges it
    futile: set[str] = field(default_factory=set)  # conditions restarts did not fix

    def judged_for(self) -> tuple[float, str]:
        """How long a restart of this target is judged, and the rule that says so.

        With checks of the service itself, a start succeeds only on the first passing one
        (within ``startup_timeout``): surviving a few seconds proves nothing for a
        service that boots for minutes. Without them, staying up ``min_uptime`` does.
        """
        if self.policy is None:
            return 0.0, ""
        cfg = self.policy.cfg
        if self.proven_by_checks and cfg.startup_timeout > 0:
            return cfg.startup_timeout, "startup_timeout"
        return cfg.min_uptime, "min_uptime"

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()
