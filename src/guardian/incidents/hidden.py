"""Problems no failed result shows, each the cause of an incident of its own.

* A gentle fix that keeps being needed. The demo's VRAM leak was "healed" by ``/free``
  every 30 s forever, with no incident and no notification: each fix worked, so nothing
  ever failed. Counted here per target, a fix (``remediation_succeeded``) needed
  ``escalation.remediation_repeats`` times within ``escalation.remediation_window``
  becomes the cause of an incident ("recurring memory pressure: /free needed 6 times in 1
  h"), which opens and notifies like any other.
* Custom nodes that failed to import: ComfyUI logs ``IMPORT FAILED`` and runs on without
  them (DEGRADED), and every workflow using them fails validation. A node newly failing
  opens an incident naming it.
"""

from __future__ import annotations

from collections import deque

from guardian.config.schema import EscalationSection
from guardian.core.clock import Clock
from guardian.core.events import RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult


class RecurringFixes:
    """Counts each target's successful gentle fixes in a sliding window (monotonic)."""

    def __init__(self, cfg: EscalationSection, clock: Clock) -> None:
        self.cfg = cfg
        self.clock = clock
        self._times: dict[str, deque[float]] = {}

    def observe(self, e: RecoveryEvent) -> str | None:
        """The incident cause when ``e`` is the fix that made it recurring, else None."""
        if e.kind is not RecoveryKind.REMEDIATION_SUCCEEDED or self.cfg.remediation_repeats <= 0:
            return None
        now = self.clock.monotonic()
        times = self._times.setdefault(e.target, deque())
        times.append(now)
        while times and now - times[0] > self.cfg.remediation_window:
            times.popleft()
        if len(times) < self.cfg.remediation_repeats:
            return None
        times.clear()  # the next incident needs as many again
        action = e.values.get("action")
        how = f"/{action}" if isinstance(action, str) and action != "none" else "a gentle fix"
        what = e.reason.replace("_", " ") if e.reason else "a condition"
        return (
            f"recurring {what}: {how} needed {self.cfg.remediation_repeats} times in"
            f" {span(self.cfg.remediation_window)}"
        )


class ImportFailures:
    """The custom nodes each ComfyUI check last saw failing to import ("" for none)."""

    def __init__(self, last: dict[tuple[str, str], str]) -> None:
        self._seen = dict(last)  # from the store: where it resumes after a restart

    def observe(self, r: CheckResult) -> str | None:
        """The incident cause when ``r`` names nodes that were not failing before."""
        if r.kind != "comfyui" or r.values.get("online") is not True:
            return None
        names = r.values.get("failed_imports")
        now = names if isinstance(names, str) else ""
        before = self._seen.get((r.target, r.check), "")
        self._seen[(r.target, r.check)] = now
        new = set(now.split(", ")) - set(before.split(", ")) - {""}
        return f"custom nodes failed to import: {now}" if new else None


def span(seconds: float) -> str:
    """3600 -> "1 h", 600 -> "10 min", 45 -> "45 s"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
