"""Secret scrubbing for reports and notifications: the one rule in :mod:`guardian.redact`."""

from __future__ import annotations

from guardian.redact import MASK, redact, redact_url

__all__ = ["MASK", "redact", "redact_url"]
