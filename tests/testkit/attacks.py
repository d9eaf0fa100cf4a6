"""Attacks on Guardian's API over real sockets, and a real ``guardian run`` to aim them at.

Shared by ``bench/bench_api_flood.py`` (figures) and ``tests/chaos/test_api_flood.py``
(assertions), so what is measured is what is tested. The Guardian started here
supervises ``testkit/victim.py`` (process backend) with an http check at interval 1 s /
timeout 0.5 s, logs every check result as JSON on stderr, and may run under a lowered
``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.procs import free_port, guardian_env, victim_argv
from testkit.procs import toml as _q

__all__ = ["free_port"]  # re-exported: the flood test and bench take it from here


@dataclass
class RunningGuardian:
    proc: subprocess.Popen[bytes]
    api_port: int
    victim_port: int
    pidfile: Path
    stderr_path: Path
    tmp: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def check_results(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == "check" and "status" in e]

    def restarts(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if str(e.get("event", "")).startswith("restart")]

    def victim_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        pid = self.victim_pid()
        if pid is not None:  # the victim is Guardian's child and stops with it; be sure
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _limit_nofile(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


@contextlib.contextmanager
def guardian(
    tmp: Path, *, nofile: int | None = None, api: str = "", src: Path | None = None
) -> Iterator[RunningGuardian]:
    """``guardian run`` (of ``src``, default this checkout) on a supervised victim."""
    tmp.mkdir(parents=True, exist_ok=True)
    api_port, victim_port, pidfile = free_port(), free_port(), tmp / "victim.pid"
    argv = victim_argv(victim_port, pidfile)
    config = tmp / "guardian.toml"
    config.write_text(f"""
[guardian]
log_dir = {_q(tmp / "logs")}
state_dir = {_q(tmp / "state")}
report_dir = {_q(tmp / "reports")}
log_level = "debug"
jitter = 0
shutdown_grace = 2
[api]
port = {api_port}
token = "bench-token"
{api}
[[targets]]
name = "victim"
[targets.service]
backend = "process"
command = [{", ".join(_q(a) for a in argv)}]
log_file = {_q(tmp / "victim.out")}
stop_timeout = 2
[targets.recovery]
cooldown = 0
failure_threshold = 2
grace_period = 2
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{victim_port}/"
interval = 1
timeout = 0.5
""")
    env = guardian_env(src)
    stderr_path = tmp / "guardian.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guardian", "run", "--config", str(config),
             "--log-format", "json"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
            preexec_fn=(lambda: _limit_nofile(nofile)) if nofile else None,
        )
    g = RunningGuardian(proc, api_port, victim_port, pidfile, stderr_path, tmp)
    try:
        deadline = time.monotonic() + 30
        while not (http_get(api_port, "/livez")[0] == 200 and g.check_results()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"guardian did not come up:\n{g.stderr()[-3000:]}")
            time.sleep(0.1)
        yield g
    finally:
        g.stop()


def http_get(
    port: int, path: str, host: str = "127.0.0.1", timeout: float = 3.0
) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body); status 0 when it failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return 0, b""


def hold_idle(port: int, n: int) -> list[socket.socket]:
    """Open ``n`` TCP connections and send nothing (failed connects are skipped)."""
    held = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
    return held


def still_open(socks: list[socket.socket]) -> tuple[int, int, int]:
    """Of ``socks``: (open and silent, answered by the server, closed by the server)."""
    silent = answered = closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1, socket.MSG_PEEK):
                answered += 1
            else:
                closed += 1
        except BlockingIOError:
            silent += 1
        except OSError:
            closed += 1
    return silent, answered, closed


@dataclass
class FloodStats:
    connections: int = 0
    requests: int = 0
    ok: int = 0
    refused: int = 0  # 503s and closed connections: the limits at work
    errors: list[str] = field(default_factory=list)


async def _flood_one(port: int, paths: list[str], until: float, stats: FloodStats) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        stats.errors.append(f"connect: {e}")
        return
    stats.connections += 1
    i = 0
    try:
        while time.monotonic() < until:
            path = paths[i % len(paths)]
            i += 1
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            stats.requests += 1
            if head.startswith(b"HTTP/1.1 200"):
                stats.ok += 1
            else:
                stats.refused += 1
            if b"connection: close" in head.lower():
                break
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        stats.refused += 1
    finally:
        writer.close()


def flood(port: int, connections: int, seconds: float, paths: list[str]) -> FloodStats:
    """``connections`` keep-alive clients sending GETs back to back for ``seconds``."""
    stats = FloodStats()

    async def run() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_flood_one(port, paths, until, stats) for _ in range(connections)))

    asyncio.run(run())
    return stats


def huge_header(port: int, size: int, timeout: float = 10.0) -> tuple[str, float]:
    """Send one header of ``size`` bytes; (the status line or what happened, seconds)."""
    t0 = time.monotonic()
    status = "no response"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        sent = 0
        try:
            while sent < size:
                s.sendall(chunk[: size - sent])
                sent += min(len(chunk), size - sent)
            s.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed on us mid-send: it refused the head
        with contextlib.suppress(OSError):
            line = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
            status = line or "closed"
    return status, time.monotonic() - t0


def parallel_headers(port: int, n: int, size: int) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return [r[0] for r in pool.map(lambda _: huge_header(port, size), range(n))]


def half_sent(port: int, limit: float = 30.0) -> tuple[str, float]:
    """Send half a request head and wait; (what the server did, seconds until it did)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0")
        try:
            data = s.recv(200)
        except TimeoutError:
            return "still open", time.monotonic() - t0
        except OSError as e:
            return f"reset ({e})", time.monotonic() - t0
    return (data.split(b"\r\n", 1)[0].decode() or "closed"), time.monotonic() - t0


def lateness_p99(port: int) -> float | None:
    """The victim check's start lateness p99 from Guardian's own metric."""
    _, body = http_get(port, "/metrics")
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("guardian_check_lateness_p99_seconds{") and 'target="victim"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def durations_ms(results: list[dict[str, Any]]) -> list[float]:
    return [float(r["duration_ms"]) for r in results if "duration_ms" in r]
