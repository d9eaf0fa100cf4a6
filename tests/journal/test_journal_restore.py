"""Nothing queued is lost, end to end: the whole runtime supervising a real simulator
process, killed with real signals; the queue journal in a real SQLite file.

Each scenario of issue 20's "Show it": kill -9 with 1 running + N pending restores all N+1
under their original ids, in order, and a prompt submitted after the restart runs after them;
a deleted or cleared queue is not resurrected; a duplicate is never submitted; the poison
prompt is quarantined after its second crash and the rest complete; the ladder's stuck prompt
is not re-run; Guardian SIGKILLed and restarted between the crash and the restore still
restores; secrets never reach a log, the API, a report or a saved file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from guardian.core.events import RecoveryKind
from guardian.runtime import Guardian
from testkit.incidents import Webhook
from testkit.journal import SECRET, Run, run_order

pytestmark = [pytest.mark.slow,  # real ComfyUI simulators killed and restored: 3-30 s each
              pytest.mark.skipif(os.name == "nt", reason="POSIX child processes"),
              pytest.mark.timeout(120)]
K = RecoveryKind


async def test_kill9_with_one_running_and_three_pending_restores_all_in_order(
        tmp_path: Path) -> None:
    async with Run(tmp_path) as run:
        running = await run.submit(seconds=30)
        pending = [await run.submit(seconds=0.05) for _ in range(3)]
        await run.journal_is([running], pending)
        await run.kill9()
        event = await run.restored()
        assert event.reason == "restored 4 of 4 prompts"
        later = await run.submit(seconds=0.05)
        # The restored running prompt runs again (30 s): interrupt it to go on.
        await run.http.post(run.sim + "/interrupt", json={"prompt_id": running})
        entries = await run.finished([running, *pending, later])
    assert all(e["prompt"][3]["client_id"] == "user-a" for e in entries.values())
    assert run_order(entries) == [running, *pending, later]
    assert {e["prompt"][1] for e in entries.values()} == {running, *pending, later}
    metrics = run.guardian.queue
    assert metrics is not None and metrics.restored_total["comfyui"] == 4


async def test_a_deleted_or_cleared_queue_is_not_resurrected(tmp_path: Path) -> None:
    async with Run(tmp_path) as run:
        running = await run.submit(seconds=30)
        pending = [await run.submit(seconds=0.05) for _ in range(3)]
        await run.journal_is([running], pending)
        await run.http.post(run.sim + "/queue", json={"delete": [pending[0]]})
        await run.journal_is([running], pending[1:])
        await run.http.post(run.sim + "/queue", json={"clear": True})
        await run.journal_is([running], [])
        await run.kill9()
        event = await run.restored()
        assert event.reason == "restored 1 of 1 prompts"
        await run.http.post(run.sim + "/interrupt", json={"prompt_id": running})
        await run.finished([running])
        queue = (await run.http.get(run.sim + "/queue")).json()
        assert queue["queue_pending"] == []
        for gone in pending:
            assert await run.history(gone) == {}


async def test_the_poison_prompt_is_quarantined_after_its_second_crash(tmp_path: Path) -> None:
    webhook = Webhook()  # a real apprise json:// receiver: the quarantine is notified
    notify = f"""
[notify]
urls = ["{webhook.url()}"]
"""
    try:
        await poison_run(tmp_path, notify, webhook)
    finally:
        webhook.close()


async def poison_run(tmp_path: Path, notify: str, webhook: Webhook) -> None:
    async with Run(tmp_path, extra=notify) as run:
        await run.http.post(run.sim + "/__sim/fault", json={"mode": "pending_idle"})
        poison = await run.submit(kind="crash")
        rest = [await run.submit(seconds=0.05) for _ in range(3)]
        await run.journal_is([], [poison, *rest])
        await run.http.post(run.sim + "/__sim/fault", json={"mode": "none"})  # it runs: dies

        async def quarantined_once() -> bool:
            return bool(run.kinds(K.PROMPT_QUARANTINED))
        await run.until(quarantined_once, "the poison prompt is quarantined")
        # Restored first, it died again (maybe before the rest were back: the restore
        # then says so and the next one puts them all back).
        final = [e for e in run.kinds(K.QUEUE_RESTORED) if "interrupted" not in e.reason]
        assert final[-1].reason == "restored 3 of 4 prompts"
        entries = await run.finished(rest)
        quarantined = run.kinds(K.PROMPT_QUARANTINED)
        assert [e.values["prompt_id"] for e in quarantined] == [poison]
        assert quarantined[0].reason == (f"prompt {poison} was running at 2 crashes: "
                                         "quarantined, not re-run")
        assert await run.history(poison) == {}
        assert run.guardian.queue is not None
        assert run.guardian.queue.quarantined_total["comfyui"] == 1
        saved = Path(str(quarantined[0].values["saved_to"]))
        body = json.loads(saved.read_text())
        assert body["prompt_id"] == poison and body["workflow"]["id"] == poison
        assert oct(saved.stat().st_mode & 0o777) == "0o600"

        async def notified() -> bool:
            return any("quarantined" in t for t in webhook.titles())
        await run.until(notified, "the quarantine is notified")
        message = next(str(b["message"]) for b in webhook.bodies
                       if "quarantined" in str(b.get("title")))
        assert f"guardian queue release {poison} --target comfyui" in message
        assert SECRET not in message
        await asyncio.sleep(0.5)
    assert run_order(entries) == rest
    log = (tmp_path / "logs" / "comfyui.log").read_text()
    assert log.count(f"GuardianCrash in prompt {poison}") == 2  # it ran twice, no more
    for where in (tmp_path / "logs", tmp_path / "reports"):
        for file in where.rglob("*"):
            if file.is_file():
                assert SECRET not in file.read_text(errors="replace"), file


async def test_the_ladders_stuck_prompt_is_not_rerun(tmp_path: Path) -> None:
    extra = """
[targets.remediation]
interrupt_wait = 1
"""
    run = Run(tmp_path, extra=extra)
    check = run.config.targets[0].checks[0]
    run.config = run.config.model_copy(update={"targets": [run.config.targets[0].model_copy(
        update={"checks": [check.model_copy(update={
            "stuck_running_after": 1.0, "progress_window": 1.0, "progress_cpu_min": 0.2})]})]})
    run.guardian = Guardian(run.config)
    run.guardian.bus.subscribe(run._collect)
    async with run:
        stuck = await run.submit(seconds=300)
        pending = [await run.submit(seconds=0.05) for _ in range(2)]
        await run.journal_is([stuck], pending)
        event = await run.restored()
        assert event.reason == "restored 2 of 3 prompts"
        assert event.detail == (f"prompt {stuck} was ended by the ladder for being stuck: "
                                "not re-run")
        assert run.kinds(K.INTERRUPT_SENT) and run.kinds(K.RESTART_STARTED)
        entries = await run.finished(pending)
        assert await run.history(stuck) == {}
    assert run_order(entries) == pending
    assert run.guardian.queue is not None
    assert run.guardian.queue.lost_total[("comfyui", "stuck")] == 1


async def test_guardian_restarted_between_the_crash_and_the_restore(tmp_path: Path) -> None:
    first = Run(tmp_path)
    async with first:
        running = await first.submit(seconds=30)
        pending = [await first.submit(seconds=0.05) for _ in range(3)]
        await first.journal_is([running], pending)
        sim_pid = (await first.guardian.backends["comfyui"].status()).pid
    # Guardian is gone (the simulator is left running, on_guardian_stop = "leave"); now
    # the simulator dies too, with nobody watching.
    assert sim_pid is not None
    os.kill(sim_pid, signal.SIGKILL)
    second = Run(tmp_path, first.api_port, first.sim_port)
    async with second:
        event = await second.restored()
        assert event.reason == "restored 4 of 4 prompts"
        await second.http.post(second.sim + "/interrupt", json={"prompt_id": running})
        entries = await second.finished([running, *pending])
    assert run_order(entries) == [running, *pending]


async def test_restart_when_idle_waits_for_the_running_prompt(tmp_path: Path) -> None:
    async with Run(tmp_path) as run:
        running = await run.submit(seconds=2)
        # The first pending one starts next: cut by the restart, re-run first.
        pending = [await run.submit(seconds=1.0), await run.submit(seconds=0.05)]
        await run.journal_is([running], pending)
        listing = await run.guardian.queue_command("comfyui", "restart_when_idle", None)
        assert listing.message is not None and running in listing.message
        finished_first = False
        while not run.kinds(K.RESTART_STARTED):  # history lives until the restart
            if await run.history(running):
                finished_first = True
            await asyncio.sleep(0.02)
        assert finished_first  # the restart waited for the running prompt to finish
        event = await run.restored()
        assert event.values["skipped"] == 0 and running not in event.detail
        entries = await run.finished(pending)
        assert await run.history(running) == {}  # ran once, on the old server: not re-run
    assert run_order(entries) == pending


async def test_restart_every_is_a_planned_restart_between_jobs(tmp_path: Path) -> None:
    run = Run(tmp_path)
    target = run.config.targets[0]
    queue = target.queue.model_copy(update={"restart_every": 1.5})  # (>= 60 s in a config)
    run.config = run.config.model_copy(
        update={"targets": [target.model_copy(update={"queue": queue})]})
    run.guardian = Guardian(run.config)
    run.guardian.bus.subscribe(run._collect)
    async with run:
        running = await run.submit(seconds=2.5)
        pending = [await run.submit(seconds=1.0)]  # starts next: cut by the restart, re-run
        await run.journal_is([running], pending)
        finished_first = False
        while not run.kinds(K.RESTART_STARTED):
            if await run.history(running):
                finished_first = True
            await asyncio.sleep(0.02)
        assert finished_first  # due at 1.5 s, it waited for the prompt (2.5 s)
        assert run.kinds(K.RESTART_STARTED)[0].reason == "requested restart"
        await run.restored()
        await run.finished(pending)
