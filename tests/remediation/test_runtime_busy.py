"""Busy is not hung, end to end in real time: the whole runtime supervising a real simulator
process, default decision logic with short thresholds from the config.

* A CPU-bound job longer than every threshold runs to completion: zero restarts, zero
  ladder runs, ``/api/health`` 200 throughout, busy shown with the running prompt.
* A job sleeping in a node is interrupted, then restarted once the interrupt did nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from guardian.config.load import load_config
from guardian.core.events import Event, RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status
from guardian.demo.stack import free_port
from guardian.runtime import Guardian

pytestmark = [pytest.mark.skipif(os.name == "nt", reason="POSIX child processes"),
              pytest.mark.timeout(90)]
K = RecoveryKind
CANARY: dict[int, list[CheckResult]] = {}
STUCK_AFTER, WINDOW, INTERVAL = 2.0, 2.0, 0.5


def write_config(tmp: Path, api_port: int, sim_port: int) -> Path:
    cfg = tmp / "g.toml"
    argv = [sys.executable, "-m", "guardian.demo.comfyui.server", "--port", str(sim_port)]
    cfg.write_text(f"""
[guardian]
log_dir = {json.dumps(str(tmp / "logs"))}
report_dir = {json.dumps(str(tmp / "reports"))}
state_dir = {json.dumps(str(tmp / "state"))}
jitter = 0
[api]
port = {api_port}
[[targets]]
name = "comfyui"
[targets.service]
backend = "process"
command = {json.dumps(argv)}
log_file = {json.dumps(str(tmp / "logs" / "comfyui.log"))}
[targets.recovery]
grace_period = 0
[targets.remediation]
interrupt_wait = 1
[[targets.checks]]
kind = "comfyui"
url = "http://127.0.0.1:{sim_port}"
interval = {INTERVAL}
timeout = 0.4
stuck_running_after = {STUCK_AFTER}
progress_window = {WINDOW}
progress_cpu_min = 0.2
[[targets.checks]]
kind = "comfyui_canary"
url = "http://127.0.0.1:{sim_port}"
interval = 1
timeout = 0.8
""")
    return cfg


async def start(tmp: Path) -> tuple[Guardian, str, str, list[tuple[float, RecoveryEvent]]]:
    api_port, sim_port = free_port(), free_port()
    guardian = Guardian(load_config(write_config(tmp, api_port, sim_port)))
    events: list[tuple[float, RecoveryEvent]] = []

    def collect(e: Event) -> None:
        if isinstance(e, RecoveryEvent):
            events.append((time.monotonic(), e))
        elif isinstance(e, CheckResult) and e.kind == "comfyui_canary":
            CANARY.setdefault(id(guardian), []).append(e)

    guardian.bus.subscribe(collect)
    await guardian.start()
    api, sim = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{sim_port}"
    async with httpx.AsyncClient(trust_env=False, timeout=2) as c:
        for _ in range(400):  # healthy: up, out of its startup phase (starting reads degraded)
            try:
                if (await c.get(api + "/api/health")).json().get("status") == "healthy":
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    return guardian, api, sim, events


@pytest.mark.slow
async def test_cpu_bound_job_longer_than_every_threshold_is_left_alone(tmp_path: Path) -> None:
    guardian, api, sim, events = await start(tmp_path)
    job_s = STUCK_AFTER + WINDOW + 3 * INTERVAL + 2  # past the threshold, window and more
    statuses: list[int] = []
    busy_seen: list[dict[str, object]] = []
    metrics_busy = False
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as c:
            before = [e.kind for _, e in events]
            r = await c.post(sim + "/__sim/job", json={"kind": "busy", "seconds": job_s})
            prompt_id = r.json()["prompt_id"]
            deadline = time.monotonic() + job_s + 30
            while time.monotonic() < deadline:
                health = await c.get(api + "/api/health")
                statuses.append(health.status_code)
                comfy = health.json().get("comfyui") or {}
                if comfy.get("busy"):
                    busy_seen.append(comfy)
                    if not metrics_busy:
                        text = (await c.get(api + "/metrics")).text
                        metrics_busy = 'guardian_comfyui_busy{target="comfyui"} 1.0' in text
                history = (await c.get(f"{sim}/history/{prompt_id}")).json()
                if history:
                    break
                await asyncio.sleep(0.2)
    finally:
        await guardian.stop()
    assert history[prompt_id]["status"]["status_str"] == "success"
    assert set(statuses) == {200}, statuses
    assert busy_seen and busy_seen[-1]["running_prompt_id"] == prompt_id
    ages = [float(str(b["running_for_s"])) for b in busy_seen]
    assert max(ages) > STUCK_AFTER + WINDOW  # it really ran past the threshold and window
    assert metrics_busy
    acted = [e.kind for _, e in events][len(before):]
    assert acted == [], acted  # no interrupt, no free, no restart
    # Before the simulator listens, the startup phase covers refused connections.
    canary = [r.status for r in CANARY.pop(id(guardian), []) if not r.startup]
    assert Status.SKIPPED in canary and Status.FAILED not in canary, canary  # busy: skipped


@pytest.mark.slow
async def test_sleeping_job_is_interrupted_then_restarted(tmp_path: Path) -> None:
    guardian, _api, sim, events = await start(tmp_path)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as c:
            t0 = time.monotonic()
            r = await c.post(sim + "/__sim/job", json={"kind": "sleep", "seconds": 3600})
            prompt_id = r.json()["prompt_id"]
            deadline = t0 + 40
            while time.monotonic() < deadline:
                if any(e.kind == K.RESTART_SUCCEEDED for _, e in events):
                    break
                await asyncio.sleep(0.05)
    finally:
        await guardian.stop()
    kinds = [e.kind for _, e in events if e.kind in {
        K.REMEDIATION_STARTED, K.INTERRUPT_SENT, K.REMEDIATION_FAILED, K.RESTART_STARTED,
        K.RESTART_SUCCEEDED}]
    assert kinds[:5] == [K.REMEDIATION_STARTED, K.INTERRUPT_SENT, K.REMEDIATION_FAILED,
                         K.RESTART_STARTED, K.RESTART_SUCCEEDED], kinds
    interrupt_at = next(t for t, e in events if e.kind == K.INTERRUPT_SENT)
    restart_at = next(t for t, e in events if e.kind == K.RESTART_STARTED)
    started = next(e for _, e in events if e.kind == K.REMEDIATION_STARTED)
    assert started.values["prompt_id"] == prompt_id
    assert started.values["progress_moved"] is False
    assert interrupt_at - t0 >= STUCK_AFTER  # never before the threshold
    print(f"\nsleeping job: interrupt after {interrupt_at - t0:.2f} s "
          f"(bound threshold + window + interval = {STUCK_AFTER + WINDOW + INTERVAL:g} s), "
          f"restart {restart_at - interrupt_at:.2f} s after the interrupt")
