"""Guardian itself SIGKILLed (mid-restart, mid-incident), then started again.

The ProcessBackend starts children in their own session, so a SIGKILLed Guardian leaves
its child running, holding the port. What must hold after the new Guardian starts:

* exactly one victim process exists, it serves the port, and the new Guardian supervises
  it: its own child, or the recorded process it adopted (pid + start time) -- not an
  unsupervised orphan serving while Guardian's fresh child crash-loops on EADDRINUSE;
* a healthy child is adopted, not killed: same pid, no restart (its running job survives);
* no restart storm: a handful of restarts at most in the new Guardian's first seconds;
* a target whose breaker was open stays open across the crash (the attempt count lives
  in the state store), so a crash-looping Guardian cannot multiply restarts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from testkit.chaos import (
    GuardianProc,
    cleanup,
    features,
    free_port,
    guardian_config,
    http_ok,
    listener_pid,
    log_events,
    read_pid,
    victims,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="POSIX signals"),
    pytest.mark.timeout(120),
]

RESTART_KINDS = {"restart_started"}


def count_events(log: Path, kinds: set[str], since: float = 0.0) -> int:
    """JSON log lines whose event (or kind) is in ``kinds``, logged after ``since`` (epoch)."""
    from datetime import datetime

    n = 0
    for e in log_events(log):
        kind = e.get("event") if e.get("event") in kinds else e.get("kind")
        if kind in kinds and datetime.fromisoformat(e["time"]).timestamp() >= since:
            n += 1
    return n


def restarts(log: Path, since: float = 0.0) -> int:
    return count_events(log, RESTART_KINDS, since)


def supervision_problems(
    g: GuardianProc, port: int, marker: str, log: Path, wait: float = 10.0
) -> list[str]:
    """What is wrong with who serves ``port`` after Guardian came back ([] = all good)."""

    def supervised(owner: int | None) -> bool:
        if owner is None:
            return False
        try:
            if psutil.Process(owner).ppid() == g.pid:
                return True
        except psutil.Error:
            return False
        return owner in adopted(log)

    def settled() -> bool:
        vs = victims(marker)
        owner = listener_pid(port)
        return len(vs) == 1 and owner == vs[0].pid and supervised(owner) and http_ok(port)

    wait_for(settled, wait, step=0.1)
    problems = []
    vs = victims(marker)
    if len(vs) != 1:
        problems.append(f"{len(vs)} victim processes: {[(v.pid, v.ppid()) for v in vs]}")
    owner = listener_pid(port)
    if owner is None or not http_ok(port):
        problems.append(f"nothing answers on port {port}")
    elif not supervised(owner):
        problems.append(
            f"port {port} is served by pid {owner} (parent {psutil.Process(owner).ppid()}), "
            f"neither a child of the running Guardian {g.pid} nor adopted by it: "
            "an unsupervised orphan"
        )
    return problems


def adopted(log: Path) -> set[int]:
    """Pids the Guardian logging to ``log`` says it adopted at start."""
    return {
        int(e["pid"]) for e in log_events(log)
        if e.get("event") == "start_outcome" and e.get("outcome") == "adopted" and e.get("pid")
    }


# A supervised child runs in its own session, so it outlives a SIGKILLed Guardian and keeps
# its port. Without care the next Guardian's child crash-loops on EADDRINUSE while the
# orphan serves unsupervised. ProcessBackend records pid + start time (+ a token in the
# child's environment) in the state dir and, on its first start, adopts a live recorded
# process (its exit is watched through a pidfd, as fast as a child's) instead of killing it.
@pytest.mark.parametrize("moment", ["steady", "mid_restart"])
def test_sigkilled_guardian_restarts_without_orphans_or_storm(tmp_path: Path, moment: str) -> None:
    why = features()
    if why:
        pytest.skip(why)
    port, pidfile = free_port(), tmp_path / "victim.pid"
    cfg = guardian_config(tmp_path, port, pidfile)
    log = tmp_path / "logs" / "guardian.log"
    g1: GuardianProc | None = None
    g2: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: g1, lambda: g2):
        g1 = GuardianProc(cfg, tmp_path / "g1.err")
        assert wait_for(lambda: http_ok(port), 20), g1.stderr()[-3000:]
        first = read_pid(pidfile)
        if moment == "mid_restart":
            before = restarts(log)
            victim = read_pid(pidfile)
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            assert wait_for(lambda: restarts(log) > before, 10, step=0.002), g1.stderr()[-2000:]
        g1.sigkill()
        t_restart = time.time()
        g2 = GuardianProc(cfg, tmp_path / "g2.err")
        problems = supervision_problems(g2, port, str(pidfile), log)
        time.sleep(3)  # a storm would show here: failure_threshold x interval is 1.5 s
        n = restarts(log, since=t_restart)
        if n > 2:
            problems.append(f"{n} restarts since the new Guardian started: a restart storm")
        problems += supervision_problems(g2, port, str(pidfile), log, wait=2.0)
        # nothing was wrong with a steady child: adopted, never restarted
        if moment == "steady" and (read_pid(pidfile) != first or n != 0):
            problems.append(f"healthy child {first} not adopted: now {read_pid(pidfile)}, "
                            f"{n} restarts")
        assert not problems, "\n".join(problems)
        assert g2.stop() == 0
    assert victims(str(pidfile)) == []


def test_open_breaker_survives_a_guardian_crash(tmp_path: Path) -> None:
    """A crash-looping child opens the breaker (and an incident); Guardian is SIGKILLed
    mid-incident; the new one keeps the breaker open and opens no duplicate incident."""
    why = features()
    if why:
        pytest.skip(why)
    port, pidfile = free_port(), tmp_path / "victim.pid"
    recovery = (
        "cooldown = 0\nmax_attempts = 3\nwindow = 600\nbackoff_factor = 1.0\n"
        "backoff_max = 0\nfailure_threshold = 1\ngrace_period = 0\nstable_period = 600\n"
        "min_uptime = 0\n"
    )
    cfg = guardian_config(tmp_path, port, pidfile, victim_extra=["--exit-after", "0.3"],
                          recovery=recovery)
    log = tmp_path / "logs" / "guardian.log"
    g1: GuardianProc | None = None
    g2: GuardianProc | None = None
    with cleanup(str(pidfile), lambda: g1, lambda: g2):
        g1 = GuardianProc(cfg, tmp_path / "g1.err")
        opened = wait_for(
            lambda: any(e.get("event") == "breaker_open" for e in log_events(log)), 30
        )
        assert opened, g1.stderr()[-3000:]
        first_run = restarts(log)
        assert 1 <= first_run <= 3
        assert wait_for(lambda: count_events(log, {"incident_opened"}), 10), "no incident"
        g1.sigkill()
        t_restart = time.time()
        g2 = GuardianProc(cfg, tmp_path / "g2.err")
        assert wait_for(lambda: "guardian started" in g2.stderr(), 20), g2.stderr()[-2000:]
        time.sleep(4)
        n = restarts(log, since=t_restart)
        assert n == 0, f"breaker forgotten: {n} new restarts after the crash"
        dup = count_events(log, {"incident_opened"}, since=t_restart)
        assert dup == 0, f"{dup} duplicate incidents opened after the crash"
        assert g2.stop() == 0
    assert victims(str(pidfile)) == []
