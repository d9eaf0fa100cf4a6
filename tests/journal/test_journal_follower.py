"""The journal against in-process simulators and a real SQLite file: fed by status
broadcasts, quiet while nothing changes, restoring without duplicates, keeping secrets in
the store alone."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardian.config.schema import QueueJournalConfig
from guardian.core.clock import SystemClock
from guardian.demo.comfyui.prompts import job_prompt
from guardian.demo.comfyui.server import ComfyUISim
from guardian.journal.follower import TargetJournal
from guardian.journal.restore import RestoreOutcome
from guardian.journal.store import JournalStore
from guardian.store.db import Database

pytestmark = pytest.mark.timeout(60)
SECRET = "sk-comfy-org-SECRET-unit-0123456789"


class Harness:
    def __init__(self, tmp: Path, sim: ComfyUISim) -> None:
        self.tmp = tmp
        self.sim = sim
        self.db = Database(tmp / "state" / "guardian.db", recover=True)
        self.store = JournalStore(self.db)
        self.outcomes: list[RestoreOutcome] = []
        self.journal = self.make()
        self.task: asyncio.Task[None] | None = None
        self.http = httpx.AsyncClient(trust_env=False, timeout=5)

    def make(self, *, dry_run: bool = False) -> TargetJournal:
        cfg = QueueJournalConfig(poll_interval=0.1)
        return TargetJournal("comfyui", self.sim.url, 2.0, cfg, self.store, SystemClock(),
                             self.tmp / "reports",
                             lambda _t, outcome, _q: self.outcomes.append(outcome),
                             dry_run=dry_run)

    async def replace_server(self) -> None:
        """Kill the simulator (a death the journal sees) and start a fresh one on its
        port, as recovery's restart would (the journal restores once told it is done)."""
        self.journal.restarting = True  # as recovery says while it restarts
        port = self.sim.port
        self.sim.stop()  # the process is gone: refused connections
        await self.until(lambda: self.journal.state.restore_due, "a death is seen")
        self.sim = ComfyUISim(port=port, device="cpu", exec_time=0.01).start()

    async def start(self) -> None:
        await self.journal.load()
        self.task = asyncio.create_task(self.journal.run())

    async def submit(self, prompt_id: str | None = None, seconds: float = 0.01) -> str:
        prompt_id = prompt_id or str(uuid.uuid4())
        body = {"prompt": job_prompt("sleep", seconds, color=hash(prompt_id) % 0xFFFFFF),
                "prompt_id": prompt_id, "client_id": "c1",
                "extra_data": {"api_key_comfy_org": SECRET}}
        r = await self.http.post(self.sim.url + "/prompt", json=body)
        assert r.status_code == 200, r.text
        return prompt_id

    async def until(self, predicate: Callable[[], Any], what: str) -> None:
        for _ in range(400):
            if predicate():
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"timed out waiting until {what}")

    def ids(self) -> list[str]:
        return [p.prompt_id for _, p in sorted(
            self.journal.items.values(), key=lambda x: (x[0] != "running", x[1].number))]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.http.aclose()
        self.db.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    sim = ComfyUISim(device="cpu", exec_time=0.01).start()
    h = Harness(tmp_path, sim)
    try:
        yield h
    finally:
        await h.close()
        h.sim.stop()


async def test_status_broadcasts_feed_the_journal_and_idle_costs_no_reads(
        harness: Harness) -> None:
    await harness.start()
    await harness.until(lambda: harness.journal.online, "the first read")
    harness.sim.set_fault("pending_idle")
    ids = [await harness.submit() for _ in range(3)]
    await harness.until(lambda: harness.ids() == ids, "the journal follows the queue")
    reads = harness.journal.reads
    await asyncio.sleep(1.0)  # nothing changes: no broadcast, no read (fallback is 30 s)
    assert harness.journal.reads == reads
    harness.sim.set_fault("none")
    await harness.until(lambda: harness.ids() == [], "finished prompts leave the journal")


async def test_restore_skips_what_the_server_already_has(harness: Harness) -> None:
    await harness.start()
    await harness.until(lambda: harness.journal.online, "the first read")
    harness.sim.set_fault("pending_idle")
    ids = [await harness.submit() for _ in range(4)]
    await harness.until(lambda: harness.ids() == ids, "4 journaled")
    harness.journal.restarting = True  # as recovery says while it restarts
    port = harness.sim.port
    harness.sim.stop()  # the process is gone: refused connections
    await harness.until(lambda: harness.journal.state.restore_due, "a death is seen")
    harness.sim = ComfyUISim(port=port, device="cpu", exec_time=0.01).start()
    # Before Guardian restores: one prompt already ran again on the new server (a client
    # re-submitted it), another is queued there again (an extension restored it).
    await harness.submit(ids[0])
    await harness.until(lambda: bool(harness.sim.history_entry(ids[0])), "it ran")
    harness.sim.set_fault("pending_idle")
    await harness.submit(ids[1])
    harness.journal.restart_done()
    await harness.until(lambda: bool(harness.outcomes), "the restore")
    outcome = harness.outcomes[0]
    assert outcome.skipped == ids[:2] and outcome.restored == ids[2:]
    queue = harness.sim.queue()
    pending = sorted(queue["queue_pending"], key=lambda i: i[0])
    assert [i[1] for i in pending] == [ids[2], ids[3], ids[1]]  # restored ahead, once each
    assert pending[0][3]["api_key_comfy_org"] == SECRET  # re-run with its credentials


async def test_secrets_stay_in_the_store(harness: Harness, tmp_path: Path) -> None:
    await harness.start()
    await harness.until(lambda: harness.journal.online, "the first read")
    harness.sim.set_fault("pending_idle")
    prompt_id = await harness.submit()
    await harness.until(lambda: harness.ids() == [prompt_id], "journaled")
    db = tmp_path / "state" / "guardian.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    if os.name == "posix":
        for side in ("guardian.db-wal", "guardian.db-shm"):
            path = tmp_path / "state" / side
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
    journaled = await asyncio.to_thread(harness.store.load, "comfyui")
    assert journaled.pending[0].extra_data["api_key_comfy_org"] == SECRET  # to re-run it
    from guardian.journal.restore import save_quarantined

    saved = save_quarantined(tmp_path / "reports", "comfyui", journaled.pending[0], "test")
    assert SECRET not in saved.read_text()
    assert json.loads(saved.read_text())["prompt_id"] == prompt_id


async def test_release_and_drop_a_quarantined_prompt(harness: Harness, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from guardian.checks.comfyui.client import QueuedPrompt
    from guardian.config.load import load_config
    from guardian.core.events import EventBus
    from guardian.journal.keeper import QueueKeeper

    cfg = tmp_path / "g.toml"
    cfg.write_text(f"""
[guardian]
report_dir = {json.dumps(str(tmp_path / "reports"))}
[[targets]]
name = "comfyui"
[[targets.checks]]
kind = "comfyui"
url = "{harness.sim.url}"
""")
    keeper = QueueKeeper(load_config(cfg), EventBus(), SystemClock(), harness.db)
    kept, dropped = str(uuid.uuid4()), str(uuid.uuid4())
    for pid in (kept, dropped):
        prompt = QueuedPrompt(3.0, pid, job_prompt("sleep", 0.01, color=hash(pid) % 999),
                              {"client_id": "c1", "api_key_comfy_org": SECRET}, ["2"])
        await asyncio.to_thread(keeper.store.quarantine, "comfyui", prompt, "test",
                                datetime.now(UTC), None)
    message = await keeper.release("comfyui", kept)
    assert message == f"released prompt {kept} to comfyui"
    await harness.until(lambda: bool(harness.sim.history_entry(kept)), "it ran")
    entry = harness.sim.history_entry(kept)[kept]
    assert entry["prompt"][3]["client_id"] == "c1"
    assert await keeper.drop("comfyui", dropped) == f"dropped quarantined prompt {dropped} " \
        "of comfyui"
    assert await keeper.quarantine("comfyui") == []
    with pytest.raises(KeyError):
        await keeper.drop("comfyui", dropped)
    assert harness.sim.history_entry(dropped) == {}
    await keeper.aclose()


async def test_memory_pressure_while_busy_restarts_between_jobs(harness: Harness,
                                                               tmp_path: Path) -> None:
    """The ladder's verdict (critical memory, the job progressing: no restart now) becomes
    one restart request through recovery's policy once the running prompt has finished."""
    from datetime import UTC, datetime

    from guardian.config.load import load_config
    from guardian.core.events import EventBus, RecoveryEvent, RecoveryKind
    from guardian.journal.keeper import QueueKeeper

    cfg = tmp_path / "g.toml"
    cfg.write_text(f"""
[[targets]]
name = "comfyui"
[targets.queue]
poll_interval = 0.1
[[targets.checks]]
kind = "comfyui"
url = "{harness.sim.url}"
""")
    bus = EventBus()
    keeper = QueueKeeper(load_config(cfg), bus, SystemClock(), harness.db)
    asked: list[tuple[str, str, bool]] = []
    running = await harness.submit(seconds=1.0)

    def request(target: str, reason: str) -> None:
        asked.append((target, reason, bool(harness.sim.history_entry(running))))

    async def restart(_target: str) -> str:
        raise AssertionError("a ladder's restart goes through recovery's policy")

    await keeper.start(restart, request)
    journal = keeper.journals["comfyui"]
    await harness.until(lambda: running in journal.items, "journaled")
    verdict = RecoveryEvent(
        target="comfyui", kind=RecoveryKind.REMEDIATION_FAILED, time=datetime.now(UTC),
        reason="memory_pressure", detail="/free released 0 MB; still vram.0 100 MB free",
        values={"condition": "memory_pressure", "restart_between_jobs": True})
    bus.publish(verdict)
    bus.publish(verdict)  # the ladder again, while the job still runs: still one restart
    await asyncio.sleep(0.3)
    assert asked == []  # the job runs: nothing yet
    await harness.until(lambda: bool(asked), "the restart request")
    await asyncio.sleep(0.3)
    assert len(asked) == 1
    target, reason, finished = asked[0]
    assert target == "comfyui" and reason.startswith("restart between jobs: /free released")
    assert finished  # asked only after the running prompt had finished
    await keeper.aclose()


async def test_a_dry_run_tells_what_it_would_restore_and_leaves_the_queue_alone(
        harness: Harness, tmp_path: Path) -> None:
    harness.journal = harness.make(dry_run=True)
    await harness.start()
    await harness.until(lambda: harness.journal.online, "the first read")
    running = await harness.submit(seconds=30)
    pending = [await harness.submit() for _ in range(2)]
    await harness.until(lambda: harness.ids() == [running, *pending], "3 journaled")
    await asyncio.to_thread(harness.store.add_death, "comfyui", running)  # an earlier crash
    await harness.replace_server()
    harness.journal.restart_done()
    await harness.until(lambda: bool(harness.outcomes), "the restore")
    outcome = harness.outcomes[0]
    assert outcome.dry_run and outcome.restored == []
    assert outcome.would_restore == pending and outcome.quarantined == [running]
    assert outcome.headline() == "dry run: would restore 2 of 3 prompts; none re-submitted"
    assert not harness.journal.state.restore_due
    await asyncio.sleep(0.5)  # had anything been sent, it would have run by now
    assert harness.sim.queue() == {"queue_running": [], "queue_pending": []}
    for pid in (running, *pending):
        assert harness.sim.history_entry(pid) == {}
    assert await asyncio.to_thread(harness.store.quarantined, "comfyui") == []
    assert not (tmp_path / "reports").exists()  # no quarantine file saved either
    await harness.until(lambda: harness.ids() == [], "the journal follows the live queue")


async def test_a_dry_run_neither_releases_nor_drops(harness: Harness, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from guardian.checks.comfyui.client import QueuedPrompt
    from guardian.config.load import load_config
    from guardian.core.events import EventBus
    from guardian.journal.keeper import QueueKeeper

    cfg = tmp_path / "g.toml"
    cfg.write_text(f"""
[guardian]
dry_run = true
report_dir = {json.dumps(str(tmp_path / "reports"))}
[[targets]]
name = "comfyui"
[[targets.checks]]
kind = "comfyui"
url = "{harness.sim.url}"
""")
    keeper = QueueKeeper(load_config(cfg), EventBus(), SystemClock(), harness.db)
    pid = str(uuid.uuid4())
    prompt = QueuedPrompt(3.0, pid, job_prompt("sleep", 0.01, color=7), {"client_id": "c1"},
                          ["2"])
    await asyncio.to_thread(keeper.store.quarantine, "comfyui", prompt, "test",
                            datetime.now(UTC), None)
    assert await keeper.release("comfyui", pid) == f"dry run: would release prompt {pid} " \
        "to comfyui"
    assert await keeper.drop("comfyui", pid) == f"dry run: would drop quarantined prompt " \
        f"{pid} of comfyui"
    await asyncio.sleep(0.3)
    assert harness.sim.history_entry(pid) == {} and harness.sim.queue()["queue_pending"] == []
    assert [q.prompt.prompt_id for q in await keeper.quarantine("comfyui")] == [pid]
    with pytest.raises(KeyError):
        await keeper.drop("comfyui", "unknown")
    await keeper.aclose()


API_NODE = "GuardianPartnerNode"


def partner_node_info() -> dict[str, Any]:
    """An API node as ComfyUI lists one: the comfy.org credentials among its hidden
    inputs (as ``GeminiImageNode`` and the other partner nodes declare them)."""
    return {
        "input": {"required": {"images": ["IMAGE"]},
                  "hidden": {"auth_token": "AUTH_TOKEN_COMFY_ORG",
                             "comfy_api_key": "API_KEY_COMFY_ORG", "unique_id": "UNIQUE_ID"}},
        "input_order": {"required": ["images"], "hidden": ["auth_token", "comfy_api_key",
                                                           "unique_id"]},
        "output": ["IMAGE"], "output_is_list": [False], "output_name": ["IMAGE"],
        "name": API_NODE, "display_name": API_NODE, "description": "", "api_node": True,
        "python_module": "comfy_api_nodes.nodes_guardian", "category": "api node",
        "output_node": False,
    }


async def test_a_prompt_whose_credentials_comfyui_withheld_is_lost_and_said_so(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Newer ComfyUI keeps API-node credentials out of /queue: such a prompt would run
    without its owner's key. Not re-submitted; lost, reason credentials, named. One that
    carries them (0.3.64 shows them) is restored with them; one without API nodes too."""
    from guardian.demo.comfyui import prompts

    monkeypatch.setitem(prompts.NODE_INFO, API_NODE, partner_node_info())
    await harness.start()
    await harness.until(lambda: harness.journal.online, "the first read")
    harness.sim.set_fault("pending_idle")

    async def partner(extra: dict[str, Any]) -> str:
        prompt_id = str(uuid.uuid4())
        graph = job_prompt("sleep", 0.01, color=hash(prompt_id) % 0xFFFFFF)
        graph["3"] = {"class_type": API_NODE, "inputs": {"images": ["1", 0]}}
        r = await harness.http.post(harness.sim.url + "/prompt", json={
            "prompt": graph, "prompt_id": prompt_id, "client_id": "c1", "extra_data": extra})
        assert r.status_code == 200, r.text
        return prompt_id

    withheld = await partner({})  # what the journal sees of it on a newer ComfyUI
    keyed = await partner({"api_key_comfy_org": SECRET})
    plain = await harness.submit()
    await harness.until(lambda: harness.ids() == [withheld, keyed, plain], "3 journaled")
    await harness.replace_server()
    harness.sim.set_fault("pending_idle")
    harness.journal.restart_done()
    await harness.until(lambda: bool(harness.outcomes), "the restore")
    outcome = harness.outcomes[0]
    assert outcome.restored == [keyed, plain]
    assert outcome.headline() == "restored 2 of 3 prompts"
    assert [(pid, reason) for pid, reason, _ in outcome.lost] == [(withheld, "credentials")]
    assert outcome.lost[0][2] == (
        f"it uses API nodes ({API_NODE}) whose credentials ComfyUI did not show in /queue: "
        "not re-run without them; queue it again from its client")
    pending = sorted(harness.sim.queue()["queue_pending"], key=lambda i: i[0])
    assert [i[1] for i in pending] == [keyed, plain]
    assert pending[0][3]["api_key_comfy_org"] == SECRET
