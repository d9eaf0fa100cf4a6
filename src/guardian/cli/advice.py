"""Warnings for a config that is valid but will not do what its author expects here.

``config validate`` accepts a Windows example on Linux (an ``nssm`` backend, ``C:\\``
paths) because the schema is the same everywhere; the mistake only shows when Guardian
cannot start the service or writes logs into a folder literally named ``C:\\...``. These
warnings name the key, say why, and never change the exit code: the file is valid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import PurePath

from guardian.config.schema import Config

_WINDOWS_PATH = re.compile(r"(^|[/\\])[A-Za-z]:[\\/]|^\\\\")
_BACKENDS = {"windows": "nt", "nssm": "nt", "systemd": "posix"}
_PLATFORM = {"nt": "Windows", "posix": "Linux"}


def _foreign(path: str, platform: str) -> bool:
    """A path written for the other platform: ``C:\\...`` on Linux, ``/...`` on Windows."""
    if platform == "posix":
        return bool(_WINDOWS_PATH.search(path))
    return path.startswith("/") and not _WINDOWS_PATH.search(path)


def _paths(cfg: Config) -> Iterator[tuple[str, str]]:
    g = cfg.guardian
    yield "guardian.log_dir", str(g.log_dir)
    yield "guardian.state_dir", str(g.state_dir)
    yield "guardian.report_dir", str(g.report_dir)
    for i, t in enumerate(cfg.targets):
        svc = t.service
        if svc is not None:
            if svc.command:
                yield f"targets[{i}].service.command[0]", svc.command[0]
            if svc.cwd is not None:
                yield f"targets[{i}].service.cwd", str(svc.cwd)
            if svc.log_file is not None:
                yield f"targets[{i}].service.log_file", str(svc.log_file)
        for j, check in enumerate(t.checks):
            for path in getattr(check, "paths", None) or []:
                yield f"targets[{i}].checks[{j}].paths", str(path)


def config_warnings(cfg: Config, platform: str | None = None) -> list[str]:
    """Another platform's backends and paths, and deprecated keys that are set."""
    platform = platform or os.name
    here = _PLATFORM.get(platform, platform)
    found: list[str] = []
    for i, t in enumerate(cfg.targets):
        svc = t.service
        if svc is not None and _BACKENDS.get(svc.backend, platform) != platform:
            other = _PLATFORM[_BACKENDS[svc.backend]]
            instead = "'systemd' or 'process'" if platform == "posix" else "'windows' or 'process'"
            found.append(f"targets[{i}].service.backend: {svc.backend!r} works on {other} "
                         f"only, this is {here} (use {instead})")
        if "grace_period" in t.recovery.model_fields_set:
            found.append(f"targets[{i}].recovery.grace_period is deprecated: use "
                         "startup_timeout (failures after a (re)start count only once it "
                         "passes or the target first succeeds)")
    seen: set[str] = set()
    for key, path in _paths(cfg):
        if _foreign(path, platform) and key not in seen:
            seen.add(key)
            name = PurePath(path).as_posix() if platform == "nt" else path
            found.append(f"{key}: '{name}' is a path for "
                         f"{'Windows' if platform == 'posix' else 'Linux'}, this is {here}")
    return found
