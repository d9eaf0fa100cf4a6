"""A faithful stand-in for ComfyUI's HTTP API, with switchable faults.

Shapes follow real ComfyUI 0.3.64 captures field for field (``shared/comfyui/captures``):
5-element queue items, ``{}`` history while a prompt is queued or running, identical
resubmits served from cache, 400 validation bodies, a plain-text 500 for malformed JSON,
every route also under ``/api``. Only three node classes exist (EmptyImage, PreviewImage,
SaveImage), which is all a model-free canary needs.

Run it as ``python -m guardian.demo.comfyui.server --port 8188 [--fault MODE]`` or in-process
with :class:`ComfyUISim`. Faults: see :data:`FAULT_MODES` and ``POST /__sim/fault``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import string
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

from guardian.demo.http import (
    COMMON_FAULTS,
    BadRequest,
    Fault,
    Reply,
    Request,
    SimApp,
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
MAX_HISTORY = 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE
MIB = 1024**2
GIB = 1024**3

FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
EXTENSIONS = [
    "/extensions/core/groupNode.js",
    "/extensions/core/clipspace.js",
    "/extensions/core/widgetInputs.js",
    "/extensions/core/groupNodeManage.js",
]

_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def _int_input(default: int, lo: int, hi: int, **extra: Any) -> list[Any]:
    return ["INT", {"default": default, "min": lo, "max": hi, **extra}]


def _node_info(
    name: str, display: str, required: dict[str, Any], output: list[str], *,
    description: str, hidden: bool, module: str = "nodes", category: str = "image",
) -> dict[str, Any]:
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if hidden:
        inputs["hidden"] = dict(_HIDDEN)
        order["hidden"] = list(_HIDDEN)
    return {
        "input": inputs,
        "input_order": order,
        "output": output,
        "output_is_list": [False] * len(output),
        "output_name": list(output),
        "name": name,
        "display_name": display,
        "description": description,
        "python_module": module,
        "category": category,
        "output_node": not output,
    }


_SAVES = "Saves the input images to your ComfyUI output directory."
NODE_INFO: dict[str, dict[str, Any]] = {
    "EmptyImage": _node_info(
        "EmptyImage", "EmptyImage",
        {
            "width": _int_input(512, 1, 16384, step=1),
            "height": _int_input(512, 1, 16384, step=1),
            "batch_size": _int_input(1, 1, 4096),
            "color": _int_input(0, 0, 16777215, step=1, display="color"),
        },
        ["IMAGE"], description="", hidden=False,
    ),
    "PreviewImage": _node_info(
        "PreviewImage", "Preview Image", {"images": ["IMAGE"]}, [],
        description=_SAVES, hidden=True,
    ),
    "SaveImage": _node_info(
        "SaveImage", "Save Image",
        {
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {
                "default": "ComfyUI",
                "tooltip": "The prefix for the file to save. This may include formatting "
                "information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to "
                "include values from nodes.",
            }],
        },
        [], description=_SAVES, hidden=True,
    ),
}

# Job nodes for jobs Guardian did not submit, as a custom node pack would add them: one
# computes (burns CPU, polls the interrupt flag like ComfyUI's samplers do), one sits in a
# plain sleep (ignores /interrupt until it returns, like the capture's GuardianSleep node).
BUSY_NODE, SLEEP_NODE = "GuardianBusy", "GuardianSleep"
_SECONDS = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 86400.0, "step": 0.1}]
for _name, _what in ((BUSY_NODE, "Burns CPU for `seconds`, stopping on interrupt."),
                     (SLEEP_NODE, "Sleeps for `seconds`, deaf to interrupts.")):
    NODE_INFO[_name] = _node_info(
        _name, _name, {"images": ["IMAGE"], "seconds": _SECONDS}, ["IMAGE"],
        description=_what, hidden=False, module="custom_nodes.guardian_sim",
        category="guardian",
    )
WORK_NODES = frozenset({BUSY_NODE, SLEEP_NODE})


def job_prompt(kind: str, seconds: float) -> dict[str, Any]:
    """A model-free job graph: EmptyImage -> GuardianBusy/GuardianSleep -> PreviewImage."""
    node = {"busy": BUSY_NODE, "sleep": SLEEP_NODE}[kind]
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "3": {"class_type": node, "inputs": {"images": ["1", 0], "seconds": float(seconds)}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }

# Tracebacks as the captures record them (source lines redacted).
_EXEC_TRACEBACK = [
    'File "ComfyUI/execution.py", line 496, in execute  [source line redacted]',
    'File "ComfyUI/execution.py", line 315, in get_output_data  [source line redacted]',
    'File "ComfyUI/execution.py", line 289, in _async_map_node_over_list  [source line redacted]',
    'File "ComfyUI/execution.py", line 277, in process_inputs  [source line redacted]',
]
_VALIDATE_TRACEBACK = [
    'File "ComfyUI/execution.py", line 1010, in validate_prompt  [source line redacted]',
    'File "ComfyUI/execution.py", line 788, in validate_inputs  [source line redacted]',
]
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 23.99 GiB "
    "of which 0 bytes is free. Of the allocated memory 22.60 GiB is allocated by PyTorch, and "
    "1.02 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is "
    "large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
    "  See documentation for Memory Management  "
    "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked "
    "before you might have accidentally set the batch_size to a large number."
)
CANARY_FAIL_MESSAGE = "simulated node failure (comfyui_sim fault canary_fail)"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _reason(kind: str, message: str, details: str = "", extra: Any = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


# ---------------------------------------------------------------------- validation


@dataclass
class Validation:
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


def validate_prompt(prompt: dict[str, Any]) -> Validation:
    """ComfyUI's ``validate_prompt``, reduced to the three known node classes."""
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            raise BadRequest(f"node {node_id} is not an object")  # ComfyUI raises: a 500
        if "class_type" not in node:
            msg = "Cannot execute because a node is missing the class_type property."
            return Validation(_reason("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {})
        class_type = node["class_type"]
        if class_type not in NODE_INFO:
            msg = f"Cannot execute because node {class_type} does not exist."
            return Validation(_reason("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {})
        if NODE_INFO[class_type]["output_node"]:
            outputs.append(node_id)
    if not outputs:
        return Validation(_reason("prompt_no_outputs", "Prompt has no outputs"), [], {})

    validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
    good: list[str] = []
    failed: list[dict[str, Any]] = []
    node_errors: dict[str, Any] = {}
    for out in outputs:
        try:
            valid, reasons = _validate_inputs(prompt, out, validated)
        except (KeyError, IndexError, TypeError) as exc:
            valid = False
            reasons = [_reason(
                "exception_during_validation", "Exception when validating node", str(exc),
                {"exception_type": type(exc).__name__, "traceback": list(_VALIDATE_TRACEBACK)},
            )]
            validated[out] = (False, reasons)
        if valid:
            good.append(out)
            continue
        failed.extend(reasons)
        for node_id, (ok, node_reasons) in validated.items():
            if not ok and node_reasons:
                entry = node_errors.setdefault(node_id, {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                })
                entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for r in failed)
        error = _reason(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
        )
        return Validation(error, [], node_errors)
    return Validation(None, good, node_errors)


def _validate_inputs(
    prompt: dict[str, Any], node_id: str, validated: dict[str, tuple[bool, list[dict[str, Any]]]]
) -> tuple[bool, list[dict[str, Any]]]:
    if node_id in validated:
        return validated[node_id]
    validated[node_id] = (True, [])  # provisional: breaks cycles
    node = prompt[node_id]
    inputs = node.get("inputs", {})
    if not isinstance(inputs, dict):
        raise TypeError(f"inputs of node {node_id} is not an object")
    info = NODE_INFO[node["class_type"]]
    reasons: list[dict[str, Any]] = []
    valid = True
    for name, spec in info["input"]["required"].items():
        input_type = spec[0]
        config = spec[1] if len(spec) > 1 else {}
        if name not in inputs:
            reasons.append(_reason("required_input_missing", "Required input is missing", name,
                                   {"input_name": name}))
            valid = False
            continue
        value = inputs[name]
        if _is_link(value):
            source = prompt[value[0]]  # KeyError for a link to a missing node, as in ComfyUI
            received = NODE_INFO[source["class_type"]]["output"][value[1]]
            if received != input_type:
                reasons.append(_reason(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{name}, received_type({received}) mismatch input_type({input_type})",
                    {"input_name": name, "input_config": spec, "received_type": received,
                     "linked_node": value},
                ))
                valid = False
                continue
            if not _validate_inputs(prompt, value[0], validated)[0]:
                valid = False
            continue
        if input_type in ("INT", "FLOAT"):
            convert = int if input_type == "INT" else float
            try:
                number = convert(value)
            except (TypeError, ValueError) as exc:
                reasons.append(_reason(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {input_type} value",
                    f"{name}, {value}, {exc}",
                    {"input_name": name, "input_config": spec, "received_value": value},
                ))
                valid = False
                continue
            extra = {"input_name": name, "input_config": spec, "received_value": number}
            if "min" in config and number < config["min"]:
                reasons.append(_reason("value_smaller_than_min",
                                       f"Value {number} smaller than min of {config['min']}",
                                       name, extra))
                valid = False
            elif "max" in config and number > config["max"]:
                reasons.append(_reason("value_bigger_than_max",
                                       f"Value {number} bigger than max of {config['max']}",
                                       name, extra))
                valid = False
    validated[node_id] = (valid, reasons)
    return valid, reasons


# ---------------------------------------------------------------------- the simulator


class ComfyUISim(SimApp):
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
        super().__init__(host, port, exit_on_crash=exit_on_crash, log_stream=log_stream)
        self.device = device
        self.exec_time = exec_time
        self._number = 0
        self._pending: list[list[Any]] = []
        self._running: list[Any] | None = None
        self._interrupt = False
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache: dict[str, Any] = {}  # node signature -> its outputs (None: no outputs)
        self._leaked = 0
        self._free_flags: dict[str, bool] = {}  # set by POST /free, applied by the worker
        self.frees = 0  # times the worker applied a /free (tests read it)
        self.interrupts = 0  # POST /interrupt requests received
        self._temp_prefix = "".join(random.choices(string.ascii_lowercase, k=5))
        self._counters: dict[str, int] = {}
        self._worker: threading.Thread | None = None

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
        self._worker = threading.Thread(target=self._work, name="comfyui-sim-exec", daemon=True)
        self._worker.start()
        self.log("Starting server\n")
        self.log(f"To see the GUI go to: {self.url}")

    def on_stop(self) -> None:
        if self._worker is not None:
            self._worker.join(timeout=5)

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
            return copy.deepcopy({
                "queue_running": [self._running] if self._running is not None else [],
                "queue_pending": sorted(self._pending, key=lambda item: item[0]),
            })

    def queue_remaining(self) -> int:
        with self.cond:
            return len(self._pending) + (self._running is not None)

    def history_entry(self, prompt_id: str) -> dict[str, Any]:
        with self.cond:
            entry = self._history.get(prompt_id)
            return copy.deepcopy({prompt_id: entry}) if entry is not None else {}

    # ------------------------------------------------------------------ handlers

    def _get_history(self, request: Request) -> Reply:
        raw = request.param("max_items")
        try:
            max_items = int(raw) if raw is not None else None
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        with self.cond:
            keys = list(self._history)
            if max_items is not None:
                keys = keys[max(0, len(keys) - max_items):] if max_items > 0 else []
            return json_reply({k: self._history[k] for k in keys})

    def _post_history(self, request: Request) -> Reply:
        data = _clear_delete_body(request.body)
        with self.cond:
            if data.get("clear"):
                self._history.clear()
            if isinstance(data.get("delete"), list):
                for prompt_id in data["delete"]:
                    self._history.pop(str(prompt_id), None)
        return Reply(200)

    def _post_queue(self, request: Request) -> Reply:
        data = _clear_delete_body(request.body)
        with self.cond:
            if data.get("clear"):
                self._pending.clear()
            if isinstance(data.get("delete"), list):
                doomed = {str(p) for p in data["delete"]}
                self._pending = [item for item in self._pending if item[1] not in doomed]
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
            running = self._running[1] if self._running is not None else None
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

    def _apply_free(self) -> None:
        """What the worker does with the flags: models unloaded, caches (and a leak) freed."""
        flags, self._free_flags = self._free_flags, {}
        if flags:
            self._leaked = 0
            self._cache.clear()
            self.frees += 1

    def submit_job(self, kind: str, seconds: float) -> str:
        """Queue a busy/sleep job as a foreign client would; its prompt_id."""
        prompt = job_prompt(kind, seconds)
        result = validate_prompt(prompt)
        prompt_id = str(uuid.uuid4())
        with self.cond:
            number = self._number
            self._number += 1
            self._pending.append([number, prompt_id, prompt, {"client_id": "sim-job"},
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
            error = _reason("no_prompt", "No prompt provided", "No prompt provided")
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
                number = -self._number if data.get("front") else self._number
                self._number += 1
            self._pending.append([number, prompt_id, prompt, extra_data, result.outputs])
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

    # ------------------------------------------------------------------ execution

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self._free_flags and (
                    not self._pending or self.fault.mode == "pending_idle"
                ):
                    self.cond.wait()
                if self.stopping:
                    return
                if self._free_flags:
                    self._apply_free()
                    continue
                item = min(self._pending, key=lambda i: i[0])
                self._pending.remove(item)
                self._running = item
                self._interrupt = False
            entry = self._execute(item)
            with self.cond:
                self._running = None
                if entry is not None:
                    self._history[item[1]] = entry
                    while len(self._history) > MAX_HISTORY:
                        self._history.popitem(last=False)
                self.cond.notify_all()

    def _execute(self, item: list[Any]) -> dict[str, Any] | None:
        """Run one prompt; the history entry, or None when the simulator is stopping."""
        started = time.monotonic()
        prompt_id: str = item[1]
        prompt: dict[str, Any] = item[2]
        order = _execution_order(prompt, item[4])
        signatures = {node_id: _signature(prompt, node_id, {}) for node_id in order}
        with self.cond:
            cached = [n for n in order if signatures[n] in self._cache]
        fresh = [n for n in order if n not in cached]
        messages: list[list[Any]] = [
            ["execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()}],
            ["execution_cached", {"nodes": cached, "prompt_id": prompt_id,
                                  "timestamp": _now_ms()}],
        ]
        with self.cond:
            if fresh:
                self.cond.wait_for(lambda: self.stopping or self._interrupt, self.exec_time)
        self.wait_while_fault("stuck_running")  # a node stuck in a sleep: no interrupt helps
        failing = order[-1]
        after_work = False
        for node_id in fresh:
            if (self._interrupt or self.stopping) and after_work:
                failing = node_id  # ComfyUI notices the flag before the next node runs
                break
            node = prompt[node_id]
            if node["class_type"] in WORK_NODES:
                after_work = True
                seconds = float(node.get("inputs", {}).get("seconds", 0.0))
                if node["class_type"] == BUSY_NODE and self._burn(seconds):
                    failing = node_id
                    break
                if node["class_type"] == SLEEP_NODE:
                    self.pause(seconds)  # a plain sleep: only the process stopping ends it
        with self.cond:
            if self.stopping:
                return None
            interrupted = self._interrupt
            mode = self.fault.mode
        executed = fresh[: fresh.index(failing)] if failing in fresh else list(fresh)
        if interrupted:
            messages.append(["execution_interrupted", {
                "prompt_id": prompt_id, "node_id": failing,
                "node_type": prompt[failing]["class_type"], "executed": executed,
                "timestamp": _now_ms(),
            }])
            self.log("Processing interrupted")
            entry = _entry(item, {}, "error", messages, {})
        elif (error := self._failure(prompt, failing, mode)) is not None:
            exc_type, message = error
            messages.append(["execution_error", {
                "prompt_id": prompt_id, "node_id": failing,
                "node_type": prompt[failing]["class_type"], "executed": executed,
                "exception_message": message, "exception_type": exc_type,
                "traceback": list(_EXEC_TRACEBACK),
                "current_inputs": _current_inputs(prompt, failing),
                "current_outputs": list(order), "timestamp": _now_ms(),
            }])
            self._log_exception(exc_type, message)
            with self.cond:
                for node_id in executed:
                    self._cache[signatures[node_id]] = None
            entry = _entry(item, {}, "error", messages, {})
        else:
            outputs: dict[str, Any] = {}
            new_cache: dict[str, Any] = {}
            with self.cond:
                for node_id in order:
                    sig = signatures[node_id]
                    out = self._cache[sig] if node_id in cached else self._run_node(prompt,
                                                                                    node_id)
                    new_cache[sig] = out
                    if out is not None:
                        outputs[node_id] = out
                self._cache = new_cache  # ComfyUI's classic cache keeps the last prompt only
            messages.append(["execution_success", {"prompt_id": prompt_id,
                                                   "timestamp": _now_ms()}])
            meta = {n: {"node_id": n, "display_node": n, "parent_node": None,
                        "real_node_id": n} for n in outputs}
            entry = _entry(item, outputs, "success", messages, meta)
        self.log(f"Prompt executed in {time.monotonic() - started:.2f} seconds")
        return entry

    def _burn(self, seconds: float) -> bool:
        """Compute for ``seconds`` (process CPU time grows), printing tqdm-style progress
        lines and polling the interrupt flag; True when interrupted."""
        start = time.monotonic()
        total = max(1, int(seconds))
        step = 0
        x = 0
        while (elapsed := time.monotonic() - start) < seconds:
            if self._interrupt or self.stopping:
                return True
            for i in range(20000):  # a few ms of pure-Python arithmetic between polls
                x = (x * 31 + i) % 1000003
            if int(elapsed) > step and step < total:
                step = int(elapsed)
                pct = min(100, 100 * step // total)
                self.log(f"{pct:3d}%|{'#' * (pct // 10):<10}| {step}/{total} "
                         f"[00:{step:02d}<00:{max(0, total - step):02d}, 1.00it/s]")
        return False

    def _failure(self, prompt: dict[str, Any], node_id: str, mode: str) -> tuple[str, str] | None:
        """(exception_type, exception_message) when this execution fails."""
        if mode == "oom":
            return "torch.OutOfMemoryError", f"{OOM_MESSAGE}\n{OOM_TIPS}"
        if mode == "canary_fail":
            return "RuntimeError", f"{CANARY_FAIL_MESSAGE}\n"
        node = prompt[node_id]
        prefix = str(node.get("inputs", {}).get("filename_prefix", ""))
        if node["class_type"] == "SaveImage" and (".." in prefix or prefix.startswith("/")):
            return "Exception", (
                "**** ERROR: Saving image outside the output folder is not allowed.\n"
                " full_output_folder: /outside\n         output_dir: ComfyUI/output\n"
                "         commonpath: /outside\n"
            )
        return None

    def _log_exception(self, exc_type: str, message: str) -> None:
        first = message.splitlines()[0] if message else ""
        self.log(f"!!! Exception during processing !!! {first}")
        self.log("Traceback (most recent call last):")
        for line in _EXEC_TRACEBACK:
            self.log("  " + line.replace("  [source line redacted]", ""))
        self.log(f"{exc_type}: {first}")
        if exc_type == "torch.OutOfMemoryError":
            self.log("Got an OOM, unloading all loaded models.")

    def _run_node(self, prompt: dict[str, Any], node_id: str) -> Any:
        """A node's UI output: images for the output nodes, nothing otherwise."""
        node = prompt[node_id]
        if node["class_type"] not in ("PreviewImage", "SaveImage"):
            return None
        source = prompt[node["inputs"]["images"][0]]
        count = int(source.get("inputs", {}).get("batch_size", 1))
        if node["class_type"] == "PreviewImage":
            base, kind, subfolder = f"ComfyUI_temp_{self._temp_prefix}", "temp", ""
        else:
            prefix = str(node["inputs"].get("filename_prefix") or "ComfyUI")
            subfolder, _, base = prefix.rpartition("/")
            kind = "output"
        images = []
        for _ in range(max(1, min(count, 64))):
            n = self._counters.get(base, 0) + 1
            self._counters[base] = n
            images.append({"filename": f"{base}_{n:05}_.png", "subfolder": subfolder,
                           "type": kind})
        return {"images": images}


def _clear_delete_body(body: bytes) -> dict[str, Any]:
    """What ComfyUI's ``"clear" in json_data`` survives for POST /queue and /history: an
    object; an array or string holding neither key (then nothing happens); else a 500."""
    data = parse_json_body(body)
    if isinstance(data, dict):
        return data
    if isinstance(data, list | str) and "clear" not in data and "delete" not in data:
        return {}
    raise BadRequest("body is not an object")


def _entry(
    item: list[Any], outputs: dict[str, Any], status: str, messages: list[list[Any]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    return {
        "prompt": item,
        "outputs": outputs,
        "status": {"status_str": status, "completed": status == "success",
                   "messages": messages},
        "meta": meta,
    }


def _execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """Dependencies first, each node once (prompts are validated, so links resolve)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for value in prompt[node_id].get("inputs", {}).values():
            if _is_link(value):
                visit(str(value[0]))
        order.append(node_id)

    for out in outputs:
        visit(out)
    return order


def _signature(prompt: dict[str, Any], node_id: str, memo: dict[str, str]) -> str:
    """A node's cache key: its class and inputs, with links replaced by their sources' keys."""
    if node_id in memo:
        return memo[node_id]
    memo[node_id] = ""  # cycle guard
    node = prompt[node_id]
    inputs = {
        name: ["link", _signature(prompt, str(v[0]), memo), v[1]] if _is_link(v) else v
        for name, v in node.get("inputs", {}).items()
    }
    memo[node_id] = json.dumps([node["class_type"], inputs], sort_keys=True, default=str)
    return memo[node_id]


def _current_inputs(prompt: dict[str, Any], node_id: str) -> dict[str, Any]:
    node = prompt[node_id]
    inputs: dict[str, Any] = {}
    for name, value in node.get("inputs", {}).items():
        inputs[name] = ["tensor([[[[0.0000, 0.0000, 0.0000]]]])"] if _is_link(value) else [value]
    inputs["prompt"] = [str(prompt)]
    inputs["extra_pnginfo"] = [None]
    return inputs


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
