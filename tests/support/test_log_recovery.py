"""The log file comes back by itself after a full disk or a removed log dir (issue 11.13).

Real files and a real full disk (a 64 KiB tmpfs filled up; Guardian never writes through
a symlink, so ``/dev/full`` behind one would now only show ELOOP); only time is
stepped by hand, so the retry backoff and the removed-file watch run in microseconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.support.log import JsonFormatter, SafeRotatingFileHandler, setup_logging


class Ticker:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
def rig(tmp_path: Path, ticker: Ticker) -> Iterator[tuple[logging.Logger, io.StringIO, Path]]:
    console = io.StringIO()
    log_dir = tmp_path / "logs"
    handler = SafeRotatingFileHandler(
        log_dir / "guardian.log", 1 << 20, 2, console, watch_s=5, monotonic=ticker
    )
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"guardian.test.recovery.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield logger, console, log_dir
    logger.removeHandler(handler)
    handler.close()


def messages(path: Path) -> list[str]:
    return [json.loads(line)["msg"] for line in path.read_text().splitlines()]


def test_removed_log_dir_is_recreated(
    rig: tuple[logging.Logger, io.StringIO, Path], ticker: Ticker
) -> None:
    log, console, log_dir = rig
    log.info("before")
    shutil.rmtree(log_dir)
    log.info("into the unlinked file")  # not yet noticed: the watch runs every 5 s
    ticker.t += 6
    log.info("after")
    assert messages(log_dir / "guardian.log") == ["after"]
    assert console.getvalue().count("was removed or replaced; reopening") == 1
    assert "Traceback" not in console.getvalue()


def test_unwritable_log_dir_is_one_outage_then_one_recovery(
    rig: tuple[logging.Logger, io.StringIO, Path], ticker: Ticker
) -> None:
    log, console, log_dir = rig
    log.info("before")
    shutil.rmtree(log_dir)
    log_dir.write_text("a regular file where the log dir was\n")  # mkdir fails, even as root
    ticker.t += 6
    for i in range(200):  # a chatty stretch during the outage
        log.info("lost %d", i)
        ticker.t += 0.1
    text = console.getvalue()
    assert text.count("cannot write log file") == 1
    assert "Traceback" not in text
    assert len(text.splitlines()) == 2  # "removed ... reopening" and the outage, nothing else
    log_dir.unlink()  # the operator fixes it
    ticker.t += 61  # past the longest backoff
    log.info("back")
    log.info("and on")
    text = console.getvalue()
    assert text.count("writable again after") == 1
    entries = [json.loads(x) for x in (log_dir / "guardian.log").read_text().splitlines()]
    assert [e["msg"] for e in entries][1:] == ["back", "and on"]
    note = entries[0]
    assert note["event"] == "log_file_recovered" and note["lost"] >= 190
    assert note["msg"].startswith(f"log file {log_dir / 'guardian.log'} writable again after")


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs on ``path``: a real filesystem that can really fill up."""
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a small tmpfs here ({e}): ENOSPC needs a disk that fills")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one filler file; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"x" * size)
    finally:
        os.close(fd)
    return filler


def test_full_disk_enospc_then_space_freed(
    rig: tuple[logging.Logger, io.StringIO, Path], ticker: Ticker
) -> None:
    log, console, log_dir = rig
    with small_disk(log_dir):
        path = log_dir / "guardian.log"
        filler = fill(log_dir)  # every write: ENOSPC, a full disk
        for i in range(100):
            log.info("line %d", i)
            ticker.t += 0.5  # retries happen on the backoff, none of them is announced
        text = console.getvalue()
        assert text.count("cannot write log file") == 1
        assert "No space left on device" in text
        assert "Traceback" not in text and len(text.splitlines()) == 1
        filler.unlink()  # space freed
        ticker.t += 61
        log.info("written again")
        assert console.getvalue().count("writable again after") == 1
        assert messages(path)[-1] == "written again"
        # and a second outage is announced again, once
        fill(log_dir)
        for _ in range(200):
            log.info("second outage %s", "x" * 200)
        assert console.getvalue().count("cannot write log file") == 2


def test_log_dir_unwritable_at_start_recovers_later(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("")  # the log dir cannot be created
    console = io.StringIO()
    setup = setup_logging(blocker, "info", "json", stream=console)
    log = logging.getLogger("guardian.test")
    log.info("console only")
    assert not setup.file_ok and setup.file == blocker / "guardian.log"
    assert console.getvalue().count("cannot write log file") == 1
    blocker.unlink()
    assert setup.file_handler is not None
    setup.file_handler._next_retry = 0.0  # as if the backoff had passed
    log.info("to the file again")
    assert setup.file_ok
    assert "to the file again" in (blocker / "guardian.log").read_text()
    assert console.getvalue().count("writable again after") == 1


def test_broken_console_prints_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    closed = io.StringIO()
    setup_logging(None, "info", "json", stream=closed)
    closed.close()
    for _ in range(20):
        logging.getLogger("guardian.test").info("into a closed stream")
    assert capsys.readouterr().err == ""
