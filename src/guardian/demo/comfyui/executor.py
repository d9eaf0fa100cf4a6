"""The simulated ComfyUI's executor: one prompt at a time in a worker thread, with faults.

Like ComfyUI's ``prompt_worker``: it takes the pending item with the lowest number, runs its
nodes in dependency order (cached nodes skipped, as ComfyUI's classic cache does), notices an
interrupt between nodes, and writes a history entry shaped as the captures are. Faults make
executions hang (``stuck_running``), fail (``canary_fail``, ``oom``) or never start
(``pending_idle``).
"""

from __future__ import annotations

import json
import random
import string
import threading
import time
from typing import Any, TextIO

from guardian.demo.comfyui.prompts import (
    BUSY_NODE,
    SLEEP_NODE,
    WORK_NODES,
    PromptQueue,
    is_link,
)
from guardian.demo.http import SimApp

# Tracebacks as the captures record them (source lines redacted).
_EXEC_TRACEBACK = [
    'File "ComfyUI/execution.py", line 496, in execute  [source line redacted]',
    'File "ComfyUI/execution.py", line 315, in get_output_data  [source line redacted]',
    'File "ComfyUI/execution.py", line 289, in _async_map_node_over_list  [source line redacted]',
    'File "ComfyUI/execution.py", line 277, in process_inputs  [source line redacted]',
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


class PromptExecutor(SimApp):
    """The executor half of the simulator: the queue model, the worker thread, the cache."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        exec_time: float,
        exit_on_crash: bool,
        log_stream: TextIO | None,
    ) -> None:
        super().__init__(host, port, exit_on_crash=exit_on_crash, log_stream=log_stream)
        self.exec_time = exec_time
        self.prompts = PromptQueue()
        self._interrupt = False
        self._cache: dict[str, Any] = {}  # node signature -> its outputs (None: no outputs)
        self._leaked = 0
        self._free_flags: dict[str, bool] = {}  # set by POST /free, applied by the worker
        self.frees = 0  # times the worker applied a /free (tests read it)
        self._temp_prefix = "".join(random.choices(string.ascii_lowercase, k=5))
        self._counters: dict[str, int] = {}
        self._worker: threading.Thread | None = None

    def start_worker(self) -> None:
        self._worker = threading.Thread(target=self._work, name="comfyui-sim-exec", daemon=True)
        self._worker.start()

    def join_worker(self) -> None:
        if self._worker is not None:
            self._worker.join(timeout=5)

    def _apply_free(self) -> None:
        """What the worker does with the flags: models unloaded, caches (and a leak) freed."""
        flags, self._free_flags = self._free_flags, {}
        if flags:
            self._leaked = 0
            self._cache.clear()
            self.frees += 1

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self._free_flags and (
                    not self.prompts.pending or self.fault.mode == "pending_idle"
                ):
                    self.cond.wait()
                if self.stopping:
                    return
                if self._free_flags:
                    self._apply_free()
                    continue
                item = self.prompts.take()
                self._interrupt = False
            entry = self._execute(item)
            with self.cond:
                self.prompts.finish(item, entry)
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
            if is_link(value):
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
        name: ["link", _signature(prompt, str(v[0]), memo), v[1]] if is_link(v) else v
        for name, v in node.get("inputs", {}).items()
    }
    memo[node_id] = json.dumps([node["class_type"], inputs], sort_keys=True, default=str)
    return memo[node_id]


def _current_inputs(prompt: dict[str, Any], node_id: str) -> dict[str, Any]:
    node = prompt[node_id]
    inputs: dict[str, Any] = {}
    for name, value in node.get("inputs", {}).items():
        inputs[name] = ["tensor([[[[0.0000, 0.0000, 0.0000]]]])"] if is_link(value) else [value]
    inputs["prompt"] = [str(prompt)]
    inputs["extra_pnginfo"] = [None]
    return inputs
