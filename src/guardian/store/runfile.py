"""The runtime file: how the CLI finds the running Guardian a config belongs to.

A running Guardian writes ``guardian.runtime.json`` beside its store (mode 0600) with its
pid, process start time, config file, store path and the API's *actual* address (port 0
or a demo's free port included), and removes it when it stops. It also drops a copy into
a per-user directory of instances (``$XDG_STATE_HOME/guardian/instances`` or
``~/.local/state/guardian/instances``; ``%LOCALAPPDATA%\\Guardian\\instances`` on Windows)
so ``guardian status`` / ``incidents`` / ``report`` / ``restart`` without ``--config``
find the one Guardian this user is running (the demo, say) instead of guessing
``/var/lib/guardian``.

A file is believed only while its pid is alive *and* that process started when the file
says: a stale file from a crashed Guardian, whose pid now belongs to something else, is
ignored (and removed when it is ours to remove).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

log = logging.getLogger("guardian.store.runfile")

RUNTIME_FILE = "guardian.runtime.json"
START_TOLERANCE = 1.0  # seconds between psutil's create_time readings of one process


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    pid: int
    process_started: float  # psutil create_time of the pid (epoch seconds)
    started_at: str  # ISO 8601 UTC, when Guardian started
    config_path: str | None  # absolute; None for the built-in defaults
    store_path: str
    api_url: str | None  # None when the API is disabled or failed to start

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class HasStore(Protocol):
    """What the runtime file needs of a config: where its store is (a ``Config`` is one)."""

    @property
    def store_path(self) -> Path: ...


def runtime_path(cfg: HasStore) -> Path:
    """Where a Guardian running ``cfg`` keeps its runtime file: beside the store."""
    return cfg.store_path.parent / RUNTIME_FILE


def instances_dir() -> Path:
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "Guardian" / "instances"
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "guardian" / "instances"


def _process_started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _write_private(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".runtime-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write(
    cfg: HasStore, *, started_at: str, config_path: Path | None, api_url: str | None
) -> RuntimeInfo:
    """Write this process's runtime file (and its per-user copy); returns what was written."""
    pid = os.getpid()
    info = RuntimeInfo(
        pid=pid,
        process_started=_process_started(pid) or 0.0,
        started_at=started_at,
        config_path=str(config_path.resolve()) if config_path is not None else None,
        store_path=str(cfg.store_path.resolve()),
        api_url=api_url,
    )
    _write_private(runtime_path(cfg), info.to_json())
    with contextlib.suppress(OSError):
        _write_private(instances_dir() / f"guardian-{pid}.json", info.to_json())
    return info


def remove(cfg: HasStore) -> None:
    """Remove the files :func:`write` wrote, if they are still this process's."""
    pid = os.getpid()
    started = _process_started(pid) or 0.0
    for path in (runtime_path(cfg), instances_dir() / f"guardian-{pid}.json"):
        found = _load(path)
        if (found is not None and found.pid == pid
                and abs(found.process_started - started) <= START_TOLERANCE):
            with contextlib.suppress(OSError):
                path.unlink()


def _load(path: Path) -> RuntimeInfo | None:
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
        return RuntimeInfo(
            pid=int(raw["pid"]),
            process_started=float(raw["process_started"]),
            started_at=str(raw["started_at"]),
            config_path=None if raw.get("config_path") is None else str(raw["config_path"]),
            store_path=str(raw["store_path"]),
            api_url=None if raw.get("api_url") is None else str(raw["api_url"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def alive(info: RuntimeInfo) -> bool:
    """The file's process still runs: same pid, same start time."""
    started = _process_started(info.pid)
    return started is not None and abs(started - info.process_started) <= START_TOLERANCE


def read(path: Path) -> RuntimeInfo | None:
    """The runtime file at ``path`` if its Guardian is still running, else None."""
    info = _load(path)
    return info if info is not None and alive(info) else None


def find_running(cfg: HasStore) -> RuntimeInfo | None:
    """The running Guardian that uses ``cfg``'s store, if any."""
    return read(runtime_path(cfg))


def discover() -> list[RuntimeInfo]:
    """Every live Guardian of this user (per-user instances directory); stale files go."""
    found: list[RuntimeInfo] = []
    try:
        paths = sorted(instances_dir().glob("guardian-*.json"))
    except OSError:
        return found
    for path in paths:
        info = _load(path)
        if info is not None and alive(info):
            found.append(info)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return found
