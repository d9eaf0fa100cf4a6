"""Restarts in 10 minutes of memory pressure a restart cannot fix (issue 22, bullet 3).

The situation measured on a real idle ComfyUI: RAM is taken by something else, so every
``comfyui`` check says ``memory_pressure`` (DEGRADED), ``/free`` cannot relieve it, and the
ladder asks recovery for a restart each time. Here with the real RecoveryManager and the
default recovery settings on a FakeClock (10 simulated minutes take milliseconds): a
check every 30 s whose result names the condition, on the old process and on each new one
at once, and the ladder's restart request after each. Counts the restarts.

Usage: PYTHONPATH=src python bench/bench_memory_loop.py [--minutes 10] [--label after]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
from pathlib import Path

from guardian.checks.comfyui.health import ComfyUICheckConfig
from guardian.config.schema import Config, ServiceConfig, TargetConfig
from guardian.core.clock import FakeClock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Condition, Status
from guardian.recovery.manager import RecoveryManager
from guardian.services.memory import MemoryBackend

RESULTS = Path(__file__).resolve().parent / "results"


async def run(minutes: float) -> dict[str, object]:
    clock = FakeClock()
    bus = EventBus()
    events: list[RecoveryEvent] = []

    def collect(e: Event) -> None:
        if isinstance(e, RecoveryEvent):
            events.append(e)

    bus.subscribe(collect)
    check = ComfyUICheckConfig(url="http://127.0.0.1:8188", interval=30, timeout=10)
    target = TargetConfig(name="comfyui", checks=[check],
                          service=ServiceConfig(backend="process", command=["comfyui"]))
    backend = MemoryBackend("comfyui", running=True)  # restarts at once, never exits
    mgr = RecoveryManager(Config(targets=[target]), bus, {"comfyui": backend}, clock)
    with_condition = "condition" in inspect.signature(mgr.request_restart).parameters
    end = clock.monotonic() + minutes * 60
    while clock.monotonic() < end:
        began = clock.monotonic()
        now = clock.now()
        bus.publish(CheckResult(
            "comfyui", "comfyui", "comfyui", Status.DEGRADED,
            "memory pressure: ram 900 MB free < 2048 MB", {"online": True},
            now, now, 0.05, started_mono=began, condition=Condition.MEMORY_PRESSURE,
        ))
        reason = "memory pressure not relieved by /free (ram 900 MB free < 2048 MB)"
        if with_condition:
            mgr.request_restart("comfyui", reason, condition="memory_pressure")  # type: ignore[call-arg]
        else:
            mgr.request_restart("comfyui", reason)
        await clock.advance(30)
    await mgr.aclose()
    kinds = [e.kind for e in events]
    return {
        "minutes": minutes,
        "restarts": kinds.count(RecoveryKind.RESTART_STARTED),
        "breaker_open": kinds.count(RecoveryKind.BREAKER_OPEN),
        "breaker_reset": kinds.count(RecoveryKind.BREAKER_RESET),
        "condition_persists": sum(e.kind.value == "condition_persists" for e in events),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    out = await run(a.minutes)
    line = (f"| {a.label or 'this build'} | {out['restarts']} | {out['breaker_open']}"
            f" | {out['breaker_reset']} | {out['condition_persists']} |")
    table = [f"unfixable memory pressure for {a.minutes:g} min (FakeClock, default recovery,"
             " a check every 30 s)", "",
             "| build | restarts | breaker opened | breaker reset | condition_persists |",
             "| --- | --- | --- | --- | --- |", line]
    print("\n".join(table))
    name = "memory_loop" + (f"-{a.label}" if a.label else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
