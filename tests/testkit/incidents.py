"""Test helpers: configs on tmp paths, result factories, a real local webhook receiver."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from guardian.config.schema import Config
from guardian.core.clock import Clock
from guardian.core.events import RecoveryEvent, RecoveryKind
from guardian.core.result import CheckResult, Status

SRC = Path(__file__).resolve().parents[2] / "src"


def make_config(tmp: Path, **sections: Any) -> Config:
    """A config with one critical target ``comfyui`` (http + disk checks), paths in tmp."""
    data: dict[str, Any] = {
        "guardian": {
            "log_dir": str(tmp / "logs"),
            "report_dir": str(tmp / "reports"),
            "state_dir": str(tmp / "state"),
        },
        "targets": [
            {
                "name": "comfyui",
                "description": "ComfyUI generation server",
                "checks": [
                    {"kind": "http", "url": "http://127.0.0.1:8188/system_stats"},
                    {"kind": "disk", "paths": [str(tmp)]},
                ],
            },
            {
                "name": "panel",
                "critical": False,
                "checks": [{"kind": "http", "url": "http://127.0.0.1:3000/api/health"}],
            },
        ],
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return Config.model_validate(data)


def result(
    clock: Clock,
    status: Status,
    *,
    target: str = "comfyui",
    check: str = "http",
    kind: str | None = None,
    reason: str = "",
    **values: Any,
) -> CheckResult:
    now = clock.now()
    return CheckResult(
        target=target,
        check=check,
        kind=kind or check,
        status=status,
        reason=reason or ("ok" if status is Status.OK else "connection refused"),
        values=values,
        started=now,
        finished=now,
        duration=0.01,
    )


def recovery(
    clock: Clock, kind: RecoveryKind, target: str = "comfyui", attempt: int = 0, reason: str = ""
) -> RecoveryEvent:
    return RecoveryEvent(target=target, kind=kind, time=clock.now(), attempt=attempt, reason=reason)


class Webhook:
    """A real HTTP server on 127.0.0.1 that records every POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = 200
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with hook.lock:
                    hook.paths.append(self.path)
                    try:
                        hook.bodies.append(json.loads(raw))
                    except ValueError:
                        hook.bodies.append({"raw": raw.decode("utf-8", "replace")})
                    status = hook.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def titles(self) -> list[str]:
        with self.lock:
            return [str(b.get("title", "")) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def utc(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")
