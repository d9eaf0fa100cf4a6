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
import ipaddress
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import psutil

from guardian.support.safe_open import write_atomic_text
from guardian.support.trust import file_problem

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
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic_text(path, text, 0o600)


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


def _loopback_port(url: str) -> int | None:
    """The port of a loopback ``http://`` URL, else None: the token goes nowhere else."""
    try:
        parts = urlsplit(url)
        port = parts.port
        name = parts.hostname or ""
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return None
    if parts.scheme != "http" or port is None or not loopback:
        return None
    return port


def _listens(pid: int, port: int) -> bool:
    """Does process ``pid`` itself hold a listening socket on ``port``?

    Where the OS does not let this user see the process's sockets (a root Guardian, a
    user's CLI), the file's owner and mode, checked before, are what vouch for it.
    """
    try:
        conns = psutil.Process(pid).net_connections(kind="inet")
    except psutil.AccessDenied:
        return True
    except (psutil.Error, OSError):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in conns)


def _process_uid(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).uids().effective)
    except (psutil.Error, OSError, AttributeError):
        return None


def trusted(path: Path, info: RuntimeInfo) -> str | None:
    """Why the runtime file at ``path`` must not be believed, or None when it may be.

    Believed only when it was written by this user or root and nobody else can have
    changed it, its process is the one that wrote it (same owner, pid and start time),
    and its API address is loopback and held by that very process: a planted file can
    never make the CLI send the API token to someone else's port.
    """
    if os.name != "nt":
        problem = file_problem(path)
        if problem is not None:
            return problem
        owner = path.lstat().st_uid
        if _process_uid(info.pid) != owner:
            return f"pid {info.pid} does not belong to the file's owner (uid {owner})"
    if info.api_url is not None:
        port = _loopback_port(info.api_url)
        if port is None:
            return f"API address {info.api_url!r} is not a loopback http:// address"
        if not _listens(info.pid, port):
            return f"pid {info.pid} does not listen on port {port}"
    return None


def read(path: Path) -> RuntimeInfo | None:
    """The runtime file at ``path`` if its Guardian is still running and it can be trusted."""
    info = _load(path)
    if info is None or not alive(info):
        return None
    why = trusted(path, info)
    if why is not None:
        log.warning("ignoring runtime file %s: %s", path, why,
                    extra={"event": "runtime_file_untrusted", "path": str(path)})
        return None
    return info


def find_running(cfg: HasStore) -> RuntimeInfo | None:
    """The running Guardian that uses ``cfg``'s store, if any."""
    info = read(runtime_path(cfg))
    if info is None:
        return None
    with contextlib.suppress(OSError):
        if Path(info.store_path).resolve() != cfg.store_path.resolve():
            return None
    return info


def discover() -> list[RuntimeInfo]:
    """Every live Guardian of this user (per-user instances directory).

    A stale file of this user's is removed; a file someone else put there is ignored
    (neither believed nor touched).
    """
    found: list[RuntimeInfo] = []
    try:
        paths = sorted(instances_dir().glob("guardian-*.json"))
    except OSError:
        return found
    for path in paths:
        if os.name != "nt" and file_problem(path) is not None:
            continue
        info = _load(path)
        if info is not None and alive(info):
            if trusted(path, info) is None:
                found.append(info)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return found
