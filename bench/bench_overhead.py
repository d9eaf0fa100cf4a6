"""Guardian's own cost: idle RSS/CPU, then 10/100/1000 HTTP targets at a 1 s period.

Part 1 (idle): ``guardian run`` as a real process on a default-ish config of local
targets (an http target at 30 s, disk 300 s, memory/gpu 60 s, the API if wired), sampled
from outside with psutil every second for ``--idle-seconds`` (60): CPU % and RSS.

Part 2 (load): for each N, a worker process (this script with ``--worker``) builds
``guardian.runtime.Guardian`` in-process on N http targets (1 s interval, default jitter
0.1) against one fast asyncio server (bench/fast_server.py, its own process), warms up,
then measures for ``--load-seconds``: CPU % and RSS of the worker (Guardian only, the
server's cost is excluded), checks completed vs scheduled, and schedule jitter = the
engine's own ``Scheduled.lateness`` (how late each check started vs its due time,
jitter already included in the due time) as p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_DIR,
    PYTHON,
    Children,
    free_port,
    guardian_argv,
    guardian_env,
    http_ok,
    pct,
    table,
    toml_str,
    wait_for,
    write_results,
)


def runnable_kinds() -> set[str]:
    """Check kinds whose runtime (``create``) exists in this checkout."""
    kinds = set()
    for kind, mod in (("http", "http"), ("disk", "disk"), ("memory", "memory"), ("gpu", "gpu")):
        try:
            if hasattr(importlib.import_module(f"guardian.checks.{mod}"), "create"):
                kinds.add(kind)
        except ImportError:
            pass
    return kinds


def api_wired() -> bool:
    try:
        importlib.import_module("guardian.api.app")
    except ImportError:
        return False
    return True


def header(tmp: Path, api: bool) -> str:
    return f"""
[guardian]
log_dir = {toml_str(tmp / "logs")}
state_dir = {toml_str(tmp / "state")}
report_dir = {toml_str(tmp / "reports")}
[api]
enabled = {"true" if api else "false"}
port = {free_port()}
"""


def idle_config(tmp: Path, port: int, kinds: set[str]) -> str:
    parts = [header(tmp, api_wired())]
    if "http" in kinds:
        parts.append(f"""
[[targets]]
name = "panel"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/api/health"
interval = 30
timeout = 10
""")
    if "disk" in kinds:
        parts.append(f"""
[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = [{toml_str(tmp)}]
interval = 300
warn_gb = 0
critical_gb = 0
""")
    sys_checks = [k for k in ("memory", "gpu") if k in kinds]
    if sys_checks:
        parts.append('\n[[targets]]\nname = "system"\ncritical = false\n')
        for k in sys_checks:
            parts.append(f'[[targets.checks]]\nkind = "{k}"\ninterval = 60\n')
    return "".join(parts)


def load_config_text(tmp: Path, port: int, n: int) -> str:
    parts = [header(tmp, False)]
    for i in range(n):
        parts.append(f"""
[[targets]]
name = "t{i:04d}"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/health?t={i}"
interval = 1
timeout = 0.9
""")
    return "".join(parts)


# --------------------------------------------------------------------------- worker


async def worker(config: Path, warmup: float, duration: float) -> dict[str, Any]:
    import psutil

    from guardian.config import load_config
    from guardian.log import setup_logging
    from guardian.runtime import Guardian

    cfg = load_config(config)
    setup_logging(cfg.guardian.log_dir, "info", "json", stream=io.StringIO())
    g = Guardian(cfg)
    me = psutil.Process()
    await g.start()
    await asyncio.sleep(warmup)
    for sc in g.engine.scheduled:
        sc.lateness.clear()
    runs0 = sum(sc.runs for sc in g.engine.scheduled)
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    rss: list[int] = []
    end = t0 + duration
    while time.monotonic() < end:
        await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
        rss.append(me.memory_info().rss)
    ru1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    runs = sum(sc.runs for sc in g.engine.scheduled) - runs0
    late = [x for sc in g.engine.scheduled for x in sc.lateness]
    statuses: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for r in g.state.results():
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
        if r.status.value != "ok":
            reasons[r.reason[:60]] = reasons.get(r.reason[:60], 0) + 1
    await g.stop()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    interval = min((sc.check.config.interval for sc in g.engine.scheduled), default=1.0)
    return {
        "targets": len(g.engine.scheduled),
        "seconds": t1 - t0,
        "cpu_percent": 100 * cpu / (t1 - t0),
        "rss_mib_median": statistics.median(rss) / 2**20,
        "rss_mib_max": max(rss) / 2**20,
        "checks_run": runs,
        "checks_expected": round(len(g.engine.scheduled) * (t1 - t0) / interval),
        "lateness_ms_p50": pct(late, 50) * 1000,
        "lateness_ms_p99": pct(late, 99) * 1000,
        "lateness_ms_max": max(late, default=float("nan")) * 1000,
        "latest_status_counts": statuses,
        "latest_failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
    }


# --------------------------------------------------------------------------- parts


def idle_part(seconds: float, port: int) -> dict[str, Any]:
    import psutil

    kinds = runnable_kinds()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as d, Children().scope() as ch:
        tmp = Path(d)
        cfg = tmp / "guardian.toml"
        cfg.write_text(idle_config(tmp, port, kinds))
        p = ch.start(guardian_argv(cfg), env=guardian_env(), stderr_to=tmp / "err")
        log = tmp / "logs" / "guardian.log"
        if wait_for(lambda: log.exists() and "guardian started" in log.read_text(), 20, 0.05) \
                is None:
            raise SystemExit(f"guardian did not start: {(tmp / 'err').read_text()[-2000:]}")
        time.sleep(2.0)  # past start-up imports and first checks
        proc = psutil.Process(p.pid)
        c0, t0 = proc.cpu_times(), time.monotonic()
        rss = []
        end = t0 + seconds
        while time.monotonic() < end and p.poll() is None:
            time.sleep(1.0)
            rss.append(proc.memory_info().rss)
        c1, t1 = proc.cpu_times(), time.monotonic()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        return {
            "seconds": t1 - t0,
            "checks": sorted(kinds) + (["api"] if api_wired() else []),
            "cpu_percent": 100 * cpu / (t1 - t0),
            "rss_mib_median": statistics.median(rss) / 2**20,
            "rss_mib_max": max(rss) / 2**20,
        }


def load_part(n: int, port: int, warmup: float, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-load{n}-") as d:
        tmp = Path(d)
        cfg = tmp / "guardian.toml"
        cfg.write_text(load_config_text(tmp, port, n))
        out = subprocess.run(
            [PYTHON, __file__, "--worker", str(cfg), str(warmup), str(seconds)],
            env=guardian_env(), capture_output=True, text=True, timeout=warmup + seconds + 60,
        )
        if out.returncode != 0:
            raise SystemExit(f"worker for {n} targets failed:\n{out.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result


def render(idle: dict[str, Any], loads: dict[Any, dict[str, Any]], idle_s: float,
           warmup: float, load_s: float) -> str:
    rows = [[
        "idle (" + ", ".join(idle["checks"]) + ")", f"{idle['cpu_percent']:.2f}",
        f"{idle['rss_mib_median']:.1f} / {idle['rss_mib_max']:.1f}", "—", "—", "—", "—",
    ]]
    for n, r in loads.items():
        cpu_ms = r["cpu_percent"] / 100 * r["seconds"] / max(1, r["checks_run"]) * 1000
        rows.append([
            f"{n} http targets @1 s", f"{r['cpu_percent']:.1f}",
            f"{r['rss_mib_median']:.1f} / {r['rss_mib_max']:.1f}",
            f"{r['checks_run']} / {r['checks_expected']}", f"{cpu_ms:.2f}",
            f"{r['lateness_ms_p50']:.1f} / {r['lateness_ms_p99']:.1f}",
            ", ".join(f"{k} {v}" for k, v in sorted(r["latest_status_counts"].items())),
        ])
    md = table(
        ["load", "CPU % (one core = 100)", "RSS MiB median / max", "checks run / due",
         "CPU ms per check", "start lateness ms p50 / p99", "latest results"],
        rows,
    )
    return md + (
        f"\n\nIdle: `guardian run` sampled from outside for {idle_s:.0f} s. Load: "
        f"Guardian in-process in a worker, {warmup:.0f} s warm-up then {load_s:.0f} s "
        "measured; CPU from getrusage (user+sys) of the worker only; lateness from the "
        "engine's `Scheduled.lateness` (start time minus jittered due time). The target is "
        "one asyncio keep-alive server in its own process. Failed results at high load are "
        "Guardian's own overload (check timeouts while its one event-loop core is saturated)."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--load-seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--targets", type=int, nargs="*", default=[10, 100, 1000])
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true", help="re-render the .md from the JSON")
    a = ap.parse_args(argv)
    if a.render:
        from _common import RESULTS

        data = json.loads((RESULTS / "overhead.json").read_text())
        sec = data.get("seconds", {"idle": 60, "warmup": 5, "load": 30})
        md = render(data["idle"], data["load"], sec["idle"], sec["warmup"], sec["load"])
        data.pop("bench"), data.pop("machine")
        write_results("overhead", data, md)
        return 0
    if a.worker:
        cfg, warm, dur = a.worker
        print(json.dumps(asyncio.run(worker(Path(cfg), float(warm), float(dur)))))
        return 0

    with Children().scope() as ch:
        port = free_port()
        ch.start([PYTHON, str(BENCH_DIR / "fast_server.py"), "--port", str(port)])
        if wait_for(lambda: http_ok(port), 10, 0.05) is None:
            raise SystemExit("fast_server did not come up")
        print(f"idle: {a.idle_seconds:.0f} s of guardian run ...")
        idle = idle_part(a.idle_seconds, port)
        print(f"  {idle}")
        loads = {}
        if "http" not in runnable_kinds():
            print("load: skipped: the http check runtime is not in this checkout yet")
        else:
            for n in a.targets:
                print(f"load: {n} http targets, {a.load_seconds:.0f} s ...")
                loads[n] = load_part(n, port, a.warmup, a.load_seconds)
                print(f"  {loads[n]}")

    md = render(idle, loads, a.idle_seconds, a.warmup, a.load_seconds)
    print()
    print(md)
    write_results(
        "overhead",
        {"idle": idle, "load": loads, "seconds": {"idle": a.idle_seconds, "warmup": a.warmup,
                                                  "load": a.load_seconds}},
        md,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
