"""The queue journal end to end: one whole Guardian over a real simulator process.

:class:`Run` starts the runtime (API with a token, a ``comfyui`` target whose process is the
simulator, a queue journal in a real SQLite file) and collects what recovery and the
journal publish; the journal tests drive it with real prompts and real signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from guardian.checks.comfyui.client import ComfyUIError
from guardian.checks.comfyui.websocket import StatusStream
from guardian.config.load import load_config
from guardian.core.events import Event, RecoveryEvent, RecoveryKind
from guardian.demo.comfyui.prompts import job_prompt
from guardian.demo.stack import free_port
from guardian.runtime import Guardian

K = RecoveryKind
SECRET = "sk-comfy-org-SECRET-0123456789abcdef"
TOKEN = "journal-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_config(tmp: Path, api_port: int, sim_port: int, extra: str = "") -> Path:
    cfg = tmp / "g.toml"
    argv = [sys.executable, "-m", "guardian.demo.comfyui.server", "--port", str(sim_port),
            "--device", "cpu"]
    cfg.write_text(f"""
[guardian]
log_dir = {json.dumps(str(tmp / "logs"))}
report_dir = {json.dumps(str(tmp / "reports"))}
state_dir = {json.dumps(str(tmp / "state"))}
jitter = 0
[api]
port = {api_port}
token = "{TOKEN}"
[[targets]]
name = "comfyui"
[targets.service]
backend = "process"
command = {json.dumps(argv)}
log_file = {json.dumps(str(tmp / "logs" / "comfyui.log"))}
on_guardian_stop = "leave"
[targets.recovery]
grace_period = 0
cooldown = 0
min_uptime = 0.5
[targets.queue]
poll_interval = 0.2
{extra}
[[targets.checks]]
kind = "comfyui"
url = "http://127.0.0.1:{sim_port}"
interval = 1
timeout = 0.8
""")
    return cfg


class Run:
    """One Guardian over one simulator, with what it published."""

    def __init__(self, tmp: Path, api_port: int | None = None, sim_port: int | None = None,
                 extra: str = "") -> None:
        self.tmp = tmp
        self.api_port = api_port or free_port()
        self.sim_port = sim_port or free_port()
        self.config = load_config(write_config(tmp, self.api_port, self.sim_port, extra))
        self.guardian = Guardian(self.config)
        self.events: list[RecoveryEvent] = []
        self.guardian.bus.subscribe(self._collect)
        self.sim = f"http://127.0.0.1:{self.sim_port}"
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.http = httpx.AsyncClient(trust_env=False, timeout=5)

    def retarget(self, **update: Any) -> None:
        """Change the target's config (before ``async with``): a new Guardian over it."""
        target = self.config.targets[0]
        self.config = self.config.model_copy(
            update={"targets": [target.model_copy(update=update)]})
        self.guardian = Guardian(self.config)
        self.guardian.bus.subscribe(self._collect)

    def _collect(self, event: Event) -> None:
        if isinstance(event, RecoveryEvent):
            self.events.append(event)

    async def __aenter__(self) -> Run:
        await self.guardian.start()
        await self.until(self.answers, "the simulator answers")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.guardian.stop()

    async def answers(self) -> bool:
        try:
            return (await self.http.get(self.sim + "/queue")).status_code == 200
        except httpx.HTTPError:
            return False

    async def until(self, predicate: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting until {what}")

    async def submit(self, kind: str = "sleep", seconds: float = 0.3, **extra: Any) -> str:
        prompt_id = str(uuid.uuid4())
        body = {"prompt": job_prompt(kind, seconds, color=hash(prompt_id) % 0xFFFFFF),
                "prompt_id": prompt_id, "client_id": "user-a",
                "extra_data": {"api_key_comfy_org": SECRET,
                               "extra_pnginfo": {"workflow": {"nodes": [], "id": prompt_id}}},
                **extra}
        r = await self.http.post(self.sim + "/prompt", json=body)
        assert r.status_code == 200, r.text
        return prompt_id

    def journaled(self) -> list[tuple[str, str]]:
        assert self.guardian.queue is not None
        view = self.guardian.queue.view("comfyui")
        assert view is not None
        return [(str(j["state"]), str(j["prompt_id"])) for j in view.journal]

    async def journal_is(self, running: list[str], pending: list[str]) -> None:
        want = [("running", p) for p in running] + [("pending", p) for p in pending]

        async def same() -> bool:
            return self.journaled() == want
        await self.until(same, f"the journal holds {want}", 10)

    async def kill9(self) -> int:
        status = await self.guardian.backends["comfyui"].status()
        assert status.pid is not None
        os.kill(status.pid, signal.SIGKILL)
        return status.pid

    async def restored(self, count: int = 1) -> RecoveryEvent:
        async def seen() -> bool:
            return len(self.kinds(K.QUEUE_RESTORED)) >= count
        await self.until(seen, f"{count} restore(s)")
        return self.kinds(K.QUEUE_RESTORED)[count - 1]

    def kinds(self, kind: RecoveryKind) -> list[RecoveryEvent]:
        return [e for e in self.events if e.kind is kind]

    async def history(self, prompt_id: str) -> dict[str, Any]:
        """The prompt's history entry; none while the simulator is being restarted (a read
        cut by Guardian's own restart is not an answer)."""
        try:
            r = await self.http.get(f"{self.sim}/history/{prompt_id}")
        except httpx.TransportError:
            return {}
        data: dict[str, Any] = r.json()
        return data

    async def finished(self, ids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
        async def done() -> bool:
            return all([await self.history(p) for p in ids])
        await self.until(done, f"{len(ids)} prompts finished", timeout)
        return {p: (await self.history(p))[p] for p in ids}


def started_at(entry: dict[str, Any]) -> int:
    for name, data in entry["status"]["messages"]:
        if name == "execution_start":
            return int(data["timestamp"])
    raise AssertionError("no execution_start")


def run_order(entries: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(entries, key=lambda p: (started_at(entries[p]), entries[p]["prompt"][0]))


class NoWebsocket(StatusStream):
    """A ComfyUI behind a proxy that refuses websocket upgrades: the journal learns of
    queue changes only from its periodic reads."""

    async def connect(self) -> None:
        raise ComfyUIError("websocket: the proxy refused the upgrade")
