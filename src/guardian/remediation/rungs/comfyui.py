"""The ComfyUI rungs: interrupt a stuck prompt, interrupt a wedged executor, free memory.

Each treats one condition the ``comfyui`` check names, over the public
:class:`~guardian.checks.comfyui.client.ComfyUIClient`:

* ``stuck_running``: ``POST /interrupt {"prompt_id"}``, then ``/queue``: the prompt gone is a
  success, the same prompt still running asks for a restart.
* ``memory_pressure``: only while idle unless memory is critical, ``POST /free`` (unload
  models, free memory), then ``/system_stats``: below no threshold and something freed is a
  success, else a restart, and only while the queue is idle, or with memory critical and the
  running job shown making no progress.
* ``stuck_pending``: ``POST /interrupt`` (no prompt: frees a wedged executor), then ``/queue``:
  something running or the pending list moving is a success, else a restart.
"""

from __future__ import annotations

from collections.abc import Mapping

from guardian.checks.comfyui.client import ComfyUIClient
from guardian.checks.comfyui.health import READINGS, ComfyUICheckConfig
from guardian.config.schema import RemediationConfig
from guardian.core.events import RecoveryKind
from guardian.core.result import CheckResult, Condition, Value
from guardian.remediation.rung import Action, Cleared, Rung, Treatment, Verdict


class StuckRunning:
    """A prompt running too long with no progress: interrupt just that prompt."""

    condition = Condition.STUCK_RUNNING

    async def applies(self, result: CheckResult, client: ComfyUIClient) -> Treatment | None:
        prompt_id = result.values.get("running_prompt_id")
        if not isinstance(prompt_id, str):
            return None
        return Treatment(key=prompt_id, retry_reason=f"prompt {prompt_id} ignored /interrupt",
                         values={"prompt_id": prompt_id})

    async def act(self, result: CheckResult, treatment: Treatment, client: ComfyUIClient,
                  settings: RemediationConfig) -> Action:
        prompt_id = treatment.key
        status = await client.interrupt(prompt_id)
        return Action(RecoveryKind.INTERRUPT_SENT,
                      f"POST /interrupt for prompt {prompt_id}: HTTP {status}",
                      settings.interrupt_wait,
                      {"prompt_id": prompt_id, "http_status": status})

    async def verify(self, result: CheckResult, treatment: Treatment, action: Action,
                     client: ComfyUIClient, cleared: Cleared) -> Verdict:
        prompt_id, wait = treatment.key, action.wait
        values: dict[str, Value] = {"prompt_id": prompt_id}
        running, _ = await client.queue()
        if not running or running[0][1] != prompt_id:
            return Verdict(True, "interrupt",
                           f"prompt {prompt_id} stopped within {wait:g} s of /interrupt",
                           values=values)
        if cleared():
            return Verdict(True, "none", f"prompt {prompt_id} is making progress again",
                           values=values)
        return Verdict(False, "interrupt",
                       f"prompt {prompt_id} still running {wait:g} s after /interrupt",
                       restart_reason=f"prompt {prompt_id} stuck and ignored /interrupt",
                       values=values)


class MemoryPressure:
    """Low memory while idle (or critical at any time): ask ComfyUI to free what it caches."""

    condition = Condition.MEMORY_PRESSURE

    def __init__(self, cfg: ComfyUICheckConfig) -> None:
        self.cfg = cfg

    async def applies(self, result: CheckResult, client: ComfyUIClient) -> Treatment | None:
        critical = result.values.get("memory_critical") is True
        running, pending = await client.queue()
        if (running or pending) and not critical:
            return None  # a job started meanwhile: low memory is its business now
        before = free_memory(result.values)
        return Treatment(key=None, retry_reason=None,
                         values={"memory_critical": critical, **prefixed(before, "before")})

    async def act(self, result: CheckResult, treatment: Treatment, client: ComfyUIClient,
                  settings: RemediationConfig) -> Action:
        status = await client.free(unload_models=True, free_memory=True)
        return Action(RecoveryKind.FREE_SENT,
                      f"POST /free (unload_models, free_memory): HTTP {status}",
                      settings.free_wait, {"http_status": status})

    async def verify(self, result: CheckResult, treatment: Treatment, action: Action,
                     client: ComfyUIClient, cleared: Cleared) -> Verdict:
        critical = result.values.get("memory_critical") is True
        before = free_memory(result.values)
        stats, _ = await client.system_stats(self.cfg.vram_free_min_mb)
        after = free_memory(stats)
        freed = round(sum(after.values()) - sum(before.values()), 1)
        values: dict[str, Value] = {**prefixed(before, "before"), **prefixed(after, "after"),
                                    "freed_mb": freed, "memory_critical": critical}
        still = pressure(after, self.cfg)
        if not still and freed > 0:
            return Verdict(True, "free", f"/free released {freed:.0f} MB", values=values)
        if cleared():
            return Verdict(True, "free", "memory pressure cleared", values=values)
        running, pending = await client.queue()
        idle = not running and not pending
        may_restart = idle or (critical and result.values.get("progress_moved") is False)
        detail = f"/free released {freed:.0f} MB; still {still or 'no memory freed'}"
        if not may_restart:
            detail += "; not restarting while a job runs"
            if critical:  # the queue journal restarts between jobs (restart_between_jobs)
                values["restart_between_jobs"] = True
        return Verdict(False, "free", detail,
                       restart_reason=f"memory pressure not relieved by /free ({still})"
                       if may_restart else None, values=values)


class StuckPending:
    """Prompts pending with nothing running: interrupt to free a wedged executor."""

    condition = Condition.STUCK_PENDING

    async def applies(self, result: CheckResult, client: ComfyUIClient) -> Treatment | None:
        return Treatment(key=None, retry_reason="pending queue did not move after /interrupt")

    async def act(self, result: CheckResult, treatment: Treatment, client: ComfyUIClient,
                  settings: RemediationConfig) -> Action:
        before = await client.queue()
        status = await client.interrupt(None)
        return Action(RecoveryKind.INTERRUPT_SENT,
                      f"POST /interrupt (nothing running, {len(before[1])} pending): "
                      f"HTTP {status}", settings.pending_wait, {"http_status": status},
                      queue_before=before)

    async def verify(self, result: CheckResult, treatment: Treatment, action: Action,
                     client: ComfyUIClient, cleared: Cleared) -> Verdict:
        before_running, before_pending = action.queue_before or ([], [])
        running, pending = await client.queue()
        moved = {p[1] for p in pending} != {p[1] for p in before_pending}
        if running or before_running or moved or cleared():
            return Verdict(True, "interrupt", "the queue is moving again")
        return Verdict(False, "interrupt",
                       f"{len(pending)} pending, still nothing running after {action.wait:g} s",
                       restart_reason="pending queue did not move after /interrupt")


def comfyui_rungs(cfg: ComfyUICheckConfig) -> list[Rung]:
    """The rungs for one ``comfyui`` check, one per condition it names."""
    return [StuckRunning(), MemoryPressure(cfg), StuckPending()]


_VRAM_FREE, _DEVICE_TYPE, _RAM_FREE = (
    next(r for r in READINGS if r.name == name)
    for name in ("vram_free_mb", "device_type", "ram_free_mb")
)


def free_memory(values: Mapping[str, Value]) -> dict[str, float]:
    """Free MB per GPU (``vram.<i>``) and of RAM (``ram``), by the check's declared readings."""
    types = _DEVICE_TYPE.texts(values)
    out = {f"vram.{i}": mb for i, mb in _VRAM_FREE.numbers(values).items()
           if types.get(i) != "cpu"}
    ram = _RAM_FREE.numbers(values).get("")
    if ram is not None:
        out["ram"] = ram
    return out


def prefixed(free: dict[str, float], when: str) -> dict[str, Value]:
    return {f"{when}_{key.replace('.', '_')}_free_mb": mb for key, mb in free.items()}


def pressure(free: dict[str, float], cfg: ComfyUICheckConfig) -> str:
    """What is still below a threshold, the critical ones included ('' when nothing is):
    a /free that leaves memory below ``*_critical_mb`` has not relieved anything."""
    low = []
    for key, mb in free.items():
        ram = key == "ram"
        limits = (cfg.ram_free_min_mb, cfg.ram_critical_mb) if ram else (
            cfg.vram_free_min_mb, cfg.vram_critical_mb)
        limit = max((x for x in limits if x is not None), default=None)
        if limit is not None and mb < limit:
            low.append(f"{key} {mb:.0f} MB free < {limit:g} MB")
    return "; ".join(low)
