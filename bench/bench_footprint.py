"""Guardian's footprint: what each part costs in RSS and import time, and `guardian run`.

Part 1 (parts): each heavy module imported alone in a fresh interpreter (this checkout's
src/ first on the path): RSS growth (VmRSS after - before, in that process) and wall time
of the import. A part's figure includes its own dependencies (starlette includes anyio,
guardian.api.app includes pydantic and starlette), so the rows overlap and do not add up.
FastAPI (with the opentelemetry and pydantic.v1 it pulls in) is no part any more: the API
is Starlette and guardian/api/routing.py; the "heavy" column still reports it, so a
``--before-ref`` from before that change shows it (it needs fastapi installed to run).

Part 1b (layers): the same parts imported one after another in one interpreter, in the
order the run path and then the API load them: what each adds on top of the run path.

Part 2 (run): `python -m guardian run --config X` as a real process, for a minimal config
(one http check, no API) and the shipped `guardian.example.toml` (API on a free port, dirs
in a temp dir): time until the "guardian started" log line, RSS once the first checks ran
(``--settle`` s later), and the heavy packages its ``-X importtime`` log shows imported by
then. Every figure is the median of ``--runs`` (3) fresh processes.

``--before-ref main`` (default) runs the same on ``git archive <ref> src`` in a temp dir
(the same venv), so the result file shows before and after side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    PYTHON,
    REPO,
    Children,
    export_tree,
    free_port,
    table,
    toml_str,
    write_results,
)

# (label, import statement); each runs alone in a fresh interpreter.
PARTS: list[tuple[str, str]] = [
    ("interpreter (baseline)", "pass"),
    ("typer", "import typer"),
    ("click", "import click"),
    ("rich (console, table)", "import rich.console, rich.table"),
    ("pygments (lexers, formatters)", "import pygments.lexers, pygments.formatters"),
    ("httpx (as installed: its CLI too)", "import httpx"),
    ("httpx without httpx._main", "import sys; sys.modules['httpx._main'] = None; import httpx"),
    ("httpx._main (click, rich, pygments)", "import httpx._main"),
    ("pydantic (BaseModel)", "from pydantic import BaseModel"),
    ("starlette (app, routing)", "import starlette.applications, starlette.routing"),
    ("uvicorn (+ httptools protocol)",
     "import uvicorn, uvicorn.protocols.http.httptools_impl"),
    ("prometheus_client", "import prometheus_client"),
    ("psutil", "import psutil"),
    ("pynvml", "import pynvml"),
    ("apprise", "import apprise"),
    ("sqlite3", "import sqlite3"),
    ("guardian.config.schema (every check model)", "import guardian.config.schema"),
    ("guardian.runtime (run path, no API)", "import guardian.runtime"),
    ("guardian.api.app (the API stack)", "import guardian.api.app"),
    ("guardian.cli.main (every command)", "import guardian.cli.main"),
]

# (label, statement) run in this order in ONE fresh interpreter: what each part adds on top
# of what came before, i.e. on top of the run path. Something already imported adds ~0.
LAYERS: list[tuple[str, str]] = [
    ("pydantic (first model built)",
     "from pydantic import BaseModel\nclass M(BaseModel):\n    x: int"),
    ("guardian.config.schema (every check model)", "import guardian.config.schema"),
    ("guardian.runtime (run path, no API)", "import guardian.runtime"),
    ("httpx, no CLI (https checks)",
     "import sys\nif 'httpx' not in sys.modules:\n    sys.modules['httpx._main'] = None\n"
     "import httpx"),
    ("starlette", "import starlette.applications, starlette.routing"),
    ("uvicorn (+ its click CLI)", "import uvicorn, uvicorn.protocols.http.httptools_impl"),
    ("guardian.api.app (models, routes)", "import guardian.api.app"),
    ("prometheus_client (Metrics.registry readers only)", "import prometheus_client"),
    ("guardian.cli.main (typer, rich: other commands)", "import guardian.cli.main"),
    ("apprise (first notification)", "import apprise"),
    ("pynvml (gpu check over NVML)", "import pynvml"),
]

_LAYERS_PROBE = """
import json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
out = []
for stmt in json.loads(sys.argv[1]):
    before = rss()
    exec(compile(stmt, '<layer>', 'exec'), {})
    out.append(rss() - before)
print(json.dumps(out))
"""


def layers(src: Path, runs: int) -> dict[str, Any]:
    stmts = json.dumps([stmt for _, stmt in LAYERS])
    samples = []
    for _ in range(runs):
        out = subprocess.run([PYTHON, "-c", _LAYERS_PROBE, stmts], env=tree_env(src),
                             capture_output=True, text=True, timeout=120, check=True)
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {label: _mib(statistics.median(s[i] for s in samples))
              for i, (label, _) in enumerate(LAYERS)}
    for label, v in result.items():
        print(f"  + {label:45} {v} MiB", flush=True)
    return result


# minimal: one http check, no API; the shipped example as is, and without its API (the
# difference is what the API stack costs).
RUN_CONFIGS = ("minimal", "example", "example, API off")

# Top-level packages reported for `guardian run` (present = imported by then).
HEAVY = ["typer", "click", "rich", "pygments", "httpx", "httpcore", "anyio", "fastapi",
         "starlette", "pydantic", "uvicorn", "prometheus_client", "psutil", "pynvml",
         "apprise", "sqlite3", "opentelemetry"]

_PROBE = """
import json, sys, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
before = rss(); n0 = len(sys.modules); t = time.perf_counter()
exec(compile(sys.argv[1], '<part>', 'exec'))
dt = time.perf_counter() - t
print(json.dumps({"rss": rss() - before, "base": before, "s": dt,
                  "modules": len(sys.modules) - n0}))
"""


def tree_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env.pop("GUARDIAN_CONFIG", None)
    return env


def measure_part(src: Path, stmt: str) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, "-c", _PROBE, stmt], env=tree_env(src), capture_output=True, text=True,
        timeout=120, check=False,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def parts(src: Path, runs: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for label, stmt in PARTS:
        samples = [measure_part(src, stmt) for _ in range(runs)]
        errors = [s["error"] for s in samples if "error" in s]
        result[label] = {
            "stmt": stmt,
            "rss_mib": _mib(median_of(samples, "rss")),
            "base_rss_mib": _mib(median_of(samples, "base")),
            "import_ms": _ms(median_of(samples, "s")),
            "modules": median_of(samples, "modules"),
            "samples": samples,
            **({"error": errors[0]} if errors else {}),
        }
        print(f"  {label:45} {result[label]['rss_mib']} MiB  {result[label]['import_ms']} ms"
              + (f"  ({errors[0]})" if errors else ""), flush=True)
    return result


def _mib(v: float | None) -> float | None:
    return None if v is None else round(v / 1024 / 1024, 1)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


# --------------------------------------------------------------------------- guardian run


def minimal_config(tmp: Path, port: int) -> Path:
    path = tmp / "minimal.toml"
    path.write_text(f"""
[guardian]
log_dir = {toml_str(tmp / "logs")}
state_dir = {toml_str(tmp / "state")}
report_dir = {toml_str(tmp / "reports")}
[api]
enabled = false
[[targets]]
name = "web"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = 30
""")
    return path


def example_env(tmp: Path) -> dict[str, str]:
    """The shipped example config as it is, with its dirs and API port moved aside."""
    return {"GUARDIAN_LOG_DIR": str(tmp / "logs"), "GUARDIAN_STATE_DIR": str(tmp / "state"),
            "GUARDIAN_REPORT_DIR": str(tmp / "reports"), "GUARDIAN_API_PORT": str(free_port())}


def rss_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def imported_packages(importtime_log: str) -> set[str]:
    """Top-level packages named in a ``-X importtime`` log."""
    found = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            found.add(name.split(".", 1)[0].lstrip("_"))
    return found


def run_once(src: Path, config: Path, extra_env: dict[str, str], settle: float,
             workdir: Path) -> dict[str, Any]:
    env = {**tree_env(src), **extra_env}
    log = workdir / f"run-{time.monotonic_ns()}.log"
    argv = [PYTHON, "-X", "importtime", "-m", "guardian", "run", "--config", str(config),
            "--log-format", "json"]
    kids = Children()
    with kids.scope():
        t0 = time.monotonic()
        proc = kids.start(argv, stderr_to=log, env=env, cwd=workdir)
        started = None
        deadline = t0 + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if '"event":"started"' in log.read_text(errors="replace"):
                started = time.monotonic() - t0
                break
            time.sleep(0.02)
        if started is None:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            return {"error": "no 'started' line: " + " | ".join(tail)}
        time.sleep(settle)
        rss = rss_of(proc.pid)
        kids.stop(proc)
    text = log.read_text(errors="replace")
    pkgs = imported_packages(text)
    return {"started_s": started, "rss": rss, "heavy": sorted(p for p in HEAVY if p in pkgs),
            "modules": sum(1 for ln in text.splitlines() if ln.startswith("import time:"))}


def runs_for(src: Path, runs: int, settle: float, port: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in RUN_CONFIGS:
        samples = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="gfp-") as d:
                tmp = Path(d)
                if name == "minimal":
                    cfg, env = minimal_config(tmp, port), {}
                else:
                    cfg, env = REPO / "guardian.example.toml", example_env(tmp)
                    if name == "example, API off":
                        env["GUARDIAN_API_ENABLED"] = "false"
                samples.append(run_once(src, cfg, env, settle, tmp))
        errors = [s["error"] for s in samples if "error" in s]
        ok = [s for s in samples if "error" not in s]
        result[name] = {
            "rss_mib": _mib(median_of(ok, "rss")),
            "started_ms": _ms(median_of(ok, "started_s")),
            "modules": median_of(ok, "modules"),
            "heavy": ok[-1]["heavy"] if ok else [],
            "samples": samples,
            **({"error": errors[0]} if errors else {}),
        }
        r = result[name]
        print(f"  guardian run {name:16} RSS {r['rss_mib']} MiB, started after "
              f"{r['started_ms']} ms, {r['modules']} modules; heavy: {', '.join(r['heavy'])}"
              + (f"  ({errors[0]})" if errors else ""), flush=True)
    return result


# --------------------------------------------------------------------------- report


def _delta(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{b - a:+.1f}"


def markdown(data: dict[str, Any]) -> str:
    trees = data["trees"]
    names = list(trees)
    lines = [f"Medians of {data['runs']} fresh processes each. Trees: "
             + ", ".join(f"**{n}** = {trees[n]['what']}" for n in names) + ".", ""]
    lines += ["## `guardian run`", "",
              f"RSS {data['settle']:g} s after the \"guardian started\" line (first checks "
              "run); start = spawn to that line; heavy = packages imported by then.", ""]
    rows = []
    for cfg in RUN_CONFIGS:
        for n in names:
            r = trees[n]["run"][cfg]
            rows.append([cfg, n, r["rss_mib"], r["started_ms"], r["modules"],
                         ", ".join(r["heavy"]) or "—"])
    lines.append(table(["config", "tree", "RSS MiB", "start ms", "modules", "heavy packages"],
                       rows))
    lines += ["", "## What each part adds on top of the run path", "",
              "One fresh interpreter imports these in this order; each row is the RSS it "
              "added (MiB). A part already imported by an earlier row adds ~0, so the "
              "difference between the trees shows where the cost moved.", ""]
    rows = [[label] + [trees[n]["layers"].get(label) for n in names] for label, _ in LAYERS]
    lines.append(table(["part (in this order)"] + [f"{n} +MiB" for n in names], rows))
    lines += ["", "## Parts, each alone in a fresh interpreter", "",
              "RSS growth and import time of the import alone (its dependencies included, so "
              "rows overlap).", ""]
    rows = []
    for label, _ in PARTS:
        row: list[Any] = [label]
        for n in names:
            p = trees[n]["parts"][label]
            row += [p.get("rss_mib"), p.get("import_ms")]
        if len(names) == 2:
            row.append(_delta(trees[names[0]]["parts"][label].get("rss_mib"),
                              trees[names[1]]["parts"][label].get("rss_mib")))
        rows.append(row)
    headers = ["part"] + [h for n in names for h in (f"{n} MiB", f"{n} ms")]
    if len(names) == 2:
        headers.append("Δ MiB")
    lines.append(table(headers, rows))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=6.0,
                    help="seconds after 'started' before RSS is read (past the first checks"
                         " and the API's start on a loaded machine)")
    ap.add_argument("--before-ref", default="main",
                    help="git ref measured as 'before' ('' to skip)")
    ap.add_argument("--skip-parts", action="store_true")
    args = ap.parse_args()

    port = free_port()  # nothing listens: the minimal check fails fast with "refused"
    data: dict[str, Any] = {"runs": args.runs, "settle": args.settle, "trees": {}}
    with tempfile.TemporaryDirectory(prefix="gfp-tree-") as d:
        trees: list[tuple[str, str, Path]] = []
        if args.before_ref:
            trees.append(("before", f"`{args.before_ref}`", export_tree(args.before_ref,
                                                                        Path(d))))
        trees.append(("after", "this checkout", REPO / "src"))
        for name, what, src in trees:
            print(f"{name} ({what}):", flush=True)
            entry: dict[str, Any] = {"what": what, "run": runs_for(src, args.runs,
                                                                   args.settle, port)}
            entry["parts"] = {} if args.skip_parts else parts(src, args.runs)
            entry["layers"] = {} if args.skip_parts else layers(src, args.runs)
            data["trees"][name] = entry
    if args.skip_parts:
        print(markdown_run_only(data))
        return
    md = markdown(data)
    print("\n" + md)
    write_results("footprint", data, md)


def markdown_run_only(data: dict[str, Any]) -> str:
    return "\n".join(
        f"{n} {cfg}: {t['run'][cfg]['rss_mib']} MiB, {t['run'][cfg]['started_ms']} ms, "
        f"heavy {t['run'][cfg]['heavy']}"
        for n, t in data["trees"].items() for cfg in RUN_CONFIGS
    )


if __name__ == "__main__":
    main()
