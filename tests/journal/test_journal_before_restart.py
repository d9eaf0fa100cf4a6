"""The last ``/queue`` read before every restart Guardian makes: what was queued after the
journal's last read is restored all the same.

The journal here cannot hear ComfyUI's status broadcasts (a proxy refuses the websocket,
:class:`~testkit.journal.NoWebsocket`) and polls once an hour, so prompts queued after its
first read are known only from the read recovery awaits before it stops the process: a
restart through the API, ``--when-idle``, ``restart_every``. A hung ComfyUI does not hold
its own restart up (the read is cut, the death still counted).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from guardian.core.events import RecoveryEvent, RecoveryKind
from guardian.journal import follower
from testkit.journal import AUTH, NoWebsocket, Run, run_order

pytestmark = [pytest.mark.skipif(os.name == "nt", reason="POSIX child processes"),
              pytest.mark.timeout(120)]
K = RecoveryKind


def deaf(run: Run, monkeypatch: pytest.MonkeyPatch, **queue: float) -> None:
    """No websocket, and the next periodic read an hour away."""
    monkeypatch.setattr(follower, "StatusStream", NoWebsocket)
    update = {"poll_interval": 3600.0, "fallback_interval": 3600.0, **queue}
    run.retarget(queue=run.config.targets[0].queue.model_copy(update=update))


async def first_read(run: Run) -> None:
    assert run.guardian.queue is not None
    journal = run.guardian.queue.journals["comfyui"]

    async def read() -> bool:
        if not journal.online:
            journal.wake()  # (it may have polled before the simulator answered)
            return False
        # Settled: no read in progress, and none due (it sleeps an hour from here).
        return not journal._lock.locked() and not journal._wake.is_set()
    await run.until(read, "the journal's first read")


async def restored_with(run: Run, count: int) -> RecoveryEvent:
    """The first restore that put ``count`` prompts back (a planned restart may come
    before anything was queued: it restores nothing)."""
    async def seen() -> bool:
        return any(e.values.get("restored") == count for e in run.kinds(K.QUEUE_RESTORED))
    await run.until(seen, f"a restore of {count} prompts")
    return next(e for e in run.kinds(K.QUEUE_RESTORED) if e.values.get("restored") == count)


async def test_a_restart_through_the_api_reads_the_queue_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(tmp_path)
    deaf(run, monkeypatch)
    async with run:
        await first_read(run)
        running = await run.submit(seconds=30)
        pending = [await run.submit(seconds=0.05) for _ in range(3)]
        assert run.journaled() == []  # queued after the journal's last read
        answer = await run.http.post(run.api + "/api/targets/comfyui/restart", headers=AUTH,
                                     timeout=90)
        assert answer.status_code == 202, answer.text  # queued, not done
        event = await run.restored()
        assert event.reason == "restored 4 of 4 prompts"
        await run.http.post(run.sim + "/interrupt", json={"prompt_id": running})
        entries = await run.finished([running, *pending])
    assert run_order(entries) == [running, *pending]


async def test_a_restart_when_idle_reads_the_queue_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(tmp_path)
    deaf(run, monkeypatch)
    async with run:
        await first_read(run)
        await run.http.post(run.sim + "/__sim/fault", json={"mode": "pending_idle"})
        pending = [await run.submit(seconds=0.05) for _ in range(3)]
        assert run.journaled() == []
        listing = await run.guardian.queue_command("comfyui", "restart_when_idle", None)
        assert listing.message == "comfyui is idle: restarting now"
        event = await restored_with(run, 3)
        assert event.reason == "restored 3 of 3 prompts"
        entries = await run.finished(pending)  # the new process has no fault: they run
    assert run_order(entries) == pending


async def test_a_restart_every_reads_the_queue_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(tmp_path)
    deaf(run, monkeypatch, restart_every=8.0)  # (>= 60 s in a config)
    async with run:
        await first_read(run)
        await run.http.post(run.sim + "/__sim/fault", json={"mode": "pending_idle"})
        pending = [await run.submit(seconds=0.05) for _ in range(3)]
        assert not run.kinds(K.RESTART_STARTED)  # the planned restart is still to come
        assert run.journaled() == []
        await restored_with(run, 3)
        entries = await run.finished(pending)
    assert run_order(entries) == pending


async def test_a_hung_comfyui_is_restarted_without_its_last_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = Run(tmp_path)
    target = run.config.targets[0]
    # A check timeout longer than the last read's bound (1.5 s), and no restart of
    # recovery's own while the hung server fails its checks: only the one asked for here.
    check = target.checks[0].model_copy(update={"timeout": 5.0, "interval": 6.0})
    run.retarget(checks=[check], recovery=target.recovery.model_copy(
        update={"failure_threshold": 50}))
    async with run:
        running = await run.submit(seconds=30)
        pending = [await run.submit(seconds=0.05) for _ in range(2)]
        await run.journal_is([running], pending)
        await run.http.post(run.sim + "/__sim/fault", json={"mode": "hang"})
        message = await run.guardian.restart("comfyui")
        assert message.startswith("restarted comfyui"), message
        event = await run.restored()
        assert event.reason == "restored 3 of 3 prompts"
        queue = run.guardian.queue
        assert queue is not None
        deaths = await asyncio.to_thread(queue.store.deaths, "comfyui", running)
        assert deaths == 1  # the restart's death counted once, though its read was cut
        await run.http.post(run.sim + "/interrupt", json={"prompt_id": running})
        entries = await run.finished([running, *pending])
    assert run_order(entries) == [running, *pending]
    cut = [r for r in caplog.records if getattr(r, "event", None) == "final_read_timeout"]
    assert len(cut) == 1 and "no /queue answer within 1.5 s" in cut[0].getMessage()
