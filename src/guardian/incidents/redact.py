"""Secret scrubbing for reports and notifications: the one rule in `support.redact`."""

from __future__ import annotations

from guardian.support.redact import MASK, redact, redact_url

__all__ = ["MASK", "redact", "redact_url"]
