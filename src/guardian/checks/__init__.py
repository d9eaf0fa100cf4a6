"""Check kinds. Each module holds a config model, a ``create(cfg, ctx)`` factory and the
readings it declares; :mod:`guardian.checks.registry` is the one table of them."""

from __future__ import annotations

from guardian.checks.base import Check, CheckConfigBase, CheckContext


def build_check(cfg: CheckConfigBase, ctx: CheckContext) -> Check:
    """Instantiate the runtime check for a validated config (by the registry's factory)."""
    from guardian.checks.registry import REGISTRY

    return REGISTRY.build(cfg, ctx)


__all__ = ["Check", "CheckConfigBase", "CheckContext", "build_check"]
