"""Supervised processes across a Guardian restart: exit detection and log rotation.

1. **Adopted-exit detection.** A process a previous Guardian started is not our child,
   so ``waitpid`` cannot see it; Guardian watches it through a pidfd. Here an orphan
   (started by a helper that exits at once, so it is reparented away from us, as after
   a SIGKILLed Guardian) is adopted by a ``ProcessBackend`` from its record, SIGKILLed,
   and the time until the backend's exit listener runs is taken. The same for a child
   the backend spawned itself, for comparison.
2. **Lines lost across copy-truncate rotation.** A writer numbers its lines and writes
   them as fast as it can into an ``O_APPEND`` log (one ``write`` per line, or ``print``
   under ``PYTHONUNBUFFERED`` as a supervised Python child does: two writes per line);
   the log is rotated by ``SupervisedLog.rotate_if_needed`` every few milliseconds, far
   more often than Guardian does, and every rotated copy is read before the next one.
   Missing sequence numbers are lines lost. Both ways are measured: cutting the copied
   blocks off the file's head (fallocate collapse range: what Guardian does on ext4/XFS)
   and plain copy-truncate (its fallback), which loses what lands between the copy's last
   read and the truncate.

    python bench/bench_lifecycle.py [--kills 20] [--runs 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import PYTHON, pct, summary, table, write_results

from guardian.services.process.backend import ProcessBackend
from guardian.services.process.identity import identify
from guardian.services.process.logfile import SupervisedLog, rotated_name
from guardian.services.process.record import TOKEN_ENV

SLEEP = shutil.which("sleep") or "sleep"


# --------------------------------------------------------------------------- exits


def spawn_orphan(token: str) -> int:
    """``sleep 600`` carrying ``token``, started by a helper that exits at once."""
    helper = (
        "import os, subprocess, sys; "
        f"p = subprocess.Popen([{SLEEP!r}, '600'], start_new_session=True, "
        f"env={{**os.environ, {TOKEN_ENV!r}: {token!r}}}, "
        "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(p.pid)"
    )
    out = subprocess.run([PYTHON, "-c", helper], check=True, capture_output=True, timeout=30)
    return int(out.stdout)


async def one_kill(tmp: Path, adopted: bool, i: int) -> float:
    """Seconds from SIGKILL to the backend's exit listener."""
    rec = tmp / f"rec-{i}.json"
    if adopted:
        token = f"bench:{i:08x}"
        pid = spawn_orphan(token)
        ident = identify(pid)
        assert ident is not None
        rec.write_text(json.dumps({"token": token, "intent_time": time.time() - 5,
                                   "argv": [SLEEP, "600"], **ident.to_json()}))
    backend = ProcessBackend("bench", [SLEEP, "600"], log_file=tmp / "out.log", record=rec,
                             stop_timeout=2)
    seen: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    backend.add_exit_listener(lambda _code: seen.done() or seen.set_result(time.perf_counter()))
    try:
        await backend.start()
        assert backend.adopted is adopted, (backend.start_outcome, adopted)
        pid = backend.pid
        assert pid is not None
        await asyncio.sleep(0.05)  # settle: the loop idle, as Guardian's mostly is
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        t1 = await asyncio.wait_for(seen, 10)
        return t1 - t0
    finally:
        await backend.aclose()


async def exit_runs(kills: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("adopted", "child"):
        per_run = []
        for r in range(runs):
            with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as d:
                vals = [await one_kill(Path(d), kind == "adopted", r * 1000 + i)
                        for i in range(kills)]
            per_run.append(vals)
            print(f"  {kind:8} run {r + 1}: median {statistics.median(vals) * 1000:.2f} ms, "
                  f"p95 {pct(vals, 95) * 1000:.2f} ms", flush=True)
        out[kind] = {
            "runs": [summary(v) for v in per_run],
            "median_of_medians_s": statistics.median(statistics.median(v) for v in per_run),
            "median_of_p95_s": statistics.median(pct(v, 95) for v in per_run),
            "max_s": max(max(v) for v in per_run),
        }
    return out


# --------------------------------------------------------------------------- rotation

WRITERS = {
    # one write() per line, as fast as Python can issue them
    "os.write": "import os, sys\nn = int(sys.argv[1])\nfor i in range(n):\n"
                "    os.write(1, b'%d\\n' % i)\n",
    # what a supervised Python child does: PYTHONUNBUFFERED print = two writes per line
    "print": "import sys\nn = int(sys.argv[1])\nfor i in range(n):\n    print(i)\n",
}


def rotation_run(writer: str, method: str, seconds: float, max_bytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rotate-") as d:
        path = Path(d) / "out.log"
        log = SupervisedLog(path, max_bytes, backups=1)
        if method == "copy-truncate":
            log.collapse = False  # what a filesystem without collapse range gets
        fd = log.open_for_child()
        n = 50_000_000  # more than it can write in `seconds`; killed at the end
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([PYTHON, "-c", WRITERS[writer], str(n)], stdout=fd,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        os.close(fd)
        chunks: list[bytes] = []
        rotations = 0
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                if log.rotate_if_needed():
                    rotations += 1
                    chunks.append(rotated_name(path, 1).read_bytes())
                time.sleep(0.002)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        chunks.append(path.read_bytes())
        used = "collapse" if log.collapse else "copy-truncate"
    # The backups and the file, oldest first, are the log: a line cut at a block edge
    # continues in the next file. Where copy-truncate lost the end of a line, its head
    # glues onto the next file's first line: a number that breaks the order is counted
    # as a broken line, not as a line.
    stream = b"".join(chunks)
    complete = stream[: stream.rfind(b"\n")]  # the writer was killed mid-line
    top = int(complete.rsplit(b"\n", 1)[-1])  # its last line: it wrote 0..top
    kept: list[int] = []
    broken = duplicates = 0
    for raw in complete.split(b"\n"):
        value = int(raw) if raw.isdigit() else -1
        if kept and value == kept[-1]:
            duplicates += 1
        elif 0 <= value <= top and (not kept or value > kept[-1]):
            kept.append(value)
        elif raw:
            broken += 1
    lost_at: list[int] = []  # how many lines went missing at each gap
    prev = -1
    for value in kept:
        if value != prev + 1:
            lost_at.append(value - prev - 1)
        prev = value
    missing = (top + 1) - len(kept)
    return {
        "writer": writer,
        "method": used,
        "lines_written": top + 1,
        "bytes_per_s": sum(len(c) for c in chunks) / seconds,
        "rotations": rotations,
        "lines_lost": missing,
        "duplicates": duplicates,
        "broken_lines": broken,
        "rotations_with_loss": len(lost_at),
        "max_lost_at_one_rotation": max(lost_at, default=0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="per rotation run")
    ap.add_argument("--max-bytes", type=int, default=256 * 1024)
    a = ap.parse_args()
    if not hasattr(os, "pidfd_open"):
        print("no pidfd on this platform: the exit watcher polls (50 ms)")

    load_before = os.getloadavg()
    print(f"exit detection: {a.kills} SIGKILLs x {a.runs} runs", flush=True)
    exits = asyncio.run(exit_runs(a.kills, a.runs))

    print(f"rotation: {a.runs} runs x {a.seconds:g} s per writer, limit {a.max_bytes} B",
          flush=True)
    rot: dict[str, list[dict[str, Any]]] = {}
    for method in ("collapse", "copy-truncate"):
        for writer in WRITERS:
            key = f"{method}/{writer}"
            rot[key] = []
            for r in range(a.runs):
                res = rotation_run(writer, method, a.seconds, a.max_bytes)
                rot[key].append(res)
                print(f"  {key:22} run {r + 1} ({res['method']}): {res['lines_written']} "
                      f"lines, {res['rotations']} rotations, lost {res['lines_lost']}, "
                      f"dup {res['duplicates']}, broken {res['broken_lines']}", flush=True)

    rows = []
    for kind, label in (("adopted", "adopted (not our child), pidfd"),
                        ("child", "own child, pidfd + waitpid")):
        e = exits[kind]
        rows.append([label, a.kills * a.runs,
                     f"{e['median_of_medians_s'] * 1000:.2f} ms",
                     f"{e['median_of_p95_s'] * 1000:.2f} ms", f"{e['max_s'] * 1000:.2f} ms"])
    t1 = table(["process", "kills", "median", "p95", "max"], rows)
    def gap_ms(runs: list[dict[str, Any]]) -> float:
        """The longest loss, as milliseconds of the writer's output."""
        return max(r["max_lost_at_one_rotation"] / max(1, r["lines_written"]) * a.seconds
                   for r in runs) * 1000

    rows2 = []
    for key, runs in rot.items():
        def med(field: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[field] for r in runs)

        lost = [r["lines_lost"] for r in runs]
        per_million = [1e6 * r["lines_lost"] / max(1, r["lines_written"]) for r in runs]
        method = "/".join(sorted({r["method"] for r in runs}))
        rows2.append([
            method, key.split("/", 1)[1], f"{med('lines_written'):,.0f}",
            f"{med('bytes_per_s') / 1e6:.1f}", f"{med('rotations'):.0f}",
            f"{statistics.median(lost):.0f} (runs: {', '.join(map(str, lost))})",
            f"{statistics.median(per_million):.1f}",
            f"{max(r['max_lost_at_one_rotation'] for r in runs)} ({gap_ms(runs):.1f} ms)",
            f"{max(r['duplicates'] for r in runs)}",
            f"{max(r['broken_lines'] for r in runs)}",
        ])
    t2 = table(["rotation", "writer", "lines/run", "MB/s", "rotations/run",
                "lines lost (median)", "lost per million", "most lost at one rotation (of output)",
                "duplicates", "broken lines"], rows2)
    load = f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    md = (
        f"Load average (1 min) on this machine: {load}; the figures move with it.\n\n"
        "## Exit of a supervised process, SIGKILL to Guardian's exit listener\n\n"
        f"Median of {a.runs} runs' medians and p95s, {a.kills} kills each.\n\n{t1}\n\n"
        "## Lines lost across rotation\n\n"
        "`collapse`: copy the whole blocks, then `fallocate(FALLOC_FL_COLLAPSE_RANGE)` "
        "cuts them off the file's head under the inode lock appends take too (ext4, XFS; "
        "what Guardian does where the filesystem allows). `copy-truncate`: copy to the end, "
        "then truncate (the fallback elsewhere); what lands in between is lost.\n\n"
        f"A writer as fast as it can go, the log rotated at {a.max_bytes // 1024} KiB, "
        f"checked every 2 ms (Guardian checks every 0.05-1 s), {a.seconds:g} s per run, "
        f"{a.runs} runs. A `print` line is two writes (text, newline) under "
        "PYTHONUNBUFFERED, so its loss window can also split a line (\"broken lines\").\n\n"
        f"{t2}\n"
    )
    print("\n" + md)
    write_results("lifecycle", {"exit_detection": exits, "rotation": rot,
                                "settings": vars(a),
                                "loadavg_1min": [load_before[0], os.getloadavg()[0]]}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
