"""Shared plumbing of the fake service tools (sc.exe, nssm.exe, systemctl, journalctl).

The fakes stand in for tools that cannot run here (the Windows SCM) or must not be driven
for real in tests (the host's systemd). They keep their world in one JSON file
($GUARDIAN_FAKE_STATE) and append every argv they receive to $GUARDIAN_FAKE_ARGV_LOG, so a
test can assert exactly what Guardian sent, and that a rejected name never reached a tool.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

State = dict[str, Any]


def run(tool: str, handler: Callable[[list[str], State], int]) -> None:
    """Log argv, honour a configured delay, run ``handler`` on the locked state, exit."""
    args = sys.argv[1:]
    log = os.environ.get("GUARDIAN_FAKE_ARGV_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"tool": tool, "argv": args}) + "\n")
    state_path = Path(os.environ["GUARDIAN_FAKE_STATE"])
    with open(state_path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state: State = json.loads(state_path.read_text(encoding="utf-8"))
        delay = float(state.get("sleep", {}).get(tool, 0))
        if delay:
            fcntl.flock(lock, fcntl.LOCK_UN)  # don't block other fakes while "hanging"
            time.sleep(delay)
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(state_path.read_text(encoding="utf-8"))
        rc = handler(args, state)
        hang = float(state.pop("_hang", 0))  # a handler's "block after acting" request
        state_path.write_text(json.dumps(state, indent=1), encoding="utf-8")
    if hang:
        time.sleep(hang)  # the change is visible to other calls while this one blocks
    sys.stdout.flush()
    sys.exit(rc)


def out(data: str | bytes, stream: str = "stdout") -> None:
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.flush()
    target.buffer.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    target.flush()
