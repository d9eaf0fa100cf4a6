"""Guardian against a real ComfyUI: its boot, a SIGKILL and a hang, with README defaults.

Not part of CI: it needs a ComfyUI checkout and a Python environment with its requirements
(CPU torch is enough). Without them it prints "skipped: no ComfyUI" and exits 0, leaving
the committed results alone.

(a) ``boot``: ``python main.py --cpu --listen 127.0.0.1 --port P`` started by the bench;
    seconds from spawn to the first HTTP 200 on ``/system_stats`` (polled every 50 ms).
(b) ``kill``: Guardian (this checkout's runtime, in process) supervises ComfyUI as a
    ``backend = "process"`` target with the README's ComfyUI setup: a ``comfyui`` check
    every 30 s with a 10 s timeout, a ``service`` check every 60 s, recovery defaults
    (cooldown 30, 3 attempts, failure_threshold 3), startup phase on (probe every 1 s). Once
    it is healthy the bench SIGKILLs ComfyUI and measures kill → Guardian's first passing
    ``comfyui`` check of the new process, and the new process's own boot (kill → first 200
    seen by the bench), so "seen after it answered" is Guardian's share. It counts restarts
    started (exactly one expected: no double restart while the new one boots), failed
    starts and incident transitions (an incident opens for the crash; none may escalate).
(c) ``hang``: the same setup; the bench SIGSTOPs ComfyUI (alive, port bound, every request
    times out) and measures stop → restart started → healthy again.

Each Guardian run uses a fresh state directory, so every kill or hang meets the default
policy as a first attempt (no cooldown or backoff left from the previous round).
The load average is recorded with every figure: on a shared machine ComfyUI's boot,
which is CPU-bound (importing torch and its nodes), stretches with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, write_results

from guardian.config.schema import Config
from guardian.core.events import (
    Event,
    IncidentEvent,
    IncidentTransition,
    RecoveryEvent,
    RecoveryKind,
)
from guardian.core.result import CheckResult, Status
from guardian.runtime import Guardian

BOOT_LIMIT = 180.0  # seconds a boot may take before a run counts as failed
HANG_LIMIT = 300.0  # 3 x 30 s checks + 10 s timeout + stop + boot, with room for load


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def stats_ok(port: int, timeout: float = 1.0) -> bool:
    """True when GET /system_stats answers 200 (raw socket: no client library in the way)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /system_stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return s.recv(16)[8:13] == b" 200 "
    except OSError:
        return False


def comfy_argv(python: str, port: int) -> list[str]:
    return [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)]


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- (a) boot


def bench_boot(comfy: Path, python: str, runs: int, logs: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(runs):
        port = free_port()
        load = loadavg()
        log = logs / f"boot{n + 1}.log"
        with open(log, "wb") as fh:
            t0 = time.monotonic()
            p = subprocess.Popen(comfy_argv(python, port), cwd=comfy, stdin=subprocess.DEVNULL,
                                 stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            t_ok = None
            while time.monotonic() - t0 < BOOT_LIMIT and p.poll() is None:
                if stats_ok(port, 0.5):
                    t_ok = time.monotonic()
                    break
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        boot = None if t_ok is None else t_ok - t0
        out.append({"boot_s": boot, "load_before": load, "load_after": loadavg()})
        print(f"  boot {n + 1}/{runs}: {'FAILED' if boot is None else f'{boot:.2f} s'}"
              f"  (load {load})", flush=True)
        time.sleep(2)
    return out


# --------------------------------------------------------------------------- (b), (c)


def guardian_config(tmp: Path, comfy: Path, python: str, port: int) -> Config:
    """The README's ComfyUI target (checks and recovery at their defaults), as a process."""
    url = f"http://127.0.0.1:{port}"
    return Config.model_validate({
        "guardian": {"log_dir": str(tmp / "logs"), "report_dir": str(tmp / "reports"),
                     "state_dir": str(tmp / "state")},
        "api": {"enabled": False},
        "targets": [{
            "name": "comfyui",
            "critical": True,
            "service": {"backend": "process", "command": comfy_argv(python, port),
                        "cwd": str(comfy), "log_file": str(tmp / "comfyui.log")},
            "recovery": {"cooldown": 30, "max_attempts": 3},
            "checks": [
                {"kind": "comfyui", "url": url, "interval": 30, "timeout": 10,
                 "vram_free_min_mb": 1024, "stuck_running_after": 900,
                 "stuck_pending_after": 300},
                {"kind": "service", "interval": 60},
            ],
        }],
    })


class Watch:
    """Guardian's events as (perf_counter, event, pid of the supervised process then)."""

    def __init__(self, g: Guardian) -> None:
        self.g = g
        self.events: list[tuple[float, Event, int | None]] = []
        g.bus.subscribe(self._on)

    def pid(self) -> int | None:
        return self.g.backends["comfyui"].pid  # type: ignore[attr-defined,no-any-return]

    def _on(self, e: Event) -> None:
        self.events.append((time.perf_counter(), e, self.pid()))

    def healthy_after(self, t: float, not_pid: int | None) -> float | None:
        """When the first passing comfyui check of a process other than ``not_pid`` came."""
        for te, e, pid in self.events:
            if (te > t and isinstance(e, CheckResult) and e.kind == "comfyui"
                    and e.status in (Status.OK, Status.DEGRADED)
                    and pid is not None and pid != not_pid):
                return te
        return None

    def recovery(self, t: float, kind: RecoveryKind) -> list[float]:
        return [te for te, e, _ in self.events
                if te > t and isinstance(e, RecoveryEvent) and e.kind is kind]

    def incidents(self, t: float) -> dict[str, int]:
        counts = {k.value: 0 for k in IncidentTransition}
        for te, e, _ in self.events:
            if te > t and isinstance(e, IncidentEvent):
                counts[e.transition.value] += 1
        return counts

    def startup_failures(self, t: float) -> int:
        return sum(1 for te, e, _ in self.events
                   if te > t and isinstance(e, CheckResult) and e.startup
                   and e.status is Status.FAILED)


async def until(pred: Callable[[], Any], limit: float, period: float = 0.05) -> Any:
    """Poll ``pred`` until truthy (its value) or ``limit`` s pass (None)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(period)
    return None


async def answered(port: int, limit: float) -> float | None:
    """perf_counter of the first 200 on /system_stats seen by the bench (off the loop)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await loop.run_in_executor(None, stats_ok, port, 0.5):
            return time.perf_counter()
        await asyncio.sleep(0.05)
    return None


async def guardian_round(comfy: Path, python: str, fault: str) -> dict[str, Any]:
    """One fresh Guardian: boot under it, then ``fault`` (kill|hang), then healthy again."""
    with tempfile.TemporaryDirectory(prefix=f"bench-realcomfy-{fault}-") as d:
        tmp, port = Path(d), free_port()
        g = Guardian(guardian_config(tmp, comfy, python, port))
        w = Watch(g)
        t_start = time.perf_counter()
        await g.start()
        r: dict[str, Any] = {"fault": fault}
        try:
            t_first = await until(lambda: w.healthy_after(t_start, None), BOOT_LIMIT)
            if t_first is None:
                return {**r, "error": "never healthy under Guardian"}
            r["guardian_start_to_healthy_s"] = t_first - t_start
            await asyncio.sleep(3.0)
            old = w.pid()
            assert old is not None
            r["load_before"] = loadavg()
            t0 = time.perf_counter()
            os.kill(old, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
            limit = BOOT_LIMIT if fault == "kill" else HANG_LIMIT
            if fault == "hang":
                t_restart = await until(lambda: (w.recovery(t0, RecoveryKind.RESTART_STARTED)
                                                 or [None])[0], limit)
                r["fault_to_restart_s"] = None if t_restart is None else t_restart - t0
            t_ans = await answered(port, limit) if fault == "kill" else None
            t_ok = await until(lambda: w.healthy_after(t0, old), limit)
            if t_ok is None:
                return {**r, "error": f"not healthy within {limit:.0f} s after the {fault}"}
            r["fault_to_healthy_s"] = t_ok - t0
            if t_ans is not None:
                r["fault_to_answering_s"] = t_ans - t0
                r["seen_after_answering_s"] = t_ok - t_ans
            r["load_after"] = loadavg()
            await asyncio.sleep(5.0)  # a second restart right after the boot would show here
            r["restarts_started"] = len(w.recovery(t0, RecoveryKind.RESTART_STARTED))
            r["restarts_failed"] = len(w.recovery(t0, RecoveryKind.RESTART_FAILED))
            r["incidents"] = w.incidents(t0)
            r["startup_failures_ignored"] = w.startup_failures(t0)
            return r
        finally:
            await g.stop()
            pid = w.pid()
            if pid is not None:  # never leave a stopped ComfyUI behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- report


def fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} s"


def spread(rows: list[dict[str, Any]], key: str) -> dict[str, float | int | None]:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return {"n": len(vals), "median": med(vals), "max": max(vals) if vals else None,
            "min": min(vals) if vals else None}


def report(boot: list[dict[str, Any]], kills: list[dict[str, Any]],
           hangs: list[dict[str, Any]], version: str) -> tuple[dict[str, Any], str]:
    for r in hangs:
        if r.get("fault_to_restart_s") is not None and r.get("fault_to_healthy_s") is not None:
            r["restart_to_healthy_s"] = r["fault_to_healthy_s"] - r["fault_to_restart_s"]
    b = spread(boot, "boot_s")
    lines = [
        f"ComfyUI {version}, `--cpu`, no custom nodes, no models; Guardian with the README's "
        "ComfyUI target (comfyui check 30 s / 10 s timeout, service check 60 s, recovery "
        "defaults, startup phase on: probe 1 s). Each Guardian run starts from a fresh store.",
        "",
        "| figure | runs | median | max | load (1/5/15 min) before each run |",
        "| --- | --- | --- | --- | --- |",
        f"| (a) ComfyUI boot: spawn → first 200 on /system_stats | {b['n']} | {fmt(b['median'])}"
        f" | {fmt(b['max'])} | {'; '.join(r['load_before'] for r in boot)} |",
    ]
    ok_k = [r for r in kills if "error" not in r]
    ok_h = [r for r in hangs if "error" not in r]
    for label, rows, key in [
        ("Guardian start → comfyui check passing", ok_k + ok_h, "guardian_start_to_healthy_s"),
        ("(b) SIGKILL → new ComfyUI answering", ok_k, "fault_to_answering_s"),
        ("(b) SIGKILL → Guardian sees it healthy", ok_k, "fault_to_healthy_s"),
        ("(b) … of which after it answered (Guardian's share)", ok_k, "seen_after_answering_s"),
        ("(c) SIGSTOP (hang) → restart started", ok_h, "fault_to_restart_s"),
        ("(c) … restart started → healthy (stop + boot + probe)", ok_h, "restart_to_healthy_s"),
        ("(c) SIGSTOP (hang) → Guardian sees it healthy", ok_h, "fault_to_healthy_s"),
    ]:
        s = spread(rows, key)
        loads = "; ".join(r.get("load_before", "—") for r in rows) if label[1] in "bc" else "—"
        lines.append(f"| {label} | {s['n']} | {fmt(s['median'])} | {fmt(s['max'])} | {loads} |")

    def tally(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no run"
        starts = [r["restarts_started"] for r in rows]
        failed = sum(r["restarts_failed"] for r in rows)
        opened = sum(r["incidents"]["opened"] for r in rows)
        esc = sum(r["incidents"]["escalated"] + r["incidents"]["gave_up"] for r in rows)
        ign = sum(r["startup_failures_ignored"] for r in rows)
        return (f"restarts started per run {starts} (1 expected), failed starts {failed}, "
                f"incidents opened {opened}, escalated {esc}, startup-phase failures "
                f"ignored {ign}")

    errors = [r["error"] for r in kills + hangs if "error" in r]
    lines += [
        "",
        f"SIGKILL runs: {tally(ok_k)}.",
        f"Hang runs: {tally(ok_h)}.",
        f"Failed runs: {len(errors)}{': ' + '; '.join(errors) if errors else ''}.",
        "",
        "The machine is shared (2 cores, several other jobs): the load averages above are "
        "part of every figure, and ComfyUI's CPU-bound boot stretches with them. The hang "
        "figure is mostly the check policy: three failed checks 30 s apart with a 10 s "
        "timeout, i.e. between (3-1)x30+10 = 70 s and 3x30+10 = 100 s after the hang "
        "depending on where it falls on the check grid (here 3 s after a passing check: "
        "near the upper bound), then stop (SIGTERM, SIGCONT) and a boot.",
    ]
    data = {"comfyui_version": version, "boot": boot, "kill": kills, "hang": hangs,
            "summary": {"boot_s": b,
                        "kill_to_healthy_s": spread(ok_k, "fault_to_healthy_s"),
                        "kill_to_answering_s": spread(ok_k, "fault_to_answering_s"),
                        "seen_after_answering_s": spread(ok_k, "seen_after_answering_s"),
                        "hang_to_restart_s": spread(ok_h, "fault_to_restart_s"),
                        "hang_to_healthy_s": spread(ok_h, "fault_to_healthy_s")}}
    return data, "\n".join(lines)


def comfy_version(comfy: Path) -> str:
    try:
        for line in (comfy / "comfyui_version.py").read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "unknown"


async def amain(a: argparse.Namespace, comfy: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-realcomfy-boot-") as d:
        print("(a) boot", flush=True)
        boot = bench_boot(comfy, a.python, a.boot_runs, Path(d)) if a.boot_runs else []
    kills: list[dict[str, Any]] = []
    hangs: list[dict[str, Any]] = []
    for fault, runs, out in (("kill", a.kill_runs, kills), ("hang", a.hang_runs, hangs)):
        print(f"({'b' if fault == 'kill' else 'c'}) {fault}", flush=True)
        for n in range(runs):
            r = await guardian_round(comfy, a.python, fault)
            out.append(r)
            print(f"  {fault} {n + 1}/{runs}: {r}", flush=True)
    data, md = report(boot, kills, hangs, comfy_version(comfy))
    print()
    print(md)
    write_results("real_comfyui", data, md)
    failed = [r for r in kills + hangs if "error" in r] or [r for r in boot if r["boot_s"] is None]
    return 1 if failed else 0


def rerender(path: Path) -> int:
    """The Markdown of an earlier run, from its JSON (its machine line kept)."""
    data = json.loads(path.read_text())
    _, md = report(data["boot"], data["kill"], data["hang"], data["comfyui_version"])
    m = data["machine"]
    desc = (f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, "
            f"Python {m['python']}")
    path.with_suffix(".md").write_text(
        f"# {data['bench']}\n\nMachine: {desc}. Run {m['date']}.\n\n{md}\n")
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui-dir", type=Path, default=None,
                    help="a ComfyUI checkout (holds main.py)")
    ap.add_argument("--python", default=None,
                    help="the Python that has ComfyUI's requirements (default: this one)")
    ap.add_argument("--boot-runs", type=int, default=3)
    ap.add_argument("--kill-runs", type=int, default=3)
    ap.add_argument("--hang-runs", type=int, default=3)
    ap.add_argument("--from-json", type=Path, default=None,
                    help="re-render the .md of an earlier run from its .json, measuring nothing")
    a = ap.parse_args(argv)
    if a.from_json is not None:
        return rerender(a.from_json)
    comfy = a.comfyui_dir
    if comfy is None or not (comfy / "main.py").is_file():
        print("skipped: no ComfyUI (pass --comfyui-dir DIR holding main.py)")
        return 0
    a.python = a.python or sys.executable
    if not Path(a.python).exists():
        print(f"skipped: no ComfyUI Python at {a.python}")
        return 0
    return asyncio.run(amain(a, comfy.resolve()))


if __name__ == "__main__":
    sys.exit(main())
