"""The remediation ladder against real simulators: interrupt, free, restart only when needed.

Thresholds and the ladder's waits run on a FakeClock; HTTP, the simulator's executor, child
processes and restarts are real.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from guardian.checks.base import CheckContext
from guardian.checks.comfyui.health import ComfyUICheck, ComfyUICheckConfig
from guardian.config.schema import (
    Config,
    RecoveryConfig,
    RemediationConfig,
    ServiceConfig,
    TargetConfig,
)
from guardian.core.clock import FakeClock, SystemClock
from guardian.core.events import Event, EventBus, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Condition, Outcome, Status
from guardian.demo.comfyui.server import ComfyUISim
from guardian.recovery.manager import RecoveryManager
from guardian.remediation.ladder import Remediation
from guardian.services.lifecycle import ServiceLifecycle
from guardian.services.process.backend import ProcessBackend

pytestmark = pytest.mark.timeout(60)
K = RecoveryKind


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@dataclass
class Rig:
    """A target with a comfyui check, the ladder, optionally recovery, and every event."""

    check: ComfyUICheck
    clock: FakeClock
    bus: EventBus
    ladder: Remediation
    recovery: RecoveryManager | None
    events: list[RecoveryEvent] = field(default_factory=list)

    def kinds(self) -> list[RecoveryKind]:
        return [e.kind for e in self.events]

    async def observe(self) -> Outcome:
        """Run the check once and publish its result, as the engine would (with the time
        it began on recovery's clock, the SystemClock: it proves a restarted process up)."""
        began = time.monotonic()
        out = await self.check.run()
        now = self.clock.now()
        self.bus.publish(CheckResult("comfyui", "comfyui", "comfyui", out.status, out.reason,
                                     dict(out.values), now, now, 0.0, started_mono=began,
                                     condition=out.condition))
        return out

    async def observe_until(self, condition: str, step: float, limit: int = 40) -> Outcome:
        for _ in range(limit):
            out = await self.observe()
            if out.condition == condition:
                return out
            await self.clock.advance(step)
        raise AssertionError(f"no {condition} result")


RigFactory = Callable[..., Rig]


@pytest.fixture
async def rig() -> AsyncIterator[RigFactory]:
    made: list[Rig] = []

    def _make(url: str, *, backend: ProcessBackend | None = None,
              remediation: RemediationConfig | None = None, **check: Any) -> Rig:
        clock = FakeClock()
        cfg = ComfyUICheckConfig(url=url, **check)
        service = (ServiceConfig(backend="process", command=backend.argv)
                   if backend is not None else None)
        target = TargetConfig(
            name="comfyui", service=service, checks=[cfg],
            recovery=RecoveryConfig(cooldown=0, grace_period=0),
            remediation=remediation or RemediationConfig(),
        )
        config = Config(targets=[target])
        bus = EventBus()
        recovery = None
        if backend is not None:
            recovery = RecoveryManager(config, bus, {"comfyui": backend}, SystemClock())
        ladder = Remediation(config, bus, clock, recovery)
        r = Rig(ComfyUICheck(cfg, CheckContext("comfyui", clock, backend)), clock, bus,
                ladder, recovery)

        def collect(e: Event) -> None:
            if isinstance(e, RecoveryEvent):
                r.events.append(e)

        bus.subscribe(collect)
        made.append(r)
        return r

    yield _make
    for r in made:
        await r.ladder.aclose()
        await r.check.aclose()
        if r.recovery is not None:
            await r.recovery.aclose()
            for backend in r.recovery.backends.values():
                await backend.aclose()  # the simulator runs in its own session: stop it


async def supervised_sim(rig: RigFactory, **check: Any) -> tuple[Rig, ProcessBackend, str]:
    """A simulator child under a real ProcessBackend and RecoveryManager, answering."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "guardian.demo.comfyui.server", "--port", str(port)]
    backend = ProcessBackend("comfyui", argv, stop_timeout=5,
                             env={"PYTHONPATH": os.pathsep.join(sys.path)})
    r = rig(url, backend=backend, **check)
    assert r.recovery is not None
    await ServiceLifecycle(
        r.recovery.config, r.recovery.backends, r.recovery.clock, observer=r.recovery
    ).start_all()
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        for _ in range(300):
            try:
                if (await client.get("/system_stats")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    return r, backend, url


@pytest.fixture
def sim() -> Any:
    s = ComfyUISim(device="cuda", exec_time=0.0).start()
    yield s
    s.stop()


def running(sim: ComfyUISim) -> list[str]:
    return [item[1] for item in sim.queue()["queue_running"]]


@pytest.mark.slow
async def test_interrupt_stops_a_stuck_prompt_without_a_restart(
    sim: ComfyUISim, rig: RigFactory
) -> None:
    """A job with no visible progress over the window (on the FakeClock its real CPU time
    is milliseconds) whose node polls the interrupt flag: /interrupt is enough."""
    r = rig(sim.url)
    prompt_id = sim.submit_job("busy", 3600)
    await until(lambda: running(sim))
    stuck = await r.observe_until("stuck_running", step=120)
    assert stuck.values["running_prompt_id"] == prompt_id
    await until(lambda: K.INTERRUPT_SENT in r.kinds())
    sent = next(e for e in r.events if e.kind == K.INTERRUPT_SENT)
    assert sent.values["prompt_id"] == prompt_id and sent.values["http_status"] == 200
    await until(lambda: not running(sim))  # the node saw the flag
    await r.clock.advance(10)  # interrupt_wait
    await until(lambda: K.REMEDIATION_SUCCEEDED in r.kinds())
    assert r.kinds() == [K.REMEDIATION_STARTED, K.INTERRUPT_SENT, K.REMEDIATION_SUCCEEDED]
    done = r.events[-1]
    assert done.values["action"] == "interrupt" and done.values["restart_requested"] is False
    started = r.events[0]
    assert started.values["condition"] == "stuck_running"
    assert started.values["progress_moved"] is False  # the evidence travels with the event
    status = sim.history_entry(prompt_id)[prompt_id]["status"]
    assert status["messages"][-1][0] == "execution_interrupted"


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="POSIX child processes")
async def test_interrupt_ignored_by_a_sleeping_node_asks_for_a_restart(rig: RigFactory) -> None:
    r, backend, url = await supervised_sim(rig)
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        old_pid = backend.pid
        job = await client.post("/__sim/job", json={"kind": "sleep", "seconds": 3600})
        prompt_id = job.json()["prompt_id"]
        stuck = await r.observe_until("stuck_running", step=120)
        assert stuck.values["progress_pid"] == old_pid  # from the backend, not the port
        assert stuck.values["progress_moved"] is False
        await until(lambda: K.INTERRUPT_SENT in r.kinds())
        await r.clock.advance(10)
        await until(lambda: K.RESTART_STARTED in r.kinds(), timeout=20)
        for _ in range(400):  # a restart succeeds on the new process's first passing check
            if K.RESTART_SUCCEEDED in r.kinds():
                break
            await r.observe()
            await asyncio.sleep(0.05)
        kinds = [k for k in r.kinds() if k != K.EXITED]
        assert kinds[:5] == [K.REMEDIATION_STARTED, K.INTERRUPT_SENT, K.REMEDIATION_FAILED,
                             K.RESTART_STARTED, K.RESTART_SUCCEEDED]
        failed = next(e for e in r.events if e.kind == K.REMEDIATION_FAILED)
        assert failed.values["restart_requested"] is True
        assert failed.values["prompt_id"] == prompt_id
        restart = next(e for e in r.events if e.kind == K.RESTART_STARTED)
        assert restart.reason == f"prompt {prompt_id} stuck and ignored /interrupt"
        assert backend.pid != old_pid


async def test_free_heals_a_vram_leak_without_a_restart(
    sim: ComfyUISim, rig: RigFactory
) -> None:
    sim.set_fault("vram_leak", leak_mb=1000)
    r = rig(sim.url, vram_free_min_mb=20000)
    pressure = await r.observe_until("memory_pressure", step=30)
    assert pressure.status is Status.DEGRADED and pressure.values["memory_critical"] is False
    await until(lambda: K.FREE_SENT in r.kinds())
    await until(lambda: sim.frees == 1)  # the idle worker applied the flags
    await r.clock.advance(5)  # free_wait
    await until(lambda: K.REMEDIATION_SUCCEEDED in r.kinds())
    assert r.kinds() == [K.REMEDIATION_STARTED, K.FREE_SENT, K.REMEDIATION_SUCCEEDED]
    done = r.events[-1]
    assert done.values["action"] == "free" and done.values["freed_mb"] > 0
    assert done.values["after_vram_0_free_mb"] > done.values["before_vram_0_free_mb"]
    assert (await r.observe()).condition is None  # healed


async def test_memory_pressure_gone_busy_frees_nothing(sim: ComfyUISim, rig: RigFactory) -> None:
    """Pressure seen idle, but a job started before the ladder acted: leave it alone."""
    sim.set_fault("vram_leak", leak_mb=1000)
    r = rig(sim.url, vram_free_min_mb=20000)
    r.ladder.settings["comfyui"] = RemediationConfig()
    sim.submit_job("busy", 3600)
    await until(lambda: running(sim))
    out = await r.check.run()  # busy: low VRAM is no condition
    assert out.condition is None
    # Replay an idle memory_pressure result now that the queue is busy.
    now = r.clock.now()
    r.bus.publish(CheckResult("comfyui", "comfyui", "comfyui", Status.DEGRADED, "pressure",
                              {**out.values, "memory_critical": False}, now, now, 0.0,
                              condition=Condition.MEMORY_PRESSURE))
    await asyncio.sleep(0.3)
    await r.clock.advance(60)
    assert r.events == [] and sim.frees == 0


@pytest.mark.slow
async def test_nothing_acts_when_idle_and_memory_is_fine(sim: ComfyUISim, rig: RigFactory) -> None:
    r = rig(sim.url)
    for _ in range(20):
        out = await r.observe()
        assert out.status is Status.OK and out.condition is None
        await r.clock.advance(300)
    await asyncio.sleep(0.1)
    assert r.events == [] and sim.interrupts == 0 and sim.frees == 0


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="POSIX child processes")
async def test_nothing_acts_on_a_busy_target_making_progress(rig: RigFactory) -> None:
    """A CPU-burning job far past stuck_running_after, supervised with recovery: no rung."""
    r, _backend, url = await supervised_sim(
        rig, stuck_running_after=60, progress_window=30, progress_cpu_min=0.05
    )
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        job = await client.post("/__sim/job", json={"kind": "busy", "seconds": 3})
        prompt_id = job.json()["prompt_id"]
        outs = []
        for _ in range(20):
            outs.append(await r.observe())
            if not outs[-1].values.get("busy") and len(outs) > 1:
                break
            await r.clock.advance(30)
            await asyncio.sleep(0.3)
        history = (await client.get(f"/history/{prompt_id}")).json()
    assert max(o.values["running_for_s"] for o in outs) >= 120  # type: ignore[operator, type-var]  # 2x the threshold
    assert all(o.status is Status.OK for o in outs), [o.reason for o in outs]
    assert history[prompt_id]["status"]["status_str"] == "success"
    assert r.events == []


async def test_stuck_pending_cleared_by_the_queue_moving(sim: ComfyUISim, rig: RigFactory) -> None:
    sim.set_fault("pending_idle")
    r = rig(sim.url, stuck_pending_after=60)
    prompt_id = sim.submit_job("busy", 0)
    await r.observe_until("stuck_pending", step=30)
    await until(lambda: K.INTERRUPT_SENT in r.kinds())
    sim.set_fault("none")  # the worker picks the prompt up
    await until(lambda: sim.history_entry(prompt_id))
    await r.clock.advance(10)
    await until(lambda: K.REMEDIATION_SUCCEEDED in r.kinds())
    assert r.events[-1].values["restart_requested"] is False


async def test_ladder_disabled_does_nothing(sim: ComfyUISim, rig: RigFactory) -> None:
    sim.set_fault("vram_leak", leak_mb=1000)
    r = rig(sim.url, vram_free_min_mb=20000, remediation=RemediationConfig(enabled=False))
    await r.observe_until("memory_pressure", step=30)
    await asyncio.sleep(0.2)
    assert r.events == [] and sim.frees == 0
