"""Logging: JSON lines to a rotating file, pretty or JSON on the console.

Built on stdlib ``logging`` so every module just does ``logging.getLogger("guardian.x")``
and passes event fields with ``extra={...}``. A log file that cannot be created or written
(read-only dir, full disk) must never stop Guardian: the file handler reports the problem
once on stderr and goes quiet, and the console keeps logging.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from guardian.redact import redact, redact_data

LogFormat = Literal["json", "pretty", "auto"]
LOG_FILE_NAME = "guardian.log"

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO-8601), level, logger, msg, then fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, redact_data(_jsonable(value), key))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


_COLORS = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[36m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31;1m",
    "CRITICAL": "\x1b[41;97m",
}
_RESET, _DIM = "\x1b[0m", "\x1b[2m"


class PrettyFormatter(logging.Formatter):
    """Human-readable console lines, colored when the stream is a terminal."""

    def __init__(self, color: bool) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        level = record.levelname[:4]
        hidden = ("event", "target", "check", "kind", "status", "reason", "previous")
        extras = {
            k: redact_data(_jsonable(v), k)
            for k, v in _fields(record).items()
            if k not in hidden and v not in (None, "", {}, [])
        }
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        msg = redact(record.getMessage())
        line = f"{ts} {level:<4} {msg}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        if not self.color:
            return f"{line}  {tail}".rstrip()
        color = _COLORS.get(record.levelname, "")
        out = f"{_DIM}{ts}{_RESET} {color}{level:<4}{_RESET} {msg}"
        if tail:
            out += f"  {_DIM}{tail}{_RESET}"
        if record.exc_info:
            out += "\n" + redact(self.formatException(record.exc_info))
        return out


class SafeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler that degrades to silence (once announced) on I/O errors."""

    def __init__(self, path: Path, max_bytes: int, backups: int, fallback: TextIO) -> None:
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        self._fallback = fallback
        self.failed = False
        self._warn_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        with self._warn_lock:
            if self.failed:
                return
            self.failed = True
        err = sys.exc_info()[1]
        _say_once(
            self._fallback,
            f"cannot write log file {self.baseFilename}: {err}; logging to the console only",
        )
        try:
            if self.stream:
                self.stream.close()
        except OSError:
            pass
        self.stream = None


def _say_once(stream: TextIO, message: str) -> None:
    try:
        stream.write(f"guardian: {message}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


class LogSetup:
    """What :func:`setup_logging` did, so callers can report it and tests can inspect it."""

    def __init__(self, file: Path | None, file_handler: SafeRotatingFileHandler | None) -> None:
        self.file = file
        self.file_handler = file_handler

    @property
    def file_ok(self) -> bool:
        return self.file_handler is not None and not self.file_handler.failed

    def flush(self) -> None:
        for h in logging.getLogger("guardian").handlers:
            with contextlib.suppress(OSError, ValueError):
                h.flush()


def setup_logging(
    log_dir: Path | None,
    level: str = "info",
    fmt: LogFormat = "auto",
    *,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
    stream: TextIO | None = None,
) -> LogSetup:
    """Configure the ``guardian`` logger tree. Safe to call again (replaces handlers)."""
    stream = stream or sys.stderr
    root = logging.getLogger("guardian")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(level.upper())
    root.propagate = False

    console = logging.StreamHandler(stream)
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    if fmt == "auto":
        fmt = "pretty" if is_tty else "json"
    console.setFormatter(PrettyFormatter(color=is_tty) if fmt == "pretty" else JsonFormatter())
    root.addHandler(console)

    if log_dir is None:
        return LogSetup(None, None)
    path = Path(log_dir) / LOG_FILE_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        _say_once(
            stream, f"cannot write log file {path}: {e.strerror or e}; logging to the console only"
        )
        return LogSetup(None, None)
    handler = SafeRotatingFileHandler(path, max_bytes, backups, stream)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    return LogSetup(path, handler)
