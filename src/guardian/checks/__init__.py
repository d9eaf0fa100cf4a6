"""Check kinds. Each module holds a config model and a ``create(cfg, ctx)`` factory."""

from __future__ import annotations

import importlib

from guardian.checks.base import Check, CheckConfigBase, CheckContext

_MODULES = {
    "http": "guardian.checks.http.check",
    "comfyui": "guardian.checks.comfyui.health",
    "comfyui_canary": "guardian.checks.comfyui.canary",
    "disk": "guardian.checks.disk",
    "memory": "guardian.checks.memory",
    "gpu": "guardian.checks.gpu",
    "service": "guardian.checks.service",
}


def build_check(cfg: CheckConfigBase, ctx: CheckContext) -> Check:
    """Instantiate the runtime check for a validated config."""
    module = importlib.import_module(_MODULES[cfg.kind])
    check: Check = module.create(cfg, ctx)
    return check


__all__ = ["Check", "CheckConfigBase", "CheckContext", "build_check"]
