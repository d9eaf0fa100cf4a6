"""Guardian idle: CPU, wakeups per thread and RSS of a real ``guardian run`` with nothing due.

The config mirrors ``guardian.example.toml`` on Linux with local targets: a supervised
process (backend ``process``, the bench victim) with an http check at 30 s and a service
check at 60 s, disk at 300 s, memory and gpu at 60 s, the API on (and, as a second case,
off). After start-up and a warm-up, the bench reads ``/proc`` from outside, before and after
``--seconds`` (30):

* CPU and context switches of the whole process with ``perf stat -p`` (task-clock, in
  nanoseconds, and counting threads that start and end inside the window: ``/proc`` only
  shows threads alive when read, and ``/proc/<pid>/stat`` ticks are 10 ms, too coarse for
  0.05 %). Without ``perf``: the live threads' ``schedstat`` run time. Supervised children
  are excluded either way.
* wakeups/s per thread: ``voluntary_ctxt_switches`` deltas from ``/proc/<pid>/task/*/status``
  (each voluntary switch is a sleep that something later ended). Threads get OS names from
  their Python names through a small shim (``prctl(PR_SET_NAME)`` at thread start), so the
  table says ``guardian-api`` rather than ``python``. Threads that started and ended inside
  the window show up only in the perf totals ("short-lived").
* RSS (``VmRSS``) at the end.

Each case runs ``--runs`` (3) times in fresh processes; medians are reported. ``--src DIR``
measures another checkout (e.g. a worktree of main) and ``--label`` names the figures, so
``--src ../main/src --label before`` then ``--label after`` puts both in one results file
(other labels already there are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from _common import (
    PYTHON,
    REPO,
    RESULTS,
    Children,
    free_port,
    http_ok,
    table,
    toml_str,
    victim_argv,
    wait_for,
    write_results,
)

# Runs guardian's CLI with OS thread names taken from Python thread names (15 bytes max).
SHIM = r"""
import ctypes, runpy, sys, threading
_libc = ctypes.CDLL(None, use_errno=True)
def _name(n):
    _libc.prctl(15, ctypes.c_char_p(n.encode()[:15]), 0, 0, 0)
_inner = threading.Thread._bootstrap_inner
def _boot(self):
    _name(self.name)
    _inner(self)
threading.Thread._bootstrap_inner = _boot
_name("main")
sys.argv = ["guardian", *sys.argv[1:]]
runpy.run_module("guardian", run_name="__main__", alter_sys=True)
"""


def config_text(tmp: Path, victim_port: int, api: bool) -> str:
    cmd = ", ".join(toml_str(a) for a in victim_argv(victim_port, tmp / "victim.pid"))
    return f"""
[guardian]
log_dir = {toml_str(tmp / "logs")}
state_dir = {toml_str(tmp / "state")}
report_dir = {toml_str(tmp / "reports")}
log_level = "info"
jitter = 0.1
[api]
enabled = {"true" if api else "false"}
host = "127.0.0.1"
port = {free_port()}

[[targets]]
name = "panel"
critical = true
[targets.service]
backend = "process"
command = [{cmd}]
log_file = {toml_str(tmp / "victim.log")}
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{victim_port}/"
interval = 30
timeout = 10
[[targets.checks]]
kind = "service"
interval = 60

[[targets]]
name = "disk"
critical = true
[[targets.checks]]
kind = "disk"
paths = [{toml_str(tmp)}]
interval = 300
timeout = 10
warn_gb = 0
critical_gb = 0

[[targets]]
name = "system"
critical = false
[[targets.checks]]
kind = "memory"
interval = 60
[[targets.checks]]
kind = "gpu"
interval = 60
"""


# --------------------------------------------------------------------------- /proc


def threads(pid: int) -> dict[int, dict[str, Any]]:
    """Per thread: name, voluntary/involuntary switches, run time (ns)."""
    out: dict[int, dict[str, Any]] = {}
    base = Path(f"/proc/{pid}/task")
    for task in base.iterdir():
        try:
            status = (task / "status").read_text()
            run_ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        out[int(task.name)] = {
            "name": fields.get("Name", "?").strip(),
            "voluntary": int(fields.get("voluntary_ctxt_switches", "0")),
            "involuntary": int(fields.get("nonvoluntary_ctxt_switches", "0")),
            "run_ns": run_ns,
        }
    return out


def perf_window(pid: int, seconds: float) -> tuple[float, int] | None:
    """CPU seconds and context switches of every thread of ``pid`` over ``seconds``
    (``perf stat`` follows threads started meanwhile); None without perf (then just wait)."""
    perf = shutil.which("perf")
    if perf is None:
        time.sleep(seconds)
        return None
    out = subprocess.run(
        [perf, "stat", "-x", ",", "-e", "task-clock,context-switches", "-p", str(pid),
         "--", "sleep", f"{seconds:g}"],
        capture_output=True, text=True, timeout=seconds + 30,
    )
    values: dict[str, float] = {}
    for line in out.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2:
            with contextlib.suppress(ValueError):
                values[parts[2]] = float(parts[0])
    if "task-clock" not in values or "context-switches" not in values:
        return None
    return values["task-clock"] / 1000, int(values["context-switches"])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(src: Path, api: bool, warmup: float, seconds: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as d, Children().scope() as ch:
        tmp = Path(d)
        port = free_port()
        cfg = tmp / "guardian.toml"
        cfg.write_text(config_text(tmp, port, api))
        argv = [PYTHON, "-c", SHIM, "run", "--config", str(cfg), "--log-format", "json"]
        p = ch.start(argv, env=env, stderr_to=tmp / "err")
        log = tmp / "logs" / "guardian.log"
        started = wait_for(lambda: log.exists() and "guardian started" in log.read_text(),
                           60, 0.05)
        if started is None or wait_for(lambda: http_ok(port), 20, 0.05) is None:
            raise SystemExit(f"guardian did not start: {(tmp / 'err').read_text()[-2000:]}")
        time.sleep(warmup)  # past start-up imports and the first checks
        before, t0 = threads(p.pid), time.monotonic()
        whole = perf_window(p.pid, seconds)
        after, t1 = threads(p.pid), time.monotonic()
        rss = rss_mib(p.pid)
        if p.poll() is not None:
            raise SystemExit(f"guardian exited: {(tmp / 'err').read_text()[-2000:]}")
        span = t1 - t0
        per_thread: dict[str, float] = {}
        run_ns = 0
        wakeups = 0
        for tid, a in after.items():
            b = before.get(tid, {"voluntary": 0, "involuntary": 0, "run_ns": 0})
            n = a["voluntary"] - b["voluntary"]
            wakeups += n
            run_ns += a["run_ns"] - b["run_ns"]
            label = a["name"] if tid != p.pid else "main"
            per_thread[label] = per_thread.get(label, 0.0) + n / span
        if whole is not None:
            cpu_s, switches = whole
            short = max(0.0, switches - wakeups - sum(
                a["involuntary"] - before.get(t, {"involuntary": 0})["involuntary"]
                for t, a in after.items()
            ))
            if short >= 1:
                per_thread["short-lived"] = short / span
        else:
            cpu_s, switches = run_ns / 1e9, wakeups
        return {
            "seconds": span,
            "cpu_source": "perf task-clock" if whole is not None else "schedstat (live threads)",
            "cpu_percent": 100 * cpu_s / span,
            "context_switches_per_s": switches / span,
            "wakeups_per_s": wakeups / span,
            "wakeups_per_s_by_thread": dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
            "threads": len(after),
            "rss_mib": rss,
        }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({n for r in runs for n in r["wakeups_per_s_by_thread"]})
    return {
        "runs": runs,
        "cpu_percent": statistics.median(r["cpu_percent"] for r in runs),
        "wakeups_per_s": statistics.median(r["wakeups_per_s"] for r in runs),
        "context_switches_per_s": statistics.median(r["context_switches_per_s"] for r in runs),
        "rss_mib": statistics.median(r["rss_mib"] for r in runs),
        "threads": statistics.median(r["threads"] for r in runs),
        "loadavg_1m": os.getloadavg()[0],  # a shared box: how busy it was
        "wakeups_per_s_by_thread": {
            n: statistics.median(r["wakeups_per_s_by_thread"].get(n, 0.0) for r in runs)
            for n in names
        },
    }


def render(labels: dict[str, dict[str, Any]], seconds: float, n_runs: int) -> str:
    rows = []
    for label, cases in labels.items():
        for case, s in cases.items():
            top = ", ".join(
                f"{n} {v:.1f}" for n, v in sorted(
                    s["wakeups_per_s_by_thread"].items(), key=lambda kv: -kv[1]
                ) if v >= 0.05
            )
            rows.append([
                label, case, f"{s['cpu_percent']:.3f}", f"{s['context_switches_per_s']:.1f}",
                top or "—", f"{s['rss_mib']:.1f}", f"{s['threads']:.0f}",
            ])
    md = table(
        ["code", "case", "CPU % of a core", "context switches/s", "wakeups/s by thread (≥ 0.05)",
         "RSS MiB", "threads"],
        rows,
    )
    return md + (
        f"\n\nMedians of {n_runs} runs, each a fresh `guardian run` (local targets: a "
        "supervised process with http 30 s + service 60 s, disk 300 s, memory and gpu 60 s) "
        f"measured for {seconds:.0f} s after start-up and a warm-up. CPU and context "
        "switches: `perf stat -p` over the window (every thread, short-lived ones too); "
        "wakeups by thread: voluntary context switches from `/proc/<pid>/task/*/status` "
        "(short-lived = threads that started and ended inside the window); thread names "
        "come from Python thread names. The supervised child is not counted."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--src", type=Path, default=REPO / "src", help="guardian sources to run")
    ap.add_argument("--label", default="after", help="name of these figures (before/after)")
    ap.add_argument("--cases", nargs="*", default=["api", "no-api"],
                    choices=["api", "no-api"])
    ap.add_argument("--drop", nargs="*", default=[], help="labels to remove from the results")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md, run nothing")
    args = ap.parse_args(argv)
    path = RESULTS / "idle.json"
    labels: dict[str, dict[str, Any]] = {}
    if path.exists():
        labels = json.loads(path.read_text()).get("labels", {})
    for name in args.drop:
        labels.pop(name, None)
    cases = {} if args.render_only else labels.setdefault(args.label, {})
    for case in [] if args.render_only else args.cases:
        runs = []
        for i in range(args.runs):
            r = one_run(args.src.resolve(), case == "api", args.warmup, args.seconds)
            print(f"{args.label} {case} run {i + 1}: cpu {r['cpu_percent']:.3f} %, "
                  f"{r['context_switches_per_s']:.1f} switches/s, rss {r['rss_mib']:.1f} MiB, "
                  f"{r['wakeups_per_s_by_thread']}", flush=True)
            runs.append(r)
        cases[case] = summarize(runs)
    md = render(labels, args.seconds, args.runs)
    print(md)
    write_results("idle", {"seconds": args.seconds, "labels": labels}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
