"""The read endpoints, answered from cached state only."""

from __future__ import annotations

from typing import Any

from guardian.core.result import CheckResult, Status
from testkit.api import (
    INCIDENTS,
    T0,
    client,
    healthy_results,
    make_view,
    result,
)


async def test_healthy_stack_reports_every_section() -> None:
    async with client(make_view()) as c:
        resp = await c.get("/api/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "healthy"
    assert body["uptime_seconds"] > 3600
    assert body["services"]["panel"] == {
        "state": "running", "pid": 4242, "restarts": 0, "breaker_open": False,
        "last_restart": None, "consecutive_failures": 0,
    }
    assert body["services"]["comfyui"]["restarts"] == 2
    assert set(body["services"]) == {"panel", "comfyui"}  # only targets with a service
    comfy = body["comfyui"]
    assert comfy["online"] is True and comfy["cuda"] is True
    assert comfy["queue"] == {"running": 1, "pending": 2}
    assert comfy["devices"][0]["vram_free_mb"] == 20000.0
    assert comfy["devices"][0]["vram_total_mb"] == 24563.5
    system = body["system"]
    assert [d["path"] for d in system["disks"]] == ["/", "/data"]
    assert system["memory"]["available_mb"] == 8192.0
    assert system["gpus"][0] == {
        "index": "0", "name": "NVIDIA GeForce RTX 4090", "util_percent": 37.0,
        "mem_used_mb": 4563.5, "mem_total_mb": 24563.5, "temp_c": 61.0,
    }
    assert {n: t["status"] for n, t in body["targets"].items()} == {
        "panel": "ok", "comfyui": "ok", "disk": "ok", "system": "ok"
    }


def _with(replacement: CheckResult) -> list[CheckResult]:
    return [
        replacement if (r.target, r.check) == (replacement.target, replacement.check) else r
        for r in healthy_results()
    ]


async def test_critical_failure_is_unhealthy_503_with_reason() -> None:
    down = result("comfyui", "comfyui", Status.FAILED, "connection refused", {"online": False})
    async with client(make_view(results=_with(down))) as c:
        health, ready = await c.get("/api/health"), await c.get("/readyz")
        live = await c.get("/livez")
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "unhealthy"
    assert body["targets"]["comfyui"] == {
        "status": "failed", "reason": "comfyui: connection refused", "critical": True,
        "starting": False, "checked_at": "2025-01-01T12:00:00.010000Z",
    }
    assert body["comfyui"]["online"] is False and body["comfyui"]["devices"] == []
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert live.status_code == 200


async def test_non_critical_failure_only_degrades() -> None:
    hot = result("system", "gpu", Status.FAILED, "GPU 0: 97 C, at/above critical 95 C",
                 {"gpu0.temp_c": 97})
    async with client(make_view(results=_with(hot))) as c:
        health, ready = await c.get("/api/health"), await c.get("/readyz")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["targets"]["system"]["critical"] is False
    assert ready.status_code == 200 and ready.json() == {"status": "degraded", "ready": True}


async def test_no_results_yet_is_not_ready_and_targets_unknown() -> None:
    async with client(make_view(results=[])) as c:
        ready, health = await c.get("/readyz"), await c.get("/api/health")
    assert ready.status_code == 503 and ready.json()["status"] == "starting"
    body = health.json()
    assert body["targets"]["panel"]["status"] == "unknown"
    assert body["services"]["panel"]["state"] == "unknown"
    assert body["comfyui"] is None and body["system"] == {"disks": [], "memory": None, "gpus": []}


async def test_service_state_derived_without_service_check() -> None:
    only_http = [result("panel", "http", Status.FAILED, "HTTP 502")]
    async with client(make_view(results=only_http)) as c:
        body = (await c.get("/api/health")).json()
    assert body["services"]["panel"]["state"] == "down"


async def test_reads_never_run_checks() -> None:
    async def forbidden(target: str | None) -> list[CheckResult]:
        raise AssertionError("a read endpoint ran checks")

    view = make_view(run_checks_fn=forbidden, incident_list=INCIDENTS)
    async with client(view) as c:
        for path in ("/api/health", "/api/status", "/readyz", "/metrics", "/api/incidents", "/"):
            assert (await c.get(path)).status_code == 200, path


async def test_hostile_values_do_not_break_health() -> None:
    weird: dict[str, Any] = {
        "online": "yes", "queue_running": float("nan"), "vram_free_mb.0": True,
        "vram_total_mb.x": "big", "free_gb.": 3, "device_type.0": None,
    }
    results = [
        result("comfyui", "comfyui", Status.DEGRADED, "odd", weird),
        result("disk", "disk", values={"free_gb./": float("inf")}),
        result("system", "memory", values={"available_mb": None}),
    ]
    async with client(make_view(results=results)) as c:
        resp = await c.get("/api/health")
    assert resp.status_code == 200
    comfy = resp.json()["comfyui"]
    assert comfy["online"] is False and comfy["queue"] == {"running": None, "pending": None}
    assert resp.json()["system"]["disks"] == []


async def test_status_has_history_capped_at_30_points() -> None:
    view = make_view()
    for i in range(45):
        view.state.record(result("panel", "http", duration=0.001 * (i + 1)))
    async with client(view) as c:
        body = (await c.get("/api/status")).json()
    panel = body["targets"][0]
    assert panel["name"] == "panel" and panel["has_service"] is True
    http = next(ch for ch in panel["checks"] if ch["check"] == "http")
    assert len(http["history"]) == 30
    assert http["history"][-1]["duration"] == 0.045
    assert [t["name"] for t in body["targets"]] == ["panel", "comfyui", "disk", "system"]
    assert body["incidents_open"] == []


async def test_incidents_list_detail_and_404() -> None:
    view = make_view(incident_list=INCIDENTS)
    async with client(view) as c:
        open_only = (await c.get("/api/incidents")).json()["incidents"]
        every = (await c.get("/api/incidents", params={"all": "true", "limit": 5})).json()
        one = await c.get("/api/incidents/2")
        missing = await c.get("/api/incidents/99")
        bad_limit = await c.get("/api/incidents", params={"limit": 0})
        status = (await c.get("/api/status")).json()
    assert [i["id"] for i in open_only] == [2]
    assert "report_markdown" not in open_only[0]
    assert [i["id"] for i in every["incidents"]] == [2, 1]
    assert one.status_code == 200 and one.json()["report_markdown"].startswith("# Incident 2")
    assert missing.status_code == 404 and missing.json() == {"detail": "no incident 99"}
    assert bad_limit.status_code == 422
    assert [i["id"] for i in status["incidents_open"]] == [2]


async def test_malformed_incident_from_store_is_skipped_not_500() -> None:
    view = make_view(incident_list=[{"id": "x", "status": "open"}, INCIDENTS[1]])
    async with client(view) as c:
        resp = await c.get("/api/incidents")
    assert resp.status_code == 200 and [i["id"] for i in resp.json()["incidents"]] == [2]


async def test_openapi_documents_typed_models() -> None:
    async with client(make_view()) as c:
        schema = (await c.get("/openapi.json")).json()
    ok = schema["paths"]["/api/health"]["get"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"]["$ref"].endswith("HealthResponse")
    assert "503" in ok
    assert {"HealthResponse", "StatusResponse", "IncidentDetail", "RestartResponse"} <= set(
        schema["components"]["schemas"]
    )
    assert T0.year == 2025


async def test_guardian_own_problems_are_reported_apart_from_targets() -> None:
    view = make_view()
    async with client(view) as c:
        body = (await c.get("/api/health")).json()
        assert body["guardian"] == {"ok": True, "problems": {}}
        view.state.set_problem("store", "store damaged: moved aside")
        resp = await c.get("/api/health")
        body = resp.json()
        # Guardian's trouble is never the stack's: still healthy, still 200.
        assert resp.status_code == 200 and body["status"] == "healthy"
        problems = {"store": "store damaged: moved aside"}
        assert body["guardian"] == {"ok": False, "problems": problems}
        view.state.clear_problem("store")
        assert (await c.get("/api/health")).json()["guardian"]["ok"] is True
