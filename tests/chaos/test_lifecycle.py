"""A supervised process across Guardian's own death, planned stop and restart.

Real ``guardian run`` processes supervise a real HTTP server (``lifecycle_child.py``):

* Guardian SIGKILLed while the child serves a long request: the next Guardian adopts the
  child (same pid, no restart, "adopted" said at start), the request completes for its
  client; a later kill of the adopted child is seen from the exit event and restarted;
* a planned stop with ``on_guardian_stop = "leave"``: the child keeps running, the next
  Guardian says it adopted it (and the first one said it started it);
* lines the child wrote while no Guardian ran are in its log and in the next report;
* a child that floods stdout/stderr stays out of Guardian's own logs, and its log is kept
  within its size limit by rotation.

Deadlines for *waiting* are generous (a loaded 2-core box); asserts are on behaviour.
Latencies are printed here and measured properly in ``bench/bench_lifecycle.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from testkit.chaos import (
    GuardianProc,
    cleanup,
    features,
    free_port,
    http_ok,
    log_events,
    read_pid,
    toml,
    victims,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="POSIX signals"),
    pytest.mark.timeout(180),
]

CHILD = Path(__file__).resolve().parent / "lifecycle_child.py"
FAST_RECOVERY = (
    "cooldown = 0\nmax_attempts = 1000\nwindow = 1\nbackoff_factor = 1.0\n"
    "backoff_max = 0\nfailure_threshold = 3\nstable_period = 0\nmin_uptime = 0\n"
)


@pytest.fixture(autouse=True)
def _supported() -> None:
    why = features()
    if why:
        pytest.skip(why)


def write_config(
    tmp: Path,
    port: int,
    pidfile: Path,
    *,
    child: tuple[str, ...] = (),
    on_guardian_stop: str = "stop",
    log_max_bytes: int = 10 * 1024 * 1024,
    log_backups: int = 3,
    liveness: bool = True,
    report_log_lines: int = 200,
) -> Path:
    argv = [sys.executable, str(CHILD), "--port", str(port), "--pidfile", str(pidfile), *child]
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = {toml(tmp / "logs")}
state_dir = {toml(tmp / "state")}
report_dir = {toml(tmp / "reports")}
log_level = "info"
jitter = 0
shutdown_grace = 5
[api]
enabled = false
[escalation]
failures = 2
stable_period = 600
report_log_lines = {report_log_lines}
[[targets]]
name = "victim"
[targets.service]
backend = "process"
command = [{", ".join(toml(a) for a in argv)}]
log_file = {toml(tmp / "victim.out")}
log_max_bytes = {log_max_bytes}
log_backups = {log_backups}
stop_timeout = 2
on_guardian_stop = "{on_guardian_stop}"
[targets.recovery]
{FAST_RECOVERY}
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = 0.5
timeout = 0.4
liveness = {"true" if liveness else "false"}
""")
    return path


def events(log: Path, name: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e for e in log_events(log)
        if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
    ]


def epoch(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"]).timestamp()


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


class SlowRequest:
    """``GET /slow`` in a thread: a client waiting on a long job."""

    def __init__(self, port: int, release: Path, seconds: float = 90) -> None:
        self.status: int | None = None
        self.body = b""
        self.error: BaseException | None = None
        self.done_at: float | None = None
        self._t = threading.Thread(
            target=self._run, args=(port, f"/slow?s={seconds:g}&release={release}"), daemon=True
        )
        self._t.start()

    def _run(self, port: int, path: str) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("GET", path)
            resp = conn.getresponse()
            self.status, self.body = resp.status, resp.read()
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.done_at = time.time()

    def join(self, timeout: float) -> bool:
        self._t.join(timeout)
        return not self._t.is_alive()


def test_sigkilled_guardian_mid_request_adopts_child_and_the_request_completes(
    tmp_path: Path,
) -> None:
    port, pidfile, release = free_port(), tmp_path / "child.pid", tmp_path / "release"
    cfg = write_config(tmp_path, port, pidfile)
    log, out = tmp_path / "logs" / "guardian.log", tmp_path / "victim.out"
    g1: GuardianProc | None = None
    g2: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: g1, lambda: g2):
        g1 = GuardianProc(cfg, tmp_path / "g1.err")
        assert wait_for(lambda: http_ok(port), 30), g1.stderr()[-3000:]
        child = read_pid(pidfile)
        assert child is not None
        req = SlowRequest(port, release)
        assert wait_for(lambda: "job started" in out.read_text(), 20), out.read_text()
        g1.sigkill()  # mid-request: the job is running, its client is waiting
        t_g2 = time.time()
        g2 = GuardianProc(cfg, tmp_path / "g2.err")
        assert wait_for(lambda: events(log, "start_outcome", outcome="adopted"), 30), (
            g2.stderr()[-3000:]
        )
        # Said at start, on the console too: adopted, with the pid.
        said = [e for e in json_lines(g2.stderr()) if e.get("event") == "start_outcome"]
        assert [(e["outcome"], e["pid"]) for e in said] == [("adopted", child)], said
        assert f"victim: adopted (pid {child})" in said[0]["msg"]
        assert f"adopted pid {child}" in out.read_text()
        assert req.done_at is None, "the job ended before the swap was over"
        release.touch()  # the job finishes now, under the new Guardian
        assert req.join(30), "the long request never completed"
        assert req.error is None, repr(req.error)
        assert (req.status, req.body) == (200, f"done {child}".encode())
        assert read_pid(pidfile) == child and [v.pid for v in victims(str(pidfile))] == [child]
        time.sleep(2)  # four check intervals: a wrongful restart would show here
        assert events(log, "restart_started") == [], "a healthy adopted child was restarted"
        assert events(log, "process_exited") == []

        # The adopted child dies: seen from the exit event, restarted.
        t_kill = time.time()
        os.kill(child, signal.SIGKILL)
        exited = wait_for(lambda: events(log, "process_exited", pid=child), 30)
        assert exited, g2.stderr()[-3000:]
        latency_ms = (epoch(exited[0]) - t_kill) * 1000
        print(f"adopted child's exit seen {latency_ms:.1f} ms after SIGKILL (log-time resolution)")
        assert "adopted pid" in exited[0]["msg"]
        restarted = wait_for(lambda: events(log, "restart_started"), 30)
        assert restarted and epoch(restarted[0]) >= t_g2
        # Caused by the exit event itself, not by failed checks (failure_threshold 3).
        reason = restarted[0].get("reason", restarted[0]["msg"])
        assert "exited (code unknown: adopted" in reason, restarted[0]
        failed = [e for e in events(log, "check", status="failed") if epoch(e) > t_kill]
        assert not failed or epoch(failed[0]) >= epoch(exited[0])
        assert wait_for(lambda: read_pid(pidfile) not in (None, child) and http_ok(port), 30)
        new = read_pid(pidfile)
        assert [v.pid for v in victims(str(pidfile))] == [new]
        assert g2.stop() == 0
    assert victims(str(pidfile)) == []


def test_planned_stop_with_leave_then_start_adopts_and_says_so(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "child.pid"
    cfg = write_config(tmp_path, port, pidfile, on_guardian_stop="leave")
    log, out = tmp_path / "logs" / "guardian.log", tmp_path / "victim.out"
    g1: GuardianProc | None = None
    g2: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: g1, lambda: g2):
        g1 = GuardianProc(cfg, tmp_path / "g1.err")
        assert wait_for(lambda: http_ok(port), 30), g1.stderr()[-3000:]
        child = read_pid(pidfile)
        assert wait_for(lambda: events(log, "start_summary"), 30)
        first = json_lines(g1.stderr())
        assert [(e["outcome"], e["pid"]) for e in first if e.get("event") == "start_outcome"] == [
            ("started", child)
        ]
        summary = next(e for e in first if e.get("event") == "start_summary")
        assert (summary["adopted"], summary["started"]) == ([], ["victim"])

        assert g1.stop() == 0  # SIGTERM: a planned stop
        assert http_ok(port) and read_pid(pidfile) == child, "the child did not stay running"
        assert events(log, "process_left", pid=child)
        assert f"pid {child} left running" in out.read_text()

        g2 = GuardianProc(cfg, tmp_path / "g2.err")
        assert wait_for(lambda: len(events(log, "start_summary")) == 2, 30), g2.stderr()[-3000:]
        second = json_lines(g2.stderr())
        said = [e for e in second if e.get("event") == "start_outcome"]
        assert [(e["outcome"], e["pid"]) for e in said] == [("adopted", child)]
        summary = next(e for e in second if e.get("event") == "start_summary")
        assert (summary["adopted"], summary["started"]) == (["victim"], [])
        assert "services: 1 adopted ['victim'], 0 started []" in summary["msg"]
        time.sleep(2)
        assert events(log, "restart_started") == [] and read_pid(pidfile) == child
        assert [v.pid for v in victims(str(pidfile))] == [child]
        assert g2.stop() == 0  # leave again: still running
        assert http_ok(port) and read_pid(pidfile) == child
    assert victims(str(pidfile)) == []


TICK = re.compile(r"^tick (\d+) (\d+)$")


def ticks(text: str, pid: int) -> list[int]:
    """The sequence numbers of ``pid``'s tick lines; a last line still being written
    (no newline yet: "tick 42 1" of "tick 42 17") is not one."""
    text = text[: text.rfind("\n") + 1]
    return [int(m[2]) for line in text.splitlines() if (m := TICK.match(line)) and int(m[1]) == pid]


def test_lines_written_without_a_guardian_reach_the_log_and_the_next_report(
    tmp_path: Path,
) -> None:
    port, pidfile, fail = free_port(), tmp_path / "child.pid", tmp_path / "fail"
    cfg = write_config(
        tmp_path, port, pidfile,
        child=("--tick", "0.1", "--fail-file", str(fail)),
        liveness=False,  # a failing check escalates into a report, never restarts
        report_log_lines=5000,
    )
    log, out = tmp_path / "logs" / "guardian.log", tmp_path / "victim.out"
    g1: GuardianProc | None = None
    g2: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: g1, lambda: g2):
        g1 = GuardianProc(cfg, tmp_path / "g1.err")
        assert wait_for(lambda: http_ok(port), 30), g1.stderr()[-3000:]
        child = read_pid(pidfile)
        assert child is not None
        assert wait_for(lambda: len(ticks(out.read_text(), child)) >= 3, 20)
        g1.sigkill()
        before = ticks(out.read_text(), child)
        time.sleep(1.5)  # no Guardian runs: the child keeps writing its log
        during = ticks(out.read_text(), child)
        orphaned = during[len(before):]
        assert len(orphaned) >= 5, (before[-3:], during[-3:])
        assert during == list(range(len(during))), f"lines lost or reordered: {during}"

        t_g2 = time.time()
        g2 = GuardianProc(cfg, tmp_path / "g2.err")
        assert wait_for(lambda: events(log, "start_outcome", outcome="adopted"), 30)
        # Only after the new Guardian saw it healthy: a failure before its first success
        # belongs to the startup phase (no incident until startup_timeout).
        assert wait_for(
            lambda: [e for e in events(log, "check", status="ok") if epoch(e) >= t_g2], 30
        ), g2.stderr()[-3000:]
        fail.touch()  # now the service breaks: an incident, escalated into a report
        reports = tmp_path / "reports"
        assert wait_for(lambda: list(reports.glob("incident-*.md")), 60), g2.stderr()[-3000:]
        report = next(reports.glob("incident-*.md")).read_text()
        tail = report[report.find("tick "):]
        in_report = ticks(tail.replace("\\", ""), child)
        missing = sorted(set(orphaned) - set(in_report))
        assert not missing, f"lines written while no Guardian ran missing in the report: {missing}"
        assert f"adopted pid {child}" in report
        assert events(log, "restart_started") == [], g2.stderr()[-3000:]
        assert g2.stop() == 0
    assert victims(str(pidfile)) == []


def test_noisy_child_does_not_flood_guardian_and_its_log_is_rotated(tmp_path: Path) -> None:
    port, pidfile = free_port(), tmp_path / "child.pid"
    limit, backups, rate = 64 * 1024, 9, 200_000  # bytes, files, bytes/s from the child
    cfg = write_config(
        tmp_path, port, pidfile,
        child=("--noisy", str(rate)), log_max_bytes=limit, log_backups=backups,
    )
    log, out = tmp_path / "logs" / "guardian.log", tmp_path / "victim.out"
    g: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: g):
        g = GuardianProc(cfg, tmp_path / "g.err")
        assert wait_for(lambda: http_ok(port), 30), g.stderr()[-3000:]
        child = read_pid(pidfile)
        # The first size check comes a rotate_interval (1 s) after the start, before any
        # growth was seen: that first file may hold up to a second of output. From then
        # on the checks follow the growth; measure the steady state.
        assert wait_for(lambda: out.with_name("victim.out.1").exists(), 30), "never rotated"
        peak = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                peak = max(peak, out.stat().st_size)
            time.sleep(0.05)
        assert wait_for(lambda: out.with_name(f"victim.out.{backups}").exists(), 30), "no rotations"
        rotated = [out.with_name(f"victim.out.{i + 1}") for i in range(backups)]
        assert all(p.exists() for p in rotated), sorted(tmp_path.glob("victim.out*"))
        assert not out.with_name(f"victim.out.{backups + 1}").exists()
        assert all(p.read_text(errors="replace").count("NOISE ") > 0 for p in rotated)
        # A backup is the file as it was at its rotation: how far each rotation overshot.
        sizes = sorted(p.stat().st_size for p in rotated)
        print(f"log limit {limit} B, child writing {rate} B/s: backups {sizes} B, "
              f"largest file seen {peak} B")
        # Within the limit, give or take what the child writes until the next size check:
        # checks come sooner while the file grows fast (at 200 kB/s about every 0.1 s).
        # A fixed 1 s check overshoots by up to a second of output (170-190 kB measured)
        # at every rotation; the median allows half a second, the largest (one stall of a
        # loaded box) two.
        median = sizes[len(sizes) // 2]
        assert median <= limit + rate // 2, f"median rotation at {median} B, limit {limit} B"
        assert max(peak, sizes[-1]) <= limit + 2 * rate, (peak, sizes)
        assert read_pid(pidfile) == child and events(log, "restart_started") == []
        g_err = g.stderr()
        assert "NOISE" not in g_err and "NOISE" not in log.read_text()
        assert len(g_err) < 64 * 1024, f"Guardian's stderr grew to {len(g_err)} bytes"
        assert events(log, "log_rotate_failed") == []
        assert g.stop() == 0
    assert victims(str(pidfile)) == []
