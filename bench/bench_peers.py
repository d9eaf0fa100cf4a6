"""Recovery latency after SIGKILL: Guardian vs supervisord vs Monit vs a bare respawn loop.

The same victim (tests/testkit/victim.py) is supervised by each in turn and SIGKILLed N times.
For every kill we poll (every 5 ms) the victim's pidfile for a new live pid and its port
for an HTTP 200, and report median/p95 of kill->new PID and kill->answering, plus the
ratio Guardian/peer. The bare ``while True: Popen().wait()`` loop is the physical limit
(process spawn + interpreter start + bind). Monit is run twice: ``set daemon 1`` and its
default ``set daemon 30`` (fewer runs there: each can take up to ~30 s).

Guardian runs as ``guardian run`` with a process-backed target whose recovery policy
cannot throttle (cooldown 0, huge max_attempts, 1 s window, no backoff).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    PYTHON,
    RESULTS,
    Children,
    free_port,
    guardian_argv,
    guardian_env,
    guardian_supervises,
    http_ok,
    measure_kill,
    ms,
    read_pid,
    summary,
    table,
    victim_argv,
    victim_config_text,
    wait_for,
    which,
    write_results,
)

Setup = Callable[[Path, int, Path, Children], None]


def setup_guardian(tmp: Path, port: int, pidfile: Path, ch: Children) -> None:
    cfg = tmp / "guardian.toml"
    text = victim_config_text(tmp, victim_argv(port, pidfile), port, failure_threshold=3,
                              grace_period=2)
    cfg.write_text(text)
    ch.start(guardian_argv(cfg), env=guardian_env(), stderr_to=tmp / "guardian.err")


def setup_supervisord(tmp: Path, port: int, pidfile: Path, ch: Children) -> None:
    exe = which("supervisord")
    assert exe is not None
    conf = tmp / "supervisord.conf"
    conf.write_text(
        f"""
[supervisord]
nodaemon=true
logfile={tmp / "supervisord.log"}
pidfile={tmp / "supervisord.pid"}
childlogdir={tmp}

[program:victim]
command={" ".join(victim_argv(port, pidfile))}
autorestart=true
startsecs=0
startretries=1000000
stopasgroup=true
killasgroup=true
stdout_logfile={tmp / "victim.log"}
redirect_stderr=true
"""
    )
    ch.start([exe, "-n", "-c", str(conf)])


def monit_setup(poll: int) -> Setup:
    def setup(tmp: Path, port: int, pidfile: Path, ch: Children) -> None:
        exe = which("monit")
        assert exe is not None
        rc = tmp / "monitrc"
        start = " ".join(victim_argv(port, pidfile, "--daemon"))
        rc.write_text(
            f"""
set daemon {poll} with start delay 0
set logfile {tmp / "monit.log"}
set pidfile {tmp / "monit.pid"}
set idfile {tmp / "monit.id"}
set statefile {tmp / "monit.state"}

check process victim with pidfile {pidfile}
  start program = "{start}" with timeout 10 seconds
"""
        )
        rc.chmod(0o600)  # monit refuses a control file others can read
        ch.start([exe, "-I", "-c", str(rc)])

    return setup


def setup_bare(tmp: Path, port: int, pidfile: Path, ch: Children) -> None:
    loop = (
        "import subprocess, sys\n"
        "for _ in range(100000):\n"
        "    subprocess.Popen(sys.argv[1:]).wait()\n"
    )
    ch.start([PYTHON, "-c", loop, *victim_argv(port, pidfile)])


def run_peer(
    name: str, setup: Setup, runs: int, timeout: float, period: float = 1.0
) -> dict[str, Any]:
    """Start ``name`` supervising the victim, SIGKILL it ``runs`` times, collect latencies."""
    pid_lat: list[float] = []
    http_lat: list[float] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as d, Children().scope() as ch:
        tmp = Path(d)
        port, pidfile = free_port(), tmp / "victim.pid"
        ch.also_kill(lambda: read_pid(pidfile))  # a daemonised victim is outside our groups
        setup(tmp, port, pidfile, ch)
        if wait_for(lambda: http_ok(port), timeout=max(timeout, 20), step=0.05) is None:
            errs = [p.read_text()[-800:] for p in tmp.glob("*.err")] + [
                p.read_text()[-800:] for p in tmp.glob("*.log")
            ]
            return {"name": name, "error": "victim never came up", "logs": errs}
        for i in range(runs):
            # A kill at a random phase of a poll-based supervisor's cycle (``period``):
            # right after a restart is also right after a poll, Monit's worst case.
            time.sleep(random.uniform(0.3, 0.3 + period))
            t_pid, t_http = measure_kill(pidfile, port, timeout)
            if t_pid is None or t_http is None:
                failures += 1
                print(f"  {name}: run {i + 1} did not recover within {timeout:.0f} s")
                if wait_for(lambda: http_ok(port), timeout=timeout, step=0.05) is None:
                    break
                continue
            pid_lat.append(t_pid)
            http_lat.append(t_http)
            print(f"  {name}: run {i + 1}/{runs}: new pid {ms(t_pid)}, http {ms(t_http)}")
    return {
        "name": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
        "failures": failures,
        "new_pid_s": summary(pid_lat),
        "http_s": summary(http_lat),
        "samples_new_pid_s": pid_lat,
        "samples_http_s": http_lat,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="SIGKILLs per peer (default 20)")
    ap.add_argument("--monit30-runs", type=int, default=5, help="runs for Monit at 30 s poll")
    ap.add_argument(
        "--only", nargs="*",
        help="peer names to run; the others' figures are kept from bench/results/peers.json",
    )
    a = ap.parse_args(argv)

    peers: list[tuple[str, Setup, int, float, float, str | None]] = [
        ("guardian", setup_guardian, a.runs, 15.0, 1.0, guardian_supervises()),
        ("supervisord", setup_supervisord, a.runs, 15.0, 1.0,
         None if which("supervisord") else "supervisord not installed (pip install supervisor)"),
        ("monit-1s", monit_setup(1), a.runs, 15.0, 1.0,
         None if which("monit") else "monit not installed (apt-get install monit)"),
        ("monit-30s", monit_setup(30), a.monit30_runs, 45.0, 30.0,
         None if which("monit") else "monit not installed (apt-get install monit)"),
        ("bare-loop", setup_bare, a.runs, 15.0, 1.0, None),
    ]
    results: dict[str, dict[str, Any]] = {}
    previous = RESULTS / "peers.json"
    if a.only and previous.exists():
        results = json.loads(previous.read_text()).get("results", {})
    for name, setup, runs, timeout, period, missing in peers:
        if a.only and name not in a.only:
            continue
        if missing:
            print(f"{name}: skipped: {missing}")
            results[name] = {"name": name, "skipped": missing}
            continue
        print(f"{name}: {runs} SIGKILLs")
        results[name] = run_peer(name, setup, runs, timeout, period)

    results = {p[0]: results[p[0]] for p in peers if p[0] in results}  # table order
    g = results.get("guardian", {})
    rows = []
    for name, r in results.items():
        if "skipped" in r or "error" in r:
            rows.append([name, "-", r.get("skipped") or r.get("error"), "", "", "", "", ""])
            continue
        p, h = r["new_pid_s"], r["http_s"]
        ratio_p = ratio_h = "—"
        if "new_pid_s" in g and g["new_pid_s"].get("n") and p.get("n"):
            ratio_p = f"{g['new_pid_s']['median'] / p['median']:.3g}"
            ratio_h = f"{g['http_s']['median'] / h['median']:.3g}"
        rows.append([
            name, f"{p.get('n', 0)}/{r['runs']}",
            ms(p.get("median")), ms(p.get("p95")), ms(h.get("median")), ms(h.get("p95")),
            ratio_p, ratio_h,
        ])
    md = table(
        ["supervisor", "ok/runs", "new PID med", "new PID p95", "HTTP med", "HTTP p95",
         "Guardian/peer PID", "Guardian/peer HTTP"],
        rows,
    )
    note = (
        "\n\nkill = SIGKILL to the victim; new PID = the new victim process wrote its pidfile "
        "(first thing it does); HTTP = it answered GET / with 200. Polled every 5 ms. "
        f"Monit at 30 s poll: {a.monit30_runs} runs (each waits up to a full poll cycle). "
        "Each kill comes 0.3 s + U(0, poll period) after the previous recovery, so a "
        "poll-based supervisor is hit at a random phase of its cycle. "
        "Ratios are of medians (Guardian / peer; below 1 = Guardian faster)."
    )
    print()
    print(md + note)
    write_results("peers", {"runs": a.runs, "results": results}, md + note)
    ok = all("error" not in r for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
