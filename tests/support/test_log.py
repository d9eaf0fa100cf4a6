"""JSON-lines logging, rotation, and surviving an unwritable log dir."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from guardian.support.log import setup_logging

log = logging.getLogger("guardian.test")


def test_json_lines_have_time_level_msg_and_event_fields(tmp_path: Path) -> None:
    console = io.StringIO()
    setup_logging(tmp_path, "debug", "json", stream=console)
    log.info(
        "restarted %s", "comfyui", extra={"target": "comfyui", "event": "restart", "attempt": 2}
    )
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("oops", extra={"target": "panel"})
    lines = (tmp_path / "guardian.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    first = entries[0]
    assert first["msg"] == "restarted comfyui"
    assert first["level"] == "info" and first["target"] == "comfyui" and first["attempt"] == 2
    assert first["time"].endswith("+00:00")
    assert "ValueError: bad" in entries[1]["exc"]
    assert [json.loads(x)["msg"] for x in console.getvalue().splitlines()] == [
        "restarted comfyui",
        "oops",
    ]


def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    setup_logging(tmp_path, "info", "json", max_bytes=4096, backups=2, stream=io.StringIO())
    for i in range(500):
        log.info("line %d %s", i, "x" * 50)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["guardian.log", "guardian.log.1", "guardian.log.2"]
    assert all(p.stat().st_size <= 4096 + 200 for p in tmp_path.iterdir())


def test_unwritable_log_dir_falls_back_to_console_and_says_so_once(tmp_path: Path) -> None:
    # A path below a regular file cannot be created, even by root.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    console = io.StringIO()
    setup = setup_logging(blocker / "logs", "info", "json", stream=console)
    log.info("still logging")
    assert not setup.file_ok
    text = console.getvalue()
    assert text.count("cannot write log file") == 1
    assert "still logging" in text


def test_log_file_failing_mid_run_is_announced_once(tmp_path: Path) -> None:
    console = io.StringIO()
    setup = setup_logging(tmp_path, "info", "json", stream=console)
    log.info("before")
    assert setup.file_handler is not None

    # Simulate the disk going away under an open file: every write now raises.
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    setup.file_handler.stream = Broken()  # type: ignore[assignment]
    for _ in range(5):
        log.info("during outage")
    assert console.getvalue().count("cannot write log file") == 1
    assert "No space left on device" in console.getvalue()
    assert console.getvalue().count("during outage") == 5


def test_pretty_format_is_human_readable(tmp_path: Path) -> None:
    console = io.StringIO()
    setup_logging(None, "info", "pretty", stream=console)
    log.warning("comfyui down", extra={"target": "comfyui", "attempt": 1})
    line = console.getvalue()
    assert "WARN comfyui down" in line and "attempt=1" in line and "{" not in line
