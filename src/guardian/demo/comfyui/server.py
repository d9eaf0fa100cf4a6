"""A faithful stand-in for ComfyUI's HTTP API, with switchable faults.

Shapes follow real ComfyUI 0.3.64 captures field for field (``shared/comfyui/captures``):
5-element queue items, ``{}`` history while a prompt is queued or running, identical
resubmits served from cache, 400 validation bodies, a plain-text 500 for malformed JSON,
every route also under ``/api``. Only three node classes exist (EmptyImage, PreviewImage,
SaveImage), which is all a model-free canary needs.

This module holds the HTTP routes; :mod:`~guardian.demo.comfyui.prompts` the node classes,
validation and queue model; :mod:`~guardian.demo.comfyui.executor` the worker that runs
prompts and the execution faults.

Run it as ``python -m guardian.demo.comfyui.server --port 8188 [--fault MODE]`` or in-process
with :class:`ComfyUISim`. Faults: see :data:`FAULT_MODES` and ``POST /__sim/fault``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import uuid
from typing import Any, ClassVar, TextIO

from guardian.demo.comfyui.executor import PromptExecutor
from guardian.demo.comfyui.prompts import (
    BUSY_NODE,
    NODE_INFO,
    SLEEP_NODE,
    Validation,
    error_reason,
    job_prompt,
    validate_prompt,
)
from guardian.demo.http import (
    COMMON_FAULTS,
    BadRequest,
    Fault,
    Reply,
    Request,
    add_common_args,
    json_reply,
    parse_json_body,
    serve_forever,
    text_reply,
)

FAULT_MODES = COMMON_FAULTS | {
    "vram_leak",  # vram_free drops by leak_mb per /system_stats call
    "stuck_running",  # the running prompt sleeps until the fault clears (ignores /interrupt)
    "pending_idle",  # prompts stay pending, nothing runs
    "canary_fail",  # every execution ends in an execution_error
    "oom",  # every execution ends in a CUDA out-of-memory execution_error
}

COMFYUI_VERSION = "0.3.64"
PYTORCH_VERSION = "2.8.0+cu128"
MIB = 1024**2
GIB = 1024**3

FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
EXTENSIONS = [
    "/extensions/core/groupNode.js",
    "/extensions/core/clipspace.js",
    "/extensions/core/widgetInputs.js",
    "/extensions/core/groupNodeManage.js",
]

__all__ = ["BUSY_NODE", "NODE_INFO", "SLEEP_NODE", "ComfyUISim", "job_prompt"]


class ComfyUISim(PromptExecutor):
    """ComfyUI's HTTP API with a one-at-a-time executor thread and fault switches."""

    name: ClassVar[str] = "comfyui-sim"
    sigterm_kills: ClassVar[bool] = True  # main.py installs no handler: killed, -15
    fault_modes: ClassVar[frozenset[str]] = FAULT_MODES

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        device: str = "cuda",
        exec_time: float = 0.05,
        exit_on_crash: bool = False,
        log_stream: TextIO | None = None,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError("device must be 'cpu' or 'cuda'")
        super().__init__(host, port, exec_time=exec_time, exit_on_crash=exit_on_crash,
                         log_stream=log_stream)
        self.device = device
        self.interrupts = 0  # POST /interrupt requests received

    # ------------------------------------------------------------------ lifecycle

    def boot_banner(self) -> None:
        """What ComfyUI 0.3.64 prints before it opens its port (capture
        ``boot_timeline.json``, less its model-specific warnings and failed imports)."""
        vram_mb = self._device_stats()["vram_total"] // MIB
        ram_mb = self._ram()[0] // MIB
        self.log("Checkpoint files will always be loaded safely.")
        self.log(f"Total VRAM {vram_mb} MB, total RAM {ram_mb} MB")
        self.log(f"pytorch version: {PYTORCH_VERSION}")
        if self.device == "cuda":
            self.log("Set vram state to: NORMAL_VRAM")
            self.log(f"Device: {self._device_stats()['name']}")
        else:
            self.log("Set vram state to: DISABLED")
            self.log("Device: cpu")
        self.log("Using pytorch attention" if self.device == "cuda" else
                 "Using sub quadratic optimization for attention, if you have memory or speed "
                 "issues try using: --use-split-cross-attention")
        self.log(f"Python version: {sys.version}")
        self.log(f"ComfyUI version: {COMFYUI_VERSION}")
        self.log("ComfyUI frontend version: 1.27.10")
        self.log("[Prompt Server] web root: venv/lib/python3.11/site-packages/"
                 "comfyui_frontend_package/static")
        self.log("\nImport times for custom nodes:")
        self.log("   0.0 seconds: ComfyUI/custom_nodes/websocket_image_save.py\n")
        for line in ("Context impl SQLiteImpl.", "Will assume non-transactional DDL.",
                     "No target revision found."):
            self.log(line)

    def on_start(self) -> None:
        self.start_worker()
        self.log("Starting server\n")
        self.log(f"To see the GUI go to: {self.url}")

    def on_stop(self) -> None:
        self.join_worker()

    def on_fault(self, fault: Fault) -> None:
        if fault.mode != "vram_leak":
            with self.cond:
                self._leaked = 0

    # ------------------------------------------------------------------ routes

    def route(self, request: Request) -> Reply | None:
        path = request.path
        if path.startswith("/api/"):
            path = path[4:]
        get = request.method == "GET"
        post = request.method == "POST"
        if get and path == "/system_stats":
            return json_reply(self.system_stats())
        if path == "/queue":
            if get:
                return json_reply(self.queue())
            if post:
                return self._post_queue(request)
        if path == "/prompt":
            if get:
                return json_reply({"exec_info": {"queue_remaining": self.queue_remaining()}})
            if post:
                return self._post_prompt(request)
        if path == "/history":
            if get:
                return self._get_history(request)
            if post:
                return self._post_history(request)
        if get and path.startswith("/history/"):
            return json_reply(self.history_entry(path[len("/history/"):]))
        if post and path == "/interrupt":
            return self._post_interrupt(request)
        if post and path == "/free":
            return self._post_free(request)
        if get and path == "/object_info":
            return json_reply(NODE_INFO)
        if get and path.startswith("/object_info/"):
            name = path[len("/object_info/"):]
            return json_reply({name: NODE_INFO[name]} if name in NODE_INFO else {})
        if get and path == "/features":
            return json_reply(FEATURES)
        if get and path == "/embeddings":
            return json_reply([])
        if get and path == "/extensions":
            return json_reply(EXTENSIONS)
        if get and path in ("/", ""):
            page = "<!DOCTYPE html><html><head><title>ComfyUI</title></head><body></body></html>"
            return Reply(200, page.encode(), "text/html; charset=utf-8")
        if path in ("/system_stats", "/object_info", "/features", "/embeddings", "/extensions",
                    "/interrupt", "/free") or path.startswith("/history/"):
            return text_reply("405: Method Not Allowed", 405)
        return None

    # ------------------------------------------------------------------ state views

    def _ram(self) -> tuple[int, int]:
        return (64 * GIB, 51 * GIB + 300 * MIB) if self.device == "cuda" else (
            25276502016, 24232742912)

    def _device_stats(self) -> dict[str, Any]:
        if self.device == "cpu":
            total, free = self._ram()
            return {"name": "cpu", "type": "cpu", "index": None, "vram_total": total,
                    "vram_free": free, "torch_vram_total": total, "torch_vram_free": free}
        return {
            "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
            "type": "cuda",
            "index": 0,
            "vram_total": 24 * GIB,
            "vram_free": max(0, 22 * GIB + 700 * MIB - self._leaked),
            "torch_vram_total": 384 * MIB,
            "torch_vram_free": 350 * MIB,
        }

    def system_stats(self) -> dict[str, Any]:
        with self.cond:
            if self.fault.mode == "vram_leak":
                self._leaked += int(self.fault.leak_mb * MIB)
            device = self._device_stats()
        ram_total, ram_free = self._ram()
        argv = ["main.py", "--listen", self.host, "--port", str(self.port)]
        if self.device == "cpu":
            argv.insert(1, "--cpu")
        return {
            "system": {
                "os": os.name,
                "ram_total": ram_total,
                "ram_free": ram_free,
                "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95",
                "required_templates_version": "0.1.95",
                "python_version": sys.version,
                "pytorch_version": PYTORCH_VERSION,
                "embedded_python": False,
                "argv": argv,
            },
            "devices": [device],
        }

    def queue(self) -> dict[str, Any]:
        with self.cond:
            return self.prompts.view()

    def queue_remaining(self) -> int:
        with self.cond:
            return self.prompts.remaining()

    def history_entry(self, prompt_id: str) -> dict[str, Any]:
        with self.cond:
            entry = self.prompts.history.get(prompt_id)
            return copy.deepcopy({prompt_id: entry}) if entry is not None else {}

    # ------------------------------------------------------------------ handlers

    def _get_history(self, request: Request) -> Reply:
        raw = request.param("max_items")
        try:
            max_items = int(raw) if raw is not None else None
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        with self.cond:
            keys = list(self.prompts.history)
            if max_items is not None:
                keys = keys[max(0, len(keys) - max_items):] if max_items > 0 else []
            return json_reply({k: self.prompts.history[k] for k in keys})

    def _post_history(self, request: Request) -> Reply:
        data = _clear_delete_body(request.body)
        with self.cond:
            if data.get("clear"):
                self.prompts.history.clear()
            if isinstance(data.get("delete"), list):
                for prompt_id in data["delete"]:
                    self.prompts.history.pop(str(prompt_id), None)
        return Reply(200)

    def _post_queue(self, request: Request) -> Reply:
        data = _clear_delete_body(request.body)
        with self.cond:
            if data.get("clear"):
                self.prompts.pending.clear()
            if isinstance(data.get("delete"), list):
                doomed = {str(p) for p in data["delete"]}
                self.prompts.pending = [
                    item for item in self.prompts.pending if item[1] not in doomed
                ]
        return Reply(200)

    def _post_interrupt(self, request: Request) -> Reply:
        """Like ComfyUI: an unreadable body (empty, malformed) is a global interrupt, JSON
        that is not an object a 500; a falsy ``prompt_id`` is global too. Each case logs the
        line ComfyUI logs (capture ``control_route_bodies.json``)."""
        try:
            data = json.loads(request.body)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            raise BadRequest("body is not an object")  # ComfyUI's json_data.get() raises
        wanted = data.get("prompt_id")
        with self.cond:
            self.interrupts += 1
            running = self.prompts.running[1] if self.prompts.running is not None else None
            hit = running is not None and (not wanted or wanted == running)
            if hit:
                self._interrupt = True
                self.cond.notify_all()
        if not wanted:
            self.log("Global interrupt (no prompt_id specified)")
        elif hit:
            self.log(f"Interrupting prompt {wanted}")
        else:
            self.log(f"Prompt {wanted} is not currently running, skipping interrupt")
        return Reply(200)

    def _post_free(self, request: Request) -> Reply:
        """ComfyUI only sets flags here; its worker applies them when it is next idle. The
        body must be a JSON object: anything else (even an empty body) is ComfyUI's 500."""
        data = parse_json_body(request.body)
        if not isinstance(data, dict):
            raise BadRequest("body is not an object")
        with self.cond:
            for flag in ("unload_models", "free_memory"):
                if data.get(flag):
                    self._free_flags[flag] = True
            self.cond.notify_all()
        return Reply(200)

    def submit_job(self, kind: str, seconds: float) -> str:
        """Queue a busy/sleep job as a foreign client would; its prompt_id."""
        prompt = job_prompt(kind, seconds)
        result = validate_prompt(prompt)
        prompt_id = str(uuid.uuid4())
        with self.cond:
            number = self.prompts.next_number()
            self.prompts.put([number, prompt_id, prompt, {"client_id": "sim-job"},
                              result.outputs])
            self.cond.notify_all()
        self.log("got prompt")
        return prompt_id

    def control(self, request: Request) -> Reply | None:
        """``POST /__sim/job {"kind": "busy"|"sleep", "seconds": N}`` queues a job."""
        if request.path != "/__sim/job" or request.method != "POST":
            return None
        try:
            data = json.loads(request.body or b"{}")
            kind, seconds = data.get("kind"), data.get("seconds", 60)
            if kind not in ("busy", "sleep"):
                raise ValueError("kind must be 'busy' or 'sleep'")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError("seconds must be a number >= 0")
        except (ValueError, AttributeError) as exc:
            return json_reply({"error": str(exc)}, 400)
        return json_reply({"prompt_id": self.submit_job(kind, float(seconds))})

    def _post_prompt(self, request: Request) -> Reply:
        self.log("got prompt")
        data = parse_json_body(request.body)
        if not isinstance(data, dict):
            raise BadRequest("body is not an object")
        if "prompt" not in data:
            error = error_reason("no_prompt", "No prompt provided", "No prompt provided")
            return json_reply({"error": error, "node_errors": {}}, 400)
        prompt = data["prompt"]
        if not isinstance(prompt, dict):
            raise BadRequest("prompt is not an object")
        result = validate_prompt(prompt)
        if result.error is not None:
            self._log_invalid(result)
            return json_reply({"error": result.error, "node_errors": result.node_errors}, 400)
        prompt_id = str(data.get("prompt_id") or uuid.uuid4())
        extra_data = data.get("extra_data")
        extra_data = dict(extra_data) if isinstance(extra_data, dict) else {}
        if "client_id" in data:
            extra_data["client_id"] = data["client_id"]
        with self.cond:
            number: float | int
            if "number" in data:
                try:
                    number = float(data["number"])
                except (TypeError, ValueError) as exc:
                    raise BadRequest(str(exc)) from exc
            else:
                number = self.prompts.next_number(bool(data.get("front")))
            self.prompts.put([number, prompt_id, prompt, extra_data, result.outputs])
            self.cond.notify_all()
        return json_reply(
            {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        )

    def _log_invalid(self, result: Validation) -> None:
        assert result.error is not None
        for node_id, entry in result.node_errors.items():
            for out in entry["dependent_outputs"]:
                self.log(f"Failed to validate prompt for output {out}:")
            self.log(f"* {entry['class_type']} {node_id}:")
            for reason in entry["errors"]:
                self.log(f"  - {reason['message']}: {reason['details']}")
        if result.node_errors:
            self.log("Output will be ignored")
        self.log(f"invalid prompt: {result.error}")  # ComfyUI logs the error dict's repr


def _clear_delete_body(body: bytes) -> dict[str, Any]:
    """What ComfyUI's ``"clear" in json_data`` survives for POST /queue and /history: an
    object; an array or string holding neither key (then nothing happens); else a 500."""
    data = parse_json_body(body)
    if isinstance(data, dict):
        return data
    if isinstance(data, list | str) and "clear" not in data and "delete" not in data:
        return {}
    raise BadRequest("body is not an object")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardian.demo.comfyui.server", description="Simulated ComfyUI server."
    )
    add_common_args(parser, FAULT_MODES)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--exec-time", type=float, default=0.05,
                        help="seconds one prompt takes to execute")
    parser.add_argument("--leak-mb", type=float, default=512.0,
                        help="MB of VRAM lost per /system_stats call, fault vram_leak")
    args = parser.parse_args(argv)
    app = ComfyUISim(args.host, args.port, device=args.device, exec_time=args.exec_time,
                     exit_on_crash=True, log_stream=sys.stdout)
    app.boot_banner()
    return serve_forever(app, args, leak_mb=args.leak_mb)


if __name__ == "__main__":
    sys.exit(main())
