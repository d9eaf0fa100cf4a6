"""Logging: JSON lines to a rotating file, pretty or JSON on the console.

Built on stdlib ``logging`` so every module just does ``logging.getLogger("guardian.x")``
and passes event fields with ``extra={...}``. A log file that cannot be created or written
(read-only dir, full disk, a removed log dir) must never stop Guardian: the file handler
reports the outage once on stderr, keeps retrying quietly, reports the recovery once, and
the console keeps logging throughout.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from guardian.support.escape import inert
from guardian.support.redact import redact, redact_data
from guardian.support.safe_open import open_append

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
        # Target text (a reason, a log line) may carry escape sequences: inert on a terminal.
        tail = inert(" ".join(f"{k}={v}" for k, v in extras.items()))
        msg = inert(redact(record.getMessage()))
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
    """A rotating file handler that survives a full disk or a removed log dir.

    When a write fails (ENOSPC, EFBIG, EIO, the dir gone and not creatable) the outage is
    announced once on the console, records are dropped without a traceback, and the file
    is reopened (its dir recreated) on a backoff, ``retry_min`` doubling up to
    ``retry_max`` seconds. The first write that succeeds again announces the recovery
    once, on the console and in the file. Every ``watch_s`` the open file is compared with
    the path: a log dir or file removed under Guardian is recreated instead of logging
    on, invisibly, into an unlinked inode.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        backups: int,
        fallback: TextIO,
        *,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
        watch_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        self._fallback = fallback
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._watch_s = watch_s
        self._monotonic = monotonic
        self.failed = False  # in an outage: records are being dropped
        self.dropped = 0  # records lost in the current outage
        self._outage_since = 0.0
        self._retry_in = retry_min
        self._next_retry = 0.0
        self._next_watch = monotonic() + watch_s
        self._error: BaseException | None = None  # of the write in progress

    def _open(self) -> io.TextIOWrapper:
        """Append to the log, never through a link planted at its name (O_NOFOLLOW)."""
        path = Path(self.baseFilename)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)  # removed? recreate
        fd = open_append(path, 0o640)
        return open(fd, "a", encoding="utf-8", errors="backslashreplace")

    abandoned = False  # set when a hung write is left behind at exit

    def acquire(self) -> None:
        if not self.abandoned:  # the stuck writer holds the lock: do not wait for it
            super().acquire()

    def release(self) -> None:
        if not self.abandoned:
            super().release()

    def flush(self) -> None:
        if not self.abandoned:
            super().flush()

    def close(self) -> None:
        if not self.abandoned:
            super().close()

    _reopen = False

    def reopen(self) -> None:
        """SIGHUP: the next record closes the file and opens the path again (logrotate
        moved it). Only a flag here: the writer may hold the lock in a slow write."""
        self._reopen = True

    def emit(self, record: logging.LogRecord) -> None:
        now = self._monotonic()
        if self.failed:
            if now < self._next_retry:
                self.dropped += 1
                return
            self._next_retry = now + self._retry_in
            self._retry_in = min(self._retry_in * 2, self._retry_max)
            if not self._try_recover(now):
                return  # still down: this record is counted as lost
        elif self._reopen:
            self._reopen = False
            self._close_stream()
        elif now >= self._next_watch:
            self._next_watch = now + self._watch_s
            self._reopen_if_moved()
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """Called by logging inside ``emit`` when the write failed: no traceback, ever."""
        self.mark_failed(sys.exc_info()[1] or OSError("unknown error"))

    def mark_failed(self, err: BaseException) -> None:
        """Start (or extend) an outage: announced once, then retried on the backoff."""
        self._error = err
        self._close_stream()
        if self.failed:
            self.dropped += 1
            return
        self.failed = True
        self.dropped = 1
        now = self._monotonic()
        self._outage_since = now
        self._retry_in = self._retry_min
        self._next_retry = now + self._retry_in
        why = getattr(err, "strerror", None) or err
        _say(
            self._fallback,
            f"cannot write log file {self.baseFilename}: {why}; logging to the console "
            "only, retrying in the background",
        )

    def _try_recover(self, now: float) -> bool:
        """Write the recovery note first: if that works the outage is over (said once)."""
        down = now - self._outage_since
        message = (
            f"log file {self.baseFilename} writable again after {down:.0f} s "
            f"({self.dropped} record(s) not written)"
        )
        note = logging.LogRecord("guardian.log", logging.WARNING, __file__, 0, message, (), None)
        note.event = "log_file_recovered"
        note.outage_s = round(down, 1)
        note.lost = self.dropped
        self._error = None
        super().emit(note)
        if self._error is not None:
            return False
        self.failed = False
        self.dropped = 0
        self._next_watch = now + self._watch_s
        _say(self._fallback, message)
        return True

    def _reopen_if_moved(self) -> None:
        stream = self.stream
        if stream is None:
            return
        try:
            same = os.path.samestat(os.stat(self.baseFilename), os.fstat(stream.fileno()))
        except (OSError, ValueError):
            same = False
        if not same:
            self._close_stream()
            _say(
                self._fallback, f"log file {self.baseFilename} was removed or replaced; reopening"
            )

    def _close_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()


class SafeStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The console: a closed or broken stderr drops records instead of printing tracebacks
    about itself to the very stream that is failing."""

    def handleError(self, record: logging.LogRecord) -> None:
        return None


def _say(stream: TextIO, message: str) -> None:
    """One line on the console about the log file itself; a broken console is ignored."""
    try:
        stream.write(f"guardian: {message}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


QUEUE_SIZE = 10_000  # records waiting for the writer thread; beyond: dropped, counted
CLOSE_WAIT = 2.0  # seconds the writer gets at exit to finish; a hung disk gets no more


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread without ever waiting: a full queue (a hung or
    slow log disk, a console nobody reads) drops the record and counts it."""

    def __init__(self, q: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(q)
        self.dropped = 0
        self._lock_drops = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Resolve the message now (its arguments may change later); keep the fields and
        # exc_info for the real formatters on the writer thread.
        r = copy.copy(record)
        r.msg = record.getMessage()
        r.args = None
        return r

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock_drops:
                self.dropped += 1


class _Writer(logging.handlers.QueueListener):
    """The thread that formats and writes; it says how many records were dropped."""

    def __init__(self, q: queue.Queue[logging.LogRecord | None], source: DroppingQueueHandler,
                 *handlers: logging.Handler) -> None:
        super().__init__(q, *handlers, respect_handler_level=True)
        self._source = source
        self._reported = 0

    def handle(self, record: logging.LogRecord) -> None:
        dropped = self._source.dropped
        if dropped > self._reported:
            note = logging.LogRecord("guardian.log", logging.WARNING, __file__, 0,
                                     f"{dropped - self._reported} log record(s) dropped: the log"
                                     " writer fell behind (slow or hung disk or console)",
                                     None, None)
            note.event = "log_dropped"
            note.dropped_total = dropped
            self._reported = dropped
            super().handle(note)
        super().handle(record)


class LogSetup:
    """What :func:`setup_logging` did, so callers can report it and tests can inspect it."""

    def __init__(self, file: Path | None, file_handler: SafeRotatingFileHandler | None,
                 writers: list[tuple[DroppingQueueHandler, _Writer]] | None = None,
                 handlers: tuple[logging.Handler, ...] = ()) -> None:
        self.file = file
        self.file_handler = file_handler
        self._writers = writers or []
        self._handlers = handlers

    @property
    def file_ok(self) -> bool:
        return self.file_handler is not None and not self.file_handler.failed

    @property
    def dropped(self) -> int:
        return sum(source.dropped for source, _ in self._writers)

    def reopen(self) -> None:
        """SIGHUP: the log file is reopened by name at its next record."""
        if self.file_handler is not None:
            self.file_handler.reopen()

    def flush(self) -> None:
        deadline = time.monotonic() + CLOSE_WAIT
        for source, _ in self._writers:
            _drain(source, deadline)
        for h in self._handlers or tuple(logging.getLogger("guardian").handlers):
            if not getattr(h, "abandoned", False):
                with contextlib.suppress(OSError, ValueError):
                    h.flush()

    def close(self) -> None:
        """Stop the writer threads: what they write within ``CLOSE_WAIT`` s, then exit anyway.

        A writer stuck in a hung disk's ``write`` is abandoned (a daemon thread): its file
        handler stops taking its lock, so the interpreter's exit never waits for it.
        """
        writers, self._writers = self._writers, []
        if not writers:
            self.flush()
            return
        root = logging.getLogger("guardian")
        deadline = time.monotonic() + CLOSE_WAIT
        for source, writer in writers:
            root.removeHandler(source)
            done = _drain(source, deadline)
            thread = writer._thread
            if done and thread is not None:
                with contextlib.suppress(queue.Full):
                    source.queue.put_nowait(None)
                thread.join(max(0.0, deadline - time.monotonic()))
                done = not thread.is_alive()
            for h in writer.handlers:
                if not done and isinstance(h, SafeRotatingFileHandler):
                    h.abandoned = True
                    continue
                with contextlib.suppress(OSError, ValueError):
                    h.flush()
                if isinstance(h, SafeRotatingFileHandler):
                    h.close()
                else:  # the console: back on the caller's thread for what comes after
                    root.addHandler(h)


def _drain(source: DroppingQueueHandler, deadline: float) -> bool:
    """Wait (until ``deadline``) for the writer to write what is queued; True when it did."""
    q = source.queue
    if not isinstance(q, queue.Queue):
        return True
    while q.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    return not q.unfinished_tasks


def setup_logging(
    log_dir: Path | None,
    level: str = "info",
    fmt: LogFormat = "auto",
    *,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
    stream: TextIO | None = None,
    threaded: bool = False,
) -> LogSetup:
    """Configure the ``guardian`` logger tree. Safe to call again (replaces handlers).

    ``threaded`` (the daemon): records go through a bounded queue to a writer thread, so
    a hung or full log disk never stalls the event loop; what does not fit is dropped and
    counted (a ``log_dropped`` line says how many).
    """
    stream = stream or sys.stderr
    root = logging.getLogger("guardian")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(level.upper())
    root.propagate = False

    console = SafeStreamHandler(stream)
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    if fmt == "auto":
        fmt = "pretty" if is_tty else "json"
    console.setFormatter(PrettyFormatter(color=is_tty) if fmt == "pretty" else JsonFormatter())
    handlers: list[logging.Handler] = [console]
    path: Path | None = None
    handler: SafeRotatingFileHandler | None = None
    if log_dir is not None:
        path = Path(log_dir) / LOG_FILE_NAME
        handler = SafeRotatingFileHandler(path, max_bytes, backups, stream)
        handler.setFormatter(JsonFormatter())
        if not threaded:  # the daemon's writer thread finds out at its first record
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                os.close(open_append(path, 0o640))
            except OSError as e:
                # say so now, not at the first record; the handler retries in the background
                handler.mark_failed(e)
        handlers.append(handler)
    if not threaded:
        for h in handlers:
            root.addHandler(h)
        return LogSetup(path, handler)
    # One writer thread per sink: a hung log disk must not silence the console either.
    writers: list[tuple[DroppingQueueHandler, _Writer]] = []
    for h in handlers:
        q: queue.Queue[logging.LogRecord | None] = queue.Queue(QUEUE_SIZE)
        source = DroppingQueueHandler(q)
        writer = _Writer(q, source, h)
        writer.start()
        root.addHandler(source)
        writers.append((source, writer))
    return LogSetup(path, handler, writers, tuple(handlers))
