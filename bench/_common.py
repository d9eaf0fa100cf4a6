"""What every benchmark shares: machine description, stats, polling, results, cleanup.

Benchmarks are plain scripts (not tests): each measures, prints a table and writes
``bench/results/<name>.json`` + ``.md``. Every wait is bounded in time, every child is
started in its own session and killed as a group at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
PYTHON = sys.executable
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))  # this checkout's guardian, not the venv's
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # testkit: the victims and servers tests use too

from testkit.procs import (  # noqa: E402
    FAST_SERVER,
    VICTIM,
    free_port,
    guardian_env,
    read_pid,
    victim_argv,
)

__all__ = ["FAST_SERVER", "VICTIM", "free_port", "guardian_env", "read_pid", "victim_argv"]


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, OS and Python: enough to compare result files."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 1024 / 1024, 1)
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} ({platform.release()})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram,
        "os": os_name,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); honest for small N."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def summary(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": pct(values, 95),
        "min": min(values),
        "max": max(values),
    }


def ms(v: float | None) -> str:
    return "—" if v is None or v != v else f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text on a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), sep, *(fmt(r) for r in cells[1:])])


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    m = machine()
    data = {"bench": name, "machine": m, **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    desc = (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, "
        f"Python {m['python']}"
    )
    (RESULTS / f"{name}.md").write_text(
        f"# {name}\n\nMachine: {desc}. Run {m['date']}.\n\n{markdown}\n"
    )
    print(f"\nwrote {RESULTS / (name + '.json')} and .md")


# --------------------------------------------------------------------------- polling


def http_ok(port: int, timeout: float = 0.25) -> bool:
    """True when 127.0.0.1:port answers GET / with 200 (raw socket: no client overhead)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            head = s.recv(16)
            return head.startswith(b"HTTP/1.") and head[8:13] == b" 200 "
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is not alive for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.005) -> float | None:
    """Poll ``pred`` every ``step`` s; the monotonic time it became true, or None."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(step)


def measure_kill(pidfile: Path, port: int, timeout: float) -> tuple[float | None, float | None]:
    """SIGKILL the pid in ``pidfile``; seconds until a new live pid, and until HTTP 200."""
    old = read_pid(pidfile)
    if old is None or not alive(old):
        raise RuntimeError(f"no live victim in {pidfile}")
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)

    def new_pid() -> bool:
        pid = read_pid(pidfile)
        return pid is not None and pid != old and alive(pid)

    t_pid = wait_for(new_pid, timeout)
    if t_pid is None:
        return None, None
    t_http = wait_for(lambda: http_ok(port, 0.05), max(0.1, timeout - (t_pid - t0)))
    return t_pid - t0, (None if t_http is None else t_http - t0)


# --------------------------------------------------------------------------- children


class Children:
    """Processes started in their own session; all killed (as groups) on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra_pids: list[Callable[[], int | None]] = []

    def start(
        self, argv: Sequence[str], *, stderr_to: Path | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session; its stderr goes to ``stderr_to`` if given."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        with contextlib.ExitStack() as stack:
            if stderr_to is not None:
                kw["stderr"] = stack.enter_context(open(stderr_to, "wb"))
            p = subprocess.Popen(list(argv), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def also_kill(self, pid_source: Callable[[], int | None]) -> None:
        """A process outside our groups (a daemonised child) to kill at the end too."""
        self.extra_pids.append(pid_source)

    def stop(self, p: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # stragglers left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=grace)
        return p.returncode

    def close(self) -> None:
        for p in reversed(self.procs):
            self.stop(p, grace=3.0)
        for src in self.extra_pids:
            pid = src()
            if pid is not None and alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    @contextlib.contextmanager
    def scope(self) -> Iterator[Children]:
        try:
            yield self
        finally:
            self.close()


def guardian_supervises() -> str | None:
    """None when this checkout's Guardian can supervise processes; else why not."""
    for mod in ("guardian.services.process.backend", "guardian.recovery.manager"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not in this checkout yet"
    return None


def guardian_argv(config: Path) -> list[str]:
    return [PYTHON, "-m", "guardian", "run", "--config", str(config), "--log-format", "json"]


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in (Path(PYTHON).parent, Path("/usr/bin"), Path("/usr/sbin")):
        if (d / name).exists():
            return str(d / name)
    return None


def toml_str(value: str | Path) -> str:
    return json.dumps(str(value))


def victim_config_text(
    tmp: Path,
    victim: list[str],
    port: int,
    *,
    failure_threshold: int,
    grace_period: float,
    interval: float = 1.0,
    timeout: float = 0.5,
) -> str:
    """A Guardian config supervising ``victim`` with a policy that never throttles restarts
    (cooldown 0, unbounded attempts), so the figures measure the mechanism, plus an http
    liveness check on ``port``."""
    cmd = ", ".join(toml_str(a) for a in victim)
    return f"""
[guardian]
log_dir = {toml_str(tmp / "logs")}
state_dir = {toml_str(tmp / "state")}
report_dir = {toml_str(tmp / "reports")}
jitter = 0
[api]
enabled = false
[[targets]]
name = "victim"
[targets.service]
backend = "process"
command = [{cmd}]
log_file = {toml_str(tmp / "victim.log")}
stop_timeout = 2
[targets.recovery]
cooldown = 0
max_attempts = 1000000
window = 1
backoff_factor = 1.0
backoff_max = 0
failure_threshold = {failure_threshold}
grace_period = {grace_period}
min_uptime = 0
stable_period = 0
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = {interval}
timeout = {timeout}
"""


def export_tree(ref: str, dest: Path) -> Path:
    """``src/`` of ``ref`` (a git ref of this repository) unpacked under ``dest``."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"],
                          capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"
