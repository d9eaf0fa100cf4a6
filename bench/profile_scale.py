"""Where Guardian's CPU goes at N http targets at 1 s: py-spy over one bench_scale worker.

Needs ``pip install py-spy`` (not a dependency). Runs ``bench_scale.py --worker`` on N
targets against ``testkit/fast_server.py`` under ``py-spy record --nonblocking -f raw``, then sorts
every sample into one area (the first area, in the order below, with a frame in the
sample's stack) and writes ``results/<out>.md``; the raw stacks (~1 MB, for a flame graph)
go to ``--raw`` (``/tmp/<out>.txt``). ``--src PATH`` profiles another checkout;
``--from-raw FILE`` only re-sorts a recording.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_DIR,
    FAST_SERVER,
    PYTHON,
    REPO,
    RESULTS,
    Children,
    free_port,
    http_ok,
    wait_for,
)
from bench_scale import load_config, src_env

# (area, frames that put a sample there); the first area whose frame is in the stack wins.
AREAS: list[tuple[str, list[str]]] = [
    ("start-up (imports, config, Guardian.start)",
     ["<frozen importlib._bootstrap>", "Guardian.start", "load_config", "Guardian.__init__"]),
    ("API thread (uvicorn, /metrics)", ["ApiServer._serve_thread"]),
    ("http probe (checks/http.py, httpwire.py)", ["HttpCheck.run"]),
    ("metrics listener (api/metrics.py)", ["Metrics.on_event"]),
    ("uptime recording (uptime.py)", ["UptimeStore.observe"]),
    ("incident tracker and its store writes", ["IncidentTracker._on_event"]),
    ("state and event bus (state.py, events.py)", ["State.record"]),
    ("redaction of results (redact.py)", ["redact (", "redact_value ("]),
    ("logging", ["Logger."]),
    ("engine: timeout wrapper (asyncio.wait, 2 tasks per run)", ["Engine._run_with_timeout"]),
    ("engine: sleep and startup wake (asyncio.wait, 2 tasks)", ["Engine._sleep"]),
    ("engine: rest of execute/_record/_loop", ["Engine."]),
    ("timer callbacks (sleep wake-ups, timeouts)",
     ["_set_result_unless_cancelled", "Timeout._on_timeout", "TimerHandle"]),
    ("socket reads (transport _read_ready)", ["_read_ready"]),
    ("event loop itself (select, _run_once, task steps)", ["BaseEventLoop._run_once"]),
]


def areas(raw: Path) -> tuple[dict[str, int], int]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = stack.split(";")
        area = next((name for name, keys in AREAS
                     if any(k in f for k in keys for f in frames)), "other")
        counts[area] += int(n)
    return {name: counts[name] for name, _ in [*AREAS, ("other", [])]}, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--src", type=Path, default=REPO / "src")
    ap.add_argument("--out", default="scale_profile")
    ap.add_argument("--raw", type=Path, help="where the raw stacks go (/tmp/<out>.txt)")
    ap.add_argument("--from-raw", type=Path, help="sort this recording, record nothing")
    ap.add_argument("--note", default="", help="a line about the run for the .md")
    a = ap.parse_args()
    raw = a.from_raw or a.raw or Path(tempfile.gettempdir()) / f"{a.out}.txt"
    if a.from_raw is None:
        record(a, raw)
    counts, total = areas(raw)
    lines = [f"# {a.out}", "",
             f"py-spy, {total} samples, {a.targets} http targets at 1 s for 5 + {a.seconds:g} s "
             f"(`{a.src}`); start-up is its own row. {a.note}".rstrip(), "",
             "| area | share of samples |", "|---|---|"]
    lines += [f"| {k} | {100 * v / max(1, total):.1f} % |" for k, v in counts.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"raw stacks: {raw}")
    return 0


def record(a: argparse.Namespace, raw: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    with Children().scope() as ch, tempfile.TemporaryDirectory(prefix="bench-prof-") as d:
        port = free_port()
        ch.start([PYTHON, str(FAST_SERVER), "--port", str(port)])
        if wait_for(lambda: http_ok(port), 10, 0.05) is None:
            raise SystemExit("fast_server did not come up")
        cfg = Path(d) / "guardian.toml"
        cfg.write_text(load_config(Path(d), port, a.targets, free_port()))
        subprocess.run(
            [spy, "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", str(raw), "--",
             PYTHON, str(BENCH_DIR / "bench_scale.py"), "--worker", str(cfg), "5",
             str(a.seconds), "0.05", "0"],
            env=src_env(a.src.resolve()), check=True, stdout=subprocess.DEVNULL,
            timeout=a.seconds + 180,
        )


if __name__ == "__main__":
    sys.exit(main())
