"""Restart and run-checks: bearer token, disabled without one, 404s, logging."""

from __future__ import annotations

import asyncio
import logging

import pytest

from guardian.api.restarts import RestartTicket
from guardian.core.result import CheckResult, Status
from testkit.api import TOKEN, client, make_view, result

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_restart_with_token_runs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    view = make_view()
    caplog.set_level(logging.INFO, logger="guardian.api")
    async with client(view) as c:
        resp = await c.post("/api/targets/comfyui/restart", headers=AUTH)
    assert resp.status_code == 202  # accepted, not done
    assert resp.json() == {
        "target": "comfyui", "state": "queued", "id": 1, "watch": "/api/status",
        "message": "restart #1 of comfyui queued; watch GET /api/status"
                   " (targets.comfyui.recovery)"}
    assert view.restarts == ["comfyui"]
    records = [r for r in caplog.records if getattr(r, "event", None) == "api_restart"]
    assert len(records) == 1 and records[0].__dict__["target"] == "comfyui"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer ünïcode".encode()},
    ],
)
async def test_missing_or_wrong_token_is_401(headers: dict[str, str | bytes]) -> None:
    view = make_view()
    async with client(view) as c:
        resp = await c.post("/api/targets/panel/restart", headers=headers)  # type: ignore[arg-type]
        run = await c.post("/api/checks/run", headers=headers)  # type: ignore[arg-type]
    assert resp.status_code == 401 and run.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert view.restarts == []


@pytest.mark.parametrize("token", ["", None])
async def test_no_token_configured_disables_mutations(token: str | None) -> None:
    view = make_view(token="")
    if token is None:
        view.config = view.config.model_copy(
            update={"api": view.config.api.model_copy(update={"token": None})}
        )
    async with client(view) as c:
        for headers in ({}, {"Authorization": "Bearer "}, AUTH):
            resp = await c.post("/api/targets/panel/restart", headers=headers)
            assert resp.status_code == 403
            assert resp.json() == {"detail": "mutating API disabled: set api.token"}
        assert (await c.post("/api/checks/run", headers=AUTH)).status_code == 403
    assert view.restarts == []


async def test_unknown_target_is_404_after_auth() -> None:
    view = make_view()
    async with client(view) as c:
        unknown = await c.post("/api/targets/nope/restart", headers=AUTH)
        unauth = await c.post("/api/targets/nope/restart")
        run = await c.post("/api/checks/run", params={"target": "nope"}, headers=AUTH)
    assert unknown.status_code == 404 and unauth.status_code == 401
    assert run.status_code == 404
    assert view.restarts == []


async def test_restart_when_not_running_is_503() -> None:
    view = make_view()

    async def not_running(target: str) -> RestartTicket:
        raise RuntimeError("Guardian is not running")

    view.request_restart = not_running  # type: ignore[method-assign]
    async with client(view) as c:
        resp = await c.post("/api/targets/panel/restart", headers=AUTH)
    assert resp.status_code == 503 and resp.json()["detail"] == "Guardian is not running"


async def test_requests_while_a_restart_is_in_flight_join_it_and_the_outcome_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    runs: list[str] = []

    async def slow(target: str) -> str:
        runs.append(target)
        await release.wait()
        return f"restarted {target}"

    view = make_view(restart_fn=slow)
    caplog.set_level(logging.INFO, logger="guardian.api")
    async with client(view) as c:
        first = await c.post("/api/targets/panel/restart", headers=AUTH)
        again = await c.post("/api/targets/panel/restart", headers=AUTH)
        release.set()
        for _ in range(100):  # let the restart task finish
            if any(getattr(r, "event", None) == "api_restart_done" for r in caplog.records):
                break
            await asyncio.sleep(0)
        later = await c.post("/api/targets/panel/restart", headers=AUTH)
    assert [r.status_code for r in (first, again, later)] == [202, 202, 202]
    assert [(r.json()["state"], r.json()["id"]) for r in (first, again, later)] == [
        ("queued", 1), ("coalesced", 1), ("queued", 2)]
    assert "already in progress, joined" in again.json()["message"]
    assert runs[:1] == ["panel"] and view.restarts == ["panel", "panel"]
    done = [r for r in caplog.records if getattr(r, "event", None) == "api_restart_done"]
    assert done and done[0].getMessage() == "manual restart #1 of panel: restarted panel"


async def test_run_checks_returns_fresh_results() -> None:
    calls: list[str | None] = []

    async def run(target: str | None) -> list[CheckResult]:
        calls.append(target)
        fresh = result("panel", "http", Status.FAILED, "HTTP 500")
        view.state.record(fresh)
        return [fresh]

    view = make_view(run_checks_fn=run)
    async with client(view) as c:
        resp = await c.post("/api/checks/run", params={"target": "panel"}, headers=AUTH)
    assert resp.status_code == 200
    body = resp.json()
    assert calls == ["panel"]
    assert body["status"] == "unhealthy"
    assert body["results"][0]["reason"] == "HTTP 500"
