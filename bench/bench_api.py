"""Load-test Guardian's API with wrk: /api/health and /metrics, max rate and ~1000 req/s.

Guardian's API runs in a subprocess (real uvicorn, a State holding ~10 targets with full
histories); wrk loads it from a second process. Latencies come from wrk's own histogram
through a small Lua ``done`` hook. Paced runs use wrk's ``delay()`` hook (wrk has no fixed
rate mode): ``connections`` each wait ``connections / rate`` seconds between requests.

    python bench/bench_api.py                 # 10 s per run, prints a table
    python bench/bench_api.py --duration 5 --rate 1000 --json bench/results/api.json

Target: p99 <= 5 ms at 1000 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

LUA = r"""
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
function delay() return delay_ms end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"socket_errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# --------------------------------------------------------------------------- server side


def build_view() -> Any:
    """A StaticView with 10 targets, every check with 60 results of history."""
    from guardian.api.context import StaticView
    from guardian.config.schema import Config
    from guardian.core.result import CheckResult, Status
    from guardian.core.state import State

    targets: list[dict[str, Any]] = []
    for i in range(8):
        targets.append(
            {
                "name": f"svc{i}",
                "service": {"name": f"Service{i}"},
                "checks": [
                    {"kind": "http", "url": f"http://127.0.0.1:{3000 + i}/api/health"},
                    {"kind": "service"},
                ],
            }
        )
    targets.append({"name": "comfyui", "service": {"name": "OrchestratorComfyUI"},
                    "checks": [{"kind": "comfyui"}, {"kind": "service"}]})
    targets.append({"name": "system", "critical": False,
                    "checks": [{"kind": "disk"}, {"kind": "memory"}, {"kind": "gpu"}]})
    config = Config.model_validate({"targets": targets})
    state = State(config)
    values: dict[str, dict[str, Any]] = {
        "http": {"status_code": 200, "response_ms": 3.2},
        "service": {"state": "running", "pid": 1234, "restarts": 0},
        "comfyui": {"online": True, "comfyui_version": "0.3.40", "device_type.0": "cuda",
                    "device_name.0": "cuda:0 RTX 4090", "vram_free_mb.0": 20000.0,
                    "vram_total_mb.0": 24564.0, "queue_running": 1, "queue_pending": 0},
        "disk": {"free_gb./": 120.0, "total_gb./": 500.0, "free_percent./": 24.0},
        "memory": {"available_mb": 9000.0, "total_mb": 32768.0, "used_percent": 72.5},
        "gpu": {"gpu0.util_percent": 40, "gpu0.vram_used_mb": 4500.0,
                "gpu0.vram_total_mb": 24564.0, "gpu0.temp_c": 60},
    }
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    for n in range(60):
        at = t0 + timedelta(seconds=30 * n)
        for t in config.targets:
            for c in t.checks:
                state.record(CheckResult(t.name, c.check_name, c.kind, Status.OK, "fine",
                                         values[c.kind], at, at + timedelta(milliseconds=5),
                                         0.005))
    recovery = {t.name: {"attempts": 0, "last_restart": None, "breaker_open": False,
                         "consecutive_failures": 0} for t in config.targets if t.service}
    return StaticView(config=config, state=state, recovery=recovery)


async def serve_forever() -> None:
    from guardian.api.app import create_app, serve

    server = await serve(create_app(build_view()), "127.0.0.1", 0)
    print(f"PORT {server.port}", flush=True)
    await asyncio.Event().wait()


# --------------------------------------------------------------------------- client side


def run_wrk(
    url: str, duration: int, connections: int, delay_ms: int, script: Path
) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "2s",
            "-s", str(script), url]
    env = {**os.environ, "WRK_DELAY_MS": str(delay_ms)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    raw = json.loads(line.removeprefix("RESULT "))
    seconds = raw["duration_us"] / 1e6
    return {
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "requests": raw["requests"],
        "errors": raw["socket_errors"] + raw["non2xx"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--rate", type=int, default=1000, help="paced target req/s")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write results here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_forever())
        return 0
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                              text=True, env=env)
    results: list[dict[str, Any]] = []
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        if not first.startswith("PORT "):
            raise RuntimeError(f"server did not start: {first!r}")
        base = f"http://127.0.0.1:{int(first.split()[1])}"
        # Each connection waits this long between requests; wrk's delay() takes whole ms.
        delay_ms = max(0, round(args.connections * 1000 / args.rate) - 1)
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "report.lua"
            script.write_text(LUA)
            run_wrk(base + "/api/health", 2, 4, 0, script)  # warm-up
            for path in ("/api/health", "/metrics"):
                for mode, delay in (("paced", delay_ms), ("max", 0)):
                    r = run_wrk(base + path, args.duration, args.connections, delay, script)
                    results.append({"path": path, "mode": mode, **r})
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(f"{'endpoint':<12} {'mode':<6} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'errors':>6}")
    for r in results:
        print(f"{r['path']:<12} {r['mode']:<6} {r['rps']:>8.0f} {r['p50_ms']:>7.2f} "
              f"{r['p90_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['max_ms']:>7.2f} {r['errors']:>6}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"cpus": os.cpu_count(), "python": platform.python_version(),
                "duration_s": args.duration, "connections": args.connections,
                "paced_rate": args.rate, "when": datetime.now(UTC).isoformat()}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
