"""Scale and footprint: every row of issue 12's table in one run, before and after.

Rows (each the median of ``--runs`` runs, p50/p99 inside a run):

* **CPU per HTTP check**: Guardian's whole CPU (probe, scheduler, state, metrics, store,
  logs) divided by the checks it ran, from the 300-target run (keep-alive target).
* **300 / 1000 targets at 1 s**: a worker process (this script with ``--worker``) runs
  ``guardian.runtime.Guardian`` in-process, API on, against ``testkit/fast_server.py`` in its own
  process (always healthy: every failure is false). After ``--warmup`` s it measures for
  ``--load-seconds``: CPU % of one core (getrusage of the worker: Guardian's threads only),
  due checks vs run vs run on time (started ≤ ``--on-time-ms`` after due), schedule
  lateness p50/p99 (the engine's ``Scheduled.lateness``: start minus jittered due time),
  and the lateness of the first runs on their own (start-up burst). Over the whole run:
  false failures (failed results on the bus), incidents opened, report files written.
* **/metrics with 1000 targets**: size and wall time of ``--metrics-gets`` GETs, made by
  the 1000-target worker after its window while the checks keep running.
* **idle**: ``--runs`` real ``guardian run`` processes at once on example-config-like
  local targets (http 30 s, disk 300 s, memory/gpu 60 s), API on, sampled from outside
  for ``--idle-seconds``: CPU % (/proc stat), wakeups/s (voluntary + involuntary context
  switches summed over /proc/<pid>/task/*/status), RSS.

``--src PATH`` runs another checkout's ``src`` (e.g. a worktree of main at ``bf1ecd6``)
instead of this one; ``--out NAME`` names the result files (default ``scale``);
``--compare OTHER.json`` adds a before/after table (OTHER is "before"). ``--quick`` is one
short run of everything (~1 min), for checking the harness, not for figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
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
    FAST_SERVER,
    PYTHON,
    REPO,
    RESULTS,
    Children,
    free_port,
    guardian_argv,
    http_ok,
    pct,
    table,
    toml_str,
    wait_for,
    write_results,
)

# --------------------------------------------------------------------------- configs


def header(tmp: Path, api_port: int, api: bool = True) -> str:
    return f"""
[guardian]
log_dir = {toml_str(tmp / "logs")}
state_dir = {toml_str(tmp / "state")}
report_dir = {toml_str(tmp / "reports")}
[api]
enabled = {"true" if api else "false"}
port = {api_port}
"""


def idle_config(tmp: Path, port: int) -> str:
    return header(tmp, free_port()) + f"""
[[targets]]
name = "panel"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/api/health"
interval = 30
timeout = 10

[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = [{toml_str(tmp)}]
interval = 300
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


def load_config(tmp: Path, port: int, n: int, api_port: int) -> str:
    parts = [header(tmp, api_port)]
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


def _get(port: int, path: str) -> tuple[int, float]:
    """One GET on a fresh connection: (body bytes, seconds to the last byte)."""
    import http.client

    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status}")
    finally:
        conn.close()
    return len(body), time.perf_counter() - t0


def _run_delay() -> float:
    """Seconds this process's threads waited for a CPU (``/proc/self/task/*/schedstat``).

    Waiting while runnable is the machine's contention, not Guardian's work: on a busy
    machine it explains lateness that Guardian's own CPU figure cannot.
    """
    total = 0
    for st in Path("/proc/self/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(st.read_text().split()[1])
    return total / 1e9


def _count_files(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.is_file()) if d.exists() else 0


async def worker(config: Path, warmup: float, duration: float, on_time: float,
                 metrics_gets: int) -> dict[str, Any]:
    """Guardian in this process on ``config``; the figures of one load run."""
    from guardian.config.load import load_config as load
    from guardian.core.events import IncidentEvent
    from guardian.core.result import CheckResult, Status
    from guardian.runtime import Guardian
    from guardian.support.log import setup_logging

    cfg = load(config)
    setup_logging(cfg.guardian.log_dir, "info", "json", stream=io.StringIO())
    g = Guardian(cfg)
    failed: dict[str, int] = {}
    opened: list[str] = []
    window = {"on": False, "failed": 0}

    def listen(ev: object) -> None:
        if isinstance(ev, CheckResult) and ev.status is Status.FAILED:
            failed[ev.reason[:60]] = failed.get(ev.reason[:60], 0) + 1
            window["failed"] += window["on"]
        elif isinstance(ev, IncidentEvent) and ev.transition.value == "opened":
            opened.append(ev.target)

    g.bus.subscribe(listen)
    t_start = time.monotonic()
    await g.start()
    start_s = time.monotonic() - t_start
    await asyncio.sleep(warmup)
    first = [sc.lateness[0] for sc in g.engine.scheduled if sc.lateness]
    for sc in g.engine.scheduled:
        sc.lateness.clear()
    runs0 = sum(sc.runs for sc in g.engine.scheduled)
    ru0, t0, wait0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), _run_delay()
    window["on"] = True
    await asyncio.sleep(duration)
    window["on"] = False
    ru1, t1, wait1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), _run_delay()
    runs = sum(sc.runs for sc in g.engine.scheduled) - runs0
    late = [x for sc in g.engine.scheduled for x in sc.lateness]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics: list[tuple[int, float]] = []
    if metrics_gets and g.api is not None:
        port = cfg.api.port
        for _ in range(metrics_gets):
            metrics.append(await asyncio.to_thread(_get, port, "/metrics"))
    await g.stop()
    report_files = await asyncio.to_thread(_count_files, cfg.guardian.report_dir)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    seconds = t1 - t0
    interval = min((sc.check.config.interval for sc in g.engine.scheduled), default=1.0)
    due = round(len(g.engine.scheduled) * seconds / interval)
    return {
        "targets": len(g.engine.scheduled),
        "start_seconds": start_s,
        "seconds": seconds,
        "cpu_percent": 100 * cpu / seconds,
        "cpu_ms_per_check": 1000 * cpu / max(1, runs),
        # Share of the window Guardian was runnable but waited for a CPU (other processes).
        "cpu_wait_percent": 100 * (wait1 - wait0) / seconds,
        "rss_mib_max": rss,
        "checks_due": due,
        "checks_run": runs,
        "checks_on_time": sum(1 for x in late if x <= on_time),
        "on_time_fraction": min(1.0, sum(1 for x in late if x <= on_time) / max(1, due)),
        "lateness_ms_p50": pct(late, 50) * 1000,
        "lateness_ms_p99": pct(late, 99) * 1000,
        "lateness_ms_max": max(late, default=float("nan")) * 1000,
        "first_run_lateness_ms_p50": pct(first, 50) * 1000,
        "first_run_lateness_ms_p99": pct(first, 99) * 1000,
        "false_failures_window": window["failed"],
        "false_failures_total": sum(failed.values()),
        "failure_reasons": dict(sorted(failed.items(), key=lambda kv: -kv[1])[:5]),
        "incidents_opened": len(opened),
        "report_files": report_files,
        "metrics_bytes": metrics[0][0] if metrics else None,
        "metrics_ms": [s * 1000 for _, s in metrics],
    }


# --------------------------------------------------------------------------- parts


def src_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    env["BENCH_SCALE_SRC"] = str(src)
    return env


def load_run(src: Path, n: int, port: int, a: argparse.Namespace, metrics: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-scale{n}-") as d:
        tmp = Path(d)
        cfg = tmp / "guardian.toml"
        cfg.write_text(load_config(tmp, port, n, free_port()))
        out = subprocess.run(
            [PYTHON, __file__, "--worker", str(cfg), str(a.warmup), str(a.load_seconds),
             str(a.on_time_ms / 1000), str(metrics)],
            env=src_env(src), capture_output=True, text=True,
            timeout=a.warmup + a.load_seconds + 180,
        )
        if out.returncode != 0:
            raise SystemExit(f"worker for {n} targets failed:\n{out.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        result["loadavg_1m_after"] = os.getloadavg()[0]  # a busy machine shows here
        return result


def _proc_cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _proc_switches(pid: int) -> int:
    total = 0
    for st in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in st.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def _proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def idle_runs(src: Path, port: int, runs: int, seconds: float) -> list[dict[str, Any]]:
    """``runs`` idle Guardians at once (idle ones barely compete), sampled from outside."""
    with contextlib.ExitStack() as stack, Children().scope() as ch:
        procs = []
        for i in range(runs):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-idle{i}-")))
            cfg = tmp / "guardian.toml"
            cfg.write_text(idle_config(tmp, port))
            p = ch.start(guardian_argv(cfg), env=src_env(src), stderr_to=tmp / "err")
            procs.append((p, tmp))
        for _, tmp in procs:
            log = tmp / "logs" / "guardian.log"
            if wait_for(lambda log=log: log.exists() and "guardian started" in log.read_text(),
                        60, 0.1) is None:
                raise SystemExit(f"guardian did not start: {(tmp / 'err').read_text()[-2000:]}")
        time.sleep(3.0)  # past start-up and the first checks
        pids = [p.pid for p, _ in procs]
        c0 = {pid: _proc_cpu(pid) for pid in pids}
        s0 = {pid: _proc_switches(pid) for pid in pids}
        t0 = time.monotonic()
        rss: dict[int, list[float]] = {pid: [] for pid in pids}
        while time.monotonic() < t0 + seconds:
            time.sleep(1.0)
            for pid in pids:
                rss[pid].append(_proc_rss_mib(pid))
        t1 = time.monotonic()
        out = []
        for pid in pids:
            dt = t1 - t0
            out.append({
                "seconds": dt,
                "cpu_percent": 100 * (_proc_cpu(pid) - c0[pid]) / dt,
                "wakeups_per_s": (_proc_switches(pid) - s0[pid]) / dt,
                "threads": len(list(Path(f"/proc/{pid}/task").iterdir())),
                "rss_mib": statistics.median(rss[pid]),
                "loadavg_1m_after": os.getloadavg()[0],
            })
        return out


# --------------------------------------------------------------------------- summary


def med(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def rows_of(data: dict[str, Any]) -> dict[str, str]:
    """Issue 12's rows as text: medians over the runs."""
    out: dict[str, str] = {}
    load, idle = data["load"], data["idle"]
    if "300" in load:
        out["CPU per HTTP check (keep-alive target, 300 targets)"] = (
            f"{med(load['300'], 'cpu_ms_per_check'):.3f} ms")
    for n in ("300", "1000"):
        if n not in load:
            continue
        rs = load[n]
        out[f"{n} targets at 1 s"] = (
            f"{med(rs, 'cpu_percent'):.1f} % of a core"
            f" (waited for a CPU {med(rs, 'cpu_wait_percent'):.0f} %); "
            f"{100 * med(rs, 'on_time_fraction'):.2f} % on time "
            f"({med(rs, 'checks_run'):.0f} run / {med(rs, 'checks_due'):.0f} due); "
            f"lateness p50 {med(rs, 'lateness_ms_p50'):.1f} / p99 {med(rs, 'lateness_ms_p99'):.1f}"
            f" ms; first runs p99 {med(rs, 'first_run_lateness_ms_p99'):.0f} ms; "
            f"{med(rs, 'false_failures_total'):.0f} false failures; "
            f"{med(rs, 'incidents_opened'):.0f} incidents, {med(rs, 'report_files'):.0f} reports")
    m = [x for r in load.get("1000", []) for x in r.get("metrics_ms", [])]
    if m:
        size = med(load["1000"], "metrics_bytes")
        out["/metrics with 1000 targets"] = (
            f"{size / 1e6:.2f} MB, p50 {pct(m, 50):.0f} / p99 {pct(m, 99):.0f} ms "
            f"({len(m)} GETs)")
    if idle:
        out["idle, example config, API on"] = (
            f"{med(idle, 'cpu_percent'):.3f} % of a core, "
            f"{med(idle, 'wakeups_per_s'):.1f} wakeups/s, {med(idle, 'rss_mib'):.1f} MiB RSS")
    return out


def render(data: dict[str, Any], before: dict[str, Any] | None) -> str:
    rows = rows_of(data)
    s = data["settings"]
    note = (
        f"\n\n{s['runs']} runs each; load: {s['warmup']:.0f} s warm-up then "
        f"{s['load_seconds']:.0f} s measured, on time = started ≤ {s['on_time_ms']:.0f} ms "
        f"after due; idle: {s['idle_seconds']:.0f} s. Source: `{data['src']}`. 'Waited for a "
        "CPU' is the share of the window Guardian was runnable but not running (schedstat): "
        "other processes' load, which makes lateness the machine's, not Guardian's. Per-run "
        "figures (and the failure reasons) are in the JSON."
    )
    if before is None:
        return table(["row", "figure (median of runs)"], [[k, v] for k, v in rows.items()]) + note
    old = rows_of(before)
    keys = list(dict.fromkeys([*old, *rows]))
    return table(
        ["row", f"before (`{before['src']}`)", "after"],
        [[k, old.get(k, "—"), rows.get(k, "—")] for k in keys],
    ) + note


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=REPO / "src", help="a checkout's src/ to run")
    ap.add_argument("--out", default="scale", help="results/<out>.json/.md")
    ap.add_argument("--compare", type=Path, help="an earlier result JSON: the 'before' column")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--targets", type=int, nargs="*", default=[300, 1000])
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--load-seconds", type=float, default=15)
    ap.add_argument("--on-time-ms", type=float, default=50)
    ap.add_argument("--metrics-gets", type=int, default=5)
    ap.add_argument("--idle-seconds", type=float, default=40)
    ap.add_argument("--quick", action="store_true", help="1 short run of each (harness check)")
    ap.add_argument("--render", action="store_true", help="re-render the .md from the JSON")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        src = os.environ.get("BENCH_SCALE_SRC")
        if src:
            sys.path.insert(0, src)
        cfg, warm, dur, on_time, gets = a.worker
        result = asyncio.run(worker(Path(cfg), float(warm), float(dur), float(on_time), int(gets)))
        import guardian

        result["guardian_src"] = str(Path(guardian.__file__).resolve().parent.parent)
        print(json.dumps(result))
        return 0
    before = json.loads(a.compare.read_text()) if a.compare else None
    if a.render:
        data = json.loads((RESULTS / f"{a.out}.json").read_text())
        data.pop("bench"), data.pop("machine")
        write_results(a.out, data, render(data, before))
        return 0
    if a.quick:
        a.runs, a.warmup, a.load_seconds, a.idle_seconds, a.metrics_gets = 1, 3, 5, 10, 2
    src = a.src.resolve()
    if not (src / "guardian").is_dir():
        raise SystemExit(f"{src} has no guardian package")

    t_all = time.monotonic()
    load: dict[str, list[dict[str, Any]]] = {}
    with Children().scope() as ch:
        port = free_port()
        # The target: its own process, so its CPU is never counted as Guardian's.
        ch.start([PYTHON, str(FAST_SERVER), "--port", str(port)])
        if wait_for(lambda: http_ok(port), 10, 0.05) is None:
            raise SystemExit("fast_server did not come up")
        for n in a.targets:
            for i in range(a.runs):
                print(f"load: {n} targets, run {i + 1}/{a.runs} ...", flush=True)
                r = load_run(src, n, port, a, a.metrics_gets if n == max(a.targets) else 0)
                brief = {k: r[k] for k in ("cpu_percent", "on_time_fraction", "lateness_ms_p99",
                                           "false_failures_total", "incidents_opened")}
                print(f"  {brief}", flush=True)
                load.setdefault(str(n), []).append(r)
        print(f"idle: {a.runs} x guardian run, {a.idle_seconds:.0f} s ...", flush=True)
        idle = idle_runs(src, port, a.runs, a.idle_seconds)
        print(f"  {idle}", flush=True)

    data = {
        "src": str(src),
        "wall_seconds": time.monotonic() - t_all,
        "settings": {"runs": a.runs, "warmup": a.warmup, "load_seconds": a.load_seconds,
                     "on_time_ms": a.on_time_ms, "idle_seconds": a.idle_seconds,
                     "quick": a.quick},
        "load": load,
        "idle": idle,
    }
    md = render(data, before)
    print()
    print(md)
    write_results(a.out, data, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
