"""Busy is not hung: real simulator processes running a CPU-burning job and a sleeping one,
judged by the ``comfyui`` check on a FakeClock (thresholds) with real CPU time in between."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import guardian
from guardian.checks.base import CheckContext
from guardian.checks.comfyui.canary import ComfyUICanaryCheck, ComfyUICanaryConfig
from guardian.checks.comfyui.health import ComfyUICheck, ComfyUICheckConfig
from guardian.checks.comfyui.progress import ProgressSample, cpu_delta, judge
from guardian.core.clock import FakeClock, SystemClock
from guardian.core.result import Status
from guardian.demo.comfyui.server import ComfyUISim

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX child processes")
SRC = Path(guardian.__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimProcess:
    """The simulator as a real child process, its stdout in a log file."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guardian.demo.comfyui.server", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/system_stats", trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("simulator did not start")

    def job(self, kind: str, seconds: float) -> str:
        r = httpx.post(self.url + "/__sim/job", json={"kind": kind, "seconds": seconds},
                       trust_env=False)
        assert r.status_code == 200, r.text
        prompt_id: str = r.json()["prompt_id"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            running = httpx.get(self.url + "/queue", trust_env=False).json()["queue_running"]
            if running and running[0][1] == prompt_id:
                return prompt_id
            time.sleep(0.02)
        raise AssertionError("job did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    proc = SimProcess(tmp_path / "comfyui.log")
    try:
        yield proc
    finally:
        proc.stop()


async def observe(check: ComfyUICheck, clock: FakeClock, runs: int, step: float,
                  real: float) -> list[Any]:
    """Run the check ``runs`` times, ``step`` fake seconds and ``real`` real seconds apart."""
    outs = []
    for _ in range(runs):
        outs.append(await check.run())
        await clock.advance(step)
        await asyncio.sleep(real)  # the job gets real time to burn CPU (or to sleep)
    return outs


@pytest.mark.slow
async def test_cpu_burning_job_past_every_threshold_is_never_stuck(sim: SimProcess) -> None:
    clock = FakeClock()
    cfg = ComfyUICheckConfig(url=sim.url, stuck_running_after=60, progress_window=30,
                             progress_cpu_min=0.05)
    check = ComfyUICheck(cfg, CheckContext("comfyui", clock))  # finds the pid by its port
    prompt_id = sim.job("busy", 120)
    try:
        outs = await observe(check, clock, runs=8, step=30, real=0.4)
    finally:
        await check.aclose()
    assert [o.status for o in outs] == [Status.OK] * 8, [o.reason for o in outs]
    last = outs[-1]
    assert last.values["running_for_s"] == 210 > cfg.stuck_running_after
    assert last.reason == f"busy: prompt {prompt_id} running for 210 s"
    assert last.values["busy"] is True and last.values["running_prompt_id"] == prompt_id
    assert last.values["progress_moved"] is True
    assert last.values["progress_cpu_s"] >= 0.05
    assert last.values["progress_pid"] == sim.proc.pid
    assert last.condition is None


@pytest.mark.slow
async def test_sleeping_job_is_stuck_with_the_evidence(sim: SimProcess) -> None:
    clock = FakeClock()
    cfg = ComfyUICheckConfig(url=sim.url, stuck_running_after=60, progress_window=30,
                             progress_cpu_min=0.05, log_file=sim.log)
    check = ComfyUICheck(cfg, CheckContext("comfyui", clock))
    prompt_id = sim.job("sleep", 120)
    try:
        outs = await observe(check, clock, runs=4, step=30, real=0.2)
    finally:
        await check.aclose()
    assert [o.status for o in outs[:2]] == [Status.OK, Status.OK]  # under the threshold
    stuck = outs[2]  # 60 s: past the threshold, with a sample 30 s old to compare
    assert stuck.status is Status.FAILED, stuck.reason
    assert stuck.condition == "stuck_running"
    assert stuck.values["running_prompt_id"] == prompt_id
    assert stuck.values["progress_moved"] is False
    assert stuck.values["progress_log_changed"] is False
    assert stuck.values["progress_history_moved"] is False
    assert stuck.values["progress_cpu_s"] < 0.05
    assert stuck.values["progress_signals"] == "cpu,log,history"
    assert stuck.reason.startswith(
        f"queue stuck: prompt {prompt_id} running for 60 s with no progress over 30 s (CPU +"
    )
    assert "log unchanged, history unchanged" in stuck.reason


@pytest.mark.slow
async def test_interrupt_chatter_in_the_log_is_not_progress(sim: SimProcess) -> None:
    """ComfyUI logs a line for every POST /interrupt (and "got prompt" for every prompt):
    Guardian's own interrupt of a stuck job must not read as that job's progress, or the
    ladder is cleared and sends /interrupt again forever instead of restarting."""
    clock = FakeClock()
    cfg = ComfyUICheckConfig(url=sim.url, stuck_running_after=60, progress_window=30,
                             progress_cpu_min=0.05, log_file=sim.log)
    check = ComfyUICheck(cfg, CheckContext("comfyui", clock))
    prompt_id = sim.job("sleep", 120)
    outs = []
    try:
        for body in ({"prompt_id": prompt_id}, {}, {"prompt_id": "someone-else"}):
            outs.append(await check.run())
            async with httpx.AsyncClient(trust_env=False) as client:
                r = await client.post(sim.url + "/interrupt", json=body)
            assert r.status_code == 200
            await clock.advance(30)
            await asyncio.sleep(0.2)
        outs.append(await check.run())
    finally:
        await check.aclose()
    log = sim.log.read_text()
    assert f"Interrupting prompt {prompt_id}" in log and "Global interrupt" in log
    stuck = outs[2]
    assert stuck.status is Status.FAILED and stuck.condition == "stuck_running"
    assert stuck.values["progress_log_changed"] is False
    assert outs[3].status is Status.FAILED


@pytest.mark.slow
async def test_log_output_alone_counts_as_progress(sim: SimProcess) -> None:
    """tqdm lines in the log are progress even when CPU is not visible (threshold huge)."""
    clock = FakeClock()
    cfg = ComfyUICheckConfig(url=sim.url, stuck_running_after=30, progress_window=30,
                             progress_cpu_min=10**6, log_file=sim.log)
    check = ComfyUICheck(cfg, CheckContext("comfyui", clock))
    sim.job("busy", 60)
    try:
        outs = await observe(check, clock, runs=3, step=30, real=1.2)  # a tqdm line a second
    finally:
        await check.aclose()
    assert [o.status for o in outs] == [Status.OK] * 3, [o.reason for o in outs]
    assert outs[-1].values["progress_log_changed"] is True


async def test_canary_skips_while_a_foreign_job_runs(sim: SimProcess) -> None:
    prompt_id = sim.job("sleep", 30)
    canary = ComfyUICanaryCheck(ComfyUICanaryConfig(url=sim.url),
                                CheckContext("comfyui", SystemClock()))
    try:
        out = await canary.run()
    finally:
        await canary.aclose()
    assert out.status is Status.SKIPPED
    assert out.reason.startswith(f"busy: prompt {prompt_id} running for ")
    assert out.values["busy"] is True and out.values["running_prompt_id"] == prompt_id
    async with httpx.AsyncClient(trust_env=False) as client:
        queue = (await client.get(sim.url + "/queue")).json()
    assert queue["queue_pending"] == []  # no canary left queued behind the job


def test_canary_is_not_liveness_by_default() -> None:
    assert ComfyUICanaryConfig().liveness is False
    assert ComfyUICheckConfig().liveness is True


# ---------------------------------------------------------------------- memory


async def started(sim: ComfyUISim) -> None:
    """Until the in-process simulator's executor has picked the job up."""
    for _ in range(500):
        if sim.queue()["queue_running"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("job did not start")


async def test_low_vram_while_busy_is_not_a_condition() -> None:
    sim = ComfyUISim(device="cuda", exec_time=0.0).start()
    check = ComfyUICheck(ComfyUICheckConfig(url=sim.url, vram_free_min_mb=24000),
                         CheckContext("comfyui", FakeClock()))
    try:
        sim.submit_job("sleep", 30)
        await started(sim)
        out = await check.run()
    finally:
        await check.aclose()
        sim.stop()
    assert out.status is Status.OK and out.condition is None
    assert out.reason.startswith("busy: prompt ") and "low VRAM" in out.reason
    assert out.values["memory_critical"] is False


async def test_critical_vram_is_a_condition_even_while_busy() -> None:
    sim = ComfyUISim(device="cuda", exec_time=0.0).start()
    check = ComfyUICheck(ComfyUICheckConfig(url=sim.url, vram_critical_mb=30000),
                         CheckContext("comfyui", FakeClock()))
    try:
        sim.submit_job("sleep", 30)
        await started(sim)
        out = await check.run()
    finally:
        await check.aclose()
        sim.stop()
    assert out.status is Status.DEGRADED
    assert out.condition == "memory_pressure" and out.values["memory_critical"] is True
    assert "memory critical: VRAM on" in out.reason


async def test_leak_trend_is_memory_pressure_before_any_threshold() -> None:
    sim = ComfyUISim(device="cuda").start()
    sim.set_fault("vram_leak", leak_mb=600)
    check = ComfyUICheck(ComfyUICheckConfig(url=sim.url, leak_trend_runs=4, leak_trend_mb=1500),
                         CheckContext("comfyui", FakeClock()))
    try:
        outs = [await check.run() for _ in range(4)]
    finally:
        await check.aclose()
        sim.stop()
    assert [o.status for o in outs] == [Status.OK] * 3 + [Status.DEGRADED]
    assert outs[-1].condition == "memory_pressure"
    assert "VRAM leak: free VRAM fell 1800 MB over 4 idle runs" in outs[-1].reason


@pytest.mark.slow
async def test_idle_and_memory_fine_is_plain_ok() -> None:
    sim = ComfyUISim(device="cuda").start()
    clock = FakeClock()
    check = ComfyUICheck(ComfyUICheckConfig(url=sim.url), CheckContext("comfyui", clock))
    try:
        outs = []
        for _ in range(10):
            outs.append(await check.run())
            await clock.advance(60)
    finally:
        await check.aclose()
        sim.stop()
    assert all(o.status is Status.OK and o.condition is None for o in outs)
    assert outs[-1].values["busy"] is False and outs[-1].values["running_for_s"] == 0.0


# ---------------------------------------------------------------------- the judgement


def test_cpu_delta_counts_new_processes_in_full_and_ignores_exited_ones() -> None:
    old = {(1, 1.0): 10.0, (2, 1.0): 5.0}
    new = {(1, 1.0): 10.5, (3, 2.0): 0.25}  # 2 exited, 3 is new
    assert cpu_delta(old, new) == 0.75
    assert cpu_delta({(1, 1.0): 10.0}, {(1, 9.0): 1.0}) == 1.0  # pid reused: a new process


def test_judge_needs_a_sample_a_window_old() -> None:
    a = ProgressSample(at=0.0, cpu={(1, 1.0): 1.0}, history_sig="x")
    b = ProgressSample(at=20.0, cpu={(1, 1.0): 1.0}, history_sig="x")
    assert judge([a, b], window=30, cpu_min=1, gpu_min=5) is None
    c = ProgressSample(at=30.0, cpu={(1, 1.0): 1.0}, history_sig="x")
    verdict = judge([a, b, c], window=30, cpu_min=1, gpu_min=5)
    assert verdict is not None and verdict.moved is False


def test_gpu_use_is_progress() -> None:
    a = ProgressSample(at=0.0, cpu={(1, 1.0): 1.0})
    b = ProgressSample(at=15.0, cpu={(1, 1.0): 1.0}, gpu_percent=97.0)
    c = ProgressSample(at=30.0, cpu={(1, 1.0): 1.0}, gpu_percent=0.0)
    verdict = judge([a, b, c], window=30, cpu_min=1, gpu_min=5)
    assert verdict is not None and verdict.moved is True
    assert verdict.values["progress_gpu_percent"] == 97.0


def test_no_process_signal_is_unknown_not_stuck() -> None:
    a = ProgressSample(at=0.0, history_sig="x")
    b = ProgressSample(at=30.0, history_sig="x")
    verdict = judge([a, b], window=30, cpu_min=1, gpu_min=5)
    assert verdict is not None and verdict.moved is None
    assert verdict.values["progress_signals"] == "history"


async def test_remote_comfyui_without_signals_is_degraded_never_stuck() -> None:
    """No pid, no log, no GPU (port owned by nobody we can see): never a stuck verdict."""
    sim = ComfyUISim(device="cuda", exec_time=0.0).start()
    clock = FakeClock()
    check = ComfyUICheck(ComfyUICheckConfig(url=sim.url, stuck_running_after=60,
                                            progress_window=30),
                         CheckContext("comfyui", clock))
    check.probe.port = None  # as for a ComfyUI on another host
    try:
        sim.submit_job("sleep", 60)
        await started(sim)
        outs = []
        for _ in range(4):
            outs.append(await check.run())
            await clock.advance(30)
    finally:
        await check.aclose()
        sim.stop()
    assert [o.status for o in outs] == [Status.OK, Status.OK, Status.DEGRADED, Status.DEGRADED]
    assert "progress cannot be judged" in outs[-1].reason
    assert all(o.condition is None for o in outs)


class _FakeNvml:
    """pynvml's surface that gpu_process_percent uses (no GPU on CI: the one mock here)."""

    class NVMLError(Exception):
        pass

    def __init__(self, per_process: bool) -> None:
        self.per_process = per_process

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetProcessUtilization(self, handle: int, last: int) -> list[Any]:
        if not self.per_process:
            raise self.NVMLError("Not Supported")
        sample = type("S", (), {})
        s = sample()
        s.pid, s.smUtil, s.timeStamp = (42, 88, 1234) if handle == 1 else (7, 99, 1000)
        return [s]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        p = type("P", (), {})()
        p.pid = 42 if handle == 0 else 7
        return [p]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        u = type("U", (), {})()
        u.gpu = 61 if handle == 0 else 100
        return u


def test_gpu_use_counts_only_the_services_processes() -> None:
    from guardian.checks.comfyui.progress import gpu_process_percent

    last: dict[int, int] = {}
    assert gpu_process_percent(_FakeNvml(per_process=True), {42}, last) == 88.0
    assert last == {0: 1000, 1: 1234}  # the next read asks only for newer samples
    assert gpu_process_percent(_FakeNvml(per_process=True), {5}, {}) == 0.0
    # Without per-process samples: the device's use where the service runs compute work.
    assert gpu_process_percent(_FakeNvml(per_process=False), {42}, {}) == 61.0
    assert gpu_process_percent(_FakeNvml(per_process=False), {5}, {}) == 0.0
