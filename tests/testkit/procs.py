"""Ports, pid files and child processes: what the chaos tests and the benchmarks share."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SRC = REPO / "src"
VICTIM = HERE / "victim.py"  # the tiny HTTP server that tests and benchmarks restart
FAST_SERVER = HERE / "fast_server.py"  # the always-healthy keep-alive target
HOSTILE = HERE / "hostile.py"  # misbehaving endpoints, one port each


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def toml(value: object) -> str:
    """A TOML string (or number, bool) for ``value``; a Path is written as its text."""
    return json.dumps(str(value)) if isinstance(value, Path) else json.dumps(value)


def victim_argv(port: int, pidfile: Path, *extra: str) -> list[str]:
    return [sys.executable, str(VICTIM), "--port", str(port), "--pidfile", str(pidfile), *extra]


def guardian_env(src: Path | None = None) -> dict[str, str]:
    """Environment for a ``python -m guardian`` child that runs ``src`` (this checkout's
    source by default; the venv may point at another tree)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(src or SRC), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env
