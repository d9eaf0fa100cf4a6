"""Helpers for running ``guardian run`` as a real process in the chaos tests."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from testkit.procs import (
    REPO,
    SRC,
    VICTIM,
    free_port,
    guardian_env,
    read_pid,
    toml,
    victim_argv,
)

__all__ = [  # re-exported: the chaos tests take the whole kit from here
    "REPO", "SRC", "VICTIM", "free_port", "guardian_env", "read_pid", "toml", "victim_argv",
]


def wait_for(pred: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
    """Poll until ``pred()`` is truthy; return its value, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(step)


def victims(marker: str) -> list[psutil.Process]:
    """Live processes whose argv contains ``marker`` (a unique tmp path)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                marker in a for a in (p.info["cmdline"] or [])
            ):
                found.append(p)
    return found


def listener_pid(port: int) -> int | None:
    """The pid listening on 127.0.0.1:port, if any."""
    for c in psutil.net_connections("tcp4"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            return c.pid
    return None


def kill_all(procs: Sequence[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(procs), timeout=5)


def log_events(path: Path) -> list[dict[str, Any]]:
    """Parsed JSON log lines (a line being written is skipped)."""
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


class GuardianProc:
    """``python -m guardian run --config F`` in its own session, stopped or killed on exit."""

    def __init__(self, config: Path, stderr: Path, **popen: Any) -> None:
        self.stderr_path = stderr
        stderr.touch()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guardian", "run", "--config", str(config),
             "--log-format", "json"],
            env=guardian_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,  # a pipe: a file limit on Guardian must not cap this
            start_new_session=True,
            **popen,
        )
        self._pump = threading.Thread(target=self._copy_stderr, daemon=True)
        self._pump.start()

    def _copy_stderr(self) -> None:
        assert self.proc.stderr is not None
        with open(self.stderr_path, "ab", buffering=0) as out:
            for line in self.proc.stderr:
                out.write(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def sigkill(self) -> None:
        """SIGKILL Guardian alone (not its group): what a crash or OOM-kill does."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._pump.join(timeout=5)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._pump.join(timeout=5)
        return self.proc.returncode


@contextlib.contextmanager
def cleanup(marker: str, *procs: Callable[[], GuardianProc | None]) -> Iterator[None]:
    """On exit: stop every Guardian given, then kill any victim left with ``marker``."""
    try:
        yield
    finally:
        for get in procs:
            g = get()
            if g is not None:
                g.stop(timeout=10)
        kill_all(victims(marker))


def http_check_missing() -> str | None:
    import guardian.checks.http.check as http

    return None if hasattr(http, "create") else "http check runtime not merged yet"


def features() -> str | None:
    """Why Guardian cannot supervise a process here yet (None when it can)."""
    import importlib.util

    if http_check_missing():
        return http_check_missing()
    for mod in ("guardian.services.process.backend", "guardian.recovery.manager"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} not merged yet"
    return None


def guardian_config(
    tmp: Path,
    port: int,
    pidfile: Path,
    *,
    victim_extra: Sequence[str] = (),
    log_dir: Path | None = None,
    log_level: str = "info",
    recovery: str = "",
    interval: float = 0.5,
    supervised: bool = True,
) -> Path:
    """A config: one process-backed victim with an http check; state under ``tmp``.

    ``supervised=False`` leaves out ``[targets.service]`` (the caller runs the victim).
    """
    cmd = ", ".join(toml(a) for a in victim_argv(port, pidfile, *victim_extra))
    recovery = recovery or (
        "cooldown = 0\nmax_attempts = 1000\nwindow = 1\nbackoff_factor = 1.0\n"
        "backoff_max = 0\nfailure_threshold = 3\ngrace_period = 2\nstable_period = 0\n"
        "min_uptime = 0\n"
    )
    service = f"""
[targets.service]
backend = "process"
command = [{cmd}]
log_file = {toml(tmp / "victim.out")}
stop_timeout = 2
[targets.recovery]
{recovery}"""
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = {toml(log_dir or tmp / "logs")}
state_dir = {toml(tmp / "state")}
report_dir = {toml(tmp / "reports")}
log_level = "{log_level}"
jitter = 0
shutdown_grace = 2
[api]
enabled = false
[escalation]
failures = 2
stable_period = 5
[[targets]]
name = "victim"
{service if supervised else ""}
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = {interval}
timeout = {interval * 0.8}
""")
    return path


def http_ok(port: int, timeout: float = 0.3) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.0 200")
    except OSError:
        return False
