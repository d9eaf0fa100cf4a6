"""Hang recovery: a victim that stays alive but stops answering, restarted by Guardian.

The victim gets SIGUSR1 and from then on accepts connections but never answers (the
process is alive, the port is bound: only a health check can tell). Guardian's http check
(interval I, timeout T, jitter 0) fails once per interval; after ``failure_threshold`` F
consecutive failures recovery restarts the process. Configured bound: F*I + T. Exact
expectation per run: the first check that arrived after the hang (its arrival time ``s1``
is in the victim's request log) + (F-1)*I + T; drift = new PID seen - that expectation,
i.e. what decision + stop + spawn cost on top of the policy.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Children,
    alive,
    free_port,
    guardian_argv,
    guardian_env,
    guardian_supervises,
    http_ok,
    ms,
    read_pid,
    summary,
    table,
    victim_argv,
    victim_config_text,
    wait_for,
    write_results,
)


def config_text(tmp: Path, port: int, pidfile: Path, reqlog: Path, i: float, t: float,
                f: int) -> str:
    victim = victim_argv(port, pidfile, "--requests-log", str(reqlog))
    return victim_config_text(tmp, victim, port, failure_threshold=f, grace_period=1,
                              interval=i, timeout=t)


def requests_after(reqlog: Path, t: float) -> list[float]:
    try:
        times = [float(x) for x in reqlog.read_text().split()]
    except (OSError, ValueError):
        return []
    return [x for x in times if x >= t]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=0.5)
    ap.add_argument("--threshold", type=int, default=3)
    a = ap.parse_args(argv)
    i, t, f = a.interval, a.timeout, a.threshold
    bound = f * i + t
    missing = guardian_supervises()
    if missing:
        print(f"hang: skipped: {missing}")
        write_results("hang", {"skipped": missing}, f"Skipped: {missing}")
        return 0

    detect: list[float] = []
    drift: list[float] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-hang-") as d, Children().scope() as ch:
        tmp = Path(d)
        port, pidfile, reqlog = free_port(), tmp / "victim.pid", tmp / "requests.log"
        ch.also_kill(lambda: read_pid(pidfile))
        cfg = tmp / "guardian.toml"
        cfg.write_text(config_text(tmp, port, pidfile, reqlog, i, t, f))
        ch.start(guardian_argv(cfg), env=guardian_env(), stderr_to=tmp / "guardian.err")
        if wait_for(lambda: http_ok(port), timeout=20, step=0.05) is None:
            print((tmp / "guardian.err").read_text()[-2000:])
            raise SystemExit("victim never came up under Guardian")
        for n in range(a.runs):
            time.sleep(1.0 + random.uniform(0, i))  # past grace, random phase vs the grid
            old = read_pid(pidfile)
            assert old is not None and alive(old)
            t_wall, t0 = time.time(), time.monotonic()
            os.kill(old, signal.SIGUSR1)

            def new_pid(old: int = old) -> bool:
                pid = read_pid(pidfile)
                return pid is not None and pid != old and alive(pid)

            t_new = wait_for(new_pid, timeout=bound + 10)
            if t_new is None:
                failures += 1
                print(f"  run {n + 1}: no restart within {bound + 10:.1f} s")
                continue
            elapsed = t_new - t0
            arrivals = requests_after(reqlog, t_wall)
            detect.append(elapsed)
            if arrivals:
                expected = arrivals[0] - t_wall + (f - 1) * i + t
                drift.append(elapsed - expected)
            print(f"  run {n + 1}/{a.runs}: hang -> new pid {ms(elapsed)} "
                  f"(drift {ms(drift[-1]) if arrivals else '?'})")
            if wait_for(lambda: http_ok(port), timeout=10, step=0.02) is None:
                failures += 1
                break
    ds, dr = summary(detect), summary(drift)
    md = table(
        ["metric", "n", "median", "p95", "min", "max"],
        [
            ["hang -> new PID", ds.get("n"), ms(ds.get("median")), ms(ds.get("p95")),
             ms(ds.get("min")), ms(ds.get("max"))],
            ["drift vs exact expectation", dr.get("n"), ms(dr.get("median")), ms(dr.get("p95")),
             ms(dr.get("min")), ms(dr.get("max"))],
        ],
    )
    note = (
        f"\n\nPolicy: interval {i:g} s, timeout {t:g} s, failure_threshold {f}, jitter 0. "
        f"Configured bound F*I+T = {bound:g} s; a hang starting at a random phase is detected "
        f"between (F-1)*I+T = {bound - i:g} s and {bound:g} s after it began. "
        "Drift = measured - (first failing check's arrival + (F-1)*I + T): decision, SIGTERM "
        f"of the wedged process and spawn of the new one. Failures: {failures}/{a.runs}."
    )
    print()
    print(md + note)
    data: dict[str, Any] = {
        "policy": {"interval": i, "timeout": t, "failure_threshold": f, "bound_s": bound},
        "runs": a.runs, "failures": failures, "hang_to_new_pid_s": ds, "drift_s": dr,
        "samples_hang_to_new_pid_s": detect, "samples_drift_s": drift,
    }
    write_results("hang", data, md + note)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
