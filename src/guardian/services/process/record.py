"""What a Guardian writes down about the process it supervises, for the next Guardian.

A supervised process outlives a Guardian that is SIGKILLed, OOM-killed or stopped with
``on_guardian_stop = "leave"``. The next Guardian reads this record to find it again by
pid + start time (+ process group), never by command line: a command that ``exec``s
(``sh -c "exec python3 app.py"``) changes its argv, and a stranger can run the same argv.

Between spawning a child and learning its pid there is a gap in which a killed Guardian
leaves no pid behind. The record therefore first notes an *intent* with a random token,
and the child carries that token in its environment (``GUARDIAN_SUPERVISOR_TOKEN``), which
survives ``exec``. A process carrying the token is ours whatever its argv.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from guardian.services.process.identity import (
    ProcessIdentity,
    identify,
    is_alive,
    never_signalled,
)
from guardian.support.private_file import write_private_text

TOKEN_ENV = "GUARDIAN_SUPERVISOR_TOKEN"
INTENT_SLACK = 1.0  # seconds of clock granularity allowed when matching start times

log = logging.getLogger("guardian.services.process.record")


def new_token(target: str) -> str:
    return f"{target}:{secrets.token_hex(8)}"


@dataclass(slots=True)
class ProcessRecord:
    """The on-disk record: the token, the intent time, and once known the identity."""

    token: str
    intent_time: float  # wall clock (epoch): compared with process start times
    argv: list[str] = field(default_factory=list)
    identity: ProcessIdentity | None = None
    starts: int = 0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "token": self.token,
            "intent_time": self.intent_time,
            "argv": self.argv,
            "starts": self.starts,
        }
        if self.identity is not None:
            data.update(self.identity.to_json())
        return data

    @classmethod
    def from_json(cls, data: Any) -> ProcessRecord | None:
        if not isinstance(data, dict):
            return None
        token, intent = data.get("token"), data.get("intent_time")
        if not isinstance(token, str) or not isinstance(intent, int | float):
            return None
        argv = data.get("argv")
        starts = data.get("starts")
        return cls(
            token=token,
            intent_time=float(intent),
            argv=[str(a) for a in argv] if isinstance(argv, list) else [],
            identity=ProcessIdentity.from_json(data),
            starts=starts if isinstance(starts, int) and starts >= 0 else 0,
        )


class RecordFile:
    """Reads and atomically rewrites one target's record (``process-<target>.json``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> ProcessRecord | None:
        try:
            return ProcessRecord.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def save(self, record: ProcessRecord) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only, atomically: the record's token identifies our child.
            write_private_text(self.path, json.dumps(record.to_json()))
        except OSError as exc:
            log.warning(
                "cannot write the process record %s: %s",
                self.path,
                exc,
                extra={"event": "record_failed"},
            )
            return False
        return True


def find_recorded(record: ProcessRecord) -> list[ProcessIdentity]:
    """The live processes the record names: its pid + start time, else its token.

    The token search covers a Guardian killed between spawn and writing the pid. It only
    looks at processes started since the intent, and reads their environment (ours:
    same user), never their command line.
    """
    if record.identity is not None:
        # pid + start time are public (/proc): a forged record can name any process. Only
        # one that carries the record's token, which Guardian put in its child's
        # environment, is ours to adopt and ever signal.
        named = record.identity
        if never_signalled(named.pid) or not is_alive(named):
            return []
        return [named] if carries_token(named.pid, record.token) else []
    found: list[ProcessIdentity] = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "create_time", "status"]):
        info = proc.info
        if proc.pid == me or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (info["create_time"] or 0) < record.intent_time - INTENT_SLACK:
            continue
        with contextlib.suppress(psutil.Error):
            if not never_signalled(proc.pid) and proc.environ().get(TOKEN_ENV) == record.token:
                ident = identify(proc.pid)
                if ident is not None:
                    found.append(ident)
    return found


def carries_token(pid: int, token: str) -> bool:
    """Does process ``pid`` carry ``token`` in its environment (set by Guardian at spawn)?"""
    if len(token) < 8:
        return False
    try:
        return bool(psutil.Process(pid).environ().get(TOKEN_ENV) == token)
    except (psutil.Error, OSError):
        return False


def now() -> float:
    """Wall clock for records: start times from the OS are wall-clock epochs too."""
    return time.time()
