"""A stand-in for the Next.js admin panel: ``GET /api/health`` with switchable faults.

With ``--comfyui-url`` the panel probes ComfyUI's ``/system_stats`` on every health request
(as the real panel does) and reports ``degraded`` while ComfyUI is down, so Guardian sees
the dependency between the two services. Run as
``python -m guardian.demo.panel --port 3000 [--comfyui-url URL] [--fault MODE]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any, ClassVar, TextIO

from guardian.demo.http import (
    COMMON_FAULTS,
    Reply,
    Request,
    SimApp,
    add_common_args,
    json_reply,
    serve_forever,
)

FAULT_MODES = COMMON_FAULTS | {"degraded", "unhealthy"}
PANEL_VERSION = "1.8.2"
COMFYUI_SERVICE = "OrchestratorComfyUI"


class PanelSim(SimApp):
    """The panel's health endpoint; optionally probes ComfyUI per request."""

    name: ClassVar[str] = "panel-sim"
    fault_modes: ClassVar[frozenset[str]] = FAULT_MODES

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        comfyui_url: str | None = None,
        probe_timeout: float = 1.0,
        exit_on_crash: bool = False,
        log_stream: TextIO | None = None,
    ) -> None:
        super().__init__(host, port, exit_on_crash=exit_on_crash, log_stream=log_stream)
        self.comfyui_url = comfyui_url.rstrip("/") if comfyui_url else None
        self.probe_timeout = probe_timeout

    def on_start(self) -> None:
        self.log(f"  ▲ Next.js 14.2.15\n  - Local:        {self.url}\n")
        self.log(" ✓ Ready in 412ms")

    def route(self, request: Request) -> Reply | None:
        if request.method == "GET" and request.path == "/api/health":
            body = self.health()
            return json_reply(body, 503 if body["status"] == "unhealthy" else 200)
        if request.method == "GET" and request.path == "/":
            page = b"<!DOCTYPE html><html><head><title>Orchestrator</title></head></html>"
            return Reply(200, page, "text/html; charset=utf-8")
        return None

    def probe_comfyui(self) -> dict[str, Any]:
        """One short ``/system_stats`` request: is ComfyUI answering, and how fast."""
        assert self.comfyui_url is not None
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(
                self.comfyui_url + "/system_stats", timeout=self.probe_timeout
            ) as response:
                response.read(1024 * 1024)
                running = response.status == 200
                error = None if running else f"HTTP {response.status}"
        except (OSError, urllib.error.URLError) as exc:
            running, error = False, str(getattr(exc, "reason", exc))
        service: dict[str, Any] = {
            "running": running,
            "latency_ms": round((time.monotonic() - t0) * 1000, 1),
        }
        if error:
            service["error"] = error
        return service

    def health(self) -> dict[str, Any]:
        services: dict[str, Any] = {}
        status = "healthy"
        if self.comfyui_url:
            services[COMFYUI_SERVICE] = self.probe_comfyui()
            if not services[COMFYUI_SERVICE]["running"]:
                status = "degraded"
                self.log(f" ⚠ {COMFYUI_SERVICE} unreachable: "
                         f"{services[COMFYUI_SERVICE].get('error')}")
        mode = self.fault.mode
        if mode in ("degraded", "unhealthy"):
            status = mode
        return {
            "status": status,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "services": services,
            "version": PANEL_VERSION,
            "uptime_s": round(time.time() - self.started_at, 1),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardian.demo.panel", description="Simulated admin panel."
    )
    add_common_args(parser, FAULT_MODES)
    parser.add_argument("--comfyui-url", default=None, help="probe this ComfyUI on /api/health")
    args = parser.parse_args(argv)
    app = PanelSim(args.host, args.port, comfyui_url=args.comfyui_url, exit_on_crash=True,
                   log_stream=sys.stdout)
    return serve_forever(app, args)


if __name__ == "__main__":
    sys.exit(main())
