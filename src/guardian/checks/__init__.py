"""Check kinds. Each module holds a config model, a ``create(cfg, ctx)`` factory and the
readings it declares; :mod:`guardian.checks.registry` is the one table of them and builds
a check from its config (:func:`~guardian.checks.registry.build_check`). This package
imports only the base, so the registry, which imports every kind, can sit under it
without a loop."""

from __future__ import annotations

from guardian.checks.base import Check, CheckConfigBase, CheckContext

__all__ = ["Check", "CheckConfigBase", "CheckContext"]
