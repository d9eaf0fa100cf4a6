"""The ComfyUI queue journal (issue 20): what a restart loses, how fresh the journal is, what
it costs, how long a restore takes.

* ``kills``: the whole runtime supervising a real simulator process; each cycle queues 1
  long prompt (running) + 10 pending, waits until they are journaled, SIGKILLs the
  simulator and counts the prompts that never finish after Guardian's restart. Before = the
  journal disabled (``[targets.queue] enabled = false``, what every restart did until now),
  after = enabled. ``restarts``: the same, but ``guardian restart`` (recovery's manual
  restart) right after the prompts are queued, without waiting for the journal: the last
  ``/queue`` read every restart awaits is what journals them.
* ``staleness``: a queue change (``POST /prompt`` answered) to the prompt in the journal's
  store, over the websocket's status broadcast and one ``/queue`` read; p50/p99.
* ``cpu``: this process's CPU (the journal's; the simulator is another process) over a
  window with an idle queue, a busy-but-unchanged queue (one long prompt running), and
  1000 pending prompts that do not change; plus the CPU of one fallback read of the
  1000-prompt queue, amortised over ``fallback_interval``.
* ``restore``: 100 journaled prompts re-submitted to a restarted simulator.

Results go to results/queue.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import httpx
from _common import free_port, http_ok, pct, table, write_results

from guardian.config.load import load_config
from guardian.config.schema import QueueJournalConfig
from guardian.core.clock import SystemClock
from guardian.core.events import Event, RecoveryEvent, RecoveryKind
from guardian.demo.comfyui.prompts import job_prompt
from guardian.journal.follower import TargetJournal
from guardian.journal.restore import RestoreOutcome
from guardian.journal.store import JournalStore
from guardian.runtime import Guardian
from guardian.store.db import Database


async def poll(predicate: Any, step: float = 0.01, timeout: float = 120) -> None:
    """Until ``predicate()`` holds (polling: what is measured is elsewhere)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench: condition not reached")
        await asyncio.sleep(step)


def sim_argv(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "guardian.demo.comfyui.server", "--port", str(port),
            "--device", "cpu", "--exec-time", "0.01", *extra]


def start_sim(port: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(sim_argv(port, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not http_ok(port) and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def body(seconds: float, prompt_id: str | None = None) -> dict[str, Any]:
    prompt_id = prompt_id or str(uuid.uuid4())
    return {"prompt": job_prompt("sleep", seconds, color=hash(prompt_id) % 0xFFFFFF),
            "prompt_id": prompt_id, "client_id": "bench",
            "extra_data": {"extra_pnginfo": {"workflow": {"nodes": list(range(50))}}}}


# --------------------------------------------------------------------------- kills


def guardian_config(tmp: Path, api_port: int, sim_port: int, journal: bool) -> Path:
    path = tmp / "g.toml"
    path.write_text(f"""
[guardian]
log_dir = {json.dumps(str(tmp / "logs"))}
report_dir = {json.dumps(str(tmp / "reports"))}
state_dir = {json.dumps(str(tmp / "state"))}
jitter = 0
log_level = "warning"
[api]
enabled = false
port = {api_port}
[[targets]]
name = "comfyui"
[targets.service]
backend = "process"
command = {json.dumps(sim_argv(sim_port))}
log_file = {json.dumps(str(tmp / "logs" / "comfyui.log"))}
[targets.recovery]
cooldown = 0
backoff_factor = 1.0
max_attempts = 1000
min_uptime = 0.3
[targets.queue]
enabled = {str(journal).lower()}
poll_interval = 0.2
[[targets.checks]]
kind = "comfyui"
url = "http://127.0.0.1:{sim_port}"
interval = 1
timeout = 0.8
""")
    return path


async def kills(cycles: int, pending: int, journal: bool, how: str = "kill") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sim_port = free_port()
        guardian = Guardian(load_config(guardian_config(tmp, free_port(), sim_port, journal)))
        events: list[RecoveryEvent] = []

        def collect(event: Event) -> None:
            if isinstance(event, RecoveryEvent):
                events.append(event)

        guardian.bus.subscribe(collect)
        await guardian.start()
        sim = f"http://127.0.0.1:{sim_port}"
        lost = 0
        queued = 0
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            async def answers() -> bool:
                try:
                    return (await http.get(sim + "/queue")).status_code == 200
                except httpx.HTTPError:
                    return False

            async def until(predicate: Any, timeout: float) -> bool:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if await predicate():
                        return True
                    await asyncio.sleep(0.02)
                return False

            await until(answers, 30)
            try:
                for _ in range(cycles):
                    ids = []
                    for seconds in [1.0] + [0.02] * pending:
                        b = body(seconds)
                        await http.post(sim + "/prompt", json=b)
                        ids.append(b["prompt_id"])
                    queued += len(ids)

                    async def journaled(ids: list[str] = ids) -> bool:
                        queue = guardian.queue
                        view = queue.view("comfyui") if queue is not None else None
                        if view is None:  # no journal: wait until the first one runs
                            q = (await http.get(sim + "/queue")).json()
                            return bool(q["queue_running"])
                        return {str(j["prompt_id"]) for j in view.journal} == set(ids)

                    pid = (await guardian.backends["comfyui"].status()).pid
                    restarts = len([e for e in events if e.kind is RecoveryKind.RESTART_SUCCEEDED])
                    assert pid is not None
                    if how == "restart":  # at once: the restart's own last read journals them
                        await guardian.restart("comfyui")
                    else:
                        await until(journaled, 10)
                        os.kill(pid, signal.SIGKILL)

                    async def back(restarts: int = restarts) -> bool:
                        done = [e for e in events if e.kind is RecoveryKind.RESTART_SUCCEEDED]
                        return len(done) > restarts and await answers()

                    await until(back, 30)

                    async def finished(ids: list[str] = ids) -> bool:
                        found = [(await http.get(f"{sim}/history/{p}")).json() for p in ids]
                        return all(found)

                    await until(finished, 20 if journal else 3)
                    for p in ids:
                        if not (await http.get(f"{sim}/history/{p}")).json():
                            lost += 1
                    await http.post(sim + "/queue", json={"clear": True})
            finally:
                await guardian.stop()
        return {"cycles": cycles, "queued": queued, "lost": lost, "how": how}


# --------------------------------------------------------------------------- journal alone


class Alone:
    """A TargetJournal over a simulator process, in a temporary store."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.db = Database(tmp / "guardian.db", recover=True)
        self.store = JournalStore(self.db)
        self.outcomes: list[tuple[float, RestoreOutcome]] = []
        self.journal = TargetJournal(
            "comfyui", f"http://127.0.0.1:{port}", 5.0,
            QueueJournalConfig(poll_interval=0.2), self.store, SystemClock(), tmp / "r",
            lambda _t, o, _q: self.outcomes.append((time.perf_counter(), o)))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.journal.load()
        self.task = asyncio.create_task(self.journal.run())
        await poll(lambda: self.journal.online)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.db.close()


async def staleness(samples: int) -> dict[str, Any]:
    port = free_port()
    proc = start_sim(port, "--fault", "pending_idle")
    delays: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        alone = Alone(Path(tmp), port)
        await alone.start()
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
                for i in range(samples):
                    b = body(1.0)
                    r = await http.post(f"http://127.0.0.1:{port}/prompt", json=b)
                    t0 = time.perf_counter()
                    assert r.status_code == 200
                    await poll(lambda b=b: b["prompt_id"] in alone.journal.items, 0.0005)
                    delays.append(time.perf_counter() - t0)
                    if i % 50 == 49:
                        await http.post(f"http://127.0.0.1:{port}/queue", json={"clear": True})
                    await asyncio.sleep(0.01)
        finally:
            await alone.stop()
            proc.terminate()
            proc.wait()
    return {"samples": samples, "p50_ms": pct(delays, 50) * 1000,
            "p99_ms": pct(delays, 99) * 1000, "max_ms": max(delays) * 1000}


async def cpu(window: float) -> dict[str, Any]:
    port = free_port()
    proc = start_sim(port)
    out: dict[str, Any] = {"window_s": window}
    with tempfile.TemporaryDirectory() as tmp:
        alone = Alone(Path(tmp), port)
        await alone.start()
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
                async def measure(name: str) -> None:
                    while True:  # settle: the last change journaled, no read for 1 s
                        reads = alone.journal.reads
                        await asyncio.sleep(1.0)
                        if alone.journal.reads == reads:
                            break
                    c0, t0 = time.process_time(), time.monotonic()
                    await asyncio.sleep(window)
                    used, took = time.process_time() - c0, time.monotonic() - t0
                    out[name] = {"cpu_percent": 100 * used / took,
                                 "reads": alone.journal.reads - reads}

                await measure("idle")
                await http.post(url + "/prompt", json=body(window + 4))  # a sleep: no
                await measure("busy_unchanged")  # interrupt ends it, it runs past the window
                # Its end is a queue change (read and parsed): over before the next window.
                await poll(lambda: alone.journal.live_running == 0, 0.05)
                await http.post(url + "/__sim/fault", json={"mode": "pending_idle"})
                for _ in range(1000):
                    await http.post(url + "/prompt", json=body(0.01))
                await poll(lambda: len(alone.journal.items) >= 1000, 0.05)
                await measure("pending_1000_unchanged")
                c0 = time.process_time()
                for _ in range(10):  # the fallback read: fetch + hash, unchanged
                    await alone.journal._read()
                per_read = (time.process_time() - c0) / 10
                interval = alone.journal.cfg.fallback_interval
                out["fallback_read_1000"] = {"cpu_ms": per_read * 1000,
                                             "every_s": interval,
                                             "cpu_percent": 100 * per_read / interval}
                raw = await http.get(url + "/queue")
                out["queue_1000_bytes"] = len(raw.content)
        finally:
            await alone.stop()
            proc.terminate()
            proc.wait()
    return out


async def restore_once(count: int) -> float:
    """Seconds from the restarted simulator answering to ``count`` prompts re-submitted."""
    port = free_port()
    proc = start_sim(port, "--fault", "pending_idle")
    with tempfile.TemporaryDirectory() as tmp:
        alone = Alone(Path(tmp), port)
        journal, outcomes = alone.journal, alone.outcomes
        await alone.start()
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
                for _ in range(count):
                    await http.post(f"http://127.0.0.1:{port}/prompt", json=body(0.01))
            await poll(lambda: len(journal.items) >= count, 0.05)
            journal.restarting = True
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            await poll(lambda: journal.state.restore_due)
            proc = start_sim(port, "--fault", "pending_idle")
            t0 = time.perf_counter()
            journal.restart_done()
            await poll(lambda: bool(outcomes), 0.001)
            t1, outcome = outcomes[0]
            assert len(outcome.restored) == count, outcome.headline()
            return t1 - t0
        finally:
            await alone.stop()
            proc.terminate()
            proc.wait()


async def restore(count: int, repeats: int) -> dict[str, Any]:
    times = [await restore_once(count) for _ in range(repeats)]
    return {"prompts": count, "repeats": repeats, "median_s": sorted(times)[len(times) // 2],
            "all_s": times}


async def main_async(args: argparse.Namespace) -> None:
    before = await kills(args.before_cycles, args.pending, journal=False)
    print("kill -9, journal off:", before, flush=True)
    after = await kills(args.cycles, args.pending, journal=True)
    print("kill -9, journal on: ", after, flush=True)
    restarts_before = await kills(args.before_cycles, args.pending, False, "restart")
    print("guardian restart, journal off:", restarts_before, flush=True)
    restarts_after = await kills(args.restarts, args.pending, True, "restart")
    print("guardian restart, journal on: ", restarts_after, flush=True)
    stale = await staleness(args.samples)
    print("staleness:", stale, flush=True)
    used = await cpu(args.window)
    print("cpu:", used, flush=True)
    restored = await restore(100, args.repeats)
    print("restore:", restored, flush=True)
    rows = [
        [f"prompts lost per kill -9 (1 running + {args.pending} pending)",
         f"{before['lost'] / max(1, before['cycles']):.1f} of {args.pending + 1}",
         f"{after['lost'] / max(1, after['cycles']):.1f} of {args.pending + 1}"],
        [f"prompts lost across {after['cycles']} kill -9s", f"(all: {before['lost']} of "
         f"{before['queued']} in {before['cycles']} kills)",
         f"{after['lost']} of {after['queued']}"],
        [f"prompts lost per `guardian restart` at once after queueing ({args.restarts} "
         f"restarts, after)", f"{restarts_before['lost'] / max(1, args.before_cycles):.1f} "
         f"of {args.pending + 1}",
         f"{restarts_after['lost'] / max(1, args.restarts):.1f} of {args.pending + 1} "
         f"({restarts_after['lost']} of {restarts_after['queued']})"],
        ["journal staleness p50 / p99 / max", "—",
         f"{stale['p50_ms']:.1f} / {stale['p99_ms']:.1f} / {stale['max_ms']:.1f} ms"],
        ["journal CPU, idle queue", "0", f"{used['idle']['cpu_percent']:.3f} % of a core "
         f"({used['idle']['reads']} reads)"],
        ["journal CPU, busy, queue unchanged", "0",
         f"{used['busy_unchanged']['cpu_percent']:.3f} % ({used['busy_unchanged']['reads']} "
         "reads)"],
        ["journal CPU, 1000 pending unchanged", "0",
         f"{used['pending_1000_unchanged']['cpu_percent']:.3f} % "
         f"({used['pending_1000_unchanged']['reads']} reads)"],
        ["fallback read of the 1000-prompt queue", "—",
         f"{used['fallback_read_1000']['cpu_ms']:.1f} ms CPU every "
         f"{used['fallback_read_1000']['every_s']:g} s = "
         f"{used['fallback_read_1000']['cpu_percent']:.3f} % "
         f"({used['queue_1000_bytes'] / 1e6:.1f} MB body)"],
        [f"restore of 100 prompts (median of {args.repeats})", "—",
         f"{restored['median_s'] * 1000:.0f} ms"],
    ]
    markdown = table(["figure", "before (no journal)", "after"], rows)
    print(markdown)
    write_results("queue", {"kills_before": before, "kills_after": after,
                            "restarts_before": restarts_before,
                            "restarts_after": restarts_after,
                            "staleness": stale, "cpu": used, "restore": restored}, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--before-cycles", type=int, default=3)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--pending", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
