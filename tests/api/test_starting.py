"""The stack's health while targets boot: degraded while anything is starting or failing,
unhealthy only for a critical target's real failure, never healthy while something is not
up yet. Real HTTP targets on 127.0.0.1, the real engine with its startup phases on a
FakeClock, the real API over uvicorn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from guardian.api.app import create_app, serve
from guardian.api.context import StaticView
from guardian.checks import CheckContext
from guardian.checks.registry import build_check
from guardian.cli.locate import Located
from guardian.cli.main import _daemon_view
from guardian.config.load import parse_config
from guardian.config.schema import Config
from guardian.core.clock import FakeClock
from guardian.core.result import CheckResult, Status
from guardian.core.state import State, aggregate
from guardian.engine.scheduler import Engine
from guardian.engine.startup import StartupPhases
from guardian.store.runfile import RuntimeInfo

STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Target:
    """A service on a fixed loopback port: refused until it has "booted"."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None

    async def up(self) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(answer, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


def config(api: Target, panel: Target) -> Config:
    return parse_config(f"""
[[targets]]
name = "api"
critical = true
recovery = {{ startup_timeout = {STARTUP_TIMEOUT} }}
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{api.port}/"
timeout = 2

[[targets]]
name = "panel"
critical = false
recovery = {{ startup_timeout = {STARTUP_TIMEOUT} }}
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{panel.port}/"
timeout = 2
""")


@dataclass
class Stack:
    clock: FakeClock
    engine: Engine
    view: StaticView
    api: Target
    panel: Target
    http: httpx.AsyncClient
    url: str

    async def cli_check(self, target: str) -> str:
        """What `guardian check --target T` says while this Guardian runs."""
        running = RuntimeInfo(1, 0.0, "", None, "", self.url)
        where = Located(self.view.config, running, "test")
        body = await asyncio.to_thread(_daemon_view, where, target)
        assert body is not None
        return str(body["status"])

    async def check(self) -> None:
        """One run of every check, as the scheduler would, on the fake clock."""
        await self.engine.run_once()

    async def read(self) -> tuple[int, dict[str, object], dict[str, object], int, str]:
        health = await self.http.get("/api/health")
        status = (await self.http.get("/api/status")).json()
        ready = await self.http.get("/readyz")
        return (health.status_code, health.json(), status, ready.status_code,
                ready.json()["status"])


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    api, panel = Target(), Target()
    cfg = config(api, panel)
    clock = FakeClock()
    state = State(cfg)
    startup = StartupPhases(cfg, clock)
    checks = [
        (t.name, build_check(c, CheckContext(t.name, clock, None)))
        for t in cfg.targets for c in t.checks
    ]
    engine = Engine(state, checks, clock, startup=startup)
    view = StaticView(config=cfg, state=state)
    server = await serve(create_app(view), "127.0.0.1", 0)
    startup.begin_all()  # Guardian starts: every target may be booting
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            yield Stack(clock, engine, view, api, panel, http, server.url)
    finally:
        await server.stop()
        await engine.aclose()
        await api.down()
        await panel.down()


def targets(status: dict[str, object]) -> dict[str, dict[str, object]]:
    return {t["name"]: t for t in status["targets"]}  # type: ignore[attr-defined,index]


async def test_never_healthy_while_a_target_is_starting(stack: Stack) -> None:
    # Nothing has reported yet: not healthy, not ready.
    code, health, status, ready, why = await stack.read()
    assert (code, health["status"], status["status"]) == (200, "degraded", "degraded")
    assert (ready, why) == (503, "starting")

    # Both still booting (connection refused, in their startup phase): the critical one's
    # failure is not a verdict yet, so degraded (200), but not ready to serve.
    await stack.check()
    code, health, status, ready, why = await stack.read()
    assert (code, health["status"], status["status"]) == (200, "degraded", "degraded")
    assert health["targets"]["api"]["starting"] is True  # type: ignore[index]
    assert health["targets"]["panel"]["starting"] is True  # type: ignore[index]
    assert targets(status)["api"]["status"] == "failed" and targets(status)["api"]["starting"]
    assert (ready, why) == (503, "starting")
    assert await stack.cli_check("api") == "degraded"

    # The critical target is up, the non-critical one still boots: degraded, ready.
    await stack.api.up()
    await stack.check()
    code, health, status, ready, why = await stack.read()
    assert (code, health["status"], status["status"]) == (200, "degraded", "degraded")
    assert health["targets"]["api"]["starting"] is False  # type: ignore[index]
    assert health["targets"]["panel"]["starting"] is True  # type: ignore[index]
    assert (ready, why) == (200, "degraded")

    # The panel's startup ran out: its failure counts now, and it is non-critical.
    await stack.clock.advance(STARTUP_TIMEOUT + 1)
    await stack.check()
    code, health, status, ready, _ = await stack.read()
    assert (code, health["status"]) == (200, "degraded")
    assert health["targets"]["panel"]["starting"] is False  # type: ignore[index]
    assert health["targets"]["panel"]["status"] == "failed"  # type: ignore[index]

    # Everything up: healthy at last.
    await stack.panel.up()
    await stack.check()
    code, health, status, ready, why = await stack.read()
    assert (code, health["status"], status["status"], ready) == (200, "healthy", "healthy", 200)

    # A restart in progress: its last results are still the good ones, yet it is not up.
    stack.view.recovery["panel"] = {"attempts": 1, "restarting": True}
    code, health, status, _, _ = await stack.read()
    assert (code, health["status"], status["status"]) == (200, "degraded", "degraded")
    assert targets(status)["panel"]["starting"] is True
    # The restart is done, but nothing has probed the new process yet: the good results
    # are the old process's, so still starting (it read healthy for up to a probe).
    await stack.clock.advance(2.0)  # the restart took a while
    up_since = stack.clock.monotonic()
    stack.view.recovery["panel"] = {"attempts": 1, "restarting": False,
                                    "up_since_mono": up_since}
    code, health, status, _, _ = await stack.read()
    assert (code, health["status"], targets(status)["panel"]["starting"]) == (
        200, "degraded", True)
    await stack.clock.advance(0.5)
    await stack.check()  # the first probe of the new process
    code, health, status, _, _ = await stack.read()
    assert (health["status"], targets(status)["panel"]["starting"]) == ("healthy", False)

    # The critical target fails after it was up: that is a failure, unhealthy (503).
    await stack.api.down()
    await stack.check()
    code, health, status, ready, why = await stack.read()
    assert (code, health["status"], status["status"]) == (503, "unhealthy", "unhealthy")
    assert health["targets"]["api"]["starting"] is False  # type: ignore[index]
    assert (ready, why) == (503, "unhealthy")
    assert await stack.cli_check("api") == "unhealthy"
    assert await stack.cli_check("panel") == "healthy"


async def test_a_critical_startup_that_timed_out_is_unhealthy(stack: Stack) -> None:
    await stack.panel.up()
    await stack.check()
    assert (await stack.read())[1]["status"] == "degraded"  # api booting
    await stack.clock.advance(STARTUP_TIMEOUT + 1)
    await stack.check()
    code, health, _, ready, _ = await stack.read()
    assert (code, health["status"], ready) == (503, "unhealthy", 503)
    assert "startup_timeout_s" in stack.view.state.latest("api", "http").values  # type: ignore[union-attr]


def test_aggregate_of_results_alone() -> None:
    """What `guardian check --local` uses (its results never carry startup: no phases)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def r(target: str, status: Status, startup: bool = False) -> CheckResult:
        return CheckResult(target, "http", "http", status, "", {}, now, now, 0.0,
                           startup=startup)

    crit = {"api": True, "panel": False}
    assert aggregate([r("api", Status.OK), r("panel", Status.OK)], crit) == "healthy"
    assert aggregate([r("api", Status.OK)], crit, expected=["api", "panel"]) == "degraded"
    assert aggregate([r("api", Status.FAILED, startup=True)], crit) == "degraded"
    assert aggregate([r("panel", Status.FAILED, startup=True), r("api", Status.OK)],
                     crit) == "degraded"
    assert aggregate([r("api", Status.FAILED), r("panel", Status.OK)], crit) == "unhealthy"
    assert aggregate([r("panel", Status.FAILED), r("api", Status.OK)], crit) == "degraded"
