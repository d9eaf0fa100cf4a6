"""Finding the error that matters in a service's log tail.

A log tail mixes harmless boot chatter (warnings printed on every start) with the one
traceback that killed the process. Headlines and next steps must come from that last
traceback (or, without one, the last line that says error), never from any match anywhere
in the tail, or a warning every boot prints gets blamed for every crash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_TRACEBACK = "Traceback (most recent call last):"
# "ValueError: boom", "torch.OutOfMemoryError: CUDA out of memory", "KeyboardInterrupt"
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b.*$")
_ERROR = re.compile(
    r"\b(?:error|fatal|critical|exception|panic|fail(?:ed|ure)?|cannot|aborted)\b", re.I
)
MAX_BURST = 20  # lines of one error burst kept as its evidence
_NOT_ERROR = re.compile(r"\bwarn(?:ing)?\b|\b(?:0|no) errors?\b", re.I)
# ComfyUI prints a full traceback for every custom node that fails to import, then says so
# and boots on without it (capture boot_timeline.json: a missing torchaudio does this on
# every start). Such a traceback was handled; it did not kill anything.
_HANDLED_AFTER = re.compile(r"^Cannot import .* module for custom nodes:")
_BOOT_NOTICE = re.compile(r"^IMPORT FAILED: ")
# ComfyUI's import-times table: "   0.1 seconds (IMPORT FAILED): custom_nodes/foo". A node
# that failed to import is reported and ComfyUI boots on without it: not what killed it.
_IMPORT_TIME = re.compile(r"^\s*\d+(?:\.\d+)? seconds(?: \(IMPORT FAILED\))?: ")


@dataclass(frozen=True, slots=True)
class LastError:
    """The last error in a tail: its one-line headline and the lines that belong to it."""

    line: str
    block: tuple[str, ...]


def last_error(lines: Sequence[str]) -> LastError | None:
    """The last unhandled traceback's exception line (with the traceback), else the last
    error line; tracebacks the service reported as handled and went on are boot noise."""
    noise: set[int] = set()
    for i in range(len(lines) - 1, -1, -1):
        if not (lines[i].strip() == _TRACEBACK or lines[i].rstrip().endswith(_TRACEBACK)):
            continue
        end = i + 1
        while end < len(lines) and (lines[end][:1].isspace() or not lines[end].strip()):
            end += 1
        if end >= len(lines):
            # A traceback cut off by the tail's end: its last frame line is all there is.
            return LastError(lines[-1].strip(), tuple(lines[i:]))
        after = end + 1
        while after < len(lines) and not lines[after].strip():
            after += 1
        if after < len(lines) and _HANDLED_AFTER.match(lines[after].strip()):
            noise.update(range(i, after + 1))
            continue
        return LastError(lines[end].strip(), tuple(lines[i : end + 1]))
    # No traceback: the last burst of consecutive error lines, headed by its exception.
    def error_at(i: int) -> bool:
        return i not in noise and not _BOOT_NOTICE.match(lines[i].strip()) and _is_error(lines[i])

    last = None
    for i in range(len(lines) - 1, -1, -1):
        if error_at(i):
            last = i
            break
    if last is None:
        return None
    begin = last
    while begin > 0 and last - begin < MAX_BURST - 1 and error_at(begin - 1):
        begin -= 1
    block = tuple(lines[begin : last + 1])
    named = [b.strip() for b in block if _EXCEPTION.match(b.strip())]
    return LastError(named[-1] if named else block[-1].strip(), block)


_IMPORT_TABLE = "Import times for custom nodes:"
_FAILED_IMPORT = re.compile(r"^\s*\d+(?:\.\d+)? seconds \(IMPORT FAILED\): (?P<path>.+?)\s*$")


def failed_imports(lines: Sequence[str]) -> tuple[str, ...] | None:
    """The custom nodes ComfyUI's last import-times table lists as ``IMPORT FAILED`` (their
    folder or file names), or None when no table was printed yet (still importing)."""
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() == _IMPORT_TABLE:
            start = i
            break
    if start is None:
        return None
    names: list[str] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break  # the table ends at its blank line
        m = _FAILED_IMPORT.match(line)
        if m:
            name = re.split(r"[\\/]", m.group("path").rstrip("/\\"))[-1]
            names.append(name.removesuffix(".py"))
    return tuple(names)


def output_of_last_start(lines: Sequence[str], is_start: Callable[[str], bool]) -> list[str]:
    """The lines after the last one ``is_start`` says began a start (a supervisor's marker):
    what that start printed, and nothing an earlier run of the service left in the tail.
    Without such a line the whole tail is newer than the start (it scrolled out)."""
    for i in range(len(lines) - 1, -1, -1):
        if is_start(lines[i]):
            return list(lines[i + 1 :])
    return list(lines)


def _is_error(line: str) -> bool:
    if _IMPORT_TIME.match(line):
        return False
    text = line.strip()
    if not text or _NOT_ERROR.search(text):
        return False
    return bool(_EXCEPTION.match(text) or _ERROR.search(text))
