"""The panel simulator's /api/health: follows ComfyUI's reachability and its own faults."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace

import httpx
import pytest

from guardian.demo.comfyui.server import ComfyUISim
from guardian.demo.panel import COMFYUI_SERVICE, PanelSim


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def panel(comfy: ComfyUISim) -> Iterator[PanelSim]:
    sim = PanelSim(comfyui_url=comfy.url, probe_timeout=0.5).start()
    try:
        yield sim
    finally:
        sim.stop()


def get(sim: PanelSim, path: str = "/api/health", timeout: float = 5) -> httpx.Response:
    return httpx.get(sim.url + path, timeout=timeout, trust_env=False)


def test_healthy_when_comfyui_answers(panel: PanelSim) -> None:
    r = get(panel)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "healthy"
    assert list(body) == ["status", "timestamp", "services", "version", "uptime_s"]
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    service = body["services"][COMFYUI_SERVICE]
    assert service["running"] is True and service["latency_ms"] >= 0


def test_degraded_when_comfyui_is_down(comfy: ComfyUISim, panel: PanelSim) -> None:
    comfy.stop()
    body = get(panel).json()
    assert body["status"] == "degraded"
    assert body["services"][COMFYUI_SERVICE]["running"] is False
    assert "refused" in body["services"][COMFYUI_SERVICE]["error"].lower()


def test_degraded_when_comfyui_answers_500(comfy: ComfyUISim, panel: PanelSim) -> None:
    comfy.set_fault("error500")
    assert get(panel).json()["status"] == "degraded"


def test_without_comfyui_url_no_services() -> None:
    sim = PanelSim().start()
    try:
        assert get(sim).json()["services"] == {}
        assert get(sim, "/").headers["content-type"].startswith("text/html")
        assert get(sim, "/missing").status_code == 404
    finally:
        sim.stop()


def test_probe_of_a_dead_port_is_quick() -> None:
    sim = PanelSim(comfyui_url=f"http://127.0.0.1:{closed_port()}").start()
    try:
        t0 = time.monotonic()
        assert get(sim).json()["status"] == "degraded"
        assert time.monotonic() - t0 < 2
    finally:
        sim.stop()


def test_status_faults(panel: PanelSim) -> None:
    panel.set_fault("degraded")
    r = get(panel)
    assert (r.status_code, r.json()["status"]) == (200, "degraded")
    panel.set_fault("unhealthy")
    r = get(panel)
    assert (r.status_code, r.json()["status"]) == (503, "unhealthy")
    panel.set_fault("error500")
    assert get(panel).status_code == 500
    panel.set_fault("none")
    assert get(panel).json()["status"] == "healthy"


def test_hang_slow_and_crash(panel: PanelSim, h: SimpleNamespace) -> None:
    with httpx.Client(base_url=panel.url, trust_env=False, timeout=5) as control:
        assert control.post("/__sim/fault", json={"mode": "hang"}).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            get(panel, timeout=0.3)
        control.post("/__sim/fault", json={"mode": "slow", "delay": 0.3})
        t0 = time.monotonic()
        assert get(panel).status_code == 200 and time.monotonic() - t0 >= 0.3
        assert control.post("/__sim/fault", json={"mode": "vram_leak"}).status_code == 400
        control.post("/__sim/fault", json={"mode": "crash"})
    h.wait_for(lambda: panel.crashed)
    with pytest.raises(httpx.ConnectError):
        get(panel, timeout=1)
